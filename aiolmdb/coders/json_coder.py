"""JSON value coder."""

from __future__ import annotations

import json
from typing import Any

from .base import Buffer, Coder, decode_error, encode_error

__all__ = ["JSONCoder"]


class JSONCoder(Coder[Any]):
    """Stores JSON-serializable values as compact UTF-8 JSON.

    Values come back as JSON types: tuples become lists and non-str dict keys
    become strings. Not ordered.
    """

    def serialize(self, obj: Any) -> bytes:
        """Encode ``obj`` as compact JSON (non-ASCII characters kept as UTF-8)."""
        try:
            text = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
            return text.encode("utf-8")
        # TypeError: not serializable; ValueError: circular reference or a
        # lone surrogate; RecursionError: nesting deeper than the stack.
        except (TypeError, ValueError, RecursionError) as e:
            raise encode_error(self, obj, str(e)) from None

    def deserialize(self, buf: Buffer) -> Any:
        """Decode UTF-8 JSON."""
        try:
            # Decode UTF-8 ourselves: json.loads(bytes) would also guess
            # UTF-16 and UTF-32.
            return json.loads(str(buf, "utf-8"))
        except (ValueError, RecursionError) as e:
            raise decode_error(self, buf, str(e)) from None
