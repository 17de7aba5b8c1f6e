"""Engine defects found in review: group commit under writemap, close() while
transactions are open, the bookkeeping of writes queued behind a session."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from conftest import EnvFactory, WriterGate, bounded, detached

import aiolmdb


async def test_writemap_one_failing_write_fails_alone(open_env: EnvFactory) -> None:
    env = open_env(writemap=True)
    db = await env.open_db_async("t")
    await db.put(b"taken", b"1")
    gate = WriterGate(db)
    await gate.hold()
    calls: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(db.put(b"k%d" % i, b"v")) for i in range(5)
    ]
    calls.insert(2, asyncio.ensure_future(db.insert(b"taken", b"2")))
    for _ in range(5):  # every call reaches the queue: one batch
        await asyncio.sleep(0)
    await gate.release()
    out = await bounded(asyncio.gather(*calls, return_exceptions=True))
    refused = out.pop(2)
    assert isinstance(refused, aiolmdb.KeyExistsError), refused
    assert "taken" in str(refused)
    assert out == [True] * 5  # each put stored its record
    assert await db.get(b"taken") == b"1"
    assert [await db.get(b"k%d" % i) for i in range(5)] == [b"v"] * 5
