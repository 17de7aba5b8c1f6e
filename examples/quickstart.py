"""aiolmdb quick start: typed collections, one atomic transaction, a range query.

Run it with ``python examples/quickstart.py``; it works in a temporary
directory that is removed afterwards.
"""

from __future__ import annotations

import asyncio
import tempfile
from datetime import datetime, timezone

from pydantic import BaseModel

import aiolmdb
from aiolmdb.coders import DateTimeCoder, TupleCoder, UInt64Coder
from aiolmdb.models import Collection


class User(BaseModel):
    id: int
    email: str
    name: str


class Order(BaseModel):
    user_id: int
    item: str
    total: float


class Users(Collection[int, User]):
    key_coder = UInt64Coder()


class Orders(Collection[tuple[int, datetime], Order]):
    """Orders keyed by (user id, time): one user's orders sort together, oldest first."""

    key_coder = TupleCoder(UInt64Coder(), DateTimeCoder())


async def main() -> None:
    with tempfile.TemporaryDirectory() as path:
        async with aiolmdb.open(path) as env:
            users, orders = Users(env), Orders(env)

            # Both collections commit together, or neither does.
            async with env.transaction():
                await users.put(1, User(id=1, email="ada@example.com", name="Ada"))
                await users.put(2, User(id=2, email="alan@example.com", name="Alan"))
                for day, (item, total) in enumerate([("tea", 4.5), ("cake", 3.0), ("pie", 5.25)]):
                    when = datetime(2026, 11, 1 + day, 12, tzinfo=timezone.utc)
                    await orders.put((1, when), Order(user_id=1, item=item, total=total))
                await orders.put(
                    (2, datetime(2026, 11, 2, tzinfo=timezone.utc)),
                    Order(user_id=2, item="scone", total=2.0),
                )

            user = await users.get(1)
            assert user is not None
            print(f"user 1: {user.name} <{user.email}>")

            print("Ada's orders:")
            async for (_user_id, when), order in orders.items(prefix=(1,)):
                print(f"  {when:%Y-%m-%d} {order.item:<5} {order.total:6.2f}")

            since = datetime(2026, 11, 2, tzinfo=timezone.utc)
            recent = [o.item async for o in orders.values(start=(1, since), stop=(2, since))]
            print(f"Ada's orders since {since:%Y-%m-%d}: {recent}")
            print(f"{await users.count()} users, {await orders.count()} orders")


if __name__ == "__main__":
    asyncio.run(main())
