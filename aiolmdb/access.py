"""``DatabaseAccess``: how one database's calls reach the engine, checked on the way.

The typed API (:class:`~aiolmdb.AsyncDatabase`, collections, indexes) runs
its record logic through this: it finds the transaction a call joins, waits
for the database to be open, refuses a database that was dropped (before
the call, or while it ran), and sends reads and writes where the engine
runs them. Nothing here knows an engine.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from .codec import Codec
from .errors import DatabaseDroppedError, EncodeError, TransactionError
from .records import RecordLogic
from .scanning import Scan, scan
from .storage import Buffer, Keyspace, NotNowError, ReadView, WriteView

if TYPE_CHECKING:
    from .environment import AsyncEnvironment
    from .transaction import Transaction

__all__ = ["ENCODE_SLICE", "DatabaseAccess"]

R = TypeVar("R")
T = TypeVar("T")

#: Items encoded between two yields to the event loop by multi-key calls.
ENCODE_SLICE = 256
#: Reads done on the event loop (which never suspend) between two yields to other tasks.
INLINE_READS_PER_YIELD = 256

#: ``next()`` of it is True once every INLINE_READS_PER_YIELD reads done on the event
#: loop: such a read returns without suspending, so a loop of them would otherwise
#: starve every other task. Cheaper than a clock, and than a counter in Python.
yield_due = itertools.cycle([True] + [False] * (INLINE_READS_PER_YIELD - 1))

#: What a read made on the event loop gives for a value too large to decode there.
TOO_LARGE: Any = object()


class DatabaseAccess:
    """The checked path from one database's calls to its engine.

    ``kind`` is how messages name the database ("database", "collection").
    """

    def __init__(
        self,
        env: AsyncEnvironment,
        keyspace: Keyspace,
        codec: Codec[Any, Any],
        records: RecordLogic[Any],
        kind: str,
    ) -> None:
        self.env = env
        self.engine = env.engine
        self.context = env.transaction_context
        self.keyspace = keyspace
        self.codec = codec
        self.records = records
        self.kind = kind
        self.label = codec.label
        #: True until a call found the database open: calls wait for the engine to open it.
        self.pending = not keyspace.ready

    # -- where a call runs -------------------------------------------------

    def resolve(self, txn: Transaction | None) -> Transaction | None:
        """The transaction a call runs in (None: its own).

        Checks that the environment is open, that the database was not
        dropped, and that the transaction can see it.
        """
        if txn is None and not self.engine.closed and self.context.get() is None:
            context = None  # what transaction_for gives then, a call cheaper: the hot path
        else:
            context = self.env.transaction_for(txn)
        if self.keyspace.dropped:
            self.require_live()
        if context is not None and context.handles_known < self.keyspace.serial:
            raise TransactionError(
                f"{self.kind} {self.label} was opened after this transaction began, so the "
                "transaction cannot see it: open databases before env.transaction()"
            )
        return context

    def in_write_transaction(self, txn: Transaction | None = None) -> bool:
        """Whether a call made now (in this task, or with ``txn``) joins a write transaction."""
        context = self.resolve(txn)
        return context is not None and context.sees_own_writes

    async def until_open(self, txn: Transaction | None) -> None:
        """Wait for the engine to open the database (raises what its open raised).

        A transaction that cannot see the database is refused first: the
        open may be queued behind that very transaction.
        """
        self.resolve(txn)
        await self.keyspace.wait()
        await self.records.ready()
        self.check_open()
        self.pending = False

    def check_open(self) -> None:
        """Raise what opening the database raised, if it failed."""
        self.keyspace.check()
        self.records.check_ready()

    def when_open(
        self, txn: Transaction | None, stream: Callable[[Transaction | None], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        """``stream(ctx)``, ``ctx`` the transaction the call joins, made once the database
        is open.

        What that transaction refuses is refused here, at the call, open or not.
        """
        ctx = self.resolve(txn)
        if not self.pending:
            return stream(ctx)
        return self._after_open(txn, stream)

    async def _after_open(
        self, txn: Transaction | None, stream: Callable[[Transaction | None], AsyncIterator[T]]
    ) -> AsyncIterator[T]:
        await self.until_open(txn)
        async for item in stream(self.resolve(txn)):
            yield item

    def require_live(self) -> None:
        """Raise :class:`DatabaseDroppedError` if the database was deleted."""
        if self.keyspace.dropped:
            raise DatabaseDroppedError(
                f"{self.kind} {self.label} was dropped (drop(delete=True)) before or while "
                "this call ran: open it again to recreate it"
            )

    # -- reads -------------------------------------------------------------

    async def read(
        self, fn: Callable[[ReadView], R], ctx: Transaction | None, *, offload: bool = False
    ) -> R:
        """``fn(view)`` in ``ctx``, else in a read of its own: inline, or off the loop.

        Refused if the database is dropped before or while it runs: the check
        is made again after ``fn``, for a read off the loop may overlap a drop
        (after which LMDB gives the freed handle's slot to the next database
        opened, and ``fn`` may have read that one). A read done on the event
        loop (of its own, or in a read snapshot) now and then lets other tasks run.
        """

        checked = self.live(fn)
        engine = self.engine
        if engine.closed:  # a scan may outlive its environment (or its transaction)
            engine.check()
        if ctx is not None:
            # A read in a pessimistic write transaction suspends anyway: the engine runs it.
            if not offload and ctx.reads_inline and next(yield_due):
                await asyncio.sleep(0)
            result: R = await ctx.run_read(checked, offload=offload)
            return result
        if not offload:
            if next(yield_due):
                await asyncio.sleep(0)
            try:
                return engine.read_now(checked)
            except NotNowError:
                pass  # off the loop, where it may wait
        return await engine.read(checked, offload=True)

    async def read_keys(
        self,
        keys: list[bytes],
        decode: Callable[[list[Buffer | None]], R],
        ctx: Transaction | None,
        *,
        inline: bool = True,
    ) -> R:
        """``decode(values)`` of the values of ``keys`` (None for a missing one), in ``ctx``
        or else in a read of its own: on the event loop when ``inline`` and the engine
        can, else the engine's cheapest point read (one statement on a networked engine).
        """
        keyspace = self.keyspace

        def read(view: ReadView) -> R:
            return decode(view.get_many(keyspace, keys))

        if ctx is not None or self.engine.closed:
            return await self.read(read, ctx, offload=not inline)
        if inline:
            if next(yield_due):
                await asyncio.sleep(0)
            try:
                return self.engine.read_now(self.live(read))
            except NotNowError:
                pass  # the engine's own point read, which may wait

        def checked(values: list[Buffer | None]) -> R:
            self.require_live()
            return decode(values)

        return await self.engine.read_keys(keyspace, keys, checked)

    def live(self, fn: Callable[[ReadView], R]) -> Callable[[ReadView], R]:
        """``fn``, refused if the database is dropped before or while it runs."""

        def checked(view: ReadView) -> R:
            self.require_live()
            result = fn(view)
            self.require_live()
            return result

        return checked

    async def read_small_inline(
        self, read: Callable[[ReadView, bool], R], ctx: Transaction | None
    ) -> R:
        """``read(view, True)`` on the event loop, or, if it gives :data:`TOO_LARGE` (a value
        too large to decode there), ``read(view, False)`` off the loop.
        """
        result = await self.read(lambda view: read(view, True), ctx)
        if result is TOO_LARGE:
            result = await self.read(lambda view: read(view, False), ctx, offload=True)
        return result

    def stream(self, spec: Scan, ctx: Transaction | None) -> AsyncIterator[Any]:
        """The results of the scan ``spec``, batch by batch (each batch checked for drops)."""
        engine, coder = self.engine, self.codec.value_coder

        async def decode_large(key: bytes, value: bytes) -> Any:
            return await engine.offload(spec.decode, key, value)

        return scan(
            spec,
            lambda fn, offload: self.read(fn, ctx, offload=offload),
            decode_large,
            self.codec.decodes_inline,
            # A value that may expand when decoded (decompressed) is small only if
            # its coder says it decodes within the limit.
            small=self.codec.inline_value_limit // coder.max_expansion,
            # A batch read ahead would miss the writes made while the one before is consumed.
            prefetch=ctx is None or not ctx.sees_own_writes,
        )

    # -- writes ------------------------------------------------------------

    def write(
        self,
        fn: Callable[[WriteView], R],
        ctx: Transaction | None,
        *,
        may_fail_midway: bool = False,
    ) -> Awaitable[R]:
        """Run ``fn(view)`` in ``ctx``, else in the engine's next group commit.

        Refused if the database was dropped when it runs (see :meth:`when_live`).
        A group commit that a call fails is aborted and replayed without it,
        so the call leaves nothing behind. In a transaction, a call that may
        fail after writing part of its work (``may_fail_midway``) runs in a
        savepoint of its own for the same effect; the others do not pay for
        one (LMDB copies every page a nested transaction touches). Not a
        coroutine: outside a transaction the caller awaits the engine's
        awaitable directly.
        """
        checked = self.when_live(fn)
        if ctx is None:
            return self.engine.write(checked)
        if self.engine.closed:  # the caller may have yielded since it found its transaction
            self.engine.check()
        if may_fail_midway:
            return ctx.run_write(lambda view: view.atomically(checked))
        return ctx.run_write(checked)

    async def write_alone(self, fn: Callable[[WriteView], R]) -> R:
        """Run ``fn(view)`` in a write transaction of its own (checked like :meth:`write`)."""
        return await self.engine.write_alone(self.when_live(fn))

    def when_live(self, fn: Callable[[WriteView], R]) -> Callable[[WriteView], R]:
        """``fn``, checking first, where it runs, that the database was not dropped.

        A write queued behind a drop of its database passed the check made
        when it was called; where it runs (after the drop) it would write
        through the freed handle, into whichever database took its slot. A
        write on a database still being opened is queued at once, behind its
        opening (so that it is applied in order, and ``close()`` finishes
        it): the open's outcome is checked where the write runs.
        """
        if self.pending:
            keyspace = self.keyspace
            # integerkey: the size the keys were checked against before the open
            # learnt the size of the keys stored.
            key_size = keyspace.key_size

            def adopting(view: WriteView) -> R:
                self.check_open()  # raises what the open raised
                self.require_live()
                if self.codec.integer_keys and key_size != keyspace.key_size:
                    raise EncodeError(
                        f"database {self.label}: this write's keys are {key_size} bytes, "
                        f"and the keys stored are {keyspace.key_size} bytes; an integerkey "
                        "database needs keys of one size"
                    )
                return fn(view)

            return adopting

        def checked(view: WriteView) -> R:
            self.require_live()
            return fn(view)

        return checked

    async def write_alone_then_forget(
        self, delete: Callable[[WriteView], None], forget: Callable[[], None]
    ) -> None:
        """Run ``delete`` in a write transaction of its own, then ``forget`` what it deleted.

        ``forget`` runs whatever happens (LMDB closes a deleted database's
        handle at once, even if the transaction then fails), and a cancelled
        caller does not skip it: the work goes on without the caller.
        """

        async def delete_then_forget() -> None:
            try:
                await self.engine.write_alone(delete)
            finally:
                forget()

        await asyncio.shield(asyncio.ensure_future(delete_then_forget()))

    async def encode_many(self, encode: Callable[[T], R], items: list[T]) -> list[R]:
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
