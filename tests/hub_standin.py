"""A local stand-in of the Hugging Face hub's file server, for `pintor models pull` tests.

It serves what huggingface_hub 2.x asks (read in its source: hf_api.repo_info, list_repo_tree,
file_download.get_hf_file_metadata and http_get):

- GET  /api/models/{repo}/auth-check             → {} (403/404 as below)
- GET  /api/models/{repo}/revision/{rev}        → {"id", "sha", "siblings"}
- GET  /api/models/{repo}/tree/{rev}?recursive=… → [{"type": "file", "path", "size", "oid", "lfs"}]
- HEAD /{repo}/resolve/{rev}/{path}              → ETag (the sha256), X-Repo-Commit, Content-Length
- GET  /{repo}/resolve/{rev}/{path}              → the bytes, honouring `Range: bytes=N-`

Unknown repos answer 404 with `X-Error-Code: RepoNotFound`, gated ones 403 with
`X-Error-Code: GatedRepo`, as the hub does. `cut[path] = n` makes the next download of that
file stop after n bytes (the connection closes: an interrupted download).
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Hub:
    repos: dict[str, Path]
    gated: set[str] = field(default_factory=set)
    cut: dict[str, int] = field(default_factory=dict)  # repo path → bytes served before closing
    ranges: list[str] = field(default_factory=list)  # every Range header asked for
    downloads: list[str] = field(default_factory=list)  # every file GET
    url: str = ""

    def files(self, repo: str) -> dict[str, Path]:
        root = self.repos[repo]
        return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def _handler(hub: Hub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # quiet
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, data) -> None:
            self._send(200, json.dumps(data).encode(), {"Content-Type": "application/json"})

        def _repo(self, parts: list[str]) -> str | None:
            repo = "/".join(parts[:2])
            if repo not in hub.repos:
                self._send(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})
                return None
            if repo in hub.gated:
                self._send(403, b'{"error": "Access to this model is restricted"}', {"X-Error-Code": "GatedRepo"})
                return None
            return repo

        def do_HEAD(self) -> None:
            self.do_GET()

        def do_GET(self) -> None:
            parts = [unquote(p) for p in urlparse(self.path).path.strip("/").split("/")]
            if parts[:2] == ["api", "models"]:
                repo = self._repo(parts[2:])
                if repo is None:
                    return
                files = hub.files(repo)
                if parts[4] == "auth-check":
                    return self._json({})
                if parts[4] == "revision":
                    return self._json({"id": repo, "sha": SHA, "private": False,
                                       "siblings": [{"rfilename": name} for name in files]})
                if parts[4] == "tree":
                    entries = []
                    for name, path in files.items():
                        data = path.read_bytes()
                        digest = hashlib.sha256(data).hexdigest()
                        entries.append({"type": "file", "path": name, "size": len(data),
                                        "oid": hashlib.sha1(data).hexdigest(),
                                        "lfs": {"oid": digest, "size": len(data), "pointerSize": 130}})
                    return self._json(entries)
                return self._send(404)
            if len(parts) > 4 and parts[2] == "resolve":
                repo = self._repo(parts)
                if repo is None:
                    return
                name = "/".join(parts[4:])
                path = hub.files(repo).get(name)
                if path is None:
                    return self._send(404, b"", {"X-Error-Code": "EntryNotFound"})
                data = path.read_bytes()
                headers = {"ETag": f'"{hashlib.sha256(data).hexdigest()}"', "X-Repo-Commit": SHA,
                           "Accept-Ranges": "bytes"}
                if self.command == "HEAD":
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return
                hub.downloads.append(name)
                start, status = 0, 200
                asked = self.headers.get("Range")
                if asked:
                    hub.ranges.append(f"{name} {asked}")
                    start, status = int(asked.removeprefix("bytes=").split("-")[0]), 206
                    headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
                body = data[start:]
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = hub.cut.pop(f"{repo}/{name}", None)
                if cut is not None:  # an interrupted download: part of the body, then the line drops
                    self.wfile.write(body[:cut])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)
                return
            self._send(404)

    return Handler


class HubServer:
    """`with HubServer(hub) as url:` serves `hub` on a free loopback port."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.server.daemon_threads = True

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.hub.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self.hub.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
