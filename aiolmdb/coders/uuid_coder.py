"""UUID coder."""

from __future__ import annotations

import uuid

from .base import Buffer, Coder, decode_error, encode_error

__all__ = ["UUIDCoder"]


class UUIDCoder(Coder[uuid.UUID]):
    """Stores a :class:`uuid.UUID` as its 16 big-endian bytes.

    Ordered: ``UUID`` compares by ``.int``, and ``.bytes`` is that integer
    big-endian.
    """

    ordered = True
    fixed_width = 16

    def serialize(self, obj: uuid.UUID) -> bytes:
        """Return the 16 bytes of ``obj``."""
        if not isinstance(obj, uuid.UUID):
            raise encode_error(self, obj, "expected uuid.UUID")
        return obj.bytes

    def deserialize(self, buf: Buffer) -> uuid.UUID:
        """Decode exactly 16 bytes."""
        if len(buf) != 16:
            raise decode_error(self, buf, "expected 16 bytes")
        return uuid.UUID(bytes=bytes(buf))
