"""A throwaway PostgreSQL server for the tests: Debian's binaries (`postgresql` package), a data
folder in a fresh temporary directory, listening on a free loopback port only, trusting local
connections, stopped and deleted at the end of the session.

initdb and pg_ctl refuse to run as root. Where the tests run as root (these machines, most CI
containers), the server runs as an unprivileged user: `postgres` when Debian's package created
it, else `nobody`, through `setpriv` (util-linux), and the data folder belongs to that user.

Without the binaries the tests that need the server are skipped, with the reason; with
PINTOR_REQUIRE_SERVICES=1 (what `.ci/run` sets) they fail instead, so CI cannot pass by skipping.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

POSTGRES_ROOTS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True)
SUPERUSER = "postgres"
# where a test process chooses its database for the Discord harness (tests/discord_harness.py)
DATABASE_VARIABLE = "PINTOR_TEST_DATABASE"


def require_services() -> bool:
    return os.environ.get("PINTOR_REQUIRE_SERVICES", "") not in ("", "0")


def _binaries() -> Path | None:
    for folder in POSTGRES_ROOTS:
        if (folder / "initdb").exists() and (folder / "pg_ctl").exists():
            return folder
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and (Path(found).parent / "initdb").exists() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _unprivileged_user() -> pwd.struct_passwd | None:
    """The user to run the server as: None when we are not root (run as ourselves)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and there is no 'postgres' or 'nobody' user to run PostgreSQL as")


@dataclass
class PostgresServer:
    """A running server: `url(database)` is a SQLAlchemy URL for one of its databases."""

    port: int
    folder: Path
    bin: Path
    user: pwd.struct_passwd | None

    def url(self, database: str, driver: str = "asyncpg") -> str:
        return f"postgresql+{driver}://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def _command(self, *args: str) -> list[str]:
        if self.user is None:
            return list(args)
        return ["setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}", "--clear-groups",
                *args]

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self._command(*args), capture_output=True, text=True, timeout=120,
                              cwd=self.folder, check=False)

    def start(self) -> None:
        """Start the server (again: `stop` keeps its data); waits until it takes connections."""
        # loopback TCP only, the socket in our folder (not /var/run/postgresql), no fsync: a
        # throwaway server whose data dies with the session
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.folder} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        done = self.run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-l",
                        str(self.folder / "server.log"), "-o", options, "-w", "-t", "60", "start")
        if done.returncode != 0:
            log = self.folder / "server.log"
            raise RuntimeError(f"pg_ctl start failed: {done.stdout}{done.stderr}"
                               f"{log.read_text(errors='replace') if log.exists() else ''}")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`mode`: pg_ctl's fast — open connections ended — or immediate: as if
        it crashed); its data stays for `start`."""
        self.run(str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", mode, "-w", "stop")

    def create_database(self, name: str | None = None) -> str:
        """A new empty database (named, or a fresh name); returns its SQLAlchemy URL."""
        name = name or f"pintor_{uuid.uuid4().hex[:12]}"
        done = self.run(str(self.bin / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", SUPERUSER, name)
        if done.returncode != 0:
            raise RuntimeError(f"createdb {name}: {done.stderr}")
        return self.url(name)


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server in a new temporary folder; stop it and delete the folder on exit. Skips
    (or fails, under PINTOR_REQUIRE_SERVICES) when PostgreSQL is not installed."""
    binaries = _binaries()
    if binaries is None:
        message = "PostgreSQL is not installed (apt-get install postgresql): the PostgreSQL tests need it"
        if require_services():
            pytest.fail(message)
        pytest.skip(message)
    user = _unprivileged_user()
    # under /tmp when another user runs the server: a TMPDIR in root's home is closed to it
    folder = Path(tempfile.mkdtemp(prefix="pintor-postgres-", dir="/tmp" if user is not None else None))
    server = PostgresServer(port=_free_port(), folder=folder, bin=binaries, user=user)
    data = folder / "data"
    if user is not None:
        os.chown(folder, user.pw_uid, user.pw_gid)
    try:
        done = server.run(str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=trust",
                          "--encoding=UTF8", "--locale=C", "--no-sync")
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stdout}{done.stderr}")
        server.start()
        try:
            yield server
        finally:
            server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
