"""Pictures by key: the one way pictures (results, uploads, the inputs of a job) are written
and read across the worker seam.

A key is a relative POSIX path inside the store ("jobs/12/1.png", "inputs/<sha256>.png");
`FileStore` keeps each under its root folder, written atomically (temp file, fsync, rename).
Keys, not paths, cross the seam: a worker on another machine has its own store, and the
pictures travel with the events (the Redis queue) into the front end's store.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from generation.imaging import sha256, write_atomic


class BadKey(ValueError):
    """A key that is not a plain relative path inside the store (absolute, "..", empty)."""


CONTROL_FILE = "control.png"  # a ControlNet job's control image, beside its grid
INPUTS_FOLDER = "inputs"  # the pictures members upload (blend, image prompts, control, /describe)


def input_key(png: bytes) -> str:
    """The key of an uploaded picture, by its content: "inputs/<sha256 of the PNG bytes>.png"
    (one file for every job that uploads the same picture)."""
    return f"{INPUTS_FOLDER}/{sha256(png)}.png"


def job_folder(job_id: int) -> str:
    """The key of the folder of the files a job made: "jobs/<job id>"."""
    return f"jobs/{job_id}"


def job_key(job_id: int, name: str) -> str:
    """The key of a file a job made: "jobs/<job id>/<name>" (name e.g. "1.png", "grid.png")."""
    return f"{job_folder(job_id)}/{name}"


class FileStore:
    """Files by key under `root` (a local folder; created on the first write)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        """The local file of `key` (which need not exist). Raises BadKey for a key that would
        leave the root ("../x", "/etc/x", "C:x", "")."""
        pure = PurePosixPath(key)
        if not key or pure.is_absolute() or ".." in pure.parts or "\\" in key or ":" in key:
            raise BadKey(f"not a file-store key: {key!r}")
        return self.root.joinpath(*pure.parts)

    def put(self, key: str, data: bytes) -> Path:
        """Write `data` under `key` atomically (a reader sees the old file or all of the new);
        returns its local path."""
        path = self.path(key)
        write_atomic(path, data)
        return path

    def get(self, key: str) -> bytes:
        """The bytes stored under `key`; FileNotFoundError when there are none."""
        return self.path(key).read_bytes()

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()

    def local(self, stored: str) -> Path:
        """The local file of a picture as the database stores it (images.path, jobs.grid_path):
        a key ("jobs/12/1.png"), or an absolute path (a row older than migration 0008 whose
        file lay outside the store, which the migration left as it was). Raises BadKey for
        anything else."""
        return Path(stored) if Path(stored).is_absolute() else self.path(stored)

    def stored(self, path: str | Path) -> str:
        """How the database refers to the local file `path`: its key when it lies in the store,
        else the path itself (the inverse of `local`)."""
        return self.key_of(path) or str(path)

    def key_of(self, path: str | Path) -> str | None:
        """The key of a local file inside the root, or None for a file elsewhere."""
        try:
            relative = Path(path).resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        return relative.as_posix()

    def remove_partial(self, folder_key: str) -> list[str]:
        """Remove the temp files that a writer killed mid-write (SIGKILL, power loss) left in
        the folder `folder_key` ("jobs/12"): `write_atomic` names them ".<name>.<random>.tmp"
        and renames them when whole, so one still there was never finished. Call it only for a
        folder no writer uses now (a job being queued again). Returns the keys removed."""
        folder = self.path(folder_key)
        removed = []
        for partial in sorted(folder.glob(".*.tmp")) if folder.is_dir() else []:
            partial.unlink(missing_ok=True)
            removed.append(f"{folder_key}/{partial.name}")
        return removed

    def delete(self, key: str) -> bool:
        """Remove the file of `key`; False when there was none."""
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            return False
        return True
