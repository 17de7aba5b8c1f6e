"""Opening databases and collections never blocks the event loop on the writer (issue 10, item 17).

Each test holds the writer thread busy with a long job, opens something, and
checks that the open returned while that job still ran (a 1 ms ticker kept
ticking), then that the first calls work. On code that blocks, the open
returns only once the job gave up waiting (about a second): the checks fail.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import lmdb
import pytest
from conftest import BusyWriter, Ticker, bounded, detached, raw_records
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import StringCoder, UInt64Coder
from aiolmdb.models import Collection, Index


async def busy_env(path: Path, **kwargs: Any) -> tuple[aiolmdb.AsyncEnvironment, BusyWriter]:
    env = aiolmdb.open(path, **kwargs)
    busy = BusyWriter(env.open_db("busy"))
    await busy.started()
    return env, busy


async def assert_loop_ran(busy: BusyWriter) -> None:
    """The open returned while the writer was busy, and the loop keeps ticking."""
    assert busy.still_busy(), "the open waited for the writer's job"
    ticker = Ticker()
    try:
        await asyncio.sleep(0.05)
        assert ticker.ticks > 10
        assert busy.still_busy()
    finally:
        ticker.stop()


async def test_open_db_returns_at_once_while_the_writer_is_busy(tmp_path: Path) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        await env.open_db("existing").put(b"k", b"v")
        await env.open_db("flagged", integerkey=True).put((7).to_bytes(8, "little"), b"7")
    env, busy = await busy_env(path)
    try:
        existing = env.open_db("existing", create=False)
        flagged = env.open_db("flagged", integerkey=True)
        created = env.open_db("created", value_coder=StringCoder())
        # Written right after the open: it must land in that database.
        put = asyncio.ensure_future(created.put(b"k", "text"))
        read = asyncio.ensure_future(existing.get(b"k"))
        await assert_loop_ran(busy)
        assert not put.done() and not read.done()
        await busy.release()
        assert await bounded(put) is True
        assert await bounded(read) == b"v"
        assert await flagged.get((7).to_bytes(8, "little")) == b"7"
        assert await created.get(b"k") == "text"
        assert await existing.count() == 1
        assert [key async for key in flagged.keys()] == [(7).to_bytes(8, "little")]
    finally:
        await busy.release()
        await bounded(env.close())
    assert raw_records(path, "created") == {b"k": b"text"}
    assert raw_records(path, None).keys() >= {b"busy", b"created", b"existing", b"flagged"}


async def test_every_call_on_a_database_still_opening_waits_for_it(tmp_path: Path) -> None:
    env, busy = await busy_env(tmp_path / "e")
    try:
        db = env.open_db("fresh")
        calls = [
            db.put_multi({b"a": b"1", b"b": b"2"}),
            db.insert(b"c", b"3"),
            db.get_multi([b"x"]),
            db.contains(b"x"),
            db.stat(),
            db.run(lambda t: t.get(b"x")),
        ]
        tasks = [asyncio.ensure_future(call) for call in calls]
        scan = asyncio.ensure_future(_collect(db.items()))
        await assert_loop_ran(busy)
        await busy.release()
        await bounded(asyncio.gather(*tasks, scan))
        assert dict([item async for item in db.items()]) == {b"a": b"1", b"b": b"2", b"c": b"3"}
        assert await db.pop(b"c") == b"3"
        assert await db.replace(b"a", b"9") == b"1"
        assert await db.update(b"b", lambda v: v + v) == b"22"
        assert await db.delete_multi([b"a"]) == {b"a": True}
    finally:
        await busy.release()
        await bounded(env.close())


async def _collect(stream: Any) -> list[Any]:
    return [item async for item in stream]


async def test_create_false_on_a_missing_name_raises_at_once(tmp_path: Path) -> None:
    env, busy = await busy_env(tmp_path / "e")
    try:
        with pytest.raises(aiolmdb.DatabaseNotFoundError, match="'missing'"):
            env.open_db("missing", create=False)
        with pytest.raises(aiolmdb.DatabaseNotFoundError, match="'missing'"):
            await bounded(env.open_db_async("missing", create=False))
        await assert_loop_ran(busy)
    finally:
        await busy.release()
        await bounded(env.close())


async def test_a_failed_open_raises_its_error_naming_the_database_on_every_call(
    tmp_path: Path,
) -> None:
    env, busy = await busy_env(tmp_path / "e", max_dbs=2)
    try:
        kept = env.open_db("kept")
        third = env.open_db("third")  # one more than max_dbs allows
        await assert_loop_ran(busy)
        await busy.release()
        for call in (third.get(b"k"), third.put(b"k", b"v"), _collect(third.items())):
            with pytest.raises(lmdb.DbsFullError, match="'third'"):
                await bounded(call)
        with pytest.raises(lmdb.DbsFullError, match="'third'"):
            await bounded(env.open_db_async("third"))
        # The environment goes on: other databases work, and the name is tried afresh.
        assert await kept.put(b"k", b"v")
        assert await env.open_db("busy").get(b"k") is None
        again = env.open_db("third")
        with pytest.raises(lmdb.DbsFullError, match="'third'"):
            await bounded(again.get(b"k"))
        assert await kept.get(b"k") == b"v"
    finally:
        await busy.release()
        await bounded(env.close())


async def test_a_database_opened_before_a_transaction_is_usable_inside_it(
    tmp_path: Path,
) -> None:
    env, busy = await busy_env(tmp_path / "e")
    try:
        db = env.open_db("records")
        snapshot_db = env.open_db("snapshot")
        await assert_loop_ran(busy)

        async def write_in_a_transaction() -> bytes | None:
            async with env.transaction():
                await db.put(b"a", b"1")
                return await db.get(b"a")

        async def read_in_a_snapshot() -> int:
            async with env.transaction(write=False):
                return await snapshot_db.count()

        inside = asyncio.ensure_future(write_in_a_transaction())
        snapshot = asyncio.ensure_future(read_in_a_snapshot())
        await asyncio.sleep(0.01)
        await busy.release()
        assert await bounded(inside) == b"1"
        assert await bounded(snapshot) == 0
        assert await db.get(b"a") == b"1"
    finally:
        await busy.release()
        await bounded(env.close())


async def test_open_db_inside_its_own_write_transaction_is_refused(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    async with env.transaction():
        with pytest.raises(aiolmdb.TransactionError, match=r"'late'.*before the transaction"):
            env.open_db("late")
    assert await env.open_db("late").put(b"k", b"v")


async def test_open_db_while_another_task_holds_a_transaction_is_refused(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("records")

    async def open_and_read() -> bytes | None:
        # Its open would wait behind the transaction that awaits this task.
        return await env.open_db("new").get(b"k")

    async def open_and_snapshot() -> None:
        env.open_db("new")
        async with env.transaction(write=False):
            pass

    for work in (open_and_read, open_and_snapshot):
        async with env.transaction():
            await db.put(b"c", b"3")
            with pytest.raises(aiolmdb.TransactionError, match=r"'new'.*another task"):
                await bounded(detached(work()), 3)
    assert await db.get(b"c") == b"3"
    assert await env.open_db("new").get(b"k") is None  # once the transaction ended


# -- collections -----------------------------------------------------------------


class Person(BaseModel):
    id: int
    email: str
    city: str = ""


class People(Collection[int, Person]):
    key_coder = UInt64Coder()
    name = "people"
    by_email = Index(lambda p: p.email, StringCoder(), unique=True)
    by_city = Index(lambda p: p.city, StringCoder())


class PeopleWithoutCity(Collection[int, Person]):
    """The same collection after its by_city index was removed from the code."""

    key_coder = UInt64Coder()
    name = "people"
    by_email = Index(lambda p: p.email, StringCoder(), unique=True)


async def test_a_new_collection_opens_at_once_while_the_writer_is_busy(tmp_path: Path) -> None:
    env, busy = await busy_env(tmp_path / "e")
    try:
        people = People(env)
        write = asyncio.ensure_future(people.put(1, Person(id=1, email="a@x", city="Oslo")))
        query = asyncio.ensure_future(people.by_email.get("a@x"))
        await assert_loop_ran(busy)
        await busy.release()
        await bounded(write)
        # The empty collection's indexes were recorded as built by its opening.
        assert await bounded(query) in (None, Person(id=1, email="a@x", city="Oslo"))
        assert await people.by_email.get("a@x") == Person(id=1, email="a@x", city="Oslo")
        assert await people.by_city.count("Oslo") == 1
        assert [p.id async for p in people.by_city.values("Oslo")] == [1]
        assert people.removed_indexes == []
    finally:
        await busy.release()
        await bounded(env.close())


async def test_an_existing_collection_opens_at_once_and_knows_its_removed_indexes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        people = await People.open(env)
        await people.put_multi({i: Person(id=i, email=f"{i}@x", city="Rome") for i in (1, 2)})
    env, busy = await busy_env(path)
    try:
        again = PeopleWithoutCity(env)
        query = asyncio.ensure_future(again.by_email.get("2@x"))
        count = asyncio.ensure_future(again.by_email.count())
        await assert_loop_ran(busy)
        await busy.release()
        assert await bounded(query) == Person(id=2, email="2@x", city="Rome")
        assert await bounded(count) == 2
        assert again.removed_indexes == ["by_city"]
        assert await again.drop_removed_indexes() == ["by_city"]
        assert again.removed_indexes == []
        assert await again.put(3, Person(id=3, email="3@x")) is True
    finally:
        await busy.release()
        await bounded(env.close())


async def test_collection_open_awaits_the_opening_and_builds(tmp_path: Path) -> None:
    path = tmp_path / "e"
    async with aiolmdb.open(path) as env:
        await PeopleWithoutCity(env).put(1, Person(id=1, email="a@x", city="Oslo"))
    env, busy = await busy_env(path)
    try:
        opening = asyncio.ensure_future(People.open(env))
        await assert_loop_ran(busy)
        await busy.release()
        people = await bounded(opening)
        assert await people.by_city.count("Oslo") == 1
        assert people.removed_indexes == []
    finally:
        await busy.release()
        await bounded(env.close())


async def test_a_collection_whose_open_fails_raises_that_error_naming_it(tmp_path: Path) -> None:
    # Its records' database fits in max_dbs; the meta database and indexes do not.
    env, busy = await busy_env(tmp_path / "e", max_dbs=2)
    try:
        people = People(env)
        await assert_loop_ran(busy)
        await busy.release()
        for call in (people.put(1, Person(id=1, email="a@x")), people.by_email.get("a@x")):
            with pytest.raises(lmdb.DbsFullError, match="'people'"):
                await bounded(call)
        with pytest.raises(lmdb.DbsFullError, match="'people'"):
            await bounded(People.open(env))
        assert await env.open_db("busy").put(b"k", b"v")
    finally:
        await busy.release()
        await bounded(env.close())


async def test_collection_create_false_on_a_missing_collection_raises_at_once(
    tmp_path: Path,
) -> None:
    env, busy = await busy_env(tmp_path / "e")
    try:
        with pytest.raises(aiolmdb.DatabaseNotFoundError, match="'people'"):
            People(env, create=False)
        await assert_loop_ran(busy)
    finally:
        await busy.release()
        await bounded(env.close())


async def test_a_collection_opened_before_a_transaction_is_usable_inside_it(
    tmp_path: Path,
) -> None:
    env, busy = await busy_env(tmp_path / "e")
    try:
        people = People(env)
        await assert_loop_ran(busy)

        async def in_a_transaction() -> Person | None:
            async with env.transaction():
                await people.put(1, Person(id=1, email="a@x", city="Oslo"))
                return await people.by_email.get("a@x")

        inside = asyncio.ensure_future(in_a_transaction())
        await asyncio.sleep(0.01)
        await busy.release()
        assert await bounded(inside) == Person(id=1, email="a@x", city="Oslo")
        assert await people.by_city.count("Oslo") == 1
    finally:
        await busy.release()
        await bounded(env.close())


async def test_writes_on_a_database_still_opening_are_finished_by_close(tmp_path: Path) -> None:
    path = tmp_path / "e"
    env, busy = await busy_env(path)
    try:
        db = env.open_db("records")
        people = People(env)
        writes = [asyncio.ensure_future(db.put(b"%03d" % i, b"v")) for i in range(50)]
        writes.append(asyncio.ensure_future(people.put(1, Person(id=1, email="a@x"))))
        await asyncio.sleep(0)  # each write is queued, behind the opens
        closing = asyncio.ensure_future(env.close())
        await asyncio.sleep(0.01)
        await busy.release()
        await bounded(closing)
        assert await bounded(asyncio.gather(*writes)) == [True] * 51
    finally:
        await busy.release()
        await bounded(env.close())
    assert raw_records(path, "records") == {b"%03d" % i: b"v" for i in range(50)}
    assert list(raw_records(path, "people")) == [(1).to_bytes(8, "big")]
