"""Raw bytes coders."""

from __future__ import annotations

from .base import Buffer, Coder, encode_error

__all__ = ["BytesCoder", "IdentityCoder"]


class IdentityCoder(Coder[bytes]):
    """Stores bytes as they are; the default coder of a database.

    Accepts ``bytes``, ``bytearray`` and ``memoryview``; always decodes to
    ``bytes``. Ordered: LMDB compares keys as bytes.
    """

    ordered = True

    def serialize(self, obj: bytes | bytearray | memoryview) -> bytes:
        """Return ``obj`` as ``bytes``."""
        if type(obj) is bytes:  # the common case, on every key and value: no copy
            return obj
        if not isinstance(obj, bytes | bytearray | memoryview):
            raise encode_error(self, obj, "expected bytes, bytearray or memoryview")
        return bytes(obj)

    def deserialize(self, buf: Buffer) -> bytes:
        """Return a copy of ``buf`` as ``bytes``."""
        return bytes(buf)

    def serialize_prefix(self, prefix: object) -> bytes:
        """Return the bytes prefix itself: byte keys starting with it share it."""
        if not isinstance(prefix, bytes | bytearray | memoryview):
            raise encode_error(self, prefix, "a prefix must be bytes, bytearray or memoryview")
        return bytes(prefix)


class BytesCoder(IdentityCoder):
    """Ordered bytes keys: exactly :class:`IdentityCoder` under the name users look for.

    It behaves the same in every way; pick whichever name reads better.
    """
