"""Key ranges and batched scans over the engine's views.

A scan reads raw records in batches, each in a read of its own;
the event loop decodes them one by one as they are consumed. Decoding there,
rather than with the batch on a reader thread, keeps the decoded objects
short-lived (a batch of live objects makes the garbage collector work hard)
and costs no more: both threads share the GIL.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from .storage import Keyspace, ReadView

__all__ = ["Batch", "Fetch", "Scan", "as_stored", "fetch_batch", "key_only", "prefix_end", "scan"]

#: Records read by the first batch of a scan, on the loop thread (fast small queries).
FIRST_SCAN_BATCH = 64
#: Bytes (keys and values as stored) the first batch reads at most, on the loop thread.
FIRST_SCAN_BATCH_BYTES = 64 * 1024
#: Records read by each later batch of a scan, on a reader thread.
SCAN_BATCH = 1024
#: Bytes a later batch reads before it stops (it always holds one record at least).
SCAN_BATCH_BYTES = 1024 * 1024

#: Turns records as stored (raw key, buffer), several at a time, into the raw keys and
#: the buffers of the values to decode, not copied yet: the batch sees their sizes
#: before it copies them. Several at a time, so that an index scan fetches the records
#: its entries name with one read (one round trip on a networked engine) per group.
Fetch = Callable[[list[tuple[bytes, memoryview | bytes]]], list[tuple[bytes, memoryview | bytes]]]
#: (raw records, raw key of the last record read or None, whether the range is exhausted)
Batch = tuple[list[tuple[bytes, bytes]], bytes | None, bool]


def as_stored(
    records: list[tuple[bytes, memoryview | bytes]],
) -> list[tuple[bytes, memoryview | bytes]]:
    """The default :data:`Fetch`: the records themselves."""
    return records


def key_only(
    records: list[tuple[bytes, memoryview | bytes]],
) -> list[tuple[bytes, memoryview | bytes]]:
    """A :data:`Fetch` for key scans: the values are not copied."""
    return [(key, b"") for key, _ in records]


def prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with ``prefix`` (None: no bound)."""
    stripped = prefix.rstrip(b"\xff")
    if not stripped:
        return None
    return stripped[:-1] + bytes([stripped[-1] + 1])


def fetch_batch(
    view: ReadView,
    keyspace: Keyspace,
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
    the batch starts strictly after it (before it, reversed). ``fetch(records)``
    finds what is to be decoded, which the batch copies out of the view; it is
    given the records in groups, as many as the byte budget seems to allow.
    The batch stops once it holds ``max_bytes`` of fetched keys and values;
    with ``within_budget`` it also leaves out a fetched record whose size
    would take it over, even the first one (the batch may then be empty
    without the range being exhausted).
    """
    out: list[tuple[bytes, bytes]] = []
    last: bytes | None = None
    used = 0
    # One record more than asked for tells whether the range goes on.
    stored = view.range(keyspace, low, high, reverse=reverse, after=resume_after, limit=count + 1)
    group = 1  # records fetched together: as many as the budget seems to allow
    while True:
        taken = list(itertools.islice(stored, group))
        if not taken:
            return out, last, True
        for (key, _), (raw_key, buf) in zip(taken, fetch(taken), strict=True):
            if len(out) == count or used >= max_bytes:
                return out, last, False
            size = len(raw_key) + len(buf)
            if within_budget and used + size > max_bytes:
                return out, last, False
            out.append((raw_key, bytes(buf)))
            used += size
            last = key
        average = max(1, used // max(1, len(out)))
        group = max(1, min(count + 1 - len(out), (max_bytes - used) // average))


@dataclasses.dataclass(frozen=True)
class Scan:
    """One range read: which records of which keyspace, in which order, made into what."""

    keyspace: Keyspace
    #: Inclusive lower bound of the raw keys (None: from the first).
    low: bytes | None
    #: Exclusive upper bound (None: to the last).
    high: bytes | None
    reverse: bool
    #: At most this many records (None: every one).
    limit: int | None
    #: Gives, for the view a batch is read in, what is fetched for each record.
    fetcher: Callable[[ReadView], Fetch]
    #: Makes a result of a fetched record (raw key, raw value).
    decode: Callable[[bytes, bytes], Any]


async def scan(
    spec: Scan,
    read: Callable[[Callable[[ReadView], Batch], bool], Awaitable[Batch]],
    decode_large: Callable[[bytes, bytes], Awaitable[Any]],
    decodes_inline: Callable[[bytes], bool],
    *,
    small: int,
    prefetch: bool = True,
) -> AsyncIterator[Any]:
    """Stream the records ``spec`` describes, decoded, batch by batch.

    ``read(fn, offload)`` runs ``fn`` on a read view (off the event loop
    when ``offload``). The first batch is small, in records and in bytes,
    and read inline, so short queries cost no thread hop; later batches are
    large (bounded in bytes too), read off the loop, and each is fetched
    while the previous one is consumed, unless ``prefetch`` is off: inside a
    write transaction, where the consumer's own writes must be seen by the
    next batch. A value is decoded by ``spec.decode`` when it is at most
    ``small`` bytes long or ``decodes_inline(value)`` says so, else by
    ``decode_large`` (off the loop).
    """
    keyspace, low, high, reverse, limit = (
        spec.keyspace,
        spec.low,
        spec.high,
        spec.reverse,
        spec.limit,
    )
    fetcher, decode = spec.fetcher, spec.decode
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")

    def fetch(after: bytes | None, count: int, inline: bool) -> Awaitable[Batch]:
        # A batch read on the loop leaves a large record to a reader thread.
        max_bytes = FIRST_SCAN_BATCH_BYTES if inline else SCAN_BATCH_BYTES

        def batch(view: ReadView) -> Batch:
            return fetch_batch(
                view, keyspace, low, high, after, reverse, count, fetcher(view), max_bytes, inline
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
