"""Fixed-width integer coders, big-endian so that byte order is numeric order."""

from __future__ import annotations

from .base import Buffer, Coder, decode_error, encode_error

__all__ = ["Int64Coder", "UInt16Coder", "UInt32Coder", "UInt64Coder"]


class _FixedIntCoder(Coder[int]):
    """Integers of ``width`` bytes, big-endian.

    Signed ones are biased by 2**(bits-1) (the same as flipping the sign bit
    of two's complement), which maps the range onto unsigned order.
    """

    ordered = True
    width: int
    signed: bool

    def __init__(self) -> None:
        """Derive the byte width and the range (``min``, ``max``) from the class."""
        self.fixed_width = self.width
        self._bias = 1 << (8 * self.width - 1) if self.signed else 0
        self.min = -self._bias
        self.max = (1 << (8 * self.width)) - 1 - self._bias

    def serialize(self, obj: int) -> bytes:
        """Encode ``obj`` in ``width`` big-endian bytes."""
        # bool is an int, but True stored as key 1 is almost always a bug.
        if type(obj) is not int and (not isinstance(obj, int) or isinstance(obj, bool)):
            raise encode_error(self, obj, "expected int")
        try:
            # The range check: to_bytes refuses a negative number or one too large.
            return (obj + self._bias).to_bytes(self.width, "big")
        except OverflowError:
            raise encode_error(self, obj, f"out of range {self.min}..{self.max}") from None

    def deserialize(self, buf: Buffer) -> int:
        """Decode exactly ``width`` big-endian bytes."""
        if len(buf) != self.width:
            raise decode_error(self, buf, f"expected {self.width} bytes")
        return int.from_bytes(buf, "big") - self._bias


class UInt16Coder(_FixedIntCoder):
    """Unsigned 16-bit integers (0..65535), 2 bytes big-endian; ordered."""

    width = 2
    signed = False


class UInt32Coder(_FixedIntCoder):
    """Unsigned 32-bit integers, 4 bytes big-endian; ordered."""

    width = 4
    signed = False


class UInt64Coder(_FixedIntCoder):
    """Unsigned 64-bit integers, 8 bytes big-endian; ordered."""

    width = 8
    signed = False


class Int64Coder(_FixedIntCoder):
    """Signed 64-bit integers, 8 bytes big-endian with the sign bit flipped; ordered."""

    width = 8
    signed = True
