"""MessagePack value coder."""

from __future__ import annotations

from typing import Any

import msgpack

from .base import Buffer, Coder, decode_error, encode_error

__all__ = ["MsgpackCoder"]


class MsgpackCoder(Coder[Any]):
    """Stores values as MessagePack (``bytes`` as bin, ``str`` as UTF-8 str).

    Values come back as msgpack types: tuples become lists. Dict keys may be
    any hashable msgpack value (ints included). Not ordered.
    """

    def serialize(self, obj: Any) -> bytes:
        """Pack ``obj``."""
        try:
            return msgpack.packb(obj, use_bin_type=True)
        # msgpack documents that packing may raise any Exception (TypeError,
        # OverflowError, ValueError for too deep nesting...).
        except Exception as e:
            raise encode_error(self, obj, f"{type(e).__name__}: {e}") from None

    def deserialize(self, buf: Buffer) -> Any:
        """Unpack exactly one msgpack object from ``buf``."""
        try:
            return msgpack.unpackb(buf, raw=False, strict_map_key=False)
        # msgpack documents that unpacking may raise exceptions other than
        # its own (TypeError for an unhashable map key, ...).
        except Exception as e:
            raise decode_error(self, buf, f"{type(e).__name__}: {e}") from None
