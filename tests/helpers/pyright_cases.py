"""The typing cases of tests/typing/*.yml, written for pytest-mypy-plugins, checked
with pyright.

A case's ``main`` carries mypy's expectations as comments: ``# E: message`` on a
line mypy rejects and ``# N: Revealed type is "T"`` on a ``reveal_type``. Under
pyright the same must hold: an error on every ``# E:`` line and on no other (the
wording differs, so only the line counts), and each revealed type, in pyright's
spelling (:func:`pyright_spelling`). Where the two checkers legitimately differ,
the line says what pyright reveals as well, and why:
``# N: Revealed type is "..." # pyright: Revealed type is "..." (why)``
(pytest-mypy-plugins reads only ``E``, ``N`` and ``W`` comments, and pyright reads
``# pyright:`` comments only on lines of their own).

All cases are written as modules of one temporary project and checked by one pyright
run: pyright takes seconds to start and to load aiolmdb's types, once per case would
be slow.
"""

from __future__ import annotations

import enum
import json
import re
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "CaseResult",
    "Expectations",
    "Mismatch",
    "MismatchKind",
    "TypingCase",
    "expectations",
    "load_cases",
    "mismatches",
    "pyright_spelling",
    "run_pyright",
]

ROOT = Path(__file__).resolve().parents[2]

# The keys of a case this check understands; any other (files, parametrized, out,
# env...) would change what the case means, so it is refused rather than ignored.
_CASE_KEYS = {"case", "main"}

# pytest-mypy-plugins' own reading of an expectation comment: "E: message",
# "E:3: message" (with a column), "ER: regex".
_EXPECTATION = re.compile(r"^(?P<severity>[ENW])R?:(?:\d+:)? (?P<message>.*)$")
_REVEALED = re.compile(r'^Revealed type is "(?P<type>.*)"')
_PYRIGHT_OVERRIDE = re.compile(r'^pyright: Revealed type is "(?P<type>[^"]*)"')
# pyright's message for reveal_type(expression): Type of "expression" is "type".
_PYRIGHT_REVEALED = re.compile(r'^Type of ".*" is "(?P<type>.*)"$', re.DOTALL)
# A dotted module path in front of a name: "aiolmdb.database." in
# "aiolmdb.database.AsyncDatabase", "builtins." in "builtins.int", "main." in "main.User".
_MODULE_PATH = re.compile(r"\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_])")

# What users' editors show with pyright at its strictest: strict mode reports all that
# basic and standard mode do, and also library types that reach user code partly
# unknown. The cases import names and bind variables only to show their types, so the
# unused-name reports are off. No stubPath: users do not have the checkout's stubs/.
PYRIGHT_CONFIG: dict[str, Any] = {
    "typeCheckingMode": "strict",
    "reportUnusedImport": False,
    "reportUnusedVariable": False,
    # As mypy.ini's python_version: the oldest Python aiolmdb supports.
    "pythonVersion": "3.10",
}


def pyright_spelling(mypy_type: str) -> str:
    """A type as mypy reveals it, spelt as pyright reveals it.

    mypy names a class with its module ("aiolmdb.database.AsyncDatabase[int, str]",
    "builtins.int", "main.User"), pyright by its name alone ("AsyncDatabase[int, str]",
    "int", "User"). Other differences (how callables or literals are written) are
    rare in these cases; a line that has one says what pyright reveals.
    """
    return _MODULE_PATH.sub("", mypy_type)


@dataclass(frozen=True)
class TypingCase:
    """One case: its name and the code of its ``main`` module."""

    name: str
    main: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Expectations:
    """What a case's comments expect of pyright: the lines with an error, and the type
    each reveal_type line reveals (pyright's spelling)."""

    error_lines: frozenset[int]
    reveals: dict[int, str]


def load_cases(directory: Path) -> list[TypingCase]:
    """The cases of every ``*.yml`` file in ``directory``, in file order."""
    cases: list[TypingCase] = []
    for source in sorted(directory.glob("*.yml")):
        for entry in yaml.safe_load(source.read_text()):
            unknown = set(entry) - _CASE_KEYS
            if unknown:
                raise ValueError(
                    f"typing case {entry.get('case')!r} in {source.name} uses "
                    f"{sorted(unknown)}, which the pyright check does not understand"
                )
            cases.append(TypingCase(entry["case"], entry["main"]))
    return cases


def expectations(case: TypingCase) -> Expectations:
    """Read the expectation comments of ``case``'s lines (numbered from 1)."""
    error_lines: set[int] = set()
    reveals: dict[int, str] = {}
    for number, line in enumerate(case.main.splitlines(), start=1):
        override: str | None = None
        for comment in line.split(" # ")[1:]:
            comment = comment.strip()
            pinned = _PYRIGHT_OVERRIDE.match(comment)
            if pinned:
                override = pinned["type"]
                continue
            expected = _EXPECTATION.match(comment)
            if expected is None:
                continue
            if expected["severity"] in "EW":
                error_lines.add(number)
                continue
            # Other notes are what mypy adds to an error ('"f" defined in "module"').
            revealed = _REVEALED.match(expected["message"])
            if revealed:
                reveals[number] = pyright_spelling(revealed["type"])
        if override is not None:
            if number not in reveals:
                raise ValueError(
                    f"typing case {case.name!r}, line {number}: a pyright override "
                    f'needs a # N: Revealed type is "..." to override: {line.strip()}'
                )
            reveals[number] = override
    return Expectations(frozenset(error_lines), reveals)


@dataclass
class CaseResult:
    """What pyright reported on one case's module: errors and warnings by line, and
    the type revealed on each reveal_type line."""

    errors: dict[int, list[str]] = field(default_factory=dict)
    reveals: dict[int, str] = field(default_factory=dict)


def _installed_environment(directory: Path) -> None:
    """Make ``directory`` a virtual environment, as pyright reads one, with the
    checkout's aiolmdb installed in it, over this interpreter's site-packages.

    pyright then sees aiolmdb as users' editors do, an installed package marked
    py.typed (whose unannotated names it infers less than those of a project's own
    code); and it does not follow the import hook of an editable install.
    """
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site_packages = directory / "lib" / version / "site-packages"
    site_packages.mkdir(parents=True)
    (site_packages / "aiolmdb").symlink_to(ROOT / "aiolmdb", target_is_directory=True)
    # pyright adds the directories a .pth file names, as Python's site module does.
    paths = sysconfig.get_paths()
    libraries = dict.fromkeys([paths["purelib"], paths["platlib"]])
    (site_packages / "dependencies.pth").write_text("".join(f"{path}\n" for path in libraries))


def run_pyright(cases: list[TypingCase], directory: Path) -> dict[str, CaseResult]:
    """Write each case as a module of one project under ``directory``, check them all
    with one pyright run, and give what it reported, by case name."""
    _installed_environment(directory / "env")
    project = directory / "project"
    project.mkdir()
    for case in cases:
        (project / f"{case.name}.py").write_text(case.main)
    config = project / "pyrightconfig.json"
    config.write_text(
        json.dumps({**PYRIGHT_CONFIG, "venvPath": str(directory), "venv": "env"}, indent=2)
    )
    run = subprocess.run(
        [sys.executable, "-m", "pyright", "--outputjson", "--project", str(config)],
        cwd=project,
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        report = json.loads(run.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(
            f"pyright did not run (exit status {run.returncode}):\n{run.stdout}\n{run.stderr}"
        ) from None
    analyzed = report["summary"]["filesAnalyzed"]
    if analyzed != len(cases):
        raise RuntimeError(f"pyright checked {analyzed} files, not the {len(cases)} cases")
    results = {case.name: CaseResult() for case in cases}
    for diagnostic in report["generalDiagnostics"]:
        result = results[Path(diagnostic["file"]).stem]
        line = diagnostic["range"]["start"]["line"] + 1
        message = diagnostic["message"]
        if diagnostic["severity"] in ("error", "warning"):
            result.errors.setdefault(line, []).append(message)
            continue
        revealed = _PYRIGHT_REVEALED.match(message)
        if revealed:
            result.reveals[line] = revealed["type"]
    return results


class MismatchKind(enum.Enum):
    """How pyright's report on a line differs from the case's expectations."""

    MISSING_ERROR = "mypy expects an error, pyright reports none"
    UNEXPECTED_ERROR = "pyright reports an error mypy does not expect"
    WRONG_REVEAL = "pyright reveals another type"
    MISSING_REVEAL = "pyright reveals no type"
    UNEXPECTED_REVEAL = "pyright reveals a type no comment expects"


@dataclass(frozen=True)
class Mismatch:
    """One line of a case where pyright disagrees with the case's comments."""

    line: int
    kind: MismatchKind
    detail: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.kind.value}: {self.detail}"


def mismatches(case: TypingCase, result: CaseResult) -> list[Mismatch]:
    """Every line of ``case`` where ``result`` differs from its comments, in line order."""
    expected = expectations(case)
    lines = case.main.splitlines()
    found: list[Mismatch] = []
    for line in sorted(expected.error_lines | set(result.errors)):
        if line not in result.errors:
            found.append(Mismatch(line, MismatchKind.MISSING_ERROR, lines[line - 1].strip()))
        elif line not in expected.error_lines:
            messages = " / ".join(result.errors[line])
            found.append(Mismatch(line, MismatchKind.UNEXPECTED_ERROR, messages))
    for line in sorted(set(expected.reveals) | set(result.reveals)):
        want, got = expected.reveals.get(line), result.reveals.get(line)
        if want is None:
            found.append(Mismatch(line, MismatchKind.UNEXPECTED_REVEAL, f"{got!r}"))
        elif got is None:
            found.append(Mismatch(line, MismatchKind.MISSING_REVEAL, f"expected {want!r}"))
        elif got != want:
            found.append(Mismatch(line, MismatchKind.WRONG_REVEAL, f"{got!r}, expected {want!r}"))
    return sorted(found, key=lambda mismatch: mismatch.line)
