"""Coders: turn keys and values into bytes and back.

Ordered coders (byte order equals value order) can be used as keys for range
and prefix queries: :class:`IdentityCoder`/:class:`BytesCoder`,
:class:`StringCoder` (UTF-8), the integer coders, :class:`UUIDCoder`,
:class:`DateTimeCoder` and :class:`TupleCoder` of those.
"""

from .base import Buffer, Coder, CompressedCoder
from .bytes_coder import BytesCoder, IdentityCoder
from .datetime_coder import DateTimeCoder
from .int_coder import Int64Coder, UInt16Coder, UInt32Coder, UInt64Coder
from .json_coder import JSONCoder
from .msgpack_coder import MsgpackCoder
from .pickle_coder import PickleCoder
from .pydantic_coder import PydanticCoder
from .string_coder import StringCoder
from .tuple_coder import TupleCoder
from .uuid_coder import UUIDCoder

__all__ = [
    "Buffer",
    "BytesCoder",
    "Coder",
    "CompressedCoder",
    "DateTimeCoder",
    "IdentityCoder",
    "Int64Coder",
    "JSONCoder",
    "MsgpackCoder",
    "PickleCoder",
    "PydanticCoder",
    "StringCoder",
    "TupleCoder",
    "UInt16Coder",
    "UInt32Coder",
    "UInt64Coder",
    "UUIDCoder",
]
