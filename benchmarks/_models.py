"""The 5-field model of W2/W6 and the typed collection that stores it."""

from __future__ import annotations

import random

from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import PydanticCoder, UInt64Coder

__all__ = ["User", "encode_user_key", "make_users", "open_users"]


class User(BaseModel):
    """Five fields: int, str, str, float, bool."""

    id: int
    name: str
    email: str
    score: float
    active: bool


def make_users(n: int, seed: int) -> list[tuple[int, User]]:
    rng = random.Random(seed)
    users: list[tuple[int, User]] = []
    for i in range(n):
        name = f"user-{rng.getrandbits(40):010x}"
        user = User(
            id=i,
            name=name,
            email=f"{name}@example.com",
            score=rng.random() * 1000.0,
            active=rng.random() < 0.5,
        )
        users.append((i, user))
    return users


def encode_user_key(key: int) -> bytes:
    """What ``UInt64Coder`` stores: 8 bytes big-endian (so sync baselines can do the same)."""
    return key.to_bytes(8, "big")


def encode_user(user: User) -> bytes:
    """The JSON ``PydanticCoder(User)`` stores (used to preload every contender alike)."""
    return user.model_dump_json().encode()


def open_users(env: aiolmdb.AsyncEnvironment) -> tuple[aiolmdb.AsyncDatabase[int, User], str]:
    """The ``Users`` collection of ``env``, and how it was opened.

    Uses ``aiolmdb.models.Collection``; while that layer does not import or
    work yet, falls back to ``env.open_db("Users", ...)`` with the same coders
    and says so.
    """
    try:
        from aiolmdb.models import Collection

        class Users(Collection[int, User]):
            key_coder = UInt64Coder()

        return Users(env), "Collection[int, User]"
    except Exception as exc:  # the model layer is being written concurrently
        db = env.open_db("Users", key_coder=UInt64Coder(), value_coder=PydanticCoder(User))
        return db, f"open_db fallback (aiolmdb.models unusable: {type(exc).__name__}: {exc})"
