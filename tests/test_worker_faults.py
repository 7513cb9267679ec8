"""The machine misbehaving inside the worker: the disk full while pictures are written, and the
GPU out of memory. The worker's own code (`_Worker.run_batch`) runs in this process on a real
tiny pipeline; its events come back over a real pipe."""

from __future__ import annotations

import errno
import threading
from multiprocessing import Pipe
from pathlib import Path

import pytest
import torch

import generation.worker as worker_module
from generation.devices import Offload, choose_device
from generation.engine import Engine
from generation.events import Done, Failed, Interrupted, Progress
from generation.files import FileStore
from generation.registry import load_registry
from generation.worker import WorkerConfig, _Worker
from tests.engine_helpers import request


@pytest.fixture(scope="module")
def engine(small_registry_file: Path) -> Engine:
    return Engine(load_registry(small_registry_file), choose_device("cpu"))


def run(engine: Engine, output: Path, jobs: list[tuple[int, str]]) -> list:
    """Run each (job id, prompt) alone through the worker's code; the events it sent."""
    ours, theirs = Pipe()
    worker = _Worker(theirs, WorkerConfig(output_dir=str(output)))
    for job_id, prompt in jobs:
        worker.run_batch(engine, [(job_id, request(engine.registry, prompt))])
    events = []
    while ours.poll():
        kind, event = ours.recv()
        assert kind == "event"
        events.append(event)
    return [e for e in events if isinstance(e, (Done, Failed))]


class FullDisk(FileStore):
    """A file store on a disk that fills up after `room` files: what a full disk does to a
    write (OSError ENOSPC), the temp file cleaned up as write_atomic does."""

    room = 2

    def put(self, key: str, data: bytes) -> Path:
        if FullDisk.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        FullDisk.room -= 1
        return super().put(key, data)


def test_a_full_disk_fails_the_job_with_a_clear_reason_leaves_no_file_and_the_next_job_works(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(worker_module, "FileStore", FullDisk)
    FullDisk.room = 2  # two of the four pictures fit, then the disk is full
    [failed] = run(engine, tmp_path, [(1, "a lighthouse --seed 1")])
    assert isinstance(failed, Failed) and "disk is full" in failed.reason
    assert str(tmp_path) not in failed.reason
    assert not (tmp_path / "jobs" / "1").exists() or list((tmp_path / "jobs" / "1").iterdir()) == []
    FullDisk.room = 100  # space is back
    [done] = run(engine, tmp_path, [(2, "a lighthouse --seed 1")])
    assert isinstance(done, Done)
    assert sorted(p.name for p in (tmp_path / "jobs" / "2").iterdir()) == ["1.png", "2.png", "3.png", "4.png",
                                                                            "grid.png"]


CUDA_OUT_OF_MEMORY = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
# what the CPU's allocator raises (a CPU worker): no torch.OutOfMemoryError, a RuntimeError
CPU_OUT_OF_MEMORY = RuntimeError(
    "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate "
    "4294967296 bytes. Error code 12 (Cannot allocate memory)")


def out_of_memory_in(engine: Engine, monkeypatch: pytest.MonkeyPatch, times: int,
                     error: BaseException = CUDA_OUT_OF_MEMORY) -> list[str]:
    """The engine's pipeline call raises `error` (a device out of memory) `times` times, then
    runs; returns the offload mode the pipeline cache was set to at each call."""
    real = engine._stable_diffusion
    modes: list[str] = []

    def flaky(*args, **kwargs):
        modes.append(Offload(engine.pipelines.fast.offload).value)
        if len(modes) <= times:
            raise error
        return real(*args, **kwargs)

    monkeypatch.setattr(engine, "_stable_diffusion", flaky)
    return modes


@pytest.mark.parametrize("error", [CUDA_OUT_OF_MEMORY, CPU_OUT_OF_MEMORY, MemoryError()], ids=["cuda", "cpu", "python"])
def test_out_of_memory_runs_the_job_again_once_with_offloading_on(engine: Engine, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch, error):
    modes = out_of_memory_in(engine, monkeypatch, times=1, error=error)
    [done] = run(engine, tmp_path, [(3, "a harbour --seed 2")])
    assert isinstance(done, Done)
    assert modes == ["auto", "model"]  # the second try with offloading on
    assert Offload(engine.pipelines.fast.offload) == Offload.AUTO  # the next job loads as configured


@pytest.mark.parametrize("error", [CUDA_OUT_OF_MEMORY, CPU_OUT_OF_MEMORY], ids=["cuda", "cpu"])
def test_out_of_memory_twice_fails_the_job_with_the_reason_and_the_worker_serves_on(
        engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error):
    """On a CPU worker the allocator's RuntimeError is out of memory too: it was reported as
    "Generation failed (RuntimeError: [enforce fail at alloc_cpu.cpp…])"."""
    modes = out_of_memory_in(engine, monkeypatch, times=2, error=error)
    failed, done = run(engine, tmp_path, [(4, "a harbour --seed 3"), (5, "a harbour --seed 4")])
    assert isinstance(failed, Failed) and failed.job_id == 4 and "ran out of memory" in failed.reason
    # the engine here runs on the CPU: its machine, not a GPU, ran out of memory
    assert failed.reason == "The worker's machine ran out of memory. Try a smaller --ar or fewer --steps."
    assert modes == ["auto", "model", "auto"]  # tried twice, not more; the next job ran as configured
    assert isinstance(done, Done) and done.job_id == 5


class SlowDisk(FileStore):
    """A file store whose writes of job 1's files wait until the test opens `gate`: a disk (or
    an encoder) slower than the device."""

    gate = threading.Event()

    def put(self, key: str, data: bytes) -> Path:
        if key.startswith("jobs/1/"):
            assert SlowDisk.gate.wait(60), "the test never opened the gate"
        return super().put(key, data)


def test_the_next_job_runs_while_the_last_ones_pictures_are_written_and_none_is_lost(
        small_registry_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Issue 35: the device never waits for encoding and writing. The worker's own loop (in a
    thread here) is sent two jobs; job 1's files cannot be written yet, and still the worker
    says the device is free and job 2 starts and steps. A stop sent then waits for job 1's files
    and its Done, and job 2's end comes after it (jobs end in the order they ran): nothing is
    lost."""
    monkeypatch.setattr(worker_module, "FileStore", SlowDisk)
    SlowDisk.gate.clear()
    here, there = Pipe()
    config = WorkerConfig(output_dir=str(tmp_path), registry_path=str(small_registry_file), device="cpu")
    worker = threading.Thread(target=_Worker(there, config).run, daemon=True)
    worker.start()
    registry = load_registry(small_registry_file)
    for job_id in (1, 2):
        here.send(("run", [(job_id, request(registry, f"a lighthouse --seed {job_id}").to_json())]))

    def until(wanted) -> list:
        seen: list = []
        while not seen or not wanted(seen[-1]):
            assert here.poll(60), seen
            seen.append(here.recv())
        return seen

    assert until(lambda m: m[0] == "ready")
    before = until(lambda m: m[0] == "event" and isinstance(m[1], Progress) and m[1].job_id == 2)
    assert ("free", [1]) in before  # job 1's pipeline call ended; its files wait for the gate
    assert not any(m[0] == "event" and isinstance(m[1], Done) for m in before)
    assert not (tmp_path / "jobs" / "1" / "grid.png").exists()
    here.send(("stop",))  # job 2 stops at its next step (or ends, if it was done); job 1 is not lost
    SlowDisk.gate.set()
    worker.join(60)
    assert not worker.is_alive()
    after = [here.recv() for _ in iter(lambda: here.poll(0), False)]
    ends = [m[1] for m in after if m[0] == "event" and isinstance(m[1], (Done, Interrupted))]
    assert [e.job_id for e in ends] == [1, 2] and isinstance(ends[0], Done)  # in the order they ran
    assert sorted(p.name for p in (tmp_path / "jobs" / "1").iterdir()) == ["1.png", "2.png", "3.png", "4.png",
                                                                            "grid.png"]
