"""The order of a keyspace's keys, as its engine sorts them, for merging buffered keys."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from ..keyspace import Keyspace

__all__ = ["SortKey", "sort_key"]

#: Maps a key to a value whose natural order is the keyspace's order of keys.
SortKey = Callable[[bytes], Any]


def _bytewise(key: bytes) -> bytes:
    return key


def _reversed_bytes(key: bytes) -> bytes:
    # LMDB's reverse_key compares keys from their last byte to their first.
    return key[::-1]


def _native_integer(key: bytes) -> int:
    # LMDB's integerkey compares unsigned integers in the machine's byte order.
    return int.from_bytes(key, sys.byteorder)


def sort_key(keyspace: Keyspace) -> SortKey:
    """How ``keyspace`` orders its keys: byte by byte, or by LMDB's ``integerkey`` or
    ``reverse_key`` orders where the keyspace asked for one."""
    if keyspace.integer_keys:
        return _native_integer
    if keyspace.reverse_keys:
        return _reversed_bytes
    return _bytewise
