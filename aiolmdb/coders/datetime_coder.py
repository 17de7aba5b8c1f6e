"""Timezone-aware datetime coder."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from .base import Buffer, Coder, decode_error, encode_error
from .int_coder import Int64Coder

__all__ = ["DateTimeCoder"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)
_INT64 = Int64Coder()


class DateTimeCoder(Coder[datetime]):
    """Stores an aware datetime as UTC microseconds since the epoch.

    The count is an :class:`Int64Coder` integer (8 bytes, big-endian, sign bit
    flipped), so byte order is chronological order. Decoding gives an aware
    UTC datetime equal to the one stored (the original time zone is not
    kept). Naive datetimes are rejected: their instant is ambiguous.
    """

    ordered = True
    fixed_width = 8

    def serialize(self, obj: datetime) -> bytes:
        """Encode the instant of the aware datetime ``obj``."""
        if not isinstance(obj, datetime):
            raise encode_error(self, obj, "expected datetime.datetime")
        if obj.utcoffset() is None:
            raise encode_error(
                self, obj, "naive datetime; attach a tzinfo (e.g. tzinfo=timezone.utc)"
            )
        try:
            # Must be representable in UTC, or it would not decode.
            utc = obj.astimezone(timezone.utc)
        except OverflowError:
            raise encode_error(self, obj, "outside the UTC datetime range") from None
        return _INT64.serialize((utc - _EPOCH) // _MICROSECOND)

    def deserialize(self, buf: Buffer) -> datetime:
        """Decode 8 bytes into an aware UTC datetime."""
        if len(buf) != 8:
            raise decode_error(self, buf, "expected 8 bytes")
        try:
            return _EPOCH + _INT64.deserialize(buf) * _MICROSECOND
        except OverflowError:
            raise decode_error(self, buf, "outside the datetime range") from None
