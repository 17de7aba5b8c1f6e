"""``Collection[K, M]``: a typed database declared once as a class."""

from __future__ import annotations

import typing
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel

from ..coders import Coder, PydanticCoder
from ..database import AsyncDatabase
from ..environment import AsyncEnvironment

__all__ = ["Collection"]

K = TypeVar("K")
M = TypeVar("M")


class Collection(AsyncDatabase[K, M]):
    """A database whose name, key type and value type are declared on a class.

    ::

        class Users(Collection[int, User]):
            key_coder = UInt64Coder()
            # value_coder defaults to PydanticCoder(User); name to "Users"

        users = Users(env)
        user = await users.get(1)          # User | None to mypy

    A collection is an :class:`~aiolmdb.AsyncDatabase`: it has every call
    (``get``, ``put``, ``items``, ...) typed in ``K`` and ``M``, and joins
    ``env.transaction()`` blocks like any database.

    Class attributes:

    - ``key_coder`` (required): a ``Coder[K]``; use an ordered one (integers,
      strings, tuples, ...) for range and prefix queries;
    - ``value_coder``: a ``Coder[M]``; by default ``PydanticCoder(M)`` when
      ``M`` is a pydantic model;
    - ``name``: the database's name, by default the class's name.

    Mistakes in the declaration raise ``TypeError`` when the class is defined.
    """

    key_coder: Coder[K]
    value_coder: Coder[M]
    name: str | bytes | None
    _declared_coders: ClassVar[tuple[Coder[Any], Coder[Any]] | None] = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        value_type = _value_type_argument(cls)
        if value_type is None:
            return  # still generic (a base for other collections): nothing to check yet
        key_coder = cls.__dict__.get("key_coder", getattr(cls, "key_coder", None))
        if not isinstance(key_coder, Coder):
            raise TypeError(
                f"Collection {cls.__qualname__} needs a key coder: add a class attribute "
                f"such as `key_coder = UInt64Coder()` (got {key_coder!r})"
            )
        value_coder = getattr(cls, "value_coder", None)
        if value_coder is None:
            if not (isinstance(value_type, type) and issubclass(value_type, BaseModel)):
                raise TypeError(
                    f"Collection {cls.__qualname__}: the value type {value_type!r} is not a "
                    "pydantic model, so add a class attribute `value_coder = ...` "
                    "(a Coder of that type, e.g. JSONCoder())"
                )
            value_coder = PydanticCoder(value_type)
        elif not isinstance(value_coder, Coder):
            raise TypeError(
                f"Collection {cls.__qualname__}: value_coder must be a Coder, got {value_coder!r}"
            )
        if "name" not in cls.__dict__:
            cls.name = cls.__name__
        cls._declared_coders = (key_coder, value_coder)

    def __init__(self, env: AsyncEnvironment, *, create: bool = True) -> None:
        """Open (creating unless ``create=False``) the collection's database in ``env``."""
        coders = type(self)._declared_coders
        if coders is None:
            raise TypeError(
                f"{type(self).__qualname__} is generic: subclass it as "
                "Collection[KeyType, ModelType] with a key_coder to use it"
            )
        super().__init__(env, type(self).name, coders[0], coders[1], create=create)


def _value_type_argument(cls: type) -> Any | None:
    """The concrete ``M`` of ``Collection[K, M]`` among ``cls``'s bases, if any."""
    for klass in cls.__mro__:
        for base in getattr(klass, "__orig_bases__", ()):
            if typing.get_origin(base) is not None and issubclass(
                typing.get_origin(base), Collection
            ):
                args = typing.get_args(base)
                if len(args) == 2 and not isinstance(args[1], TypeVar):
                    return args[1]
    return None
