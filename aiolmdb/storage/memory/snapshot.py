"""``MemorySnapshot``: one consistent read view of the memory engine, held across awaits."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from ...errors import TransactionError
from ..base import ReadView
from .image import Image
from .store import Store
from .views import MemoryReadView, run_on

__all__ = ["MemorySnapshot"]

R = TypeVar("R")


class MemorySnapshot:
    """The tables as they were when it began: later commits change only its image."""

    def __init__(
        self, store: Store, image: Image, on_end: Callable[[MemorySnapshot], None]
    ) -> None:
        self._store = store
        self._image: Image | None = image
        self._on_end = on_end

    @property
    def ended(self) -> bool:
        """True once released."""
        return self._image is None

    async def call(self, fn: Callable[[ReadView], R], *, offload: bool = False) -> R:
        """Run ``fn(view)``, on the event loop (``offload`` changes nothing: see the engine)."""
        if self._image is None:
            raise TransactionError("the read snapshot has ended")
        return run_on(MemoryReadView(self._image), fn)

    async def release(self) -> None:
        """End the snapshot."""
        self.release_now()

    def release_now(self) -> None:
        """End the snapshot (no call of it is ever in flight: calls run at once)."""
        if self._image is not None:
            image, self._image = self._image, None
            self._store.end_image(image)
            self._on_end(self)
