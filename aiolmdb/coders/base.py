"""The ``Coder`` protocol every key and value coder implements.

Besides :meth:`Coder.serialize` and :meth:`Coder.deserialize`, an ordered
coder takes part in composite keys (:class:`~aiolmdb.coders.TupleCoder`)
through the element protocol:

- :attr:`Coder.fixed_width`: the length of every encoding when it is constant;
- :meth:`Coder.encode_element` / :meth:`Coder.decode_element`: a
  self-delimiting, order-preserving encoding of one element of a tuple.

The defaults work for any ordered coder: a fixed-width encoding is used as
is, any other one is escaped and terminated (see :func:`escape_element`).
"""

from __future__ import annotations

import reprlib
import zlib
from abc import ABC, abstractmethod
from typing import Generic, TypeVar

from ..errors import DecodeError, EncodeError

__all__ = ["Buffer", "Coder", "CompressedCoder"]

T = TypeVar("T")

#: What a coder receives to decode: a memoryview into LMDB's map (valid only
#: for the duration of the ``deserialize`` call) or plain bytes.
Buffer = bytes | memoryview

_ESCAPE = b"\x00\xff"
_TERMINATOR = b"\x00\x00"

#: The largest ratio of decompressed to compressed size zlib's format allows.
ZLIB_MAX_EXPANSION = 1032

_short_repr = reprlib.Repr()
_short_repr.maxstring = 60
_short_repr.maxother = 100


def encode_error(coder: object, obj: object, reason: str) -> EncodeError:
    """Build the :class:`EncodeError` of ``coder`` failing on ``obj``."""
    return EncodeError(
        f"{coder!r} cannot encode {_short_repr.repr(obj)} ({type(obj).__name__}): {reason}"
    )


def decode_error(coder: object, buf: Buffer, reason: str) -> DecodeError:
    """Build the :class:`DecodeError` of ``coder`` failing on ``buf``."""
    head = bytes(buf[:16])
    more = "..." if len(buf) > 16 else ""
    return DecodeError(f"{coder!r} cannot decode {head!r}{more} ({len(buf)} bytes): {reason}")


def escape_element(data: bytes) -> bytes:
    """Make ``data`` self-delimiting while keeping byte order.

    Every 0x00 becomes 0x00 0xFF and the result ends with 0x00 0x00. For
    ``x < y`` the encodings differ at a position inside both of them, so
    whatever follows either one cannot change the comparison:

    - ``x`` a proper prefix of ``y``: where ``x`` ends with 0x00 0x00, ``y``
      has either a byte above 0x00, or 0x00 0xFF (an escaped zero);
    - first difference ``x[i] < y[i]``: the common part is escaped alike,
      and the encodings of ``x[i]`` and ``y[i]`` start with ``x[i]`` and
      ``y[i]`` themselves (an escaped zero starts with 0x00).

    A bare 0x00 terminator would not do: ``b""`` then an element starting
    with 0xFF would read back as ``b"\\x00"``.
    """
    return data.replace(b"\x00", _ESCAPE) + _TERMINATOR


def unescape_element(buf: bytes, offset: int) -> tuple[bytes, int]:
    """Undo :func:`escape_element` from ``offset``; return the data and the end offset.

    Raises ``ValueError`` when the bytes are not a valid escaped element.
    """
    parts: list[bytes] = []
    pos = offset
    while True:
        zero = buf.find(b"\x00", pos)
        if zero < 0 or zero + 1 >= len(buf):
            raise ValueError(f"unterminated element at offset {offset}")
        parts.append(buf[pos:zero])
        marker = buf[zero + 1]
        if marker == 0x00:
            return b"".join(parts), zero + 2
        if marker != 0xFF:
            raise ValueError(f"invalid escape 0x00 0x{marker:02x} at offset {zero}")
        parts.append(b"\x00")
        pos = zero + 2


class Coder(ABC, Generic[T]):
    """Turns objects of type ``T`` into bytes and back.

    Subclass it and implement :meth:`serialize` and :meth:`deserialize` to
    write a custom coder. A coder must be pure (no I/O) and thread-safe: the
    engine may call it from a worker thread.

    A coder whose :attr:`ordered` is true promises that the byte order of
    encoded values equals the natural order of the values themselves; range
    and prefix queries are only allowed on databases whose key coder is
    ordered. An ordered coder can also be an element of a
    :class:`~aiolmdb.coders.TupleCoder`; set :attr:`fixed_width` when every
    encoding has the same length, so that tuples store it without escaping.
    """

    #: True when ``a < b`` if and only if ``serialize(a) < serialize(b)``.
    ordered: bool = False

    #: The length of every encoding when it is constant, else ``None``.
    fixed_width: int | None = None

    #: How many times its stored size a decoded value may be, at most. The
    #: engine decodes a value on the event loop when its stored size times
    #: this stays within the environment's ``inline_value_limit``, or else
    #: when :meth:`decodes_within` says this value does; a coder whose input
    #: can expand a lot (decompression) raises it.
    max_expansion: int = 1

    @abstractmethod
    def serialize(self, obj: T) -> bytes:
        """Encode ``obj``; raise :class:`EncodeError` (a ``TypeError``) if it cannot be.

        Custom coders may raise a plain ``TypeError`` or ``ValueError``.
        """

    @abstractmethod
    def deserialize(self, buf: Buffer) -> T:
        """Decode ``buf``, which must not be kept: copy what outlives the call.

        Raise :class:`DecodeError` (a ``ValueError``) for bytes that cannot be
        decoded.
        """

    def decodes_within(self, buf: Buffer, limit: int) -> bool:
        """True when decoding ``buf`` is known to handle at most ``limit`` bytes.

        The engine asks this (on the event loop, while ``buf`` is valid) of
        a value too large for :attr:`max_expansion`'s bound, to decide
        whether to decode it on the loop anyway; False sends it to a worker
        thread. It must be much cheaper than decoding a large value. The
        default trusts :attr:`max_expansion`; a coder that can tell the
        decoded size from the bytes (a decompressor) overrides it.
        """
        return len(buf) * self.max_expansion <= limit

    def serialize_prefix(self, prefix: object) -> bytes:
        """Return the bytes every key "starting with" ``prefix`` starts with.

        Coders that support prefix queries override this; the default raises
        ``TypeError``.
        """
        raise TypeError(f"{self!r} does not support prefix queries")

    def encode_element(self, obj: T) -> bytes:
        """Encode ``obj`` as one element of a tuple key.

        The result is self-delimiting (:meth:`decode_element` finds its end
        without knowing what follows) and order-preserving whatever follows
        it. The default uses :meth:`serialize` as is for a fixed-width coder
        and escapes it (:func:`escape_element`) otherwise.
        """
        data = self.serialize(obj)
        if self.fixed_width is None:
            return escape_element(data)
        if len(data) != self.fixed_width:
            raise encode_error(
                self, obj, f"encoded to {len(data)} bytes, fixed_width is {self.fixed_width}"
            )
        return data

    def decode_element(self, buf: bytes, offset: int) -> tuple[T, int]:
        """Decode the element starting at ``offset``; return it and the offset after it.

        Raise :class:`DecodeError` when the bytes there are not a valid element.
        """
        if self.fixed_width is None:
            try:
                data, end = unescape_element(buf, offset)
            except ValueError as e:
                raise decode_error(self, buf[offset:], str(e)) from None
        else:
            end = offset + self.fixed_width
            if end > len(buf):
                raise decode_error(
                    self, buf[offset:], f"need {self.fixed_width} bytes at offset {offset}"
                )
            data = buf[offset:end]
        return self.deserialize(data), end

    def compressed(self, level: int = 6) -> Coder[T]:
        """Return a coder of the same type that zlib-compresses this coder's output."""
        return CompressedCoder(self, level=level)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CompressedCoder(Coder[T]):
    """Wraps another coder, compressing its bytes with zlib.

    Compression destroys byte order, so a compressed coder is never ordered.
    zlib does not record the decompressed size, so :attr:`max_expansion` is
    zlib's worst case, and :meth:`decodes_within` decompresses up to the
    limit to find out.
    """

    def __init__(self, inner: Coder[T], level: int = 6) -> None:
        """Wrap ``inner``; ``level`` is zlib's: 0 (none) to 9 (smallest), -1 for its default."""
        if isinstance(level, bool) or not isinstance(level, int):
            raise TypeError(f"zlib compression level must be an int, got {level!r}")
        if not -1 <= level <= 9:
            raise ValueError(f"zlib compression level must be -1..9, got {level!r}")
        self.inner = inner
        self.level = level
        self.max_expansion = ZLIB_MAX_EXPANSION * inner.max_expansion

    def serialize(self, obj: T) -> bytes:
        """Encode ``obj`` with the inner coder and compress the result."""
        return zlib.compress(self.inner.serialize(obj), self.level)

    def deserialize(self, buf: Buffer) -> T:
        """Decompress ``buf`` and decode it with the inner coder."""
        try:
            data = zlib.decompress(buf)
        except zlib.error as e:
            raise decode_error(self, buf, f"bad zlib data: {e}") from None
        return self.inner.deserialize(data)

    def decodes_within(self, buf: Buffer, limit: int) -> bool:
        """True when ``buf`` decompresses within ``limit`` bytes, and the inner coder agrees.

        Decompresses no more than ``limit + 1`` bytes. Bytes that are not
        complete zlib data are not known to fit (decoding them raises).
        """
        inflater = zlib.decompressobj()
        try:
            data = inflater.decompress(buf, limit + 1)
        except zlib.error:
            return False
        # eof: the stream ended within max_length (not cut short by it, nor truncated).
        return inflater.eof and len(data) <= limit and self.inner.decodes_within(data, limit)

    def __repr__(self) -> str:
        return f"{self.inner!r}.compressed(level={self.level})"
