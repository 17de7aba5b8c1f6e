"""An index extractor that raises is a bug of the application: IndexExtractorError, never
EncodeError, and nothing written, on every write, in transactions too."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Iterator

import pytest
from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import Int64Coder, StringCoder, UInt64Coder
from aiolmdb.models import Collection, Index


class Item(BaseModel):
    id: int
    name: str
    weight: int = 1
    tags: list[str] = []


def per_weight(item: Item) -> int:
    """Fails on a weight of zero: the application's bug this file is about."""
    return 100 // item.weight


def tags_of(item: Item) -> Iterator[str]:
    for tag in item.tags:
        if tag == "boom":
            raise KeyError(tag)
        yield tag


class Items(Collection[int, Item]):
    key_coder = UInt64Coder()
    by_name = Index(lambda i: i.name, StringCoder(), unique=True)
    by_ratio = Index(per_weight, Int64Coder())
    by_tag = Index(tags_of, StringCoder(), multi=True)


GOOD = {1: Item(id=1, name="one", tags=["a"]), 2: Item(id=2, name="two", weight=3)}
BAD = Item(id=9, name="nine", weight=0)


@pytest.fixture
async def items(env: aiolmdb.AsyncEnvironment) -> Items:
    collection = await Items.open(env)
    await collection.put_multi(GOOD)
    return collection


async def unchanged(items: Items, txn: aiolmdb.Transaction | None = None) -> None:
    """The records and every index hold GOOD, and only it."""
    assert dict([item async for item in items.items(txn=txn)]) == GOOD
    assert await items.by_name.count(txn=txn) == 2
    assert await items.by_ratio.count(txn=txn) == 2
    assert await items.by_tag.count(txn=txn) == 1


def check(error: pytest.ExceptionInfo[aiolmdb.IndexExtractorError], key: int) -> None:
    exc = error.value
    assert not isinstance(exc, (aiolmdb.EncodeError, TypeError, ValueError))
    assert isinstance(exc, aiolmdb.AiolmdbError)
    assert (exc.collection, exc.index, exc.key) == ("Items", "by_ratio", key)
    assert isinstance(exc.__cause__, ZeroDivisionError)
    assert str(exc) == (
        f"index 'Items'.by_ratio, key {key}: the extractor failed on a Item: "
        "ZeroDivisionError('integer division or modulo by zero')"
    )


async def test_every_write_raises_it_and_writes_nothing(items: Items) -> None:
    with pytest.raises(aiolmdb.IndexExtractorError) as error:
        await items.put(9, BAD)
    check(error, 9)
    with pytest.raises(aiolmdb.IndexExtractorError) as error:
        await items.put_multi({3: Item(id=3, name="three"), 9: BAD})
    check(error, 9)
    with pytest.raises(aiolmdb.IndexExtractorError) as error:
        await items.insert(9, BAD)
    check(error, 9)
    with pytest.raises(aiolmdb.IndexExtractorError) as error:
        await items.replace(2, BAD)
    check(error, 2)
    with pytest.raises(aiolmdb.IndexExtractorError) as error:
        await items.update(1, lambda item: item.model_copy(update={"weight": 0}))
    check(error, 1)
    await unchanged(items)


async def test_multi_extractors_that_fail_or_return_a_string(items: Items) -> None:
    with pytest.raises(aiolmdb.IndexExtractorError) as error:
        await items.put(5, Item(id=5, name="five", tags=["x", "boom"]))
    assert (error.value.index, error.value.key) == ("by_tag", 5)
    assert isinstance(error.value.__cause__, KeyError)
    assert "iterating what the extractor returned (generator) failed: KeyError('boom')" in str(
        error.value
    )

    class Strings(Collection[int, Item]):
        key_coder = UInt64Coder()
        by_name = Index(lambda i: i.name, StringCoder(), multi=True)

    class Ints(Collection[int, Item]):
        key_coder = UInt64Coder()
        by_weight = Index(lambda i: i.weight, StringCoder(), multi=True)

    strings, ints = await Strings.open(items.env), await Ints.open(items.env)
    with pytest.raises(aiolmdb.IndexExtractorError, match=r"Strings'.by_name, key 1: .*a str"):
        await strings.put(1, GOOD[1])
    with pytest.raises(aiolmdb.IndexExtractorError, match=r"by_weight.*\(int\) failed: TypeError"):
        await ints.put(1, GOOD[1])
    assert await strings.count() == 0 and await ints.count() == 0
    await unchanged(items)


async def test_a_coder_failing_on_what_the_extractor_gave_stays_an_encode_error(
    env: aiolmdb.AsyncEnvironment,
) -> None:
    class Mismatched(Collection[int, Item]):
        key_coder = UInt64Coder()
        by_weight = Index(lambda i: i.weight, StringCoder())  # an int given to a str coder

    mismatched = await Mismatched.open(env)
    with pytest.raises(aiolmdb.EncodeError, match=r"by_weight \(coder StringCoder\(\)\), key 1"):
        await mismatched.put(1, GOOD[1])
    assert await mismatched.count() == 0


@pytest.mark.parametrize("optimistic", [False, True], ids=["plain", "optimistic"])
async def test_in_a_transaction_the_call_writes_nothing_and_the_rest_commits(
    items: Items, env: aiolmdb.AsyncEnvironment, optimistic: bool
) -> None:
    async with env.transaction(optimistic=optimistic) as txn:
        with pytest.raises(aiolmdb.IndexExtractorError) as error:
            await items.put(9, BAD, txn=txn)
        check(error, 9)
        with pytest.raises(aiolmdb.IndexExtractorError):
            await items.put_multi({3: Item(id=3, name="three"), 9: BAD}, txn=txn)
        await unchanged(items, txn)
        await items.put(4, Item(id=4, name="four"), txn=txn)
    assert await items.get(4) == Item(id=4, name="four")
    assert await items.get(9) is None and await items.get(3) is None
    assert await items.by_ratio.count() == 3


@pytest.mark.parametrize("optimistic", [False, True], ids=["plain", "optimistic"])
async def test_uncaught_it_rolls_the_transaction_back(
    items: Items, env: aiolmdb.AsyncEnvironment, optimistic: bool
) -> None:
    with pytest.raises(aiolmdb.IndexExtractorError):
        async with env.transaction(optimistic=optimistic) as txn:
            await items.put(4, Item(id=4, name="four"), txn=txn)
            await items.put(9, BAD, txn=txn)
    await unchanged(items)


async def test_transact_does_not_retry_it(items: Items, env: aiolmdb.AsyncEnvironment) -> None:
    calls = 0

    async def write() -> None:
        nonlocal calls
        calls += 1
        await items.put(9, BAD)

    with pytest.raises(aiolmdb.IndexExtractorError):
        await env.transact(write)
    assert calls == 1
    await unchanged(items)


async def test_a_build_over_a_record_it_fails_on_raises_it(env: aiolmdb.AsyncEnvironment) -> None:
    class Plain(Collection[int, Item]):
        key_coder = UInt64Coder()
        name = "Later"

    await Plain(env).put_multi({1: GOOD[1], 9: BAD})

    class Later(Collection[int, Item]):
        key_coder = UInt64Coder()
        by_ratio = Index(per_weight, Int64Coder())

    later = Later(env)
    with pytest.raises(aiolmdb.IndexExtractorError) as error:
        await later.build_indexes()
    assert (error.value.collection, error.value.index, error.value.key) == ("Later", "by_ratio", 9)
    with pytest.raises(aiolmdb.IndexNotReadyError):
        await later.by_ratio.count()


def test_copies_and_pickles_keep_what_it_names() -> None:
    error = aiolmdb.IndexExtractorError("message", collection="Items", index="by_x", key=(1, "a"))
    for again in (copy.copy(error), pickle.loads(pickle.dumps(error))):
        assert (str(again), again.collection, again.index, again.key) == (
            "message",
            "Items",
            "by_x",
            (1, "a"),
        )
