"""The one Hugging Face Hub client of owdfa: the address, commit pins, file hashes and one-line errors.

Both downloads go through it: the OWDFA-40 dataset (`owdfa.data.hub`, the fetch stage) and the CAL
authors' checkpoints (`owdfa.official.checkpoint`: `owdfa import` and the import stage). The real
`huggingface_hub` client does the talking; it is imported only when a download runs (its import is
slow, and most processes never download).
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from owdfa.core.errors import DataError

COMMIT = re.compile(r"^[0-9a-f]{40}$")  # a pinned revision: a full commit sha
HASH_CHUNK = 8 << 20


def is_commit(revision: str) -> bool:
    """Whether `revision` pins one commit (a branch or tag may point elsewhere tomorrow)."""
    return bool(COMMIT.match(revision))


def hub_endpoint() -> str:
    """The Hub address, read now: the client reads HF_ENDPOINT only once, when it is imported."""
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


class HubUnreachable(DataError):
    """The Hub could not be asked at all (offline mode, no network): files on disk may still serve."""


@dataclass(frozen=True)
class HubRepo:
    """One repository at one revision, and how its errors advise the user.

    `context` follows the repository in "cannot download ..." (what asked for it); `offline_hint` and
    `unreachable_hint` say how to go on without the Hub; `params` is the params section naming the
    repository, whose keys (`<params>.revision`, `<params>.repo_id`) the errors then name.
    """

    repo_id: str
    revision: str
    repo_type: str  # "dataset" | "model"
    context: str = ""
    offline_hint: str = ""
    unreachable_hint: str = ""
    params: str | None = None

    @property
    def where(self) -> str:
        return f"{self.repo_id}@{self.revision}"

    def page(self, endpoint: str) -> str:
        """The repository's web page (where a gated repository's terms are accepted)."""
        return f"{endpoint}/{'datasets/' if self.repo_type == 'dataset' else ''}{self.repo_id}"

    def key_hint(self, key: str) -> str:
        return f" ({self.params}.{key})" if self.params else ""


def hub_error(exc: Exception, repo: HubRepo, endpoint: str) -> Exception:
    """One line for whatever the client raised; programming errors pass through untouched."""
    from huggingface_hub import errors as hf_errors

    chain = [exc, *([exc.__cause__] if isinstance(exc.__cause__, Exception) else [])]
    offline = getattr(hf_errors, "OfflineModeIsEnabled", ())
    if any(isinstance(e, offline) for e in chain):
        return HubUnreachable(
            f"cannot download {repo.where}{repo.context}: HF_HUB_OFFLINE=1 is set; unset it{repo.offline_hint}"
        )
    if isinstance(exc, hf_errors.GatedRepoError):
        return DataError(
            f"{repo.repo_id} is gated: accept its terms on {repo.page(endpoint)} and log in (hf auth login)"
        )
    if isinstance(exc, hf_errors.RevisionNotFoundError):
        return DataError(f"revision {repo.revision!r} not found in {repo.repo_id}{repo.key_hint('revision')}")
    if isinstance(exc, hf_errors.RepositoryNotFoundError):
        noun = "dataset" if repo.repo_type == "dataset" else "model repo"
        return DataError(
            f"{noun} {repo.repo_id} not found at {endpoint}{repo.key_hint('repo_id')}, or it is private: log in first"
        )
    if isinstance(exc, hf_errors.HfHubHTTPError):
        status = exc.response.status_code if getattr(exc, "response", None) is not None else "?"
        return DataError(f"the Hub at {endpoint} refused {repo.where} (HTTP {status}): {one_line(exc)}")
    for error in chain:
        if is_transport_error(error) or isinstance(error, ConnectionError):
            return HubUnreachable(
                f"cannot reach the Hub at {endpoint}: {one_line(error)}; check HF_ENDPOINT / connectivity"
                f"{repo.unreachable_hint}"
            )
    if isinstance(exc, OSError):
        return DataError(f"download of {repo.where} from {endpoint} failed: {one_line(exc)}")
    return exc


def is_transport_error(exc: Exception) -> bool:
    """The client's HTTP library is httpx2, httpx or requests depending on its version."""
    for module, name in (("httpx2", "HTTPError"), ("httpx", "HTTPError"), ("requests", "RequestException")):
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None and isinstance(exc, cls):
            return True
    return type(exc).__name__ in ("InvalidURL", "UnsupportedProtocol")


def one_line(exc: BaseException, limit: int = 300) -> str:
    """An exception as one line of at most `limit` characters (client errors can span many)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class FileHash:
    sha256: str
    size: int
    git_blob: str | None  # the git blob id, when asked for (a small file the Hub keeps outside LFS)


def hash_file(path: Path, git_blob: bool = False) -> FileHash:
    """Stream the file once: its sha256, its size and, if `git_blob`, its git blob id."""
    size = Path(path).stat().st_size
    sha256 = hashlib.sha256()
    blob = hashlib.sha1(f"blob {size}\0".encode()) if git_blob else None
    with open(path, "rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            sha256.update(chunk)
            if blob is not None:
                blob.update(chunk)
    return FileHash(sha256.hexdigest(), size, blob.hexdigest() if blob is not None else None)
