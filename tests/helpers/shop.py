"""An application's collections, as the console tests decode through them.

The logic tests import them; the console tests copy this file into the current
directory as ``shop.py``, where ``--collection shop:Users`` finds it, as it would
an application's own module.
"""

from __future__ import annotations

from pydantic import BaseModel

from aiolmdb.coders import StringCoder, UInt64Coder
from aiolmdb.models import Collection, Index


class User(BaseModel):
    id: int
    email: str
    city: str


class Users(Collection[int, User]):
    key_coder = UInt64Coder()
    name = "users"
    by_email = Index(lambda u: u.email, StringCoder(), unique=True)
    by_city = Index(lambda u: u.city, StringCoder())


class Mismatch(BaseModel):
    id: int
    size: float


class WrongUsers(Collection[int, Mismatch]):
    """The users' database read as something else: a model that does not match the data."""

    key_coder = UInt64Coder()
    name = "users"
