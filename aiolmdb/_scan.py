"""Key ranges and batched scans: the part of range queries that touches LMDB.

A scan reads raw records in batches, each in a read transaction of its own;
the event loop decodes them one by one as they are consumed. Decoding there,
rather than with the batch on a reader thread, keeps the decoded objects
short-lived (a batch of live objects makes the garbage collector work hard)
and costs no more: both threads share the GIL.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import lmdb

__all__ = ["Batch", "Fetch", "fetch_batch", "prefix_end", "scan"]

#: Records read by the first batch of a scan, on the loop thread (fast small queries).
FIRST_SCAN_BATCH = 64
#: Bytes (keys and values as stored) the first batch reads at most, on the loop thread.
FIRST_SCAN_BATCH_BYTES = 64 * 1024
#: Records read by each later batch of a scan, on a reader thread.
SCAN_BATCH = 1024
#: Bytes a later batch reads before it stops (it always holds one record at least).
SCAN_BATCH_BYTES = 1024 * 1024

#: Turns a record as stored (raw key, buffer) into the raw key and the buffer of the
#: value to decode, not copied yet: the batch sees its size before it copies it.
Fetch = Callable[[bytes, memoryview | bytes], tuple[bytes, memoryview | bytes]]
#: (raw records, raw key of the last record read or None, whether the range is exhausted)
Batch = tuple[list[tuple[bytes, bytes]], bytes | None, bool]


def as_stored(key: bytes, value: memoryview | bytes) -> tuple[bytes, memoryview | bytes]:
    """The default :data:`Fetch`: the record itself."""
    return key, value


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
    fetch: Fetch,
    max_bytes: int = SCAN_BATCH_BYTES,
    within_budget: bool = False,
) -> Batch:
    """Read up to ``count`` records of ``[low, high)`` in key order (or reversed).

    ``resume_after`` is the raw key of the last record of the previous batch:
    the batch starts strictly after it (before it, reversed). ``fetch(key,
    buffer)`` finds what is to be decoded, which the batch copies out of
    LMDB's map. The batch stops once it holds ``max_bytes`` of fetched keys
    and values; with ``within_budget`` it also leaves out a fetched record
    whose size would take it over, even the first one (the batch may then
    be empty without the range being exhausted).
    """
    out: list[tuple[bytes, bytes]] = []
    last: bytes | None = None
    used = 0
    with txn.cursor(db) as cursor:
        if reverse:
            found = _seek_below(cursor, resume_after if resume_after is not None else high)
        else:
            found = _seek_from(cursor, low, resume_after)
        if not found:
            return out, last, True
        # iternext/iterprev yield the current record first, then move on.
        for view, value in cursor.iterprev() if reverse else cursor.iternext():
            if len(out) == count or used >= max_bytes:
                return out, last, False
            key = bytes(view)  # memoryviews do not compare by order
            bound = low if reverse else high
            if bound is not None and ((key < bound) if reverse else (key >= bound)):
                return out, last, True
            raw_key, buf = fetch(key, value)
            size = len(raw_key) + len(buf)
            if within_budget and used + size > max_bytes:
                return out, last, False
            out.append((raw_key, bytes(buf)))
            used += size
            last = key
    return out, last, True


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
    fetcher: Callable[[lmdb.Transaction], Fetch],
    decode: Callable[[bytes, bytes], Any],
    decode_large: Callable[[bytes, bytes], Awaitable[Any]],
    small: int,
    decodes_inline: Callable[[bytes], bool],
    *,
    prefetch: bool = True,
) -> AsyncIterator[Any]:
    """Stream the records of ``[low, high)``, decoded, batch by batch.

    ``read(fn, offload)`` runs ``fn`` in a read transaction (on a reader
    thread when ``offload``); ``fetcher(txn)`` gives the :data:`Fetch` of
    that transaction. The first batch is small, in records and in bytes, and
    read inline, so short queries cost no thread hop; later batches are
    large (bounded in bytes too), read on a reader thread, and each is
    fetched while the previous one is consumed, unless ``prefetch`` is off:
    inside a write transaction, where the consumer's own writes must be seen
    by the next batch. A value is decoded by ``decode`` when it is at most
    ``small`` bytes long or ``decodes_inline(value)`` says so, else by
    ``decode_large`` (off the loop).
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")

    def fetch(after: bytes | None, count: int, inline: bool) -> Awaitable[Batch]:
        # A batch read on the loop leaves a large record to a reader thread.
        max_bytes = FIRST_SCAN_BATCH_BYTES if inline else SCAN_BATCH_BYTES

        def batch(t: lmdb.Transaction) -> Batch:
            return fetch_batch(
                t, db, low, high, after, reverse, count, fetcher(t), max_bytes, inline
            )

        return read(batch, not inline)

    remaining = limit
    size = FIRST_SCAN_BATCH if remaining is None else min(FIRST_SCAN_BATCH, remaining)
    resume: bytes | None = None
    upcoming: asyncio.Future[Batch] | None = None
    try:
        current: Awaitable[Batch] = fetch(None, size, True)
        while True:
            records, last, done = await current
            resume = resume if last is None else last
            if remaining is not None:
                remaining -= len(records)
            done = done or remaining == 0
            size = SCAN_BATCH if remaining is None else min(SCAN_BATCH, remaining)
            # Small batches stay on the loop, unless the last one left a large record out.
            inline = size <= FIRST_SCAN_BATCH and bool(records)
            if not done and prefetch:
                upcoming = asyncio.ensure_future(fetch(resume, size, inline))
            for key, value in records:
                if len(value) <= small or decodes_inline(value):
                    yield decode(key, value)
                else:
                    yield await decode_large(key, value)
            if done:
                return
            if upcoming is None:
                current = fetch(resume, size, inline)
            else:
                current, upcoming = upcoming, None
    finally:
        if upcoming is not None:  # the consumer stopped early
            upcoming.cancel()
