"""The console's commands as functions over an environment, on every engine: listing,
reading, scanning, dump and load (chunked, resumable), and verify."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from helpers.shop import User, Users, WrongUsers
from pydantic import BaseModel

import aiolmdb
from aiolmdb.cli.errors import CliError, ExitCode
from aiolmdb.cli.inspect import (
    DatabaseKind,
    DatabaseSummary,
    get_record,
    list_databases,
    scan_records,
)
from aiolmdb.cli.render import escape_bytes, from_json, parse_key, unescape_bytes
from aiolmdb.cli.target import open_database
from aiolmdb.cli.transfer import LOADS_DATABASE, dump_records, load_records
from aiolmdb.cli.verify import Problem, ProblemKind, verify_collection, verify_databases
from aiolmdb.coders import PydanticCoder, StringCoder, TupleCoder, UInt32Coder, UInt64Coder
from aiolmdb.models import Collection, Index


class Visit(BaseModel):
    page: str


class Visits(Collection[tuple[str, int], Visit]):
    key_coder = TupleCoder(StringCoder(), UInt32Coder())
    name = "visits"


USERS = [
    User(id=1, email="ann@x", city="Oslo"),
    User(id=2, email="bob@x", city="Bergen"),
    User(id=3, email="cid@x", city="Oslo"),
]


async def seeded(env: aiolmdb.AsyncEnvironment) -> Users:
    users = await Users.open(env)
    await users.put_multi([(user.id, user) for user in USERS])
    return users


# -- rendering ------------------------------------------------------------------


def test_bytes_escape_reversibly_and_readably() -> None:
    raw = bytes(range(256))
    assert unescape_bytes(escape_bytes(raw)) == raw
    assert escape_bytes(b"user\x00\x01\\ok") == "user\\x00\\x01\\\\ok"
    with pytest.raises(ValueError, match="is not escaped bytes"):
        unescape_bytes("a\\q")
    with pytest.raises(ValueError, match="is not escaped bytes"):
        unescape_bytes("café")


def test_keys_on_the_command_line_are_parsed_for_the_key_coder() -> None:
    assert parse_key("42", UInt64Coder()) == 42
    assert parse_key("42", StringCoder()) == "42"
    assert parse_key('["Oslo", 7]', Visits.key_coder) == ("Oslo", 7)
    assert parse_key('["Oslo"]', Visits.key_coder, prefix=True) == ("Oslo",)
    with pytest.raises(ValueError, match="'x' is not an integer"):
        parse_key("x", UInt64Coder())
    with pytest.raises(ValueError, match="expected an array of 2 elements"):
        parse_key('["Oslo"]', Visits.key_coder)
    assert from_json({"page": "/"}, PydanticCoder(Visit)) == Visit(page="/")


# -- ls, get, scan --------------------------------------------------------------


async def test_ls_lists_collections_indexes_and_databases_with_counts_and_sizes(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await seeded(env)
    raw = await env.open_db_async("raw")
    await raw.put(b"k\x00", b"\xff\xfe")
    summaries = {summary.name: summary for summary in await list_databases(env)}
    assert summaries["raw"] == DatabaseSummary("raw", DatabaseKind.DATABASE, 1, 4)
    users = summaries["users"]
    assert (users.kind, users.records) == (DatabaseKind.COLLECTION, 3)
    assert users.size == sum(8 + len(user.model_dump_json()) for user in USERS)
    by_city = summaries["__aiolmdb__/index/users/by_city"]
    assert (by_city.kind, by_city.records, by_city.of) == (DatabaseKind.INDEX, 3, "users.by_city")
    assert summaries["__aiolmdb__"].kind is DatabaseKind.INTERNAL
    assert [summary.name for summary in await list_databases(env)] == sorted(summaries)


async def test_database_names_are_the_named_databases_stored(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    for name in ("b", "a", "gone"):
        await (await env.open_db_async(name)).put(b"k", b"v")
    await (await env.open_db_async("gone")).drop()
    default = env.get_default_database()
    # On LMDB these are records of the main database, beside the databases' own.
    await default.put(b"looks-like-a-database", bytes(48))
    await default.put(b"plain", b"v")
    names = await env.database_names()
    assert [name for name in names if name != b"looks-like-a-database"] == [b"a", b"b"]
    assert [summary.name for summary in await list_databases(env)] == ["a", "b"]


async def test_get_decodes_through_the_collection_or_shows_escaped_bytes(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await seeded(env)
    users = await open_database(env, None, Users)
    assert await get_record(users, "2") == {"id": 2, "email": "bob@x", "city": "Bergen"}
    raw = await env.open_db_async("raw")
    await raw.put(b"k\x00", b"\xff\xfe")
    assert await get_record(await open_database(env, "raw", None), "k\\x00") == "\\xff\\xfe"
    with pytest.raises(CliError, match=r"database 'users': no key 9") as missing:
        await get_record(users, "9")
    assert missing.value.code is ExitCode.NOT_FOUND
    with pytest.raises(CliError, match=r"key 'x': 'x' is not an integer") as wrong:
        await get_record(users, "x")
    assert wrong.value.code is ExitCode.USAGE


async def test_a_missing_database_is_not_found_and_not_created(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    with pytest.raises(CliError, match="database 'nothing' does not exist") as caught:
        await open_database(env, "nothing", None)
    assert caught.value.code is ExitCode.NOT_FOUND
    with pytest.raises(CliError, match="database 'users' does not exist"):
        await open_database(env, None, Users)
    assert await env.database_names() == []


async def test_a_model_that_does_not_match_is_a_decode_error_naming_database_and_key(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    await seeded(env)
    wrong = await open_database(env, None, WrongUsers)
    with pytest.raises(CliError, match=r"database 'users': cannot decode the value of key 1 ") as e:
        await get_record(wrong, "1")
    assert e.value.code is ExitCode.DECODE
    with pytest.raises(CliError, match=r"database 'users': cannot decode the value of key 1 ") as e:
        _ = [record async for record in scan_records(wrong)]
    assert e.value.code is ExitCode.DECODE


async def test_scan_takes_bounds_prefix_reverse_and_limit(env: aiolmdb.AsyncEnvironment) -> None:
    visits = await Visits.open(env)
    await visits.put_multi(
        [
            (("Bergen", 1), Visit(page="/b1")),
            (("Oslo", 1), Visit(page="/o1")),
            (("Oslo", 2), Visit(page="/o2")),
            (("Oslo", 3), Visit(page="/o3")),
        ]
    )

    async def keys(**bounds: object) -> list[object]:
        return [key async for key, _ in scan_records(visits, **bounds)]  # type: ignore[arg-type]

    assert await keys() == [["Bergen", 1], ["Oslo", 1], ["Oslo", 2], ["Oslo", 3]]
    assert await keys(prefix='["Oslo"]', reverse=True, limit=2) == [["Oslo", 3], ["Oslo", 2]]
    assert await keys(start='["Oslo", 2]') == [["Oslo", 2], ["Oslo", 3]]
    assert await keys(stop='["Oslo", 2]') == [["Bergen", 1], ["Oslo", 1]]
    assert [value async for _, value in scan_records(visits, limit=1)] == [{"page": "/b1"}]


# -- dump and load --------------------------------------------------------------


async def test_dump_then_load_gives_the_same_records_and_indexes(
    env: aiolmdb.AsyncEnvironment, tmp_path: Path
) -> None:
    users = await seeded(env)
    out = io.StringIO()
    assert await dump_records(users, out) == 3
    lines = out.getvalue().splitlines()
    assert json.loads(lines[0]) == {"key": 1, "value": USERS[0].model_dump()}
    await users.drop()
    dumped = tmp_path / "users.jsonl"
    dumped.write_text(out.getvalue())
    again = await open_database(env, None, Users, create=True)
    result = await load_records(again, dumped, chunk=2)
    assert (result.total, result.skipped, result.written) == (3, 0, 3)
    assert [user async for user in again.values()] == USERS
    assert await again.by_city.get_all("Oslo") == [USERS[0], USERS[2]]  # type: ignore[attr-defined]
    assert await verify_collection(env, again) == []  # type: ignore[arg-type]


async def test_raw_bytes_dump_and_load_back_unchanged(
    env: aiolmdb.AsyncEnvironment, tmp_path: Path
) -> None:
    raw = await env.open_db_async("raw")
    records = {bytes([i, 0, 255 - i]): bytes(range(i)) + b"\\" for i in range(20)}
    await raw.put_multi(records)
    out = io.StringIO()
    await dump_records(raw, out)
    path = tmp_path / "raw.jsonl"
    path.write_text(out.getvalue())
    copy = await env.open_db_async("copy")
    await load_records(copy, path)
    assert {key: value async for key, value in copy.items()} == records


class Interrupted(Exception):
    pass


async def test_an_interrupted_load_run_again_ends_with_exactly_the_input(
    env: aiolmdb.AsyncEnvironment, tmp_path: Path
) -> None:
    path = tmp_path / "users.jsonl"
    people = [User(id=i, email=f"u{i}@x", city="Oslo" if i % 2 else "Rome") for i in range(10)]
    path.write_text(
        "".join(json.dumps({"key": u.id, "value": u.model_dump()}) + "\n" for u in people)
    )
    users = await open_database(env, None, Users, create=True)
    reports: list[tuple[int, int]] = []

    def stop_after_two_chunks(done: int, total: int) -> None:
        reports.append((done, total))
        if done == 6:
            raise Interrupted  # as a kill would, between two chunks

    with pytest.raises(Interrupted):
        await load_records(users, path, chunk=3, progress=stop_after_two_chunks)
    assert reports == [(0, 10), (3, 10), (6, 10)]
    assert await users.count() == 6
    loads = await env.open_db_async(LOADS_DATABASE)
    assert [value async for value in loads.values()] == [b"6"]
    reports.clear()
    result = await load_records(users, path, chunk=3, progress=lambda d, t: reports.append((d, t)))
    assert (result.total, result.skipped, result.written) == (10, 6, 4)
    assert reports == [(6, 10), (9, 10), (10, 10)]
    assert [user async for user in users.values()] == people
    assert await users.by_city.count("Rome") == 5  # type: ignore[attr-defined]
    assert await loads.count() == 0  # finished: nothing left to resume


async def test_a_line_that_does_not_fit_stops_the_load_naming_file_and_line(
    env: aiolmdb.AsyncEnvironment, tmp_path: Path
) -> None:
    path = tmp_path / "bad.jsonl"
    good = json.dumps({"key": 1, "value": USERS[0].model_dump()})
    path.write_text(f"{good}\n\n" + json.dumps({"key": "one", "value": {}}) + "\n")
    users = await open_database(env, None, Users, create=True)
    with pytest.raises(CliError, match=rf"{path}:3: the record does not fit database 'users'") as e:
        await load_records(users, path, chunk=1)
    assert e.value.code is ExitCode.PROBLEMS
    assert [user async for user in users.values()] == [USERS[0]]


# -- verify ---------------------------------------------------------------------


async def test_verify_finds_nothing_wrong_in_a_sound_collection(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    users = await seeded(env)
    assert await verify_collection(env, users) == []
    assert await verify_databases(env) == []


async def test_verify_reports_missing_and_stray_entries_and_undecodable_records(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    users = await seeded(env)
    by_email = await env.open_db_async("__aiolmdb__/index/users/by_email")
    by_city = await env.open_db_async("__aiolmdb__/index/users/by_city")
    records = await env.open_db_async("users")
    await by_email.delete(b"ann@x\x00\x00")
    await by_email.put(b"zed@x\x00\x00", (9).to_bytes(8, "big"))
    await by_city.put(b"Rome\x00\x00" + (2).to_bytes(8, "big"), b"")
    await records.put((4).to_bytes(8, "big"), b"not json")
    problems = await verify_collection(env, users)
    assert [(p.kind, p.where) for p in problems] == [
        (ProblemKind.MISSING_ENTRY, "index 'users'.by_email"),
        (ProblemKind.UNDECODABLE, "collection 'users'"),
        (ProblemKind.STRAY_ENTRY, "index 'users'.by_city"),
        (ProblemKind.STRAY_ENTRY, "index 'users'.by_email"),
    ]
    messages = [p.message for p in problems]
    assert messages[0] == "record 1 lacks its entry 'ann@x'"
    assert messages[1].startswith("database 'users': cannot decode the value of key 4 with")
    assert messages[2] == "entry 'Rome' points to record 2, which does not have it"
    assert messages[3] == "entry 'zed@x' points to record 9, which does not exist"
    assert (
        str(problems[0])
        == "index 'users'.by_email: missing entry: record 1 lacks its entry 'ann@x'"
    )


class UsersByName(Collection[int, User]):
    key_coder = UInt64Coder()
    name = "users"
    by_email = Index(lambda u: u.email, StringCoder(), unique=True)
    by_city = Index(lambda u: u.city, StringCoder())
    by_name = Index(lambda u: u.email.split("@")[0], StringCoder())


async def test_verify_reports_an_index_not_built(env: aiolmdb.AsyncEnvironment) -> None:
    await seeded(env)
    unbuilt = UsersByName(env)  # its new index is built by build_indexes(), not yet
    problems = await verify_collection(env, unbuilt)
    assert [(p.kind, p.where) for p in problems] == [
        (ProblemKind.MISSING_ENTRY, "index 'users'.by_name")
    ] * 3 + [(ProblemKind.NOT_BUILT, "index 'users'.by_name")]
    assert isinstance(problems[0], Problem)
