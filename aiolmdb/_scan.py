"""Key ranges and cursor batches: the part of range queries that touches LMDB."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import lmdb

__all__ = ["Batch", "fetch_batch", "prefix_end", "scan"]

#: Records read by the first batch of a scan, on the loop thread (fast small queries).
FIRST_SCAN_BATCH = 64
#: Records read by each later batch of a scan, on a reader thread.
SCAN_BATCH = 1024

#: Turns one record (raw key, raw value) into what a scan yields; runs inside the transaction.
Decode = Callable[[bytes, memoryview | bytes], Any]

#: (decoded records, raw key of the last record read or None, whether the range is exhausted)
Batch = tuple[list[Any], bytes | None, bool]


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def fetch_batch(
    txn: lmdb.Transaction,
    db: Any,
    low: bytes | None,
    high: bytes | None,
    resume_after: bytes | None,
    reverse: bool,
    count: int,
    decode: Decode,
) -> Batch:
    """Read up to ``count`` records of ``[low, high)`` in key order (or reversed).

    ``resume_after`` is the raw key of the last record of the previous batch:
    the batch starts strictly after it (before it, reversed). ``decode(key,
    value)`` turns each record into what the caller yields; it runs while the
    buffers are valid.
    """
    cursor = txn.cursor(db)
    try:
        if reverse:
            found = _seek_below(cursor, resume_after if resume_after is not None else high)
        else:
            found = _seek_from(cursor, low, resume_after)
        out: list[Any] = []
        last: bytes | None = None
        while found and len(out) < count:
            key = bytes(cursor.key())  # memoryviews do not compare by order
            if reverse:
                if low is not None and key < low:
                    return out, last, True
            elif high is not None and key >= high:
                return out, last, True
            out.append(decode(key, cursor.value()))
            last = key
            found = cursor.prev() if reverse else cursor.next()
        return out, last, not found
    finally:
        cursor.close()


def _seek_from(cursor: lmdb.Cursor, low: bytes | None, resume_after: bytes | None) -> bool:
    if resume_after is None:
        return cursor.set_range(low) if low is not None else cursor.first()
    if not cursor.set_range(resume_after):
        return False
    if bytes(cursor.key()) == resume_after:
        return cursor.next()
    return True


def _seek_below(cursor: lmdb.Cursor, bound: bytes | None) -> bool:
    """Position on the greatest key strictly below ``bound`` (the last key if None)."""
    if bound is None:
        return cursor.last()
    if cursor.set_range(bound):
        return cursor.prev()
    return cursor.last()


async def scan(
    read: Callable[[Callable[[lmdb.Transaction], Batch], bool], Awaitable[Batch]],
    db: Any,
    low: bytes | None,
    high: bytes | None,
    reverse: bool,
    limit: int | None,
    decoder: Callable[[lmdb.Transaction], Decode],
) -> AsyncIterator[Any]:
    """Stream the records of ``[low, high)`` batch by batch.

    ``read(fn, offload)`` runs ``fn`` in a read transaction (on a reader
    thread when ``offload``); ``decoder(txn)`` gives the record decoder for
    that transaction. The first batch is small and read inline, so short
    queries cost no thread hop; later batches are large and offloaded.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    remaining = limit
    resume: bytes | None = None
    size = FIRST_SCAN_BATCH
    while remaining is None or remaining > 0:
        count = size if remaining is None else min(size, remaining)

        def batch(t: lmdb.Transaction, after: bytes | None = resume, n: int = count) -> Batch:
            return fetch_batch(t, db, low, high, after, reverse, n, decoder(t))

        records, resume, done = await read(batch, count > FIRST_SCAN_BATCH)
        for record in records:
            yield record
        if done:
            return
        if remaining is not None:
            remaining -= len(records)
        size = SCAN_BATCH
