"""Text coder."""

from __future__ import annotations

import codecs

from .base import Buffer, Coder, decode_error, encode_error

__all__ = ["StringCoder"]


class StringCoder(Coder[str]):
    """Stores ``str`` in the given text encoding (UTF-8 by default).

    Ordered only for UTF-8, whose byte order equals code point order; strings
    that the encoding cannot represent (for UTF-8: lone surrogates) raise
    :class:`~aiolmdb.errors.EncodeError`. Only UTF-8 supports prefix queries.
    """

    def __init__(self, encoding: str = "utf-8") -> None:
        """Use the text ``encoding``; raise ``LookupError`` if there is no such one."""
        # lookup() also accepts bytes-to-bytes codecs such as "base64";
        # str.encode() is what rejects those.
        "".encode(encoding)
        self.encoding = encoding
        self.ordered = codecs.lookup(encoding).name == "utf-8"

    def serialize(self, obj: str) -> bytes:
        """Encode ``obj`` in the coder's encoding."""
        if not isinstance(obj, str):
            raise encode_error(self, obj, "expected str")
        try:
            return obj.encode(self.encoding)
        except UnicodeError as e:
            raise encode_error(self, obj, str(e)) from None

    def deserialize(self, buf: Buffer) -> str:
        """Decode ``buf`` from the coder's encoding."""
        try:
            return str(buf, self.encoding)
        except UnicodeError as e:
            raise decode_error(self, buf, str(e)) from None

    def serialize_prefix(self, prefix: object) -> bytes:
        """Return the encoding of the str ``prefix`` (UTF-8 only)."""
        if not self.ordered:
            return super().serialize_prefix(prefix)
        if not isinstance(prefix, str):
            raise encode_error(self, prefix, "a prefix must be a str")
        return self.serialize(prefix)

    def __repr__(self) -> str:
        if self.encoding == "utf-8":
            return "StringCoder()"
        return f"StringCoder(encoding={self.encoding!r})"
