"""Every error aiolmdb raises can be caught by its name in the ``aiolmdb`` package."""

from __future__ import annotations

import inspect

import aiolmdb
from aiolmdb import errors


def test_every_public_error_class_is_exported_from_the_package() -> None:
    defined = {
        name
        for name, value in vars(errors).items()
        if inspect.isclass(value)
        and issubclass(value, aiolmdb.AiolmdbError)
        and value.__module__ == errors.__name__
        and not name.startswith("_")
    }
    missing = sorted(
        name for name in defined if getattr(aiolmdb, name, None) is not vars(errors)[name]
    )
    assert missing == []
    assert defined <= set(aiolmdb.__all__)
    assert {
        "RetryableError",
        "ConnectionLostError",
        "CommitUnknownError",
        "UnavailableError",
    } <= defined
