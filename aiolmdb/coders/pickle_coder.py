"""Pickle value coder."""

from __future__ import annotations

import pickle
from typing import Any

from .base import Buffer, Coder, decode_error, encode_error

__all__ = ["PickleCoder"]


class PickleCoder(Coder[Any]):
    """Stores any picklable object with :mod:`pickle`.

    .. warning:: Unpickling runs arbitrary code chosen by whoever wrote the
       bytes. Only use this coder on databases no untrusted party can write.

    ``protocol`` defaults to :data:`pickle.HIGHEST_PROTOCOL`. Not ordered.
    """

    def __init__(self, protocol: int = pickle.HIGHEST_PROTOCOL) -> None:
        """Pickle with ``protocol`` (-1 means the highest)."""
        if isinstance(protocol, bool) or not isinstance(protocol, int):
            raise TypeError(f"pickle protocol must be an int, got {protocol!r}")
        if not -1 <= protocol <= pickle.HIGHEST_PROTOCOL:
            raise ValueError(
                f"pickle protocol must be -1..{pickle.HIGHEST_PROTOCOL}, got {protocol!r}"
            )
        self.protocol = protocol

    def serialize(self, obj: Any) -> bytes:
        """Pickle ``obj``."""
        try:
            return pickle.dumps(obj, protocol=self.protocol)
        # Pickling calls the object's own __reduce__ and friends, which may
        # raise anything.
        except Exception as e:
            raise encode_error(self, obj, f"{type(e).__name__}: {e}") from None

    def deserialize(self, buf: Buffer) -> Any:
        """Unpickle ``buf``. Unsafe on untrusted data."""
        try:
            return pickle.loads(buf)
        # Bad pickles raise almost any exception type (EOFError, KeyError,
        # ImportError, struct.error, ...).
        except Exception as e:
            raise decode_error(self, buf, f"{type(e).__name__}: {e}") from None

    def __repr__(self) -> str:
        return f"PickleCoder(protocol={self.protocol})"
