"""``Codec``: how one database turns keys and values into bytes and back, naming it in errors."""

from __future__ import annotations

import enum
from typing import Any, Generic, TypeVar

from .coders import Coder, IdentityCoder
from .errors import DecodeError, EncodeError, UnorderedKeyError
from .scanning import prefix_end
from .storage import Buffer, Keyspace

__all__ = ["INTEGER_KEY_SIZES", "Codec", "KeyOrder", "show"]

K = TypeVar("K")
V = TypeVar("V")

#: The sizes LMDB's integerkey databases compare keys as (native unsigned int, size_t).
INTEGER_KEY_SIZES = (4, 8)


class KeyOrder(enum.Enum):
    """How the engine orders a database's keys (LMDB's ``integerkey``/``reverse_key`` flags)."""

    #: Byte by byte, as ordered key coders assume: ranges and prefixes work.
    BYTES = "bytes"
    #: As native unsigned integers of 4 or 8 bytes, every key one size.
    INTEGER = "integerkey"
    #: Byte by byte from the last byte.
    REVERSE = "reverse_key"


def show(obj: object) -> str:
    """``repr(obj)``, shortened for error messages."""
    text = repr(obj)
    return text if len(text) <= 80 else text[:77] + "..."


class Codec(Generic[K, V]):
    """A database's key and value coders, applied with errors that name the database.

    Every error names the database (``label``), the coder, the key and the
    type of the object at fault; nothing is written when encoding fails.
    ``key_coder`` and ``value_coder`` may be reassigned.
    """

    def __init__(
        self,
        label: str,
        key_coder: Coder[K],
        value_coder: Coder[V],
        keyspace: Keyspace,
        *,
        max_key_size: int,
        inline_value_limit: int,
    ) -> None:
        #: How messages name the database.
        self.label = label
        self.key_coder = key_coder
        self.value_coder = value_coder
        self.keyspace = keyspace
        self.max_key_size = max_key_size
        #: Values that decode to at most this many bytes may be decoded on the event loop.
        self.inline_value_limit = inline_value_limit
        self.key_order = (
            KeyOrder.INTEGER
            if keyspace.integer_keys
            else KeyOrder.REVERSE
            if keyspace.reverse_keys
            else KeyOrder.BYTES
        )
        # Checked for every key: a bool costs less than comparing enum members.
        self.integer_keys = self.key_order is KeyOrder.INTEGER

    # -- encoding --------------------------------------------------------

    def encode_key(self, key: K) -> bytes:
        """The stored bytes of ``key`` (EncodeError when it cannot be stored)."""
        if type(key) is bytes and type(self.key_coder) is IdentityCoder:
            # What its serialize gives, a call cheaper on the hottest path (mypy does
            # not narrow K by the type test).
            raw: bytes = key  # type: ignore[assignment]
        else:
            try:
                raw = self.key_coder.serialize(key)
            except Exception as exc:
                raise EncodeError(
                    f"database {self.label}: cannot encode key {show(key)} "
                    f"({type(key).__name__}) with {self.key_coder!r}: {exc}"
                ) from exc
            if type(raw) is not bytes:
                raw = self._as_bytes(raw, self.key_coder, f"key {show(key)}", key)
        if not raw:
            raise EncodeError(
                f"database {self.label}: key {show(key)} ({type(key).__name__}) encodes to "
                f"empty bytes with {self.key_coder!r}; empty keys cannot be stored"
            )
        if len(raw) > self.max_key_size:
            raise EncodeError(
                f"database {self.label}: key {show(key)} ({type(key).__name__}) encodes to "
                f"{len(raw)} bytes with {self.key_coder!r}; the limit is {self.max_key_size}"
            )
        if self.integer_keys and len(raw) != self.keyspace.key_size:
            self._check_integer_key(raw, key)
        return raw

    def _check_integer_key(self, raw: bytes, key: K) -> None:
        """Refuse a key LMDB cannot compare in an integerkey database.

        LMDB reads such keys as native unsigned ints of 4 or 8 bytes, taking
        the size from one of the two keys compared: other sizes, or keys of
        both sizes in one database, are silently misordered.
        """
        expected = self.keyspace.key_size
        if len(raw) not in INTEGER_KEY_SIZES or expected is not None:
            rule = (
                "keys of 4 or 8 bytes"
                if expected is None
                else f"keys of one size, and its keys are {expected} bytes"
            )
            raise EncodeError(
                f"database {self.label}: key {show(key)} ({type(key).__name__}) encodes to "
                f"{len(raw)} bytes with {self.key_coder!r}; an integerkey database needs {rule}"
            )
        self.keyspace.key_size = len(raw)

    def encode_value(self, key: K, value: V) -> bytes:
        """The stored bytes of ``value``, to be stored under ``key``."""
        try:
            raw = self.value_coder.serialize(value)
        except Exception as exc:
            raise EncodeError(
                f"database {self.label}: cannot encode the value for key {show(key)} "
                f"({type(value).__name__}) with {self.value_coder!r}: {exc}"
            ) from exc
        if type(raw) is not bytes:
            raw = self._as_bytes(raw, self.value_coder, f"the value for key {show(key)}", value)
        return raw

    def encode_item(self, item: tuple[K, V]) -> tuple[bytes, bytes]:
        """The stored bytes of a ``(key, value)`` pair."""
        key, value = item
        raw_key = self.encode_key(key)
        raw_value = self.encode_value(key, value)
        # Bytes stored as they are need no new tuple (fewer objects, less GC).
        return item if raw_key is key and raw_value is value else (raw_key, raw_value)  # type: ignore[return-value]

    def encode_prefix(self, prefix: object) -> bytes:
        """The stored bytes every key starting with ``prefix`` starts with."""
        try:
            raw = self.key_coder.serialize_prefix(prefix)
        except Exception as exc:
            raise EncodeError(
                f"database {self.label}: cannot encode prefix {show(prefix)} "
                f"({type(prefix).__name__}) with {self.key_coder!r}: {exc}"
            ) from exc
        if type(raw) is not bytes:
            raw = self._as_bytes(raw, self.key_coder, f"prefix {show(prefix)}", prefix)
        return raw

    def _as_bytes(self, raw: object, coder: Coder[Any], what: str, obj: object) -> bytes:
        """What ``coder`` returned for ``obj`` as bytes, or EncodeError unless it is a buffer.

        An engine would store None as empty bytes, or fail on other types
        with an error naming neither the database nor the coder.
        """
        if isinstance(raw, (bytearray, memoryview, bytes)):
            return bytes(raw)
        raise EncodeError(
            f"database {self.label}: {coder!r} returned {type(raw).__name__} for {what} "
            f"({type(obj).__name__}); a coder must return bytes (or a bytearray or memoryview)"
        )

    def key_range(
        self, start: K | None, stop: K | None, prefix: object
    ) -> tuple[bytes | None, bytes | None]:
        """The stored-key range ``[low, high)`` of ``start``, ``stop`` and ``prefix``."""
        if (start, stop, prefix) != (None, None, None):
            if not self.key_coder.ordered:
                raise UnorderedKeyError(
                    f"database {self.label}: range and prefix queries need an ordered key "
                    f"coder, and {self.key_coder!r} is not ordered (its byte order is not its "
                    "value order)"
                )
            if self.key_order is not KeyOrder.BYTES:
                # No coder's byte order is LMDB's order there: bounds would cut
                # LMDB's sequence at arbitrary places.
                raise UnorderedKeyError(
                    f"database {self.label}: range and prefix queries are not supported with "
                    f"{self.key_order.value}=True, where LMDB does not order keys by their "
                    "bytes (the order ordered coders keep); scan it whole (reverse= and "
                    "limit= work) or use a database without the flag"
                )
        low = None if start is None else self.encode_key(start)
        high = None if stop is None else self.encode_key(stop)
        if prefix is not None:
            raw_prefix = self.encode_prefix(prefix)
            low = raw_prefix if low is None else max(low, raw_prefix)
            end = prefix_end(raw_prefix)
            if end is not None:
                high = end if high is None else min(high, end)
        return low, high

    # -- decoding --------------------------------------------------------

    def decode_value(self, raw_key: Buffer, buf: Buffer) -> V:
        """The value stored as ``buf`` under ``raw_key`` (DecodeError naming the key)."""
        try:
            return self.value_coder.deserialize(buf)
        except Exception as exc:
            raise self.value_error(raw_key, exc) from exc

    def value_error(self, raw_key: Buffer, exc: Exception) -> DecodeError:
        """The error of a value stored under ``raw_key`` that the value coder could not
        decode (it raised ``exc``)."""
        return DecodeError(
            f"database {self.label}: cannot decode the value of key "
            f"{self.show_key(raw_key)} with {self.value_coder!r}: {exc}"
        )

    def decode_key(self, raw_key: Buffer) -> K:
        """The key stored as ``raw_key``."""
        try:
            return self.key_coder.deserialize(raw_key)
        except Exception as exc:
            raise DecodeError(
                f"database {self.label}: cannot decode key {bytes(raw_key)!r} "
                f"with {self.key_coder!r}: {exc}"
            ) from exc

    def decode_item(self, raw_key: bytes, raw_value: bytes) -> tuple[K, V]:
        """The ``(key, value)`` pair stored as ``raw_key``, ``raw_value``."""
        return self.decode_key(raw_key), self.decode_value(raw_key, raw_value)

    def decode_key_of(self, raw_key: bytes, _: bytes) -> K:
        """:meth:`decode_key`, shaped as a record decoder (for key scans)."""
        return self.decode_key(raw_key)

    def show_key(self, raw_key: Buffer) -> str:
        """A stored key as messages show it: decoded if it decodes, else its bytes."""
        try:
            return show(self.key_coder.deserialize(raw_key))
        except Exception:
            return repr(bytes(raw_key))

    def decodes_inline(self, buf: Buffer) -> bool:
        """True when the value ``buf`` may be decoded on the event loop.

        Its stored size bounds what the value coder may produce (see
        ``Coder.max_expansion``); beyond that bound the coder is asked about
        this value (``Coder.decodes_within``: a small compressed value).
        """
        coder, limit = self.value_coder, self.inline_value_limit
        return len(buf) * coder.max_expansion <= limit or coder.decodes_within(buf, limit)
