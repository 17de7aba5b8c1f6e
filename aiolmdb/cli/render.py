"""Keys and values as the console shows them and reads them back.

With a collection, keys and values are the collection's own (decoded by its
coders) and are written as JSON: models through pydantic, tuples as arrays,
UUIDs and datetimes as their ISO strings. Without one they are bytes, written
as *escaped text*: printable ASCII stays as it is, a backslash is doubled and
every other byte is ``\\xNN`` (``b"user\\x00\\x01"`` shows as ``user\\x00\\x01``).
The escaping is reversible, so a dump of raw bytes loads back unchanged.
"""

from __future__ import annotations

import datetime
import json
import re
import uuid
from typing import Any

from pydantic_core import to_jsonable_python

from ..coders import (
    BytesCoder,
    Coder,
    DateTimeCoder,
    IdentityCoder,
    Int64Coder,
    PydanticCoder,
    StringCoder,
    TupleCoder,
    UInt16Coder,
    UInt32Coder,
    UInt64Coder,
    UUIDCoder,
)

__all__ = [
    "escape_bytes",
    "from_json",
    "parse_key",
    "to_json",
    "unescape_bytes",
]

_INT_CODERS = (UInt16Coder, UInt32Coder, UInt64Coder, Int64Coder)
_PRINTABLE = frozenset(range(0x20, 0x7F)) - {ord("\\")}
_ESCAPE = re.compile(r"\\(\\|x([0-9a-fA-F]{2}))")
_WELL_FORMED = re.compile(r"(?:[^\\]|\\\\|\\x[0-9a-fA-F]{2})*")


def escape_bytes(data: bytes | bytearray | memoryview) -> str:
    """``data`` as escaped text (see the module's documentation)."""
    out: list[str] = []
    for byte in bytes(data):
        if byte in _PRINTABLE:
            out.append(chr(byte))
        elif byte == ord("\\"):
            out.append("\\\\")
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unescape_bytes(text: str) -> bytes:
    """The bytes escaped text stands for; ``ValueError`` for text that is not escaped
    bytes (a lone backslash, a character outside printable ASCII)."""
    if not _WELL_FORMED.fullmatch(text) or any(not 0x20 <= ord(c) < 0x7F for c in text):
        raise ValueError(
            f"{text!r} is not escaped bytes: printable ASCII, with \\\\ for a backslash "
            "and \\xNN for any other byte"
        )

    def byte(match: re.Match[str]) -> str:
        return "\\" if match.group(2) is None else chr(int(match.group(2), 16))

    return _ESCAPE.sub(byte, text).encode("latin-1")


def _is_bytes_coder(coder: Coder[Any]) -> bool:
    return isinstance(coder, (IdentityCoder, BytesCoder))


def to_json(obj: Any, coder: Coder[Any]) -> Any:
    """``obj`` (decoded by ``coder``) as a JSON-ready value; bytes as escaped text."""
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return escape_bytes(obj)
    if isinstance(coder, TupleCoder) and isinstance(obj, tuple):
        return [to_json(part, inner) for part, inner in zip(obj, coder.coders, strict=False)]
    return to_jsonable_python(obj, fallback=repr)


def from_json(obj: Any, coder: Coder[Any], *, prefix: bool = False) -> Any:
    """The key or value that the JSON value ``obj`` stands for, for ``coder``.

    The inverse of :func:`to_json`; ``ValueError`` (or pydantic's
    ``ValidationError``, a ``ValueError``) when ``obj`` does not fit.
    ``prefix``: a leading part of a tuple key will do.
    """
    if _is_bytes_coder(coder):
        if not isinstance(obj, str):
            raise ValueError(f"expected escaped bytes (a JSON string), got {obj!r}")
        return unescape_bytes(obj)
    if isinstance(coder, PydanticCoder):
        return coder.model.model_validate(obj)
    if isinstance(coder, StringCoder):
        if not isinstance(obj, str):
            raise ValueError(f"expected a string, got {obj!r}")
        return obj
    if isinstance(coder, _INT_CODERS):
        if isinstance(obj, bool) or not isinstance(obj, int):
            raise ValueError(f"expected an integer, got {obj!r}")
        return obj
    if isinstance(coder, UUIDCoder):
        return uuid.UUID(str(obj))
    if isinstance(coder, DateTimeCoder):
        return datetime.datetime.fromisoformat(str(obj))
    if isinstance(coder, TupleCoder):
        size = len(coder.coders)
        if not isinstance(obj, list) or not (len(obj) <= size if prefix else len(obj) == size):
            wanted = f"at most {size}" if prefix else str(size)
            raise ValueError(f"expected an array of {wanted} elements, got {obj!r}")
        return tuple(from_json(part, inner) for part, inner in zip(obj, coder.coders, strict=False))
    return obj  # JSON, msgpack, pickle...: the JSON value itself


def parse_key(text: str, coder: Coder[Any], *, prefix: bool = False) -> Any:
    """A key given on the command line, for ``coder``.

    Bytes keys are escaped text; strings are taken as they are; integers,
    UUIDs and datetimes (ISO 8601) as written; a tuple key is a JSON array
    (``'["Oslo", 30]'``); any other coder's key is JSON. ``ValueError`` saying
    what was expected when ``text`` does not fit. ``prefix``: a leading part of a
    tuple key will do.
    """
    if _is_bytes_coder(coder):
        return unescape_bytes(text)
    if isinstance(coder, StringCoder):
        return text
    if isinstance(coder, _INT_CODERS):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer ({coder!r} keys are)") from None
    if isinstance(coder, (UUIDCoder, DateTimeCoder)):
        return from_json(text, coder)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        if isinstance(coder, TupleCoder):
            raise ValueError(
                f"{text!r} is not a JSON array ({coder!r} keys are tuples: write them as "
                "'[\"Oslo\", 30]')"
            ) from None
        return text
    return from_json(obj, coder, prefix=prefix)
