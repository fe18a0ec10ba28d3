"""A local HTTP server speaking the Hub's API for one model repo, for the real `huggingface_hub` client.

Serves repo info with file metadata (`/api/models/<repo>/revision/<rev>`) and HEAD/GET of
`/<repo>/resolve/<rev>/<path>` at one commit (`main` resolves to it); .ckpt files are LFS files
(sha256 declared), nothing is Xet. A subprocess reaches it through `hub_env`.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

COMMIT = "89abcdef0123456789abcdef0123456789abcdef"


@dataclass
class FakeModelHub:
    repo_id: str
    files: dict[str, bytes]
    commit: str = COMMIT
    corrupt: set[str] = field(default_factory=set)  # served with flipped bytes (same length)
    requests: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(f"blob {len(data)}\0".encode() + data).hexdigest()


def _handler(hub: FakeModelHub) -> type[BaseHTTPRequestHandler]:
    info_prefix = f"/api/models/{hub.repo_id}/revision/"
    resolve_prefix = f"/{hub.repo_id}/resolve/"
    revisions = (hub.commit, "main")

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(body=False)

        def do_GET(self) -> None:
            self._serve(body=True)

        def _serve(self, body: bool) -> None:
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path))
            if path.startswith(info_prefix):
                return self._info(path[len(info_prefix) :])
            if path.startswith(resolve_prefix):
                revision, _, name = path[len(resolve_prefix) :].partition("/")
                return self._file(revision, name)
            return self._reply(404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"})

        def _info(self, revision: str) -> None:
            if revision not in revisions:
                return self._reply(404, b'{"error": "Invalid rev id"}', {"X-Error-Code": "RevisionNotFound"})
            siblings = []
            for name, data in sorted(hub.files.items()):
                sibling: dict[str, Any] = {"rfilename": name, "size": len(data), "blobId": _blob_id(data)}
                if name.endswith(".ckpt"):
                    sibling["lfs"] = {"sha256": _sha256(data), "size": len(data), "pointerSize": 134}
                siblings.append(sibling)
            payload = {"id": hub.repo_id, "modelId": hub.repo_id, "sha": hub.commit, "siblings": siblings}
            self._reply(200, json.dumps(payload).encode(), {"Content-Type": "application/json"})

        def _file(self, revision: str, name: str) -> None:
            if revision not in revisions or name not in hub.files:
                return self._reply(404, b'{"error": "Entry not found"}', {"X-Error-Code": "EntryNotFound"})
            data = hub.files[name]
            etag = _sha256(data) if name.endswith(".ckpt") else _blob_id(data)
            if name in hub.corrupt:
                data = bytes(b ^ 0x5A for b in data)
            self._reply(200, data, {"ETag": f'"{etag}"'})

        def _reply(self, status: int, raw: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            self.send_header("X-Repo-Commit", hub.commit)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(raw)

    return Handler


@contextmanager
def serve_model_repo(repo_id: str, files: dict[str, bytes], commit: str = COMMIT) -> Iterator[FakeModelHub]:
    """The server on a free local port while the block runs; `hub.url` is its address."""
    hub = FakeModelHub(repo_id, files, commit)
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
