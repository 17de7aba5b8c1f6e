"""The app served in process: its lifespan run, and an httpx client talking ASGI to it.

For tests, and to try the app without a server: nothing listens on a port.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from .app import Store

#: The base URL of requests to the app served in process (no name is looked up).
BASE_URL = "http://ledger"


@dataclass(frozen=True)
class Served:
    """A client of the app, and the store its lifespan opened."""

    client: httpx.AsyncClient
    store: Store


@asynccontextmanager
async def in_process(app: FastAPI) -> AsyncIterator[Served]:
    """Run ``app``'s lifespan, and give a client of it until the block ends.

    httpx's ASGI transport runs no lifespan of its own: this does, and, as a
    server does, hands each request a copy of the state the lifespan yielded.
    """
    async with app.router.lifespan_context(app) as state:
        if state is None or not isinstance(state.get("store"), Store):
            raise RuntimeError(f"the lifespan of {app.title!r} yielded no store: {state!r}")
        store: Store = state["store"]

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            await app({**scope, "state": dict(state)}, receive, send)

        transport = httpx.ASGITransport(app=with_state)
        async with httpx.AsyncClient(transport=transport, base_url=BASE_URL) as client:
            yield Served(client, store)
