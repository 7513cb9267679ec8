"""A throwaway redis-server (Debian's package; `.ci/run` installs it) on a free loopback port,
in a temp folder, with nothing saved to disk; and a RedisQueue with real `pintor worker`
processes (generation.redis_worker, spawned, the tiny models on the CPU) over it."""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import redis

from generation.files import FileStore
from generation.redis_queue import RedisKeys, RedisQueue, list_workers
from generation.redis_worker import run_redis_worker
from generation.worker import WorkerConfig

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
HEARTBEAT_TIMEOUT_S = 2.0  # short in tests: a killed worker's job is taken over within seconds
START_TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A redis-server for the block; yields its URL (redis://127.0.0.1:PORT/0)."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder), "--save", "",
         "--appendonly", "no", "--protected-mode", "yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        client = redis.Redis.from_url(url)
        deadline = time.monotonic() + 20
        while True:  # a poll with a deadline: the server answers within milliseconds
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start (exit {process.poll()})") from None
                time.sleep(0.02)
        client.close()
        yield url
    finally:
        process.terminate()
        process.wait(10)


def spawn_worker(url: str, config: WorkerConfig, name: str, prefix: str = "pintor") -> BaseProcess:
    """A worker process (as `pintor worker` runs), spawned."""
    ctx = multiprocessing.get_context("spawn")
    process = ctx.Process(target=run_redis_worker, args=(url, config, name, prefix, HEARTBEAT_TIMEOUT_S),
                          name=f"pintor-{name}", daemon=True)
    process.start()
    return process


async def wait_for_workers(url: str, names: set[str], prefix: str = "pintor",
                           timeout: float = START_TIMEOUT_S) -> None:
    """Until every named worker says it is ready (its heartbeat hash)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        async with asyncio.timeout(timeout):
            while not names <= {w.name for w in await list_workers(client, RedisKeys(prefix)) if w.ready}:
                await asyncio.sleep(0.1)
    finally:
        await client.aclose()


def stop_process(process: BaseProcess, timeout: float = 60) -> None:
    if process.is_alive():
        process.terminate()
        process.join(timeout)
    if process.is_alive():
        process.kill()
        process.join(10)


@asynccontextmanager
async def redis_queue_with_worker(root: Path, files: FileStore, registry_file: Path, workers: int = 1,
                                  **config: Any) -> AsyncIterator[RedisQueue]:
    """A RedisQueue (not started) over a fresh redis-server, with `workers` worker processes
    already ready; all stopped on the way out."""
    with redis_server(root / "redis") as url:
        processes = []
        try:
            names = set()
            for n in range(workers):
                name = f"w{n + 1}"
                worker_config = WorkerConfig(output_dir=str(root / f"cache-{name}"), registry_path=str(registry_file),
                                             device="cpu", **config)
                processes.append(spawn_worker(url, worker_config, name))
                names.add(name)
            await wait_for_workers(url, names)
            yield RedisQueue(url, files, heartbeat_timeout_s=HEARTBEAT_TIMEOUT_S)
        finally:
            for process in processes:
                await asyncio.to_thread(stop_process, process)
