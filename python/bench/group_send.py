"""group_send through GroupcastChannelLayer against channels_redis's
RedisChannelLayer on the same machine: calls per second and latency per
call, from sync code (async_to_sync, as in a Django view or a Celery task)
and from async code (sequential awaits, and concurrent ones).

    /usr/bin/python3 python/bench/group_send.py --groupcast /tmp/gc --calls 3000 --members 10

It starts the groupcast binary (embedded NATS) and a redis-server on free
ports; with --members N each group has N members: N WebSocket connections
read by a separate process for groupcast, N channel names in the Redis
group for channels_redis (their messages wait in Redis, as for consumers
that are slower than the loop). --pin puts the servers on core 0 and the
caller on core 1.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Awaitable, Callable

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from asgiref.sync import async_to_sync  # noqa: E402

from groupcast.client import Client  # noqa: E402
from groupcast.layers import GroupcastChannelLayer  # noqa: E402
from groupcast.testing import GroupcastServer, free_port  # noqa: E402

READER = r"""
import asyncio, sys, json, websockets
async def main(url, group, n):
    socks = [await websockets.connect(url, max_size=None) for _ in range(n)]
    for ws in socks:
        await ws.recv()
        await ws.send(json.dumps({"type": "join", "group": group, "id": 1}))
        while '"ack"' not in await ws.recv():
            pass
    print("ready", flush=True)
    async def drain(ws):
        async for _ in ws:
            pass
    await asyncio.gather(*(drain(ws) for ws in socks))
asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def summary(name: str, lat: list[float], wall: float, calls: int) -> str:
    lat = sorted(lat)
    p = lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] * 1e6  # noqa: E731
    return (f"{name:<44} {calls / wall:>9,.0f} calls/s   p50 {p(0.50):>6.0f} µs   p99 {p(0.99):>6.0f} µs"
            f"   mean {statistics.fmean(lat) * 1e6:>6.0f} µs")


def bench_sync(send: Callable[..., Any], group: str, calls: int, wrap: bool = True) -> tuple[list[float], float]:
    f = async_to_sync(send) if wrap else send
    for _ in range(min(200, calls // 10)):  # warm up
        f(group, {"type": "chat.message", "text": "warm"})
    lat = []
    t0 = time.perf_counter()
    for i in range(calls):
        t = time.perf_counter()
        f(group, {"type": "chat.message", "text": "hello", "n": i})
        lat.append(time.perf_counter() - t)
    return lat, time.perf_counter() - t0


def bench_blocking(send: Callable[..., Any], group: str, calls: int) -> tuple[list[float], float]:
    return bench_sync(send, group, calls, wrap=False)


def bench_async(send: Callable[..., Awaitable[Any]], group: str, calls: int, concurrency: int) -> tuple[list[float], float]:
    async def run() -> tuple[list[float], float]:
        for _ in range(min(200, calls // 10)):
            await send(group, {"type": "chat.message", "text": "warm"})
        lat: list[float] = []

        async def worker(k: int) -> None:
            for i in range(k, calls, concurrency):
                t = time.perf_counter()
                await send(group, {"type": "chat.message", "text": "hello", "n": i})
                lat.append(time.perf_counter() - t)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker(k) for k in range(concurrency)))
        return lat, time.perf_counter() - t0

    return asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--groupcast", required=True, help="path to a groupcast binary")
    ap.add_argument("--redis-server", default=shutil.which("redis-server") or "/usr/bin/redis-server")
    ap.add_argument("--calls", type=int, default=3000)
    ap.add_argument("--members", type=int, default=10)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--pin", action="store_true", help="servers on core 0, this process on core 1")
    args = ap.parse_args()

    def pinned(cmd: list[str]) -> list[str]:
        return ["taskset", "-c", "0", *cmd] if args.pin else cmd

    if args.pin:
        os.sched_setaffinity(0, {1})
    from channels_redis.core import RedisChannelLayer

    rport = free_port()
    rdir = tempfile.mkdtemp()
    redis = subprocess.Popen(pinned([args.redis_server, "--port", str(rport), "--save", "", "--appendonly", "no",
                                     "--dir", rdir]), stdout=subprocess.DEVNULL)
    gc = GroupcastServer(args.groupcast, prefix=["taskset", "-c", "0"] if args.pin else ()).start()
    try:
        group = "bench.room"
        reader = None
        if args.members:
            reader = subprocess.Popen(pinned([sys.executable, "-c", READER, gc.ws_url, group, str(args.members)]),
                                      stdout=subprocess.PIPE, text=True)
            assert reader.stdout and reader.stdout.readline().strip() == "ready"
        ours = GroupcastChannelLayer(gc.url)
        theirs = RedisChannelLayer(hosts=[("127.0.0.1", rport)])
        for _ in range(50):
            try:
                async_to_sync(theirs.group_send)("probe", {"type": "x"})
                break
            except Exception:
                time.sleep(0.1)
        for i in range(args.members):
            async_to_sync(theirs.group_add)(group, f"bench.member{i}!")
        print(f"group_send, {args.calls} calls, a group of {args.members} members, "
              f"{os.cpu_count()} cores{', pinned' if args.pin else ''}")
        async def noop(group: str, message: dict[str, Any]) -> None:
            pass

        lat, wall = bench_sync(noop, group, args.calls)
        print(summary("async_to_sync of a no-op (the floor)", lat, wall, args.calls))
        api = Client(gc.url)
        lat, wall = bench_blocking(api.publish, group, args.calls)
        print(summary("groupcast Client.publish (no async_to_sync)", lat, wall, args.calls))
        for label, layer in (("groupcast", ours), ("channels_redis", theirs)):
            lat, wall = bench_sync(layer.group_send, group, args.calls)
            print(summary(f"{label}: sync, async_to_sync", lat, wall, args.calls))
            lat, wall = bench_async(layer.group_send, group, args.calls, 1)
            print(summary(f"{label}: async, one at a time", lat, wall, args.calls))
            lat, wall = bench_async(layer.group_send, group, args.calls, args.concurrency)
            print(summary(f"{label}: async, {args.concurrency} concurrent", lat, wall, args.calls))
        if reader:
            reader.kill()
    finally:
        gc.stop()
        redis.terminate()
        redis.wait()
        shutil.rmtree(rdir, ignore_errors=True)


if __name__ == "__main__":
    main()
