"""The memory engine's table keeps its keys in order however writes and reads interleave."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from aiolmdb.storage.memory.table import Table

KEYS = st.binary(min_size=1, max_size=3)
OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("set"), KEYS),
        st.tuples(st.just("remove"), KEYS),
        st.tuples(st.just("read"), KEYS),
    ),
    max_size=200,
)


@settings(max_examples=200, deadline=None)
@given(OPERATIONS)
def test_keys_are_the_stored_keys_in_byte_order(operations: list[tuple[str, bytes]]) -> None:
    table = Table("t")
    model: dict[bytes, bytes] = {}
    for operation, key in operations:
        if operation == "set":
            table.set(key, key)
            model[key] = key
        elif operation == "remove":
            assert table.remove(key) == (model.pop(key, None) is not None)
        else:  # an ordered read in between: the lazily merged list must be right
            assert table.keys == sorted(model)
            assert table.count(key, None) == sum(1 for stored in model if stored >= key)
    assert table.keys == sorted(model)
    assert table.count(None, None) == len(model)
    table.clear()
    assert table.keys == [] and table.count(None, None) == 0
