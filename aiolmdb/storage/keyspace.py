"""``Keyspace``: one database's (or one index's) storage, as every engine hands it out."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ..errors import AiolmdbError, raise_again

__all__ = ["MAX_KEY_SIZE", "Keyspace", "checked_key", "refuse_negative_limit"]

#: LMDB's longest key, which every engine keeps: code that works on one works on all.
MAX_KEY_SIZE = 511


class Keyspace:
    """A named keyspace of an engine, shared by every object opened on it.

    Opening may need the engine's writer: until it is done the keyspace is
    pending (``ready`` is False). The open either gives the engine's handle
    (``ready``) or fails (``error``), and every call on it then raises that
    error. ``handle`` is the engine's own (an LMDB database handle, a
    memory table); nothing above the engine looks inside it.
    """

    __slots__ = (
        "dropped",
        "duplicates",
        "error",
        "handle",
        "integer_keys",
        "key_size",
        "label",
        "name",
        "opening",
        "ready",
        "retry_open",
        "reverse_keys",
        "serial",
    )

    def __init__(
        self,
        name: bytes | None,
        label: str,
        serial: int,
        *,
        integer_keys: bool = False,
        reverse_keys: bool = False,
        duplicates: bool = False,
    ) -> None:
        #: The raw name (None: the engine's default keyspace).
        self.name = name
        #: How messages name it.
        self.label = label
        #: Which open of the engine this was: sessions begun before it may not see it.
        self.serial = serial
        self.integer_keys = integer_keys
        self.reverse_keys = reverse_keys
        #: A key holds several values (LMDB's dupsort).
        self.duplicates = duplicates
        #: The engine's handle, once open.
        self.handle: Any = None
        #: Set when the keyspace was deleted: its handle is dead.
        self.dropped = False
        #: Set (where the engine opens it) once ``handle`` holds the handle.
        self.ready = False
        #: Why the open failed, naming the keyspace.
        self.error: BaseException | None = None
        #: The engine's job opening it (None: opened before it was handed out).
        self.opening: asyncio.Future[None] | None = None
        #: integerkey: the size of its keys, once known (LMDB compares keys of one size only).
        self.key_size: int | None = None
        #: Set by an engine whose open failed for a passing reason (the server was out of
        #: reach): starts the open again, which the next wait does.
        self.retry_open: Callable[[], asyncio.Future[None]] | None = None

    def open_with(self, fn: Callable[[], Any]) -> None:
        """Where the engine opens it: keep what ``fn`` opens, or why it failed."""
        try:
            self.handle = fn()
        except Exception as exc:
            self.error = exc
            return
        self.ready = True

    async def wait(self) -> None:
        """Wait until the engine has opened it; raise the open's error if it failed.

        An open that failed for a passing reason is made again first.
        """
        if self.error is not None and self.retry_open is not None:
            self._open_again()
        if not self.ready and self.error is None and self.opening is not None:
            # Shielded: a cancelled caller must not cancel the open for every other.
            await asyncio.shield(self.opening)
        self.check()

    def check(self) -> None:
        """Raise the open's error (a fresh copy of it) unless the keyspace is open."""
        if self.ready:
            return
        if self.error is None:  # callers wait for the open first, or say why it is pending
            raise AiolmdbError(f"{self.label} is not open yet")
        error = self.error
        if self.retry_open is not None:
            self._open_again()  # for the next call: this one was made meanwhile
        raise_again(error)

    def _open_again(self) -> None:
        assert self.retry_open is not None
        reopen, self.retry_open = self.retry_open, None
        self.error = None
        self.opening = reopen()

    def __repr__(self) -> str:
        state = "dropped" if self.dropped else "open" if self.ready else "pending"
        return f"<Keyspace {self.label} {state}>"


def checked_key(keyspace: Keyspace, key: bytes) -> bytes:
    """``key`` as bytes, once checked to take 1 to :data:`MAX_KEY_SIZE` bytes."""
    if not 0 < len(key) <= MAX_KEY_SIZE:
        raise ValueError(
            f"database {keyspace.label}: a key of {len(key)} bytes cannot be stored; "
            f"keys take 1 to {MAX_KEY_SIZE} bytes (LMDB's limit, which every engine keeps)"
        )
    return key if type(key) is bytes else bytes(key)


def refuse_negative_limit(keyspace: Keyspace, limit: int | None) -> None:
    """Refuse a range read of ``keyspace`` given a negative ``limit``, naming the database."""
    if limit is not None and limit < 0:
        raise ValueError(f"database {keyspace.label}: limit must be >= 0, got {limit}")
