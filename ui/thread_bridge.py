"""Consume a blocking iterator (a model's token stream) from async code without blocking the loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")
_END = object()


async def iterate_in_thread(make: Callable[[], Iterator[T]], *, stop: threading.Event) -> AsyncIterator[T]:
    """The items of ``make()``, produced in a worker thread; an error there is raised here. When the
    consumer stops early, ``stop`` is set so the producer (a generation given ``cancel=stop``) ends too."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[object] = asyncio.Queue()

    def produce() -> None:
        try:
            for item in make():
                loop.call_soon_threadsafe(queue.put_nowait, item)
                if stop.is_set():
                    break
            loop.call_soon_threadsafe(queue.put_nowait, _END)
        except BaseException as error:  # handed to the consumer
            loop.call_soon_threadsafe(queue.put_nowait, error)

    worker = threading.Thread(target=produce, name="deepscout-stream", daemon=True)
    worker.start()
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]
    finally:
        stop.set()
