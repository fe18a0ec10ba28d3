"""A local HTTP server speaking the Hub's API for one repository, for the real `huggingface_hub` client.

One fake for both of the project's downloads (`owdfa.core.hub_client`): a dataset repo (OWDFA-40's zips,
the fetch stage) or a model repo (the CAL authors' checkpoints). It serves repo info with file
metadata (`/api/<type>s/<repo>/revision/<rev>`), the tree listing, and HEAD/GET of
`[/datasets]/<repo>/resolve/<rev>/<path>` at one commit (`main` resolves to it), with range requests.
LFS files declare their sha256; nothing is Xet. Faults on request: a connection dropped mid-file,
a failing resume, flipped bytes. A subprocess reaches it through `hub_env`.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@dataclass
class FakeHub:
    repo_id: str
    files: dict[str, bytes]
    repo_type: str = "model"  # "model" | "dataset"
    is_lfs: set[str] = field(default_factory=set)
    commit: str = COMMIT
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # method, path, Range
    drop_first_get: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before hanging up
    fail_resume: set[str] = field(default_factory=set)  # paths whose Range requests get HTTP 500
    corrupt: set[str] = field(default_factory=set)  # paths served with flipped bytes (same length)
    url: str = ""

    def requested(self, method: str | None = None) -> list[str]:
        """The paths asked for (with `method` only, if given)."""
        return [path for m, path, _ in self.requests if method is None or m == method]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    dataset = hub.repo_type == "dataset"
    api = f"/api/{hub.repo_type}s/{hub.repo_id}/"
    resolve = f"{'/datasets' if dataset else ''}/{hub.repo_id}/resolve/"
    revisions = (hub.commit, "main")
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            with lock:
                hub.requests.append((self.command, path, self.headers.get("Range")))
            if path.startswith(api + "revision/"):
                return self._revision(path[len(api + "revision/") :])
            if path.startswith(api + "tree/"):
                return self._tree(path[len(api + "tree/") :])
            if path.startswith(resolve):
                revision, _, name = path[len(resolve) :].partition("/")
                return self._file(revision, name, body)
            if dataset and not path.startswith(("/api/datasets/", "/datasets/")):
                return self._error(404, None, "not found")
            return self._error(404, "RepoNotFound", "Repository not found")

        def _revision(self, revision: str) -> None:
            if revision not in revisions:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            siblings = []
            for name, data in sorted(hub.files.items()):
                sibling: dict[str, Any] = {"rfilename": name, "size": len(data), "blobId": git_blob_id(data)}
                if name in hub.is_lfs:
                    sibling["lfs"] = {"sha256": sha256(data), "size": len(data), "pointerSize": 134}
                siblings.append(sibling)
            payload: dict[str, Any] = {"id": hub.repo_id, "sha": hub.commit, "private": False, "siblings": siblings}
            if not dataset:
                payload["modelId"] = hub.repo_id
            self._json(payload)

        def _tree(self, rest: str) -> None:
            if rest.partition("/")[0] not in revisions:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            entries = []
            for name, data in sorted(hub.files.items()):
                entry: dict[str, Any] = {"type": "file", "path": name, "size": len(data), "oid": git_blob_id(data)}
                if name in hub.is_lfs:
                    entry["lfs"] = {"oid": sha256(data), "size": len(data), "pointerSize": 134}
                entries.append(entry)
            self._json(entries)

        def _file(self, revision: str, name: str, body: bool) -> None:
            if revision not in revisions:
                return self._error(404, "RevisionNotFound", "Invalid rev id")
            if name not in hub.files:
                return self._error(404, "EntryNotFound", "Entry not found")
            data = hub.files[name]
            etag = sha256(data) if name in hub.is_lfs else git_blob_id(data)
            if name in hub.corrupt:
                data = bytes(b ^ 0x5A for b in data)
            start = 0
            requested_range = self.headers.get("Range")
            if body and requested_range:
                if name in hub.fail_resume:
                    return self._error(500, None, "storage backend unavailable")
                start = int(requested_range.removeprefix("bytes=").split("-")[0])
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", hub.commit)
            self.send_header("ETag", f'"{etag}"')
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(len(data) - start))
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.end_headers()
            if not body:
                return
            with lock:
                drop_at = hub.drop_first_get.pop(name, None) if not start else None
            if drop_at is not None:
                self.wfile.write(data[:drop_at])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(data[start:])

        def _json(self, payload: object) -> None:
            raw = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.send_header("X-Repo-Commit", hub.commit)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

        def _error(self, status: int, code: str | None, message: str) -> None:
            raw = json.dumps({"error": message}).encode()
            self.send_response(status)
            if code:
                self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

    return Handler


@contextmanager
def serve_repo(
    repo_id: str,
    files: dict[str, bytes],
    *,
    repo_type: str = "model",
    lfs: Iterable[str] | None = None,
    commit: str = COMMIT,
) -> Iterator[FakeHub]:
    """The server on a free local port while the block runs; `hub.url` is its address.

    `lfs`: the files kept in LFS (sha256 declared); by default a model repo's `.ckpt` files.
    """
    is_lfs = set(lfs) if lfs is not None else {name for name in files if name.endswith(".ckpt")}
    hub = FakeHub(repo_id, dict(files), repo_type, is_lfs, commit)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()


def hub_env(env: dict[str, str], url: str, home: Path) -> dict[str, str]:
    """`env` for a subprocess that downloads from `url`: online, no token, the client's files under `home`."""
    out = {k: v for k, v in env.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN", "HF_HUB_CACHE", "HF_XET_CACHE")}
    out.update(
        HF_ENDPOINT=url,
        HF_HOME=str(home),
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        NO_PROXY="127.0.0.1,localhost",
    )
    return out
