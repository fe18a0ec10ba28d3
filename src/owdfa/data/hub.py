"""OWDFA-40 from the Hugging Face Hub: download, verify, record, unpack.

The Hub holds one zip per class folder (`data/<folder>.zip`) and dlib's landmark predictor. We ask
the real `huggingface_hub` client for exactly the files the params name, at one commit, into a
persistent folder outside the stage output (`<download_dir>/<owner>__<name>/`), so a re-run or a
change of params downloads nothing twice. We never delete anything there: a bad file is reported
with both hashes and the user decides.

Every file is hashed after download and compared with what the Hub declares and with the previous
run's manifest (`<download_dir>/manifest.json`), because the client trusts files already on disk
and the stage output must be traceable to exact bytes. A branch or tag as revision works but is
reported: the same params could give other data tomorrow.
"""

from __future__ import annotations

import glob
import json
import re
import shutil
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from owdfa.core.config import Section, load_section, param
from owdfa.core.errors import ConfigError, DataError
from owdfa.core.hub_client import HubRepo, HubUnreachable, hash_file, hub_endpoint, hub_error, is_commit, one_line
from owdfa.core.io import atomic_write_json
from owdfa.data.archive import ExtractReport, extract_zip
from owdfa.data.protocols import LANDMARK_PREDICTOR_FILE, OWDFA40_FOLDERS

MANIFEST_NAME = "manifest.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def folder_label(folder: str) -> int:
    return int(folder.split("_", 1)[0])


def _class_folders(section: Section, key: str) -> tuple[str, ...]:
    """`classes`: `all` or a non-empty list of OWDFA-40 labels -> their class folders, in OWDFA-40 order."""
    value = section.raw(key)
    labels = sorted({folder_label(f) for f in OWDFA40_FOLDERS})
    if value == "all":
        return OWDFA40_FOLDERS
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        raise ConfigError(section.key(key), f"expected 'all' or a non-empty list of integer labels, got {value!r}")
    unknown = sorted(set(value) - set(labels))
    if unknown:
        raise ConfigError(section.key(key), f"no OWDFA-40 class {unknown[0]}; labels are {labels[0]}..{labels[-1]}")
    wanted = set(value)
    return tuple(f for f in OWDFA40_FOLDERS if folder_label(f) in wanted)


def _extracted_bytes(section: Section, key: str) -> int:
    """`max_extracted_gb` (a float, so 0.5 works) as bytes."""
    return int(section.float(key, min=0.001) * 1e9)


def _download_dir(section: Section, key: str) -> Path:
    download_dir = section.str(key)
    if not download_dir.strip():
        raise ConfigError(section.key(key), "must not be empty")
    return Path(download_dir).expanduser()


@dataclass(frozen=True)
class HubConfig:
    """Where and what to download (params section `data.hub`, every key required)."""

    repo_id: str
    revision: str
    # class folders to fetch, each `data/<folder>.zip` on the Hub
    folders: tuple[str, ...] = param(key="classes", read=_class_folders)
    predictor: bool = param()
    max_extracted_bytes: int = param(key="max_extracted_gb", read=_extracted_bytes)  # per zip
    download_dir: Path = param(read=_download_dir)
    # true: a fetch that had to skip zip entries which may be images (names too long or too deep for
    # the file system, unsafe paths, links, duplicates) still succeeds; SOURCE.json lists them
    accept_skipped: bool = param(False, optional=True)

    def validate(self, section: Section) -> None:
        if not _REPO_ID.match(self.repo_id):
            raise ConfigError(section.key("repo_id"), f"expected '<owner>/<name>', got {self.repo_id!r}")
        if not self.revision.strip():
            raise ConfigError(section.key("revision"), "must not be empty (a commit sha, or a branch/tag name)")

    @property
    def local_dir(self) -> Path:
        return self.download_dir / self.repo_id.replace("/", "__")

    @property
    def repo_files(self) -> list[str]:
        files = [f"data/{folder}.zip" for folder in self.folders]
        return files + [LANDMARK_PREDICTOR_FILE] if self.predictor else files


@dataclass(frozen=True)
class HubFile:
    """One downloaded file with what we measured and what the Hub declared."""

    repo_path: str
    local_path: Path
    size: int
    sha256: str
    hub_size: int | None
    hub_sha256: str | None

    def record(self) -> dict:
        return {
            "path": self.repo_path,
            "local_path": self.local_path.as_posix(),
            "size": self.size,
            "sha256": self.sha256,
            "hub_size": self.hub_size,
            "hub_sha256": self.hub_sha256,
        }


@dataclass(frozen=True)
class HubDownload:
    repo_id: str
    revision: str
    commit: str
    files: dict[str, HubFile]  # by repo path
    warnings: tuple[str, ...]


@dataclass(frozen=True)
class _Declared:
    """What the Hub says about a file: LFS files carry a sha256, small files only a git blob id."""

    size: int | None
    sha256: str | None
    blob_id: str | None
    origin: str = "the Hub declares"  # or, offline, the manifest that recorded the Hub's values


def hub_config(section: Section) -> HubConfig:
    return load_section(HubConfig, section)


def unpinned_revision_warning(config: HubConfig, commit: str) -> str | None:
    if is_commit(config.revision):
        return None
    return (
        f"warning: data.hub.revision {config.revision!r} is a branch or tag (now commit {commit}); the same params "
        f"may give other data later. Pin it: dvc exp run -S data.hub.revision={commit} (or edit params.yaml)"
    )


def download(config: HubConfig) -> HubDownload:
    """Fetch the configured files at one commit, verify every byte, and update the manifest."""
    endpoint = hub_endpoint()
    manifest_path = config.download_dir / MANIFEST_NAME
    previous = _read_manifest(manifest_path)
    warnings: list[str] = []
    try:
        commit, declared = _list_repo(config, endpoint)
    except HubUnreachable as exc:
        commit = _offline_commit(config, previous)
        if commit is None:
            raise
        declared = _declared_from_manifest(previous, manifest_path)
        warnings.append(f"warning: {exc}; using the files recorded in {manifest_path} for commit {commit}")
    else:
        _check_listed(config, commit, declared)
        _snapshot(config, commit, endpoint)
    if warning := unpinned_revision_warning(config, commit):
        warnings.append(warning)
    recorded = _recorded_files(previous, config.repo_id, commit)
    files = {
        path: _verify(config, path, declared.get(path), recorded.get(path), manifest_path) for path in config.repo_files
    }
    _write_manifest(manifest_path, config, commit, endpoint, files, recorded)
    for line in warnings:
        print(line, file=sys.stderr)
    return HubDownload(config.repo_id, config.revision, commit, files, tuple(warnings))


def unpack(config: HubConfig, fetched: HubDownload, out: Path) -> dict[str, ExtractReport]:
    """Extract every class zip into `out/<folder>/` and copy the predictor to `out/`."""
    reports: dict[str, ExtractReport] = {}
    for folder in config.folders:
        item = fetched.files[f"data/{folder}.zip"]
        reports[folder] = extract_zip(item.local_path, out / folder, config.max_extracted_bytes)
    if config.predictor:
        shutil.copy2(fetched.files[LANDMARK_PREDICTOR_FILE].local_path, out / LANDMARK_PREDICTOR_FILE)
    return reports


# --------------------------------------------------------------------------------------------
# talking to the Hub


def _list_repo(config: HubConfig, endpoint: str) -> tuple[str, dict[str, _Declared]]:
    from huggingface_hub import HfApi

    try:
        info = HfApi(endpoint=endpoint).dataset_info(config.repo_id, revision=config.revision, files_metadata=True)
    except Exception as exc:
        raise hub_error(exc, _repo(config), endpoint) from None
    if not info.sha:
        raise DataError(f"the Hub at {endpoint} gave no commit for {config.repo_id}@{config.revision}")
    declared = {}
    for sibling in info.siblings or []:
        lfs = sibling.lfs
        declared[sibling.rfilename] = _Declared(
            size=lfs.size if lfs is not None else sibling.size,
            sha256=lfs.sha256 if lfs is not None else None,
            blob_id=sibling.blob_id if lfs is None else None,
        )
    return info.sha, declared


def _check_listed(config: HubConfig, commit: str, declared: dict[str, _Declared]) -> None:
    missing = [path for path in config.repo_files if path not in declared]
    if not missing:
        return
    zips = sorted(p for p in declared if p.startswith("data/") and p.endswith(".zip"))
    if not zips:
        shown = "no data/*.zip"
    elif len(zips) <= 5:
        shown = ", ".join(zips)
    else:
        shown = ", ".join(zips[:5]) + f", ... ({len(zips)} zips)"
    more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
    raise DataError(
        f"{missing[0]}{more} is not in {config.repo_id} at commit {commit} (data.hub.classes / data.hub.predictor); "
        f"the Hub has {shown}"
    )


def _snapshot(config: HubConfig, commit: str, endpoint: str) -> None:
    from huggingface_hub import snapshot_download

    config.local_dir.mkdir(parents=True, exist_ok=True)
    try:
        snapshot_download(
            config.repo_id,
            repo_type="dataset",
            revision=commit,
            allow_patterns=[glob.escape(path) for path in config.repo_files],
            local_dir=config.local_dir,
            # Keep the client's own cache inside download_dir too: nothing is written elsewhere.
            cache_dir=config.download_dir / ".hf-cache",
            endpoint=endpoint,
        )
    except Exception as exc:
        raise hub_error(exc, _repo(config), endpoint) from None


def _repo(config: HubConfig) -> HubRepo:
    """The dataset at its revision, as its errors name it: the fetch stage's params keys, the manifest's use."""
    return HubRepo(
        config.repo_id,
        config.revision,
        "dataset",
        context=" (data.source: hub)",
        offline_hint=" to download, or pin data.hub.revision to a commit already downloaded",
        params="data.hub",
    )


# --------------------------------------------------------------------------------------------
# verification and the manifest


def _verify(
    config: HubConfig, repo_path: str, declared: _Declared | None, recorded: dict | None, manifest_path: Path
) -> HubFile:
    local = config.local_dir / repo_path
    if not local.is_file():
        raise DataError(f"{local}: expected after the download of {repo_path} but missing; run fetch again")
    size = local.stat().st_size
    git_blob = declared is not None and declared.sha256 is None and declared.blob_id is not None
    hashed = hash_file(local, git_blob=git_blob)
    sha256, blob_id = hashed.sha256, hashed.git_blob
    hint = "delete it and run fetch again to download it anew"
    if declared is not None:
        if declared.sha256 is not None and sha256 != declared.sha256:
            raise DataError(f"{local}: sha256 {sha256} but {declared.origin} {declared.sha256} for {repo_path}; {hint}")
        if declared.size is not None and size != declared.size:
            raise DataError(f"{local}: {size} bytes but {declared.origin} {declared.size} for {repo_path}; {hint}")
        if git_blob and blob_id != declared.blob_id:
            raise DataError(
                f"{local}: git blob {blob_id} but {declared.origin} {declared.blob_id} for {repo_path}; {hint}"
            )
    if recorded is not None and (recorded.get("sha256") != sha256 or recorded.get("size") != size):
        raise DataError(
            f"{local}: sha256 {sha256} but {manifest_path} recorded {recorded.get('sha256')} for {repo_path} "
            f"at the same commit; {hint}"
        )
    return HubFile(
        repo_path=repo_path,
        local_path=local,
        size=size,
        sha256=sha256,
        hub_size=declared.size if declared is not None else None,
        hub_sha256=declared.sha256 if declared is not None else None,
    )


def _read_manifest(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(
            f"{path}: unreadable download manifest ({one_line(exc)}); delete it and run fetch again"
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise DataError(f"{path}: not a download manifest of this tool; delete it and run fetch again")
    return data


def _recorded_files(previous: dict | None, repo_id: str, commit: str) -> dict[str, dict]:
    """The previous manifest's entries, if it describes the same commit (other commits may differ)."""
    if not previous or previous.get("repo_id") != repo_id or previous.get("commit") != commit:
        return {}
    return {entry["path"]: entry for entry in previous["files"] if isinstance(entry, dict) and "path" in entry}


def _offline_commit(config: HubConfig, previous: dict | None) -> str | None:
    """Without the Hub, a revision pinned to a commit recorded in full by the manifest can still be used."""
    if not is_commit(config.revision):
        return None
    recorded = _recorded_files(previous, config.repo_id, config.revision)
    if not all(path in recorded and (config.local_dir / path).is_file() for path in config.repo_files):
        return None
    return config.revision


def _declared_from_manifest(previous: dict | None, manifest_path: Path) -> dict[str, _Declared]:
    entries: Iterable[dict] = previous["files"] if previous else []
    origin = f"{manifest_path} records the Hub's"
    return {
        e["path"]: _Declared(size=e.get("hub_size"), sha256=e.get("hub_sha256"), blob_id=None, origin=origin)
        for e in entries
        if isinstance(e, dict) and "path" in e
    }


def _write_manifest(
    path: Path, config: HubConfig, commit: str, endpoint: str, files: dict[str, HubFile], recorded: dict[str, dict]
) -> None:
    entries = {**recorded, **{repo_path: item.record() for repo_path, item in files.items()}}
    atomic_write_json(
        path,
        {
            "repo_id": config.repo_id,
            "revision": config.revision,
            "commit": commit,
            "endpoint": endpoint,
            "local_dir": config.local_dir.as_posix(),
            "files": [entries[key] for key in sorted(entries)],
        },
    )
