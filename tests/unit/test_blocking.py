import asyncio
import contextvars
import threading

import pytest

from services.core.blocking import Blocking

_var: contextvars.ContextVar[str] = contextvars.ContextVar("v", default="unset")


async def test_runs_off_the_loop_with_the_callers_context() -> None:
    pool = Blocking("t", 2)
    _var.set("request-7")
    loop_thread = threading.get_ident()
    thread, value = await pool.run(lambda: (threading.get_ident(), _var.get()))
    assert thread != loop_thread and value == "request-7"
    pool.shutdown()


async def test_exceptions_reach_the_caller() -> None:
    pool = Blocking("t", 1)
    with pytest.raises(ZeroDivisionError):
        await pool.run(lambda: 1 / 0)
    pool.shutdown()


async def test_bounded_workers_run_jobs_concurrently_up_to_the_bound() -> None:
    pool = Blocking("t", 2)
    barrier = threading.Barrier(2, timeout=5)
    running = 0
    peak = 0
    lock = threading.Lock()

    def job() -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        barrier.wait()  # two jobs must be in flight at once, or this times out
        with lock:
            running -= 1

    await asyncio.gather(*(pool.run(job) for _ in range(4)))
    assert peak == 2
    pool.shutdown()


async def test_a_cancelled_caller_does_not_break_the_pool() -> None:
    pool = Blocking("t", 1)
    gate = threading.Event()
    task = asyncio.ensure_future(pool.run(gate.wait, 5))
    await asyncio.sleep(0.01)
    task.cancel()
    gate.set()
    assert await pool.run(lambda: 42) == 42
    pool.shutdown()
