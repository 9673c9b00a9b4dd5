"""Micro-benchmark: unary calls/s through the kit interceptor, in-process channel vs a loopback grpc.aio channel.

    PYTHONPATH=generated:. .venv/bin/python -m tests.bench_inproc [seconds per case]

Same server (create_server on port 0, a trivial DataService.Query), same stub code; prints calls/s at 1 and
32 in flight, and what the bytes hop (serialize + parse of request and response) costs per call.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from typing import Any

import uvloop

from launchpad.data.v1 import data_pb2, data_pb2_grpc
from services.core.server import Runtime, ServiceSpec
from tests.support import make_token, metadata, running_service


class _Data(data_pb2_grpc.DataServiceServicer):
    async def Query(self, request: Any, context: Any) -> data_pb2.QueryResponse:
        return data_pb2.QueryResponse(columns=[data_pb2.Column(name="?column?", type="integer")], row_count=1)


async def _build(runtime: Runtime) -> list[ServiceSpec]:
    descriptor = data_pb2.DESCRIPTOR.services_by_name["DataService"]
    return [ServiceSpec(descriptor, _Data(), data_pb2_grpc.add_DataServiceServicer_to_server)]


async def _rate(stub: Any, md: Any, seconds: float, inflight: int) -> float:
    request = data_pb2.QueryRequest(sql="SELECT 1")
    count = 0
    end = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal count
        while time.perf_counter() < end:
            await stub.Query(request, metadata=md)
            count += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return count / (time.perf_counter() - started)


def _hop_cost_us(rounds: int = 100_000) -> float:
    request = data_pb2.QueryRequest(sql="SELECT 1")
    response = data_pb2.QueryResponse(columns=[data_pb2.Column(name="?column?", type="integer")], row_count=1)
    started = time.perf_counter()
    for _ in range(rounds):
        data_pb2.QueryRequest.FromString(request.SerializeToString())
        data_pb2.QueryResponse.FromString(response.SerializeToString())
    return (time.perf_counter() - started) / rounds * 1e6


async def main(seconds: float) -> None:
    md = metadata(make_token())
    async with running_service("data", _build) as (runtime, real):
        assert runtime.inproc is not None
        inproc = runtime.inproc.channel()
        stubs = {
            "inproc": data_pb2_grpc.DataServiceStub(inproc),
            "loopback": data_pb2_grpc.DataServiceStub(real),
        }
        for stub in stubs.values():
            await _rate(stub, md, 0.3, 4)  # warm-up
        for inflight in (1, 32):
            rates = {name: await _rate(stub, md, seconds, inflight) for name, stub in stubs.items()}
            ratio = rates["inproc"] / rates["loopback"]
            print(
                f"{inflight:>2} in flight: inproc {rates['inproc']:8.0f} calls/s   "
                f"loopback {rates['loopback']:8.0f} calls/s   ({ratio:.2f}x)"
            )
        await inproc.close()
    print(f"bytes hop (serialize + parse request and response): {_hop_cost_us():.2f} us per call")


if __name__ == "__main__":
    folder = tempfile.mkdtemp(prefix="bench-inproc-")
    os.environ.setdefault("LAUNCHPAD_DATA_DIR", f"{folder}/data")
    os.environ.setdefault("LAUNCHPAD_LOG_DIR", f"{folder}/logs")
    uvloop.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else 3.0))
