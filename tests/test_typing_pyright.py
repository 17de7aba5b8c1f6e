"""The typing cases (tests/typing/*.yml) hold under pyright as they do under mypy:
the same lines rejected, the same types revealed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from helpers.pyright_cases import (
    CaseResult,
    MismatchKind,
    TypingCase,
    load_cases,
    mismatches,
    pyright_spelling,
    run_pyright,
)

CASES = load_cases(Path(__file__).parent / "typing")

# Comments wrong in each way the check must notice, and one override it must honour;
# checked in the same pyright run as the cases.
WRONG = TypingCase(
    "comments_the_check_must_refuse",
    textwrap.dedent(
        """\
        def demo(number: int, text: str) -> None:
            reveal_type(number)  # N: Revealed type is "builtins.str"
            reveal_type(text)
            text.upper()  # E: Not an error at all
            number.upper()
            print(number)  # N: Revealed type is "builtins.int"
            reveal_type(text)  # N: Revealed type is "bytes" # pyright: Revealed type is "str"
        """
    ),
)


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CaseResult]:
    return run_pyright([*CASES, WRONG], tmp_path_factory.mktemp("pyright"))


@pytest.mark.parametrize("case", CASES, ids=str)
def test_typing_case_holds_under_pyright(case: TypingCase, reports: dict[str, CaseResult]) -> None:
    found = mismatches(case, reports[case.name])
    assert not found, f"{case.name}:\n" + "\n".join(map(str, found))


def test_the_cases_are_those_of_the_mypy_typing_tests() -> None:
    names = [case.name for case in CASES]
    assert "index_types_follow_declaration" in names
    assert len(names) == len(set(names))


def test_every_wrong_comment_is_a_mismatch(reports: dict[str, CaseResult]) -> None:
    found = mismatches(WRONG, reports[WRONG.name])
    assert [(mismatch.line, mismatch.kind) for mismatch in found] == [
        (2, MismatchKind.WRONG_REVEAL),
        (3, MismatchKind.UNEXPECTED_REVEAL),
        (4, MismatchKind.MISSING_ERROR),
        (5, MismatchKind.UNEXPECTED_ERROR),
        (6, MismatchKind.MISSING_REVEAL),
    ]
    assert str(found[0]) == "line 2: pyright reveals another type: 'int', expected 'str'"
    assert str(found[2]) == (
        "line 4: mypy expects an error, pyright reports none: "
        "text.upper()  # E: Not an error at all"
    )
    assert 'Cannot access attribute "upper" for class "int"' in found[3].detail


@pytest.mark.parametrize(
    ("mypy", "pyright"),
    [
        ("aiolmdb.database.AsyncDatabase[builtins.int, builtins.str]", "AsyncDatabase[int, str]"),
        ("main.User | None", "User | None"),
        ("tuple[builtins.int, main.User]", "tuple[int, User]"),
        ("aiolmdb.coders.base.Coder[str]", "Coder[str]"),
        ("dict[int, str | None]", "dict[int, str | None]"),
    ],
)
def test_mypy_spelling_maps_to_pyright(mypy: str, pyright: str) -> None:
    assert pyright_spelling(mypy) == pyright
