"""Resumable training checkpoints: one safetensors file per run holding everything the next epochs depend on.

A checkpoint carries the run's fingerprint (config, method params, seed, data sample, init weights,
the training code's own bytes, versions), so a checkpoint of another run is never continued; it is
written under a temporary name, flushed and renamed, so a kill at any moment leaves the previous one
intact. A finished run leaves only a note (`close_checkpoints`). Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save
from tqdm import tqdm

from owdfa.core.import_closure import REPO_ROOT, module_closure
from owdfa.core.io import atomic_write_bytes, atomic_write_text
from owdfa.core.numerics import describe as describe_numerics
from owdfa.train.state import Best, RunSpec, TrainState

if TYPE_CHECKING:
    from owdfa.core.distributed import World

CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = re.compile(r"^epoch-(\d{4,})\.safetensors$")
FINISHED_NOTE = "FINISHED.txt"
FINISHED_TEXT = (
    "The run finished and wrote its model directory, so no resume state is kept here.\n"
    "A killed run leaves its last epoch's checkpoint in this folder and resumes from it.\n"
)
# The training stages' library entry point: its import closure is the code a checkpoint was made by.
TRAINING_ENTRY = "owdfa.train.stages"


def _sha(*parts: Any) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _tensor_bytes(state: dict[str, torch.Tensor] | None) -> bytes:
    if state is None:
        return b"none"
    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.digest()


def _code_bytes() -> bytes:
    """The training code itself: a checkpoint of other code must not be continued by this code.

    The files are those `owdfa.train.stages` imports, directly or not (`owdfa.core.import_closure`, the same
    source the stages' DVC code deps are checked against), so the two can never disagree.
    """
    h = hashlib.sha256()
    for name in module_closure(TRAINING_ENTRY):
        h.update(name.encode())
        h.update((REPO_ROOT / name).read_bytes())
    return h.digest()


def run_fingerprint(spec: RunSpec, world: World, device: torch.device) -> str:
    """What makes two runs the same run: config, method params, seed, data, init weights, code, versions.

    The cache images are sampled (shape plus 64 evenly spaced rows) rather than hashed whole, which
    would read gigabytes for OWDFA-40; the data's `identity` names the split and the cache.
    """
    import timm

    data, method = spec.data, spec.method
    images = data.images
    sample = np.linspace(0, len(images) - 1, num=min(64, len(images)), dtype=np.int64) if len(images) else []
    arrays = [
        data.labelled_rows,
        data.labelled_targets,
        data.unlabelled_rows,
        data.val_rows,
        data.val_targets,
        images[sample] if len(images) else np.zeros(0),
    ]
    return _sha(
        {
            "config": asdict(spec.config),
            "method": {
                "class": type(method).__name__,
                **{f.name: getattr(method, f.name) for f in (fields(method) if is_dataclass(method) else ())},
            },
            "seed": spec.seed,
            "num_prototypes": spec.num_prototypes,
            "num_known": data.num_known,
            "num_classes": data.num_classes,
            "images": [list(images.shape), str(images.dtype)],
            "world_size": world.size,
            "device": device.type,
            "numerics": describe_numerics(device.type),  # an exact-mode run never continues a native one
            "versions": [torch.__version__, timm.__version__, np.__version__],
            "extra": data.identity or {},
        },
        *(np.ascontiguousarray(a).tobytes() for a in arrays),
        _tensor_bytes(spec.init_state),
        _code_bytes(),
    )


def _rng_state(gen: torch.Generator, device: torch.device) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    np_state = np.random.get_state()
    tensors = {
        "rng/generator": gen.get_state(),
        "rng/torch": torch.get_rng_state(),
        "rng/numpy": torch.from_numpy(np_state[1].astype(np.int64)),
    }
    if device.type == "cuda":
        tensors["rng/cuda"] = torch.cuda.get_rng_state(device)
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": [np_state[0], *np_state[2:]], "python": [py_version, list(py_state), py_gauss]}
    return tensors, meta


def _set_rng_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], gen: torch.Generator, device: torch.device
) -> None:
    gen.set_state(tensors["rng/generator"])
    torch.set_rng_state(tensors["rng/torch"])
    name, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, tensors["rng/numpy"].numpy().astype(np.uint32), pos, has_gauss, cached))
    py_version, py_state, py_gauss = meta["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    if device.type == "cuda" and "rng/cuda" in tensors:
        torch.cuda.set_rng_state(tensors["rng/cuda"], device)


def _split(prefix: str, values: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors under `prefix/key` for safetensors; everything else JSON."""
    tensors = {f"{prefix}/{k}": v.detach().cpu().contiguous() for k, v in values.items() if isinstance(v, torch.Tensor)}
    rest = {k: v for k, v in values.items() if not isinstance(v, torch.Tensor)}
    return tensors, rest


def _join(prefix: str, tensors: dict[str, torch.Tensor], rest: dict[str, Any]) -> dict[str, Any]:
    head = f"{prefix}/"
    return {**rest, **{k[len(head) :]: v for k, v in tensors.items() if k.startswith(head)}}


def save_checkpoint(directory: Path, fingerprint: str | None, state: TrainState, device: torch.device) -> Path:
    """Everything the next epochs depend on, as one safetensors file (tensors) with JSON metadata.

    Written under a temporary name, flushed to disk and renamed (`atomic_write_bytes`, durable), so a
    kill at any moment leaves the previous checkpoint intact, and a full disk one line and no partial
    file; then every other checkpoint in the folder is removed.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    history, best = state.history, state.best
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in state.model.state_dict().items()}
    if best.state is not None:
        tensors.update({f"best/{k}": v.contiguous() for k, v in best.state.items()})
    optim = state.optimizer.state_dict()
    optim_rest: dict[str, Any] = {}
    for index, param_state in optim["state"].items():
        t, rest = _split(f"optim/{index}", param_state)
        tensors.update(t)
        optim_rest[str(index)] = rest
    rng_tensors, rng_meta = _rng_state(state.generator, device)
    tensors.update(rng_tensors)
    method_tensors, method_rest = _split("method", state.method.state_dict())
    tensors.update(method_tensors)
    sampler_tensors, sampler_rest = _split("sampler", state.sampler.state_dict())
    tensors.update(sampler_tensors)
    meta = {
        "format": CHECKPOINT_FORMAT,
        "fingerprint": fingerprint,
        "epochs_done": len(history),
        "history": history,
        "best_acc": best.acc,
        "best_epoch": best.epoch,
        "optimizer": {"param_groups": optim["param_groups"], "state": optim_rest},
        "scheduler": state.scheduler.state_dict(),
        "rng": rng_meta,
        "method": method_rest,
        "sampler": sampler_rest,
    }
    final = directory / f"epoch-{len(history):04d}.safetensors"
    atomic_write_bytes(final, save(tensors, metadata={"owdfa": json.dumps(meta)}), durable=True)
    clear_checkpoints(directory, keep=final)
    return final


def clear_checkpoints(directory: Path, keep: Path | None = None) -> None:
    """Remove the checkpoint files (complete or half-written) in `directory` but `keep`; keep the folder.

    After a new checkpoint, the older ones go (and the finished note, which no longer holds).
    Only files named like checkpoints, or the note, are touched.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for path in directory.iterdir():
        if path != keep and (CHECKPOINT_NAME.match(path.name) or _is_partial(path.name) or path.name == FINISHED_NOTE):
            path.unlink(missing_ok=True)


def close_checkpoints(directory: Path) -> None:
    """The run's model directory is safe on disk: remove every checkpoint and leave a note saying so.

    A finished run then leaves no optimizer state on disk, and a forced re-run really trains again
    instead of resuming after its last epoch. The folder stays because the stage declares it as an
    output, and the note keeps it from being empty, which DVC would warn about on every run.
    """
    clear_checkpoints(directory)
    atomic_write_text(Path(directory) / FINISHED_NOTE, FINISHED_TEXT)


def _is_partial(name: str) -> bool:
    """A checkpoint's temporary file (`atomic_write_bytes`: `.epoch-NNNN.safetensors.<random>.tmp`), left by a kill."""
    return name.startswith(".epoch-") and ".safetensors." in name and name.endswith(".tmp")


@dataclass
class Checkpoint:
    path: Path
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def read_checkpoint(path: Path) -> Checkpoint:
    """Tensors and metadata of one checkpoint file (safetensors only: nothing is unpickled)."""
    tensors: dict[str, torch.Tensor] = {}
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {})["owdfa"])
        for key in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
            tensors[key] = handle.get_tensor(key)
    return Checkpoint(path=Path(path), tensors=tensors, meta=meta)


def load_checkpoint(directory: Path, fingerprint: str | None, note: str | None = None) -> Checkpoint | None:
    """The newest complete checkpoint of this run, or None (then training starts afresh).

    A checkpoint of another run (different params, data, seed or code) is ignored with a one-line
    note and overwritten by the first new one; an unreadable file (not ours) is skipped.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = sorted(
        (p for p in directory.iterdir() if CHECKPOINT_NAME.match(p.name)),
        key=lambda p: int(CHECKPOINT_NAME.match(p.name).group(1)),
        reverse=True,
    )
    foreign = []
    for path in candidates:
        try:
            found = read_checkpoint(path)
        except (SafetensorError, OSError, ValueError, KeyError):
            foreign.append(path.name)
            continue
        if found.meta.get("format") == CHECKPOINT_FORMAT and found.meta.get("fingerprint") == fingerprint:
            return found
        foreign.append(path.name)
    if foreign and note is not None:
        tqdm.write(f"{note}: {directory}/{foreign[0]} is from a different run (params, data or code); starting afresh")
    return None


def restore(found: Checkpoint, state: TrainState, device: torch.device) -> None:
    """Put a checkpoint's state into `state` (built afresh, as for a new run), history and best included."""
    tensors, meta = found.tensors, found.meta
    state.model.load_state_dict(_join("model", tensors, {}), strict=True)
    fresh_groups = state.optimizer.state_dict()["param_groups"]
    groups = []
    for fresh, saved in zip(fresh_groups, meta["optimizer"]["param_groups"], strict=True):
        # JSON turned tuples (Adam's betas) into lists; give them back their type.
        groups.append({k: tuple(v) if isinstance(fresh.get(k), tuple) else v for k, v in saved.items()})
    optim_state = {int(i): _join(f"optim/{i}", tensors, rest) for i, rest in meta["optimizer"]["state"].items()}
    state.optimizer.load_state_dict({"state": optim_state, "param_groups": groups})
    state.scheduler.load_state_dict(meta["scheduler"])
    state.method.load_state_dict(_join("method", tensors, meta["method"]))
    state.sampler.load_state_dict(_join("sampler", tensors, meta["sampler"]))
    _set_rng_state(tensors, meta["rng"], state.generator, device)
    state.history = list(meta["history"])
    state.best = Best(float(meta["best_acc"]), _join("best", tensors, {}) or None, meta["best_epoch"])


@dataclass(frozen=True)
class Checkpointer:
    """A run's checkpoints: one folder, one run fingerprint, built once per run.

    `resume` fills a fresh `TrainState` from the newest checkpoint of this very run (if any);
    `save` writes the state after each epoch.
    """

    directory: Path
    fingerprint: str
    device: torch.device

    @classmethod
    def for_run(cls, directory: Path, spec: RunSpec, world: World, device: torch.device) -> Checkpointer:
        return cls(Path(directory), run_fingerprint(spec, world, device), device)

    def resume(self, state: TrainState, note: str | None = None) -> bool:
        found = load_checkpoint(self.directory, self.fingerprint, note=note)
        if found is not None:
            restore(found, state, self.device)
        return found is not None

    def save(self, state: TrainState) -> Path:
        return save_checkpoint(self.directory, self.fingerprint, state, self.device)
