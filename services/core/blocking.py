"""Bounded thread pools for blocking clients (psycopg2, sqlite3, argon2, minio, kafka-python).

Blocking calls never run on the event loop; each dependency gets its own small pool, so one slow
dependency cannot starve the others. The hop is hand-rolled (a SimpleQueue in, call_soon_threadsafe out)
rather than loop.run_in_executor: it skips the concurrent.futures.Future and its chaining, a real share of
the CPU a call costs on the data service's hot path.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_Job = tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], contextvars.Context, Callable[[], Any]]


class Blocking:
    def __init__(self, name: str, max_workers: int = 4) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"lp-{name}_{i}", daemon=True)
            for i in range(max_workers)
        ]
        for thread in self._threads:
            thread.start()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Runs fn in the pool, with the caller's contextvars (request id for logs)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._jobs.put((loop, future, contextvars.copy_context(), lambda: fn(*args, **kwargs)))
        return await future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            loop, future, context, call = job
            try:
                result = context.run(call)
            except BaseException as exc:
                _resolve(loop, future, _set_exception, exc)
            else:
                _resolve(loop, future, _set_result, result)

    def shutdown(self) -> None:
        for _ in self._threads:
            self._jobs.put(None)


def _resolve(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any], setter: Any, value: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop closed while the job ran: nobody is waiting
        loop.call_soon_threadsafe(setter, future, value)


def _set_result(future: asyncio.Future[Any], value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _set_exception(future: asyncio.Future[Any], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
