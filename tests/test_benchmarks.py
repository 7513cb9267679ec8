"""The benchmarks' set-up, run small: no test runs a benchmark itself (they measure, slowly, on
the machine they are run on: benchmarks/README.md), so a change to what they call would
otherwise be found only on the day a GPU is lent (benchmarks/gpu.sh)."""

from __future__ import annotations

import importlib

import pytest

BENCHMARKS = ["batching", "finishing", "gpu", "killloop", "load", "overheads", "standins", "workers"]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_imports(name):
    """Each script's names resolve (it runs only as `python benchmarks/NAME.py`)."""
    module = importlib.import_module(f"benchmarks.{name}")
    assert module.__doc__


def test_the_whole_path_times_a_job_and_says_the_workers_device(tmp_path, small_registry_file):
    """benchmarks/standins.WholePath (gpu.py's and overheads.py's measure of Pintor's whole path:
    database, Studio, queue, worker process) on the tiny SD model: ready, one job to its Done
    event, the device the worker reported. (It read a Studio attribute that no longer existed.)"""
    from benchmarks.standins import WholePath

    with WholePath(tmp_path, small_registry_file, device="cpu") as whole:
        whole.ready(timeout_s=120)
        seconds = whole.job("a lighthouse at dusk --seed 1")
        assert 0 < seconds < 120
        assert whole.worker_info["device"] == "cpu"
