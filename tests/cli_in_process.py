"""`pintor …` run inside the test process: `bot.cli.main` with the environment and working
folder a subprocess would have, its output captured as a subprocess's would be.

Why: a `pintor` subprocess is a new interpreter (~2.5 s here) whose job verbs start a worker
that imports torch, diffusers and transformers again (~11 s of CPU on the 2-core machine); in
this process the worker is forked from the suite's forkserver, which imported them once
(tests/conftest.py). Tests whose subject is the command's behaviour (its messages, exit codes,
files and rows) use this; the tests whose subject is the process itself (signals, a closed
pipe, what a fresh interpreter imports, the hub's environment variables read at import) keep a
real subprocess (tests/README.md, "The time budget")."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def environment(env: dict[str, str], cwd: Path) -> Iterator[None]:
    """os.environ set to `env` and the working folder `cwd` while the block runs; both as they
    were after it, whatever it raised."""
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    _set_environment(env)
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(saved_cwd)
        _set_environment(saved_env)


def _set_environment(env: dict[str, str]) -> None:
    # only the variables that differ: os.environ.clear() took away, for a moment, variables that
    # other threads of the process read (a KeyError b'COLUMNS' seen with the floors' versions)
    for name in set(os.environ) - set(env):
        os.environ.pop(name, None)
    os.environ.update({name: value for name, value in env.items() if os.environ.get(name) != value})


def pintor_here(env: dict[str, str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Run `pintor ARGS` as `bot.cli.main(ARGS)` in this process, with os.environ set to `env`
    and the working folder `cwd` for the call (both restored after), stdout and stderr
    captured as text. Returns what `subprocess.run(..., capture_output=True, text=True)` of
    `python -m bot.cli ARGS` returns: the exit code (argparse's SystemExit included), stdout
    and stderr. Must be called from a test's own thread, outside a running event loop (main
    runs its own with asyncio.run)."""
    out, err = io.StringIO(), io.StringIO()
    from bot.cli import main

    with environment(env, cwd), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit:  # argparse refusing an argument
            code = exit.code if isinstance(exit.code, int) else 2
    return subprocess.CompletedProcess(["pintor", *args], code, out.getvalue(), err.getvalue())
