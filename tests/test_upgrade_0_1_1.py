"""aiolmdb 0.1.1's environment calls: kept, renamed (with a DeprecationWarning), or refused
with the replacement named."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
from conftest import EngineKind, bounded

import aiolmdb


async def test_get_default_db_warns_and_gives_the_default_database(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await env.get_default_database().put(b"k", b"v")
    with pytest.warns(DeprecationWarning, match=r"use env\.get_default_database\(\)") as caught:
        default = env.get_default_db()
    # The warning points at the caller, so a user finds the line to change.
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]
    assert default.name is None
    assert await default.get(b"k") == b"v"


async def test_get_default_db_is_an_error_where_deprecation_warnings_are(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        with pytest.raises(DeprecationWarning, match="get_default_database"):
            env.get_default_db()


@pytest.mark.lmdb_only
async def test_env_env_warns_and_gives_the_lmdb_environment(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    with pytest.warns(DeprecationWarning, match=r"use env\.lmdb_env") as caught:
        raw = env.env
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]
    assert raw is env.lmdb_env


async def test_env_env_is_lmdbs(env: aiolmdb.AsyncEnvironment, engine_kind: EngineKind) -> None:
    if engine_kind is EngineKind.LMDB:
        pytest.skip("LMDB has it")
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(aiolmdb.UnsupportedError, match="lmdb_env"),
    ):
        env.env  # noqa: B018 - the attribute access is the call


async def test_db_async_env_warns_and_gives_the_environment(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    db = env.open_db("records")
    with pytest.warns(DeprecationWarning, match=r"use db\.env") as caught:
        owner = db.async_env
    assert [Path(w.filename).name for w in caught] == [Path(__file__).name]
    assert owner is env


@pytest.mark.lmdb_only
async def test_max_readers_is_the_reader_table_size(tmp_path: Path) -> None:
    async with aiolmdb.open(tmp_path / "e", max_readers=77) as env:
        assert env.max_readers() == 77


@pytest.mark.lmdb_only
async def test_reader_check_clears_nothing_when_no_process_crashed(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await env.get_default_database().put(b"k", b"v")
    assert env.reader_check() == 0


@pytest.mark.lmdb_only
async def test_set_mapsize_is_awaited_and_grows_the_map(env: aiolmdb.AsyncEnvironment) -> None:
    db = env.open_db("records")
    await db.put(b"k", b"v")
    before = env.info()["map_size"]
    await env.set_mapsize(before * 2)
    assert env.info()["map_size"] == before * 2
    # Reads and writes go on in the larger map.
    assert await db.get(b"k") == b"v"
    await db.put(b"k2", b"v2")
    assert await db.get(b"k2") == b"v2"


@pytest.mark.lmdb_only
async def test_set_mapsize_refuses_a_size_that_is_not_positive(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    with pytest.raises(ValueError, match="map_size must be > 0, got 0"):
        await env.set_mapsize(0)


@pytest.mark.lmdb_only
async def test_copy_takes_compact_positionally(
    env: aiolmdb.AsyncEnvironment, tmp_path: Path
) -> None:
    await env.open_db("records").put(b"k", b"v")
    (tmp_path / "backup").mkdir()
    await env.copy(tmp_path / "backup", True)
    async with aiolmdb.open(tmp_path / "backup") as copied:
        assert await copied.open_db("records").get(b"k") == b"v"


@pytest.mark.lmdb_only
@pytest.mark.parametrize("compact", [False, True])
async def test_copyfd_writes_a_data_file_that_opens(
    env: aiolmdb.AsyncEnvironment, tmp_path: Path, compact: bool
) -> None:
    await env.open_db("records").put_multi([(b"a", b"1"), (b"b", b"2")])
    (tmp_path / "restored").mkdir()
    fd = os.open(tmp_path / "restored" / "data.mdb", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        await env.copyfd(fd, compact)
    finally:
        os.close(fd)
    async with aiolmdb.open(tmp_path / "restored") as restored:
        records = restored.open_db("records")
        assert [item async for item in records.items()] == [(b"a", b"1"), (b"b", b"2")]


async def test_sync_takes_force_positionally(env: aiolmdb.AsyncEnvironment) -> None:
    await env.open_db("records").put(b"k", b"v")
    await env.sync(True)
    await env.sync(False)
    assert await env.open_db("records").get(b"k") == b"v"


@pytest.mark.parametrize(
    "call",
    ["max_readers", "reader_check", "set_mapsize", "copyfd"],
)
async def test_lmdb_only_calls_name_the_engine_elsewhere(
    env: aiolmdb.AsyncEnvironment, engine_kind: EngineKind, call: str
) -> None:
    if engine_kind is EngineKind.LMDB:
        pytest.skip("LMDB has them")
    with pytest.raises(aiolmdb.UnsupportedError) as excinfo:
        if call == "set_mapsize":
            await env.set_mapsize(2**30)
        elif call == "copyfd":
            await env.copyfd(1)
        else:
            getattr(env, call)()
    message = str(excinfo.value)
    assert f"{call}() is LMDB's" in message
    assert f"the {engine_kind.value} engine does not have it" in message


async def test_with_instead_of_async_with_says_async_with(tmp_path: Path) -> None:
    env = aiolmdb.open(tmp_path / "e")
    try:
        refusal = r"use `async with aiolmdb\.open\(\.\.\.\) as env:`, not `with`"
        with pytest.raises(TypeError, match=refusal), env:
            pass
        assert not env.closed  # refused before anything happened
        await env.open_db("records").put(b"k", b"v")
    finally:
        await bounded(env.close())
