"""``AsyncDatabase[K, V]``: one database (a keyspace of the engine) with a key coder and a value coder."""

from __future__ import annotations

import asyncio
import enum
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, TypeVar, cast, overload

from .coders import Coder
from .errors import (
    DatabaseDroppedError,
    DecodeError,
    EncodeError,
    KeyExistsError,
    KeyNotFoundError,
    TransactionError,
    UnorderedKeyError,
)
from .scanning import Fetch, as_stored, prefix_end, scan
from .storage import Buffer, Keyspace, NotNowError, ReadView, WriteView

if TYPE_CHECKING:
    import lmdb

    from .environment import AsyncEnvironment
    from .storage.lmdb import LmdbReadView
    from .transaction import Transaction

__all__ = ["TOO_LARGE", "AsyncDatabase", "DatabaseTxn", "show"]

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")
T = TypeVar("T")
R = TypeVar("R")

#: get_multi calls with more keys than this read on a worker thread.
INLINE_MULTI_LIMIT = 32
#: Items encoded between two yields to the event loop by multi-key calls.
ENCODE_SLICE = 256
#: Reads done on the event loop (which never suspend) between two yields to other tasks.
INLINE_READS_PER_YIELD = 256

#: ``next()`` of it is True once every INLINE_READS_PER_YIELD reads done on the event
#: loop: such a read returns without suspending, so a loop of them would otherwise
#: starve every other task. Cheaper than a clock, and than a counter in Python.
_yield_due = itertools.cycle([True] + [False] * (INLINE_READS_PER_YIELD - 1))


_MISSING: Any = object()
#: What a read made on the event loop gives for a value too large to decode there.
TOO_LARGE: Any = object()

#: The sizes LMDB's integerkey databases compare keys as (native unsigned int, size_t).
INTEGER_KEY_SIZES = (4, 8)


class KeyOrder(enum.Enum):
    """How LMDB orders the keys of a database (its ``integerkey``/``reverse_key`` flags)."""

    #: Byte by byte, as ordered key coders assume: ranges and prefixes work.
    BYTES = "bytes"
    #: As native unsigned integers of 4 or 8 bytes, every key one size.
    INTEGER = "integerkey"
    #: Byte by byte from the last byte.
    REVERSE = "reverse_key"


class AsyncDatabase(Generic[K, V]):
    """One LMDB database, read and written through coroutines.

    Keys are encoded with :attr:`key_coder` and values with
    :attr:`value_coder`; both may be reassigned. Outside an explicit
    transaction every call is its own atomic transaction: reads run on the
    event loop thread when they are small (no thread hop), writes are queued
    to the environment's writer thread and group-committed. Inside
    ``env.transaction()`` calls join that transaction.

    Obtain one with :meth:`AsyncEnvironment.open_db`.
    """

    #: How messages name this kind of database.
    _kind = "database"

    def __init__(
        self,
        env: AsyncEnvironment,
        name: str | bytes | None,
        key_coder: Coder[K],
        value_coder: Coder[V],
        *,
        create: bool = True,
        flags: Mapping[str, bool] | None = None,
    ) -> None:
        self.env = env
        self.name = name
        self.key_coder = key_coder
        self.value_coder = value_coder
        self._label = "<default>" if name is None else repr(name)
        flags = flags or {}
        self._keyspace = env._open_keyspace(
            name,
            self._label,
            create,
            integer_keys=flags.get("integerkey", False),
            reverse_keys=flags.get("reverse_key", False),
        )
        self._key_order = (
            KeyOrder.INTEGER
            if flags.get("integerkey", False)
            else KeyOrder.REVERSE
            if flags.get("reverse_key", False)
            else KeyOrder.BYTES
        )
        # Checked for every key: a bool costs less than comparing enum members.
        self._integer_keys = self._key_order is KeyOrder.INTEGER
        #: True until a call found the database open: calls wait for the writer to open it.
        self._pending = not self._keyspace.ready
        self._max_key_size = env.max_key_size()
        self._inline_limit = env.inline_value_limit

    def __repr__(self) -> str:
        return (
            f"<AsyncDatabase {self._label} key_coder={self.key_coder!r} "
            f"value_coder={self.value_coder!r}>"
        )

    # -- coding ----------------------------------------------------------

    def _encode_key(self, key: K) -> bytes:
        try:
            raw = self.key_coder.serialize(key)
        except Exception as exc:
            raise EncodeError(
                f"database {self._label}: cannot encode key {show(key)} "
                f"({type(key).__name__}) with {self.key_coder!r}: {exc}"
            ) from exc
        if type(raw) is not bytes:
            raw = self._as_bytes(raw, self.key_coder, f"key {show(key)}", key)
        if not raw:
            raise EncodeError(
                f"database {self._label}: key {show(key)} ({type(key).__name__}) encodes to "
                f"empty bytes with {self.key_coder!r}; LMDB does not accept empty keys"
            )
        if len(raw) > self._max_key_size:
            raise EncodeError(
                f"database {self._label}: key {show(key)} ({type(key).__name__}) encodes to "
                f"{len(raw)} bytes with {self.key_coder!r}; the limit is {self._max_key_size}"
            )
        if self._integer_keys and len(raw) != self._keyspace.key_size:
            self._check_integer_key(raw, key)
        return raw

    def _check_integer_key(self, raw: bytes, key: K) -> None:
        """Refuse a key LMDB cannot compare in an integerkey database.

        LMDB reads such keys as native unsigned ints of 4 or 8 bytes, taking
        the size from one of the two keys compared: other sizes, or keys of
        both sizes in one database, are silently misordered.
        """
        expected = self._keyspace.key_size
        if len(raw) not in INTEGER_KEY_SIZES or expected is not None:
            rule = (
                "keys of 4 or 8 bytes"
                if expected is None
                else f"keys of one size, and its keys are {expected} bytes"
            )
            raise EncodeError(
                f"database {self._label}: key {show(key)} ({type(key).__name__}) encodes to "
                f"{len(raw)} bytes with {self.key_coder!r}; an integerkey database needs {rule}"
            )
        self._keyspace.key_size = len(raw)

    def _encode_value(self, key: K, value: V) -> bytes:
        try:
            raw = self.value_coder.serialize(value)
        except Exception as exc:
            raise EncodeError(
                f"database {self._label}: cannot encode the value for key {show(key)} "
                f"({type(value).__name__}) with {self.value_coder!r}: {exc}"
            ) from exc
        if type(raw) is not bytes:
            raw = self._as_bytes(raw, self.value_coder, f"the value for key {show(key)}", value)
        return raw

    def _as_bytes(self, raw: object, coder: Coder[Any], what: str, obj: object) -> bytes:
        """What ``coder`` returned for ``obj`` as bytes, or EncodeError unless it is a buffer.

        py-lmdb would store None as empty bytes, and fail on other types
        with an error naming neither the database nor the coder.
        """
        if isinstance(raw, (bytearray, memoryview, bytes)):
            return bytes(raw)
        raise EncodeError(
            f"database {self._label}: {coder!r} returned {type(raw).__name__} for {what} "
            f"({type(obj).__name__}); a coder must return bytes (or a bytearray or memoryview)"
        )

    def _encode_item(self, item: tuple[K, V]) -> tuple[bytes, bytes]:
        key, value = item
        raw_key = self._encode_key(key)
        raw_value = self._encode_value(key, value)
        # Bytes stored as they are need no new tuple (fewer objects, less GC).
        return item if raw_key is key and raw_value is value else (raw_key, raw_value)  # type: ignore[return-value]

    def _decode_value(self, raw_key: bytes | memoryview, buf: bytes | memoryview) -> V:
        try:
            return self.value_coder.deserialize(buf)
        except Exception as exc:
            raise DecodeError(
                f"database {self._label}: cannot decode the value of key "
                f"{self._show_raw_key(raw_key)} with {self.value_coder!r}: {exc}"
            ) from exc

    def _decodes_inline(self, buf: bytes | memoryview) -> bool:
        """True when the value ``buf`` may be decoded on the event loop.

        Its stored size bounds what the value coder may produce (see
        ``Coder.max_expansion``); beyond that bound the coder is asked about
        this value (``Coder.decodes_within``: a small compressed value).
        """
        coder, limit = self.value_coder, self._inline_limit
        return len(buf) * coder.max_expansion <= limit or coder.decodes_within(buf, limit)

    def _decode_item(self, raw_key: bytes, raw_value: bytes) -> tuple[K, V]:
        return self._decode_key(raw_key), self._decode_value(raw_key, raw_value)

    def _decode_key(self, raw_key: bytes | memoryview) -> K:
        try:
            return self.key_coder.deserialize(raw_key)
        except Exception as exc:
            raise DecodeError(
                f"database {self._label}: cannot decode key {bytes(raw_key)!r} "
                f"with {self.key_coder!r}: {exc}"
            ) from exc

    def _show_raw_key(self, raw_key: bytes | memoryview) -> str:
        try:
            return show(self.key_coder.deserialize(raw_key))
        except Exception:
            return repr(bytes(raw_key))

    def _resolve(self, txn: Transaction | None) -> tuple[Keyspace, Transaction | None]:
        """The keyspace and the transaction a call runs in (None: its own).

        Checks that the environment is open, that the database was not
        dropped, and that the transaction can see it.
        """
        context = self.env._context(txn)
        if self._keyspace.dropped:
            self._require_live()
        if context is not None and context.handles_known < self._keyspace.serial:
            raise TransactionError(
                f"database {self._label} was opened after this transaction began, so the "
                "transaction cannot see it: open databases before env.transaction()"
            )
        return self._keyspace, context

    async def _until_open(self, txn: Transaction | None) -> None:
        """Wait for the writer to open the database (raises what its open raised).

        A transaction that cannot see the database is refused first: the
        open may be queued behind that very transaction.
        """
        self._resolve(txn)
        await self._opening()
        self._pending = False

    async def _opening(self) -> None:
        """Wait for what opening this object needs from the writer, then adopt the handle."""
        await self._keyspace.wait()
        self._take_handle()

    def _take_handle(self) -> None:
        """Check the engine opened the keyspace (raises the open's error)."""
        self._keyspace.check()

    async def _after_open(
        self, txn: Transaction | None, stream: Callable[[], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        """The records of ``stream()``, made once the database is open."""
        await self._until_open(txn)
        async for item in stream():
            yield item

    def _require_live(self) -> None:
        """Raise :class:`DatabaseDroppedError` if the database was deleted."""
        if self._keyspace.dropped:
            raise DatabaseDroppedError(
                f"{self._kind} {self._label} was dropped (drop(delete=True)) before or while "
                "this call ran: open it again to recreate it"
            )

    async def _read(
        self, fn: Callable[[ReadView], R], ctx: Transaction | None, *, offload: bool = False
    ) -> R:
        """``env._read`` of ``fn``, refused if the database is dropped before or while it runs.

        The check is made again after ``fn``: a read on a reader thread may
        overlap a drop, after which LMDB gives the freed handle's slot to the
        next database opened, and ``fn`` may have read that one. A read done
        on the event loop (of its own, or in a read snapshot) now and then
        lets other tasks run.
        """

        def checked(view: ReadView) -> R:
            self._require_live()
            result = fn(view)
            self._require_live()
            return result

        # A read in a write transaction suspends anyway: the writer thread runs it.
        inline = not offload and (ctx is None or not ctx.sees_own_writes)
        if inline and next(_yield_due):
            await asyncio.sleep(0)
        return await self.env._read(checked, ctx, offload=offload)

    async def _read_small_inline(
        self, read: Callable[[ReadView, bool], R], ctx: Transaction | None
    ) -> R:
        """``read(view, True)`` on the event loop, or, if it gives :data:`TOO_LARGE` (a value
        too large to decode there), ``read(view, False)`` off the loop.
        """
        result = await self._read(lambda view: read(view, True), ctx)
        if result is TOO_LARGE:
            result = await self._read(lambda view: read(view, False), ctx, offload=True)
        return result

    def _write(
        self,
        fn: Callable[[WriteView], R],
        ctx: Transaction | None,
        *,
        may_fail_midway: bool = False,
    ) -> Awaitable[R]:
        """``env._write`` of ``fn``, refused if the database was dropped when it runs.

        A write queued behind a drop of its database passed the check made
        when it was called; where it runs (on the writer thread, after the
        drop) it would write through the freed handle, into whichever
        database took its slot.
        """
        return self.env._write(self._when_live(fn), ctx, may_fail_midway=may_fail_midway)

    def _when_live(self, fn: Callable[[WriteView], R]) -> Callable[[WriteView], R]:
        """``fn``, checking first that the database was not dropped (for the writer thread).

        A write on a database still being opened is queued at once, behind
        its opening (so that it is applied in order, and ``close()`` finishes
        it): the handle is adopted where the write runs.
        """
        if self._pending:
            # integerkey: the size the keys were checked against before the open
            # learnt the size of the keys stored.
            key_size = self._keyspace.key_size

            def adopting(view: WriteView) -> R:
                self._take_handle()  # raises what the open raised
                self._require_live()
                if self._integer_keys and key_size != self._keyspace.key_size:
                    raise EncodeError(
                        f"database {self._label}: this write's keys are {key_size} bytes, "
                        f"and the keys stored are {self._keyspace.key_size} bytes; an integerkey "
                        "database needs keys of one size"
                    )
                return fn(view)

            return adopting

        def checked(view: WriteView) -> R:
            self._require_live()
            return fn(view)

        return checked

    async def _encode_many(self, encode: Callable[[T], R], items: list[T]) -> list[R]:
        """Encode many items on the loop, in slices, letting other tasks run in between.

        Cheaper than a thread hop, and a worker thread would hold the GIL for
        up to the switch interval (5 ms) at a time anyway.
        """
        if len(items) <= ENCODE_SLICE:
            return [encode(item) for item in items]
        encoded: list[R] = []
        for start in range(0, len(items), ENCODE_SLICE):
            encoded.extend(encode(item) for item in items[start : start + ENCODE_SLICE])
            await asyncio.sleep(0)
        return encoded

    # -- reads -----------------------------------------------------------

    @overload
    async def get(
        self, key: K, default: None = None, *, txn: Transaction | None = None
    ) -> V | None: ...

    @overload
    async def get(self, key: K, default: D, *, txn: Transaction | None = None) -> V | D: ...

    async def get(self, key: K, default: Any = None, *, txn: Transaction | None = None) -> Any:
        """The value stored under ``key``, or ``default`` when there is none."""
        raw_key = self._encode_key(key)
        if self._pending:
            await self._until_open(txn)
        if next(_yield_due):  # before the checks: a drop may run meanwhile
            await asyncio.sleep(0)
        keyspace, ctx = self._resolve(txn)
        if ctx is None:
            # The hot path: a read of its own, on the loop thread.
            try:
                value = self.env.engine.read_point(keyspace, raw_key, self._decode_small)
            except NotNowError:
                value = TOO_LARGE  # the read must wait: off the loop
            if value is not TOO_LARGE:
                return default if value is _MISSING else value

        def read(view: ReadView) -> Any:
            buf = view.get(keyspace, raw_key)
            return _MISSING if buf is None else self._decode_value(raw_key, buf)

        # Large values are decoded on a reader thread; inside a transaction
        # the read goes where the transaction lives.
        value = await self._read(read, ctx, offload=True)
        return default if value is _MISSING else value

    def _decode_small(self, raw_key: bytes, buf: Buffer | None) -> Any:
        """A value read on the event loop: decoded, or :data:`TOO_LARGE` to decode there."""
        if self._keyspace.dropped:  # by the writer since the call's checks: buf is not ours
            self._require_live()
        if buf is None:
            return _MISSING
        # _decodes_inline(buf), its cheap test spelt out on the hottest path
        coder, limit = self.value_coder, self._inline_limit
        if len(buf) * coder.max_expansion <= limit or coder.decodes_within(buf, limit):
            return self._decode_value(raw_key, buf)
        return TOO_LARGE

    @overload
    async def get_multi(
        self, keys: Iterable[K], default: None = None, *, txn: Transaction | None = None
    ) -> dict[K, V | None]: ...

    @overload
    async def get_multi(
        self, keys: Iterable[K], default: D, *, txn: Transaction | None = None
    ) -> dict[K, V | D]: ...

    async def get_multi(
        self, keys: Iterable[K], default: Any = None, *, txn: Transaction | None = None
    ) -> dict[K, Any]:
        """Values of many keys, read in one transaction.

        Every key asked for is in the result; missing ones map to ``default``.
        """
        if self._pending:
            await self._until_open(txn)
        keyspace, ctx = self._resolve(txn)
        wanted = list(keys)
        raw_keys = await self._encode_many(self._encode_key, wanted)

        def read(view: ReadView, small_only: bool) -> dict[K, Any]:
            found: dict[K, Any] = {}
            bufs = view.get_many(keyspace, raw_keys)
            for key, raw_key, buf in zip(wanted, raw_keys, bufs, strict=True):
                if buf is None:
                    found[key] = default
                elif small_only and not self._decodes_inline(buf):
                    return TOO_LARGE  # type: ignore[no-any-return]
                else:
                    found[key] = self._decode_value(raw_key, buf)
            return found

        if len(wanted) <= INLINE_MULTI_LIMIT:
            return await self._read_small_inline(read, ctx)
        return await self._read(lambda view: read(view, False), ctx, offload=True)

    async def contains(self, key: K, *, txn: Transaction | None = None) -> bool:
        """True when ``key`` is stored."""
        raw_key = self._encode_key(key)
        if self._pending:
            await self._until_open(txn)
        keyspace, ctx = self._resolve(txn)
        return await self._read(lambda view: view.get(keyspace, raw_key) is not None, ctx)

    async def count(self, *, txn: Transaction | None = None) -> int:
        """The number of records."""
        if self._pending:
            await self._until_open(txn)
        keyspace, ctx = self._resolve(txn)
        return await self._read(lambda view: view.count(keyspace), ctx)

    async def stat(self, *, txn: Transaction | None = None) -> dict[str, int]:
        """LMDB's statistics of this database (``entries``, ``depth``, page counts...).

        LMDB only: other engines raise :class:`~aiolmdb.UnsupportedError`.
        """
        self.env._lmdb_only(f"stat() of database {self._label}")
        if self._pending:
            await self._until_open(txn)
        keyspace, ctx = self._resolve(txn)
        return await self._read(
            lambda view: as_ints(cast("LmdbReadView", view).txn.stat(keyspace.handle)), ctx
        )

    # -- writes ----------------------------------------------------------

    async def put(
        self, key: K, value: V, *, overwrite: bool = True, txn: Transaction | None = None
    ) -> bool:
        """Store ``value`` under ``key``; returns False when ``overwrite=False`` and it exists.

        Returns once the write is committed (durably, unless the environment
        was opened with ``sync=False``).
        """
        raw_key = self._encode_key(key)
        raw_value = self._encode_value(key, value)
        ctx = self._resolve(txn)[1]
        return await self._write(
            lambda view: self._store(view, raw_key, raw_value, value, overwrite), ctx
        )

    async def put_multi(
        self,
        items: Iterable[tuple[K, V]] | Mapping[K, V],
        *,
        overwrite: bool = True,
        txn: Transaction | None = None,
    ) -> int:
        """Store many records atomically (all or none); returns how many were written.

        With ``overwrite=False`` existing keys are left alone and not counted.
        Records are encoded on the event loop, 256 at a time with other tasks
        running in between: do not mutate the objects until the call returns.
        """
        ctx = self._resolve(txn)[1]
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        encoded = await self._encode_many(self._encode_item, pairs)

        def write(view: WriteView) -> int:
            # All or none: a failure aborts the group commit (or the savepoint
            # inside a transaction), which then goes on without this call.
            if self._plain_writes:
                return view.put_many(self._keyspace, encoded, overwrite=overwrite)
            return sum(
                self._store(view, raw_key, raw_value, value, overwrite)
                for (raw_key, raw_value), (_, value) in zip(encoded, pairs, strict=True)
            )

        return await self._write(write, ctx, may_fail_midway=not self._plain_writes)

    async def delete(self, key: K, *, txn: Transaction | None = None) -> bool:
        """Delete ``key``; returns whether it existed."""
        raw_key = self._encode_key(key)
        ctx = self._resolve(txn)[1]
        return await self._write(lambda view: self._remove(view, raw_key), ctx)

    async def delete_multi(
        self, keys: Iterable[K], *, txn: Transaction | None = None
    ) -> dict[K, bool]:
        """Delete many keys atomically; maps each key to whether it existed."""
        ctx = self._resolve(txn)[1]
        wanted = list(keys)
        raw_keys = await self._encode_many(self._encode_key, wanted)

        def write(view: WriteView) -> dict[K, bool]:
            existed: dict[K, bool] = {}
            for key, raw_key in zip(wanted, raw_keys, strict=True):
                # A key listed twice existed if its first delete found it.
                existed[key] = self._remove(view, raw_key) or existed.get(key, False)
            return existed

        return await self._write(write, ctx, may_fail_midway=not self._plain_writes)

    @overload
    async def pop(
        self, key: K, default: None = None, *, txn: Transaction | None = None
    ) -> V | None: ...

    @overload
    async def pop(self, key: K, default: D, *, txn: Transaction | None = None) -> V | D: ...

    async def pop(self, key: K, default: Any = None, *, txn: Transaction | None = None) -> Any:
        """Delete ``key`` and return its value (``default`` when it did not exist)."""
        raw_key = self._encode_key(key)
        ctx = self._resolve(txn)[1]
        # Decoding happens before the commit: a value that cannot be decoded
        # fails the call and stays stored.
        value = await self._write(lambda view: self._pop_raw(view, raw_key), ctx)
        return default if value is _MISSING else value

    async def replace(self, key: K, value: V, *, txn: Transaction | None = None) -> V | None:
        """Store ``value`` under ``key`` and return the previous value (None if there was none)."""
        raw_key = self._encode_key(key)
        raw_value = self._encode_value(key, value)
        ctx = self._resolve(txn)[1]
        old: V | None = await self._write(
            lambda view: self._replace_raw(view, raw_key, raw_value, value), ctx
        )
        return old

    async def insert(self, key: K, value: V, *, txn: Transaction | None = None) -> None:
        """Store a new record; raise :class:`KeyExistsError` if ``key`` is already stored."""
        raw_key = self._encode_key(key)
        raw_value = self._encode_value(key, value)
        ctx = self._resolve(txn)[1]

        def write(view: WriteView) -> None:
            if not self._store(view, raw_key, raw_value, value, False):
                raise KeyExistsError(f"database {self._label}: key {show(key)} already exists")

        await self._write(write, ctx)

    async def update(self, key: K, fn: Callable[[V], V], *, txn: Transaction | None = None) -> V:
        """Replace the value of ``key`` by ``fn(old)`` atomically; return the new value.

        The read, ``fn`` and the write happen in one write transaction, so no
        other writer can slip in between. ``fn`` runs on the writer thread and
        may be called more than once (when its group commit is retried): keep
        it a pure function of its argument. Raises :class:`KeyNotFoundError`
        when ``key`` is not stored.
        """
        raw_key = self._encode_key(key)
        ctx = self._resolve(txn)[1]

        def write(view: WriteView) -> V:
            old = view.get(self._keyspace, raw_key)
            if old is None:
                raise KeyNotFoundError(f"database {self._label}: key {show(key)} is not stored")
            new = fn(self._decode_value(raw_key, old))
            self._store(view, raw_key, self._encode_value(key, new), new, True)
            return new

        result: V = await self._write(write, ctx)
        return result

    # -- record writes: every write of a record goes through these two ---

    #: True when storing or removing a record is a bare put or delete: then
    #: put_multi may use LMDB's putmulti, and a multi-record write cannot fail
    #: half way (only with an error that dooms the whole transaction).
    _plain_writes = True

    def _store(
        self, view: WriteView, raw_key: bytes, raw_value: bytes, value: V, overwrite: bool
    ) -> bool:
        """Store one encoded record; False if ``overwrite`` is off and it exists."""
        return view.put(self._keyspace, raw_key, raw_value, overwrite=overwrite)

    def _remove(self, view: WriteView, raw_key: bytes) -> bool:
        """Remove one record; False if it was not stored."""
        return view.delete(self._keyspace, raw_key)

    def _pop_raw(self, view: WriteView, raw_key: bytes) -> Any:
        old = view.get(self._keyspace, raw_key)
        if old is None:
            return _MISSING
        value = self._decode_value(raw_key, old)
        self._remove(view, raw_key)
        return value

    def _replace_raw(self, view: WriteView, raw_key: bytes, raw_value: bytes, new: V) -> V | None:
        old = view.get(self._keyspace, raw_key)
        value = None if old is None else self._decode_value(raw_key, old)
        self._store(view, raw_key, raw_value, new, True)
        return value

    async def drop(self, delete: bool = True, *, txn: Transaction | None = None) -> None:
        """Delete every record; with ``delete=True`` remove the named database itself.

        After ``delete=True`` this object can no longer be used (open the
        database again to recreate it). The unnamed default database can only
        be emptied, and the records naming the named databases stay.
        """
        if self._pending:
            await self._until_open(txn)
        ctx = self._resolve(txn)[1]
        if self.name is None or not delete:
            await self._write(self._empty, ctx)
            return
        if ctx is not None:
            raise TransactionError(
                f"database {self._label}: drop(delete=True) cannot run inside a transaction; "
                "use drop(delete=False) to empty it there"
            )

        # A second drop queued behind this one would delete the database
        # that takes the freed handle's slot: it is refused where it runs.
        await self._write_alone_then_forget(self._when_live(self._delete), self._forget_deleted)

    async def _write_alone_then_forget(
        self, delete: Callable[[WriteView], None], forget: Callable[[], None]
    ) -> None:
        """Run ``delete`` in a write transaction of its own, then ``forget`` what it deleted.

        ``forget`` runs whatever happens (LMDB closes a deleted database's
        handle at once, even if the transaction then fails), and a cancelled
        caller does not skip it: the work goes on without the caller.
        """

        async def delete_then_forget() -> None:
            try:
                await self.env.engine.write_alone(delete)
            finally:
                forget()

        await asyncio.shield(asyncio.ensure_future(delete_then_forget()))

    # What drop() does, as hooks: a collection empties and deletes its indexes
    # in the same transaction as its records.

    def _empty(self, view: WriteView) -> None:
        """Delete every record of this database."""
        view.clear(self._keyspace)

    def _delete(self, view: WriteView) -> None:
        """Delete this named database itself."""
        view.drop(self._keyspace)

    def _forget_deleted(self) -> None:
        """After :meth:`_delete` ran: its keyspace is never to be used again."""
        self.env.engine.forget_keyspace(self._keyspace)

    # -- arbitrary work --------------------------------------------------

    async def run(
        self,
        fn: Callable[[DatabaseTxn[K, V]], R],
        *,
        write: bool = False,
        txn: Transaction | None = None,
    ) -> R:
        """Run ``fn(txn)`` in one transaction on the right thread and return its result.

        ``txn`` is a :class:`DatabaseTxn`: coder-aware ``get``/``put``/``delete``/
        ``pop``/``replace``; on LMDB also ``cursor()``, ``id()`` and the raw
        ``lmdb.Transaction`` as ``txn.txn``. A read runs off the event loop; a
        write (``write=True``) runs in a write transaction of its own (LMDB:
        on the writer thread), or in the enclosing ``env.transaction()``,
        committed when ``fn`` returns and aborted when it raises. ``fn`` is
        called once.
        """
        if self._pending:
            await self._until_open(txn)
        ctx = self._resolve(txn)[1]

        def read(view: ReadView) -> R:
            return fn(DatabaseTxn(self, view, None))

        def call(view: WriteView) -> R:
            return fn(DatabaseTxn(self, view, view))

        if not write:
            return await self._read(read, ctx, offload=True)
        if ctx is not None:
            return await self._write(call, ctx, may_fail_midway=True)
        return await self.env.engine.write_alone(self._when_live(call))

    # -- queries ---------------------------------------------------------

    def items(
        self,
        start: K | None = None,
        stop: K | None = None,
        *,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[tuple[K, V]]:
        """Iterate over ``(key, value)`` pairs in key order.

        ``start`` is inclusive, ``stop`` exclusive; ``prefix`` keeps keys that
        start with it (a leading part of a tuple key, or of a string/bytes
        key). Bounds and prefixes need an ordered key coder. ``reverse``
        iterates from the highest key down; ``limit`` caps the count.

        Records are read in batches (the first small one on the event loop,
        later ones on a reader thread), so memory stays bounded and the loop
        keeps running. Each batch is read in a transaction of its own, and
        none is held open while your loop body runs: writes made meanwhile may
        show in later batches. For one consistent view of the whole scan,
        iterate inside ``env.transaction(write=False)``.
        """
        return self._scan(start, stop, prefix, reverse, limit, txn, as_stored, self._decode_item)

    def keys(
        self,
        start: K | None = None,
        stop: K | None = None,
        *,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[K]:
        """Iterate over keys in key order; same arguments as :meth:`items`."""
        return self._scan(
            start, stop, prefix, reverse, limit, txn, _key_only, lambda k, _: self._decode_key(k)
        )

    def values(
        self,
        start: K | None = None,
        stop: K | None = None,
        *,
        prefix: object = None,
        reverse: bool = False,
        limit: int | None = None,
        txn: Transaction | None = None,
    ) -> AsyncIterator[V]:
        """Iterate over values in key order; same arguments as :meth:`items`."""
        return self._scan(start, stop, prefix, reverse, limit, txn, as_stored, self._decode_value)

    async def first(self, *, txn: Transaction | None = None) -> tuple[K, V] | None:
        """The record with the lowest key, or None when the database is empty."""
        async for item in self.items(limit=1, txn=txn):
            return item
        return None

    async def last(self, *, txn: Transaction | None = None) -> tuple[K, V] | None:
        """The record with the highest key, or None when the database is empty."""
        async for item in self.items(limit=1, reverse=True, txn=txn):
            return item
        return None

    def _bounds(
        self, start: K | None, stop: K | None, prefix: object
    ) -> tuple[bytes | None, bytes | None]:
        if (start, stop, prefix) != (None, None, None):
            if not self.key_coder.ordered:
                raise UnorderedKeyError(
                    f"database {self._label}: range and prefix queries need an ordered key "
                    f"coder, and {self.key_coder!r} is not ordered (its byte order is not its "
                    "value order)"
                )
            if self._key_order is not KeyOrder.BYTES:
                # No coder's byte order is LMDB's order there: bounds would cut
                # LMDB's sequence at arbitrary places.
                raise UnorderedKeyError(
                    f"database {self._label}: range and prefix queries are not supported with "
                    f"{self._key_order.value}=True, where LMDB does not order keys by their "
                    "bytes (the order ordered coders keep); scan it whole (reverse= and "
                    "limit= work) or use a database without the flag"
                )
        low = None if start is None else self._encode_key(start)
        high = None if stop is None else self._encode_key(stop)
        if prefix is not None:
            try:
                raw_prefix = self.key_coder.serialize_prefix(prefix)
            except Exception as exc:
                raise EncodeError(
                    f"database {self._label}: cannot encode prefix {show(prefix)} "
                    f"({type(prefix).__name__}) with {self.key_coder!r}: {exc}"
                ) from exc
            if type(raw_prefix) is not bytes:
                raw_prefix = self._as_bytes(
                    raw_prefix, self.key_coder, f"prefix {show(prefix)}", prefix
                )
            low = raw_prefix if low is None else max(low, raw_prefix)
            end = prefix_end(raw_prefix)
            if end is not None:
                high = end if high is None else min(high, end)
        return low, high

    def _scan(
        self,
        start: K | None,
        stop: K | None,
        prefix: object,
        reverse: bool,
        limit: int | None,
        txn: Transaction | None,
        fetch: Fetch,
        decode: Callable[..., Any],
    ) -> AsyncIterator[Any]:
        low, high = self._bounds(start, stop, prefix)
        if self._pending:
            self._resolve(txn)  # what it refuses is refused at the call, as below
            return self._after_open(
                txn,
                lambda: self._scan(start, stop, prefix, reverse, limit, txn, fetch, decode),
            )
        keyspace, ctx = self._resolve(txn)
        return self._stream(ctx, keyspace, low, high, reverse, limit, lambda view: fetch, decode)

    def _stream(
        self,
        ctx: Transaction | None,
        keyspace: Keyspace,
        low: bytes | None,
        high: bytes | None,
        reverse: bool,
        limit: int | None,
        fetcher: Callable[[ReadView], Fetch],
        decode: Callable[[bytes, bytes], Any],
    ) -> AsyncIterator[Any]:
        """Records of ``keyspace`` in ``[low, high)``: fetched by ``fetcher``, decoded by
        ``decode``."""
        engine = self.env.engine

        async def decode_large(key: bytes, value: bytes) -> Any:
            return await engine.offload(decode, key, value)

        return scan(
            # Every batch is checked: a drop may happen between two of them.
            lambda fn, offload: self._read(fn, ctx, offload=offload),
            keyspace,
            low,
            high,
            reverse,
            limit,
            fetcher,
            decode,
            decode_large,
            # A value that may expand when decoded (decompressed) is small only if
            # its coder says it decodes within the limit.
            self._inline_limit // self.value_coder.max_expansion,
            self._decodes_inline,
            # A batch read ahead would miss the writes made while the one before is consumed.
            prefetch=ctx is None or not ctx.sees_own_writes,
        )


class DatabaseTxn(Generic[K, V]):
    """A database seen through one transaction, for :meth:`AsyncDatabase.run`.

    Its methods are synchronous: ``fn`` runs where the engine runs it (LMDB:
    a worker thread, or the writer thread), inside the transaction. Buffers
    do not escape: values are decoded before returning. ``txn``, ``cursor()``
    and ``id()`` are LMDB's (:class:`~aiolmdb.UnsupportedError` elsewhere).
    """

    def __init__(
        self, database: AsyncDatabase[K, V], view: ReadView, write: WriteView | None
    ) -> None:
        self.database = database
        self._view = view
        self._write = write  # None: a read-only run()

    @property
    def txn(self) -> lmdb.Transaction:
        """The raw ``lmdb.Transaction`` (LMDB only)."""
        self.database.env._lmdb_only("run()'s raw transaction (txn.txn)")
        return cast("LmdbReadView", self._view).txn

    def id(self) -> int:
        """LMDB's id of the transaction (LMDB only)."""
        return self.txn.id()

    def cursor(self) -> lmdb.Cursor:
        """A raw ``lmdb.Cursor`` on this database (raw bytes keys and values; LMDB only)."""
        return self.txn.cursor(self.database._keyspace.handle)

    def _writer(self) -> WriteView:
        if self._write is None:
            raise TransactionError(
                f"database {self.database._label}: run() was called without write=True, "
                "so its transaction is read-only"
            )
        return self._write

    @overload
    def get(self, key: K, default: None = None) -> V | None: ...

    @overload
    def get(self, key: K, default: D) -> V | D: ...

    def get(self, key: K, default: Any = None) -> Any:
        """The value under ``key``, or ``default``."""
        database = self.database
        raw_key = database._encode_key(key)
        buf = self._view.get(database._keyspace, raw_key)
        return default if buf is None else database._decode_value(raw_key, buf)

    def put(self, key: K, value: V, *, overwrite: bool = True) -> bool:
        """Store ``value`` under ``key``; False when ``overwrite=False`` and it exists."""
        raw_key = self.database._encode_key(key)
        raw_value = self.database._encode_value(key, value)
        return self.database._store(self._writer(), raw_key, raw_value, value, overwrite)

    def delete(self, key: K) -> bool:
        """Delete ``key``; returns whether it existed."""
        return self.database._remove(self._writer(), self.database._encode_key(key))

    @overload
    def pop(self, key: K, default: None = None) -> V | None: ...

    @overload
    def pop(self, key: K, default: D) -> V | D: ...

    def pop(self, key: K, default: Any = None) -> Any:
        """Delete ``key`` and return its value, or ``default``."""
        value = self.database._pop_raw(self._writer(), self.database._encode_key(key))
        return default if value is _MISSING else value

    def replace(self, key: K, value: V) -> V | None:
        """Store ``value`` under ``key``; return the previous value or None."""
        raw_key = self.database._encode_key(key)
        raw_value = self.database._encode_value(key, value)
        return self.database._replace_raw(self._writer(), raw_key, raw_value, value)


def _key_only(key: bytes, value: memoryview | bytes) -> tuple[bytes, memoryview | bytes]:
    """A :data:`Fetch` for key scans: the value is not copied."""
    return key, b""


def as_ints(stats: Mapping[str, object]) -> dict[str, int]:
    """LMDB's statistics dictionaries, typed as what they hold."""
    return {name: cast(int, value) for name, value in stats.items()}


def show(obj: object) -> str:
    """``repr(obj)``, shortened for error messages."""
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."
