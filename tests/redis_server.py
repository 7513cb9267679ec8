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


class RedisServer:
    """A redis-server on one loopback port and folder that a test can stop and start again:
    with its data (`persist`: an append-only file, fsynced at every write) or without."""

    def __init__(self, folder: Path, persist: bool = False):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder, self.persist = folder, persist
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, persist: bool | None = None) -> None:
        if persist is not None:
            self.persist = persist
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else ["--appendonly", "no"]
        if not self.persist:  # a start without its data
            shutil.rmtree(self.folder / "appendonlydir", ignore_errors=True)
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--save", "", *aof, "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 20
        while True:  # a poll with a deadline: the server answers within milliseconds
            try:
                client.ping()
                break
            except (redis.ConnectionError, redis.exceptions.BusyLoadingError):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start (exit {self.process.poll()})") from None
                time.sleep(0.02)
        client.close()

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()  # SIGTERM: connections end, as at a restart
            self.process.wait(10)
            self.process = None


@contextmanager
def redis_server(folder: Path, persist: bool = False) -> Iterator[str]:
    """A redis-server for the block; yields its URL (redis://127.0.0.1:PORT/0)."""
    with restartable_redis_server(folder, persist) as server:
        yield server.url


@contextmanager
def restartable_redis_server(folder: Path, persist: bool = False) -> Iterator[RedisServer]:
    server = RedisServer(folder, persist)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def spawn_worker(url: str, config: WorkerConfig, name: str, prefix: str = "pintor",
                 heartbeat_timeout_s: float = HEARTBEAT_TIMEOUT_S) -> BaseProcess:
    """A worker process (as `pintor worker` runs), spawned."""
    ctx = multiprocessing.get_context("spawn")
    process = ctx.Process(target=run_redis_worker, args=(url, config, name, prefix, heartbeat_timeout_s),
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
