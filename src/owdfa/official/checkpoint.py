"""The CAL authors' trained models (Hub model repo `hyzheng/OWDFA_CAL`) as our model directories.

The authors release PyTorch Lightning `.ckpt` files: `protocol{1,2}/protocol{N}_seed{S}.ckpt` and
`protocol3/protocol_seed{S}.ckpt` (known K), `wok_protocol{N}/wok_protocol{N}_seed{S}.ckpt` (unknown K,
DPP), seeds 2025-2027. A `.ckpt` is a pickle in torch's zip format, and the default unpickler runs
whatever code a pickle names, so one is read here in two restricted passes: the pickle's opcodes are
listed without executing anything and every global it names must be a tensor rebuild function, a
storage or dtype, a plain container or a known inert metadata class; then `torch.load(weights_only=True)`
(torch's own restricted unpickler) builds it. Metadata classes (`argparse.Namespace`, Lightning's
`AttributeDict`) are built as inert stand-ins and returned as plain dicts; nothing of theirs is called.

Key layout of a CAL checkpoint (official code @ c8311d1: `CAL/algorithm/sl.py` keeps the network in
the LightningModule attribute `encoder`, `CAL/encoder/models.py` class `CAL_Classifier`):

    encoder.encoder.<timm key>                      the timm backbone (timm's default 1000-way head
                                                    `fc` included, never used: CAL calls forward_features)
    encoder.fft_attn_module.freq_attn_net.{0,2}.*   FFE's two 3x3 convs (1 and 3 are ReLU and Sigmoid)
    encoder.bottleneck.*                            BNNeck, BatchNorm1d with a frozen zero bias
    encoder.fc2                                     the prototype matrix, rows x features, no bias

DPP's active prototype count (`valid_proto_num`) is a plain attribute of CAL_Classifier, so it is
not in the checkpoint: an unknown-K model keeps every row active (as the official
`scripts/evaluate_wok.sh` evaluates it) unless the caller gives the count.

Use: `resolve_checkpoint` (`fetch_official_checkpoint` or `local_checkpoint`) ->
`import_official_checkpoint` -> `write_model_dir`.
"""

from __future__ import annotations

import _compat_pickle
import pickle
import pickletools
import re
import sys
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from owdfa.core.errors import DataError
from owdfa.core.hub_client import HubRepo, hash_file, hub_endpoint, hub_error, is_commit, one_line
from owdfa.data.face_preprocessing import DEFAULTS, FacePreprocessing
from owdfa.data.protocols import OWDFA40_FOLDERS, OWDFA40_PROTOCOLS
from owdfa.data.walk import display_name
from owdfa.modeldir.card import CardClass, ImportedCard
from owdfa.models.prototype import IMAGENET_MEAN, IMAGENET_STD

OFFICIAL_REPO_ID = "hyzheng/OWDFA_CAL"
OFFICIAL_CODE = "HaiyangZheng/OWDFA-CAL@c8311d1"
OFFICIAL_SEEDS = (2025, 2026, 2027)
# timm 0.4.12 (pinned by the official environment.yml) loads the RandAugment ("ram") weights for
# `resnet50`; timm >= 0.9 names them `resnet50.ram_in1k`. Same architecture, same keys.
OFFICIAL_BACKBONE = "resnet50.ram_in1k"
OFFICIAL_IMAGE_SIZE = 256
OFFICIAL_DROPOUT = 0.2
OWDFA40_NUM_CLASSES = 41
KNOWN_K_PROTOTYPES = 41  # scripts/train.sh: --model_num_classes 41 for every protocol
DPP_PROTOTYPES_PER_KNOWN = 10  # train.py: with --enable_proto_pruning, 10 x the known classes
# The official face crop (dataset/owdfa_dataset.py load_img, dataset/face_cropper.py): dlib's HOG
# detector without upsampling, the first box (dlib lists them most confident first) enlarged 1.2x,
# clipped, no alignment; the whole image when no face is found. The align stage's `crop` mode does this.
OFFICIAL_PREPROCESSING = FacePreprocessing(
    mode="crop",
    image_size=OFFICIAL_IMAGE_SIZE,
    upsample=0,
    threshold=0.0,
    margin=1.2,
    padding=DEFAULTS["padding"],  # unused by mode crop; the align stage's default
)
# Loss settings of the released runs (train.py defaults and scripts/train*.sh)
OFFICIAL_METHOD_PARAMS: dict[str, Any] = {
    "teacher_temp": 0.1,
    "student_temp": 1.0,
    "ccr_weight": 0.2,
    "gamma": 0.9,
    "acr_start_epoch": 5,
    "epochs": 50,
}
OFFICIAL_DPP_COVERAGE = 0.9544

# Official parameter names -> ours, written once: (our prefix, official prefix), then exact names.
KEY_PREFIXES: tuple[tuple[str, str], ...] = (
    ("backbone.", "encoder.encoder."),
    ("neck.", "encoder.bottleneck."),
    ("ffe.conv1.", "encoder.fft_attn_module.freq_attn_net.0."),
    ("ffe.conv2.", "encoder.fft_attn_module.freq_attn_net.2."),
)
EXACT_KEYS: dict[str, str] = {"prototypes": "encoder.fc2"}
OFFICIAL_PROTOTYPES = EXACT_KEYS["prototypes"]
DERIVED_KEYS = ("num_active",)  # ours only: the official count is not saved (module docstring)

# Novel classes follow the known ones in the official label order, in the order the official code
# lists them: `list(set(all classes) - set(known))` (dataset/owdfa_dataset.py get_owdfa_datasets).
# CPython iterates a set of small ints by hash slot, which is not ascending for P3's twelve novel
# classes (a 32-slot table: 32, 34 and 40 wrap around); the lists below are that order.
OFFICIAL_NOVEL_ORDER: dict[str, tuple[int, ...]] = {
    "p1": (2, 4, 5, 7, 9, 10, 12, 13, 15, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34, 36, 38, 40),
    "p2": (2, 4, 5, 7, 9, 10, 12, 13, 15, 16, 17, 18, 19, 20, 22, 24, 26, 28, 30, 32, 33, 34, 35, 36, 37, 38, 39, 40),
    "p3": (32, 2, 34, 4, 40, 9, 12, 15, 16, 22, 28, 30),
}


# --------------------------------------------------------------------------------------------
# which official run a file is


@dataclass(frozen=True)
class OfficialRun:
    """One released run: protocol (`p1`..`p3`), known or unknown K, training seed."""

    protocol: str
    known_k: bool
    seed: int

    @property
    def filename(self) -> str:
        """Its path in the Hub repo (P3 known K is `protocol3/protocol_seed*.ckpt`, as released)."""
        n = self.protocol.removeprefix("p")
        if not self.known_k:
            return f"wok_protocol{n}/wok_protocol{n}_seed{self.seed}.ckpt"
        stem = "protocol" if self.protocol == "p3" else f"protocol{n}"
        return f"protocol{n}/{stem}_seed{self.seed}.ckpt"


OFFICIAL_RUNS: tuple[OfficialRun, ...] = tuple(
    OfficialRun(protocol, known_k, seed)
    for known_k in (True, False)
    for protocol in ("p1", "p2", "p3")
    for seed in OFFICIAL_SEEDS
)


def official_run(filename: str) -> OfficialRun | None:
    """The released run a file name (repo path or bare name, all 18 are distinct) belongs to."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    for run in OFFICIAL_RUNS:
        if run.filename.rsplit("/", 1)[-1] == base:
            return run
    return None


def official_class_order(protocol: str) -> tuple[int, ...]:
    """OWDFA-40 labels in the official target order: known sorted (0..K_L-1), then the novel ones."""
    return tuple(sorted(OWDFA40_PROTOCOLS[protocol].known)) + OFFICIAL_NOVEL_ORDER[protocol]


# --------------------------------------------------------------------------------------------
# the checkpoint file: downloaded or local, hashed


@dataclass(frozen=True)
class CheckpointFile:
    """A checkpoint on disk with its sha256 and, when it came from the Hub, where exactly from."""

    path: Path
    sha256: str
    size: int
    repo_id: str | None = None
    revision: str | None = None
    commit: str | None = None
    filename: str | None = None  # its path in the repo

    def record(self) -> dict[str, Any]:
        """Provenance for the model card."""
        return {
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "filename": self.filename if self.filename is not None else self.path.name,
            "sha256": self.sha256,
            "size": self.size,
            "code": OFFICIAL_CODE,
        }


def local_checkpoint(path: Path, *, repo_id: str | None = None, filename: str | None = None) -> CheckpointFile:
    """A checkpoint already on disk (e.g. downloaded by hand); `filename` is its repo path if known."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    hashed = hash_file(path)
    return CheckpointFile(path, hashed.sha256, hashed.size, repo_id=repo_id, filename=filename)


def resolve_checkpoint(
    source: str, revision: str, download_dir: Path, *, params_key: str | None = None
) -> CheckpointFile:
    """`source` on disk: an existing local .ckpt file, else a file of the official Hub repo downloaded at
    `revision` into `download_dir` (`fetch_official_checkpoint`).

    As `owdfa import` names it (no `params_key`): only a released file's repo path (`owdfa import --list`)
    is downloaded; anything else is `<source>: no such file, and not a released checkpoint`. As a params
    entry names it (the import stage; `params_key` is the entry's key, `official.models.<name>.file`): `~`
    is expanded, an absolute path must exist (`<params_key>: <path>: no such file`), and any other relative
    path is the repo's (the Hub says so when it does not hold it).
    """
    local = Path(source) if params_key is None else Path(source).expanduser()
    if local.is_file():
        return local_checkpoint(local)
    if params_key is None:
        if official_run(source) is not None and "/" in source:
            return fetch_official_checkpoint(source, revision, download_dir)
        raise DataError(f"{display_name(source)}: no such file, and not a released checkpoint (owdfa import --list)")
    if local.is_absolute():
        raise DataError(f"{params_key}: {local}: no such file")
    return fetch_official_checkpoint(source, revision, download_dir)


def fetch_official_checkpoint(
    filename: str, revision: str, download_dir: Path, repo_id: str = OFFICIAL_REPO_ID
) -> CheckpointFile:
    """Download one checkpoint with the real `huggingface_hub` client at one commit, verified by sha256.

    `revision` should be a commit sha; a branch or tag is resolved to its commit now, recorded, and
    warned about (the same call may give another file later). Files go to
    `<download_dir>/<owner>__<name>/<commit>/<filename>`, the client's cache to `<download_dir>/.hf-cache`.
    """
    from huggingface_hub import HfApi, hf_hub_download

    endpoint = hub_endpoint()
    local_file = ", or give a local .ckpt file"
    repo = HubRepo(repo_id, revision, "model", offline_hint=local_file, unreachable_hint=local_file)
    try:
        info = HfApi(endpoint=endpoint).model_info(repo_id, revision=revision, files_metadata=True)
    except Exception as exc:
        raise hub_error(exc, repo, endpoint) from None
    commit = info.sha
    if not commit:
        raise DataError(f"the Hub at {endpoint} gave no commit for {repo_id}@{revision}")
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    if filename not in siblings:
        listed = sorted(name for name in siblings if name.endswith(".ckpt"))
        shown = ", ".join(listed[:6]) + (f", ... ({len(listed)} in all)" if len(listed) > 6 else "")
        raise DataError(f"{filename} is not in {repo_id} at commit {commit}; its checkpoints: {shown or 'none'}")
    if not is_commit(revision):
        print(
            f"warning: revision {revision!r} of {repo_id} is a branch or tag (now commit {commit}); pin the commit",
            file=sys.stderr,
        )
    local_dir = Path(download_dir) / repo_id.replace("/", "__") / commit
    try:
        local = Path(
            hf_hub_download(
                repo_id,
                filename,
                revision=commit,
                local_dir=local_dir,
                cache_dir=Path(download_dir) / ".hf-cache",
                endpoint=endpoint,
            )
        )
    except Exception as exc:
        raise hub_error(exc, repo, endpoint) from None
    hashed = hash_file(local)
    sha256, size = hashed.sha256, hashed.size
    sibling = siblings[filename]
    declared_sha = sibling.lfs.sha256 if sibling.lfs is not None else None
    declared_size = sibling.lfs.size if sibling.lfs is not None else sibling.size
    hint = "delete it and download again"
    if declared_sha is not None and sha256 != declared_sha:
        raise DataError(f"{local}: sha256 {sha256} but the Hub declares {declared_sha} for {filename}; {hint}")
    if declared_size is not None and size != declared_size:
        raise DataError(f"{local}: {size} bytes but the Hub declares {declared_size} for {filename}; {hint}")
    return CheckpointFile(local, sha256, size, repo_id=repo_id, revision=revision, commit=commit, filename=filename)


# --------------------------------------------------------------------------------------------
# safe reading


class InertNamespace:
    """Stand-in for `argparse.Namespace` while unpickling: keeps the attributes as data, does nothing."""

    __slots__ = ("fields",)

    def __init__(self, **fields: Any) -> None:
        self.fields = dict(fields)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            state = {**(state[0] or {}), **(state[1] or {})}
        self.fields = dict(state) if isinstance(state, Mapping) else {"state": state}


# Metadata classes a Lightning checkpoint may name, each built as an inert stand-in. CAL's LightningModule
# never calls save_hyperparameters, so its checkpoints have no `hyper_parameters` at all; other Lightning
# checkpoints keep a hparams Namespace or AttributeDict there. An AttributeDict is a dict subclass whose
# items the unpickler sets one by one, which torch allows on an OrderedDict only: that is its stand-in.
INERT_STAND_INS: tuple[tuple[Any, str], ...] = (
    (InertNamespace, "argparse.Namespace"),
    (OrderedDict, "lightning.fabric.utilities.data.AttributeDict"),
    (OrderedDict, "lightning_fabric.utilities.data.AttributeDict"),
    (OrderedDict, "lightning.pytorch.utilities.parsing.AttributeDict"),
    (OrderedDict, "pytorch_lightning.utilities.parsing.AttributeDict"),
)
_STORAGES = ("Double", "Float", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
_DTYPES = (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
)  # fmt: skip
# Every global a plain tensor checkpoint needs (torch.save's zip format), and nothing else.
PLAIN_GLOBALS: frozenset[str] = frozenset(
    {
        "collections.OrderedDict",
        "torch._utils._rebuild_tensor_v2",
        "torch._utils._rebuild_tensor_v3",
        "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_parameter_with_state",
        "torch.Size",
        "torch.device",
        "_codecs.encode",  # bytes
        "builtins.set",
        "builtins.bytearray",
        "builtins.complex",
        *(f"torch.{kind}Storage" for kind in _STORAGES),
        *(f"torch.{dtype}" for dtype in _DTYPES),
        *(name for _, name in INERT_STAND_INS),
    }
)
_STRING_OPS = frozenset(
    {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "STRING", "BINSTRING", "SHORT_BINSTRING"}
)
_GET_OPS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_PUT_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
_NO_STACK_OPS = frozenset({"PROTO", "FRAME", "STOP"})
_UNNAMED_GLOBAL = "a global named on the pickle stack"


def _global_name(module: str, name: str) -> str:
    """`module.name` after the protocol-2 renames the unpickler applies (`__builtin__` -> `builtins`)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def pickle_globals(data: bytes) -> list[str]:
    """Every global a pickle names, in order, found by reading its opcodes (nothing is executed).

    GLOBAL and INST carry the name; STACK_GLOBAL (protocol 4) takes it from the two strings pushed
    before it, which are tracked through the memo; a name that cannot be traced is reported as such.
    """
    found: list[str] = []
    recent: list[object] = []  # what each op pushed, when it was a string (else None)
    memo: dict[object, object] = {}
    for opcode, arg, _ in pickletools.genops(data):
        op = opcode.name
        if op in ("GLOBAL", "INST"):
            module, _, name = str(arg).partition(" ")
            found.append(_global_name(module, name))
            recent.append(None)
        elif op == "STACK_GLOBAL":
            module, name = (recent[-2], recent[-1]) if len(recent) >= 2 else (None, None)
            if isinstance(module, str) and isinstance(name, str):
                found.append(_global_name(module, name))
            else:
                found.append(_UNNAMED_GLOBAL)
            recent.append(None)
        elif op in _STRING_OPS:
            recent.append(arg if isinstance(arg, str) else None)
        elif op in _GET_OPS:
            recent.append(memo.get(arg))
        elif op in _PUT_OPS:
            memo[arg] = recent[-1] if recent else None
        elif op == "MEMOIZE":
            memo[len(memo)] = recent[-1] if recent else None
        elif op not in _NO_STACK_OPS:
            recent.append(None)
    return found


def read_lightning_checkpoint(path: Path) -> dict[str, Any]:
    """A Lightning `.ckpt` read without running any code it carries; one DataError line on any problem.

    Only torch.save's zip format is read (every record stored uncompressed, CRCs checked). Tensors and
    storages are built, containers and numbers kept; metadata classes come back as plain dicts.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    pickled = _read_zip_pickle(path)
    try:
        names = pickle_globals(pickled)
    except (ValueError, EOFError, IndexError, KeyError) as exc:
        raise DataError(f"{path}: corrupt checkpoint (unreadable pickle: {one_line(exc)})") from None
    for name in names:
        if name not in PLAIN_GLOBALS:
            raise _refused(path, name)
    try:
        with torch.serialization.safe_globals(list(INERT_STAND_INS)):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL (\S+) (?:was not an allowed|whose module)", str(exc))
        if refused:
            raise _refused(path, refused.group(1)) from None
        raise DataError(f"{path}: refused by the restricted unpickler ({one_line(exc)})") from None
    except (RuntimeError, ValueError, EOFError, OSError, TypeError, AttributeError, KeyError) as exc:
        raise DataError(f"{path}: unreadable checkpoint ({one_line(exc)})") from None
    if not isinstance(checkpoint, dict):
        raise DataError(
            f"{path}: not a Lightning checkpoint (it holds a {type(checkpoint).__name__}, not a dict with a state_dict)"
        )
    if "state_dict" not in checkpoint:
        keys = ", ".join(sorted(map(str, checkpoint))[:8]) or "none"
        raise DataError(f"{path}: not a Lightning checkpoint (no state_dict; top-level keys: {keys})")
    state = checkpoint["state_dict"]
    if not isinstance(state, Mapping):
        raise DataError(f"{path}: state_dict is a {type(state).__name__}, not a mapping of tensors")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise DataError(f"{path}: state_dict entry {key!r} is a {type(value).__name__}, not a tensor")
    return {key: (value if key == "state_dict" else _plain(value)) for key, value in checkpoint.items()}


def _refused(path: Path, name: str) -> DataError:
    return DataError(f"{path}: refused to unpickle {name} (only tensors and plain data are read)")


# What reading a damaged record raises; NotImplementedError and RuntimeError: flags torch.save never
# sets (encryption, patched data) on a flipped bit.
UNREADABLE_RECORD = (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, RuntimeError)


def _read_zip_pickle(path: Path) -> bytes:
    """The zip's `data.pkl`, after the archive's structure and every record's CRC are checked."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        raise DataError(f"{path}: empty file, not a checkpoint")
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        if head.startswith(b"PK"):
            raise DataError(f"{path}: truncated or corrupt checkpoint (damaged zip archive)") from None
        if head[:1] == b"\x80":
            raise DataError(f"{path}: a legacy (pre-zip) torch pickle; only torch.save's zip format is read") from None
        raise DataError(f"{path}: not a PyTorch checkpoint (not a zip archive)") from None
    except (zipfile.LargeZipFile, EOFError, UnicodeDecodeError, ValueError, NotImplementedError) as exc:
        raise DataError(f"{path}: truncated or corrupt checkpoint (damaged zip directory: {one_line(exc)})") from None
    except OSError as exc:
        raise DataError(f"{path}: unreadable checkpoint ({one_line(exc)})") from None
    with archive:
        infos = archive.infolist()
        pickles = [i.filename for i in infos if i.filename.endswith("/data.pkl") and i.filename.count("/") == 1]
        if any(i.filename.endswith("/constants.pkl") for i in infos):
            raise DataError(f"{path}: a TorchScript archive, not a checkpoint")
        if len(pickles) != 1:
            raise DataError(f"{path}: not a torch.save checkpoint (no data.pkl record in the zip)")
        compressed = next((i.filename for i in infos if i.compress_type != zipfile.ZIP_STORED), None)
        if compressed is not None:
            raise DataError(f"{path}: {display_name(compressed)} is compressed; torch.save never compresses (refused)")
        try:
            damaged = archive.testzip()
            data = archive.read(pickles[0])
        except (*UNREADABLE_RECORD, OSError) as exc:
            raise DataError(f"{path}: truncated or corrupt checkpoint ({one_line(exc)})") from None
        if damaged is not None:
            raise DataError(f"{path}: corrupt checkpoint (CRC mismatch in {display_name(damaged)})")
    return data


def _plain(value: Any) -> Any:
    """Metadata as plain data: stand-ins and ordered dicts become dicts, recursively."""
    if isinstance(value, InertNamespace):
        return {str(k): _plain(v) for k, v in value.fields.items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_plain(v) for v in value)
    return value


# --------------------------------------------------------------------------------------------
# conversion


class ImportedCheckpoint(NamedTuple):
    """Our model's state dict and the model card the official checkpoint implies."""

    state: dict[str, torch.Tensor]
    card: ImportedCard


def official_key(ours: str) -> str | None:
    """The official name of one of our parameters (None for the ones we derive: `num_active`)."""
    if ours in EXACT_KEYS:
        return EXACT_KEYS[ours]
    for our_prefix, official_prefix in KEY_PREFIXES:
        if ours.startswith(our_prefix):
            return official_prefix + ours[len(our_prefix) :]
    if ours in DERIVED_KEYS:
        return None
    raise KeyError(f"no official counterpart known for our parameter {ours}")


def ignored_official_keys(backbone: torch.nn.Module) -> dict[str, str]:
    """Official key prefixes deliberately dropped, each with its reason (`backbone`: our timm model)."""
    head = getattr(backbone, "pretrained_cfg", {}).get("classifier") or "fc"
    return {
        f"encoder.encoder.{head}.": "timm's ImageNet classifier head: built by timm, never used "
        "(CAL_Classifier only calls the backbone's forward_features)"
    }


def convert_official_state(
    official: Mapping[str, torch.Tensor], *, backbone: str, num_active: int | None, where: Path | str
) -> dict[str, torch.Tensor]:
    """The official state dict as ours, strictly: every official key used or ignored for a stated
    reason, every shape and dtype checked; a problem is one DataError line naming the key."""
    from owdfa.models import AttributionModel

    prototypes = official.get(OFFICIAL_PROTOTYPES)
    if prototypes is None:
        prefixes = sorted({key.split(".", 1)[0] for key in official})
        raise DataError(
            f"{where}: no {OFFICIAL_PROTOTYPES} (CAL's prototype matrix): not a CAL checkpoint "
            f"(its keys start with {', '.join(prefixes[:5]) or 'nothing'})"
        )
    if prototypes.ndim != 2:
        raise DataError(f"{where}: {OFFICIAL_PROTOTYPES} has shape {list(prototypes.shape)}, expected rows x features")
    rows = int(prototypes.shape[0])
    with torch.device("meta"):  # names and shapes only: nothing is allocated
        model = AttributionModel(backbone, rows, pretrained=False, dropout=OFFICIAL_DROPOUT, ffe=True)
    expected = model.state_dict()
    ignored = ignored_official_keys(model.backbone)
    state: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for ours, want in expected.items():
        name = official_key(ours)
        if name is None:
            continue
        tensor = official.get(name)
        if tensor is None:
            raise DataError(f"{where}: missing {name} (our {ours}); is the backbone {backbone}?")
        if tuple(tensor.shape) != tuple(want.shape):
            raise DataError(
                f"{where}: {name} has shape {list(tensor.shape)}, expected {list(want.shape)} "
                f"(our {ours}, backbone {backbone})"
            )
        if tensor.dtype != want.dtype:
            raise DataError(f"{where}: {name} is {_dtype(tensor.dtype)}, expected {_dtype(want.dtype)}")
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise DataError(f"{where}: {name} holds NaN or infinite values")
        state[ours] = tensor.detach().clone().contiguous()
        used.add(name)
    for name in official:
        if name not in used and not any(name.startswith(prefix) for prefix in ignored):
            raise DataError(f"{where}: unexpected {name} (not part of CAL_Classifier with backbone {backbone})")
    active = rows if num_active is None else num_active
    state["num_active"] = torch.tensor(active, dtype=torch.long)
    return state


def _dtype(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def official_classes(protocol: str) -> tuple[CardClass, ...]:
    """The card's class list in the official target order (label 0 is both real folders)."""
    folders: dict[int, list[str]] = {}
    for folder in OWDFA40_FOLDERS:
        folders.setdefault(int(folder.split("_", 1)[0]), []).append(folder)
    known = OWDFA40_PROTOCOLS[protocol].known
    classes = []
    for target, label in enumerate(official_class_order(protocol)):
        names = folders[label]
        name = "Real" if label == 0 else names[0].split("_", 1)[1]
        classes.append(CardClass(target, name, label=label, folder=" + ".join(names), known=label in known))
    return tuple(classes)


def import_official_checkpoint(
    source: CheckpointFile,
    *,
    protocol: str | None = None,
    known_k: bool | None = None,
    seed: int | None = None,
    backbone: str = OFFICIAL_BACKBONE,
    num_active: int | None = None,
) -> ImportedCheckpoint:
    """Read an official CAL checkpoint safely and convert it: our state dict plus its model card.

    Protocol, setting and seed come from the official file name when not given; a known-K file's
    protocol cannot be told from its weights (41 rows in every protocol), an unknown-K one's can
    (10 x the known classes). `num_active`: DPP's pruned count for an unknown-K model (not saved by
    the official code; default every row). `backbone` is the timm name to build (tests: test_resnet).
    """
    path = source.path
    checkpoint = read_lightning_checkpoint(path)
    official = checkpoint["state_dict"]
    prototypes = official.get(OFFICIAL_PROTOTYPES)
    rows = int(prototypes.shape[0]) if isinstance(prototypes, torch.Tensor) and prototypes.ndim == 2 else None
    run = official_run(source.filename or path.name)
    if run is not None and protocol is not None and protocol != run.protocol:
        raise DataError(f"{path}: protocol {protocol} given, but {run.filename} is a {run.protocol} checkpoint")
    protocol = protocol or (run.protocol if run else None)
    known_k = known_k if known_k is not None else (run.known_k if run else None)
    seed = seed if seed is not None else (run.seed if run else None)
    if protocol is None and rows is not None and known_k is not True:
        matches = [p for p in OWDFA40_PROTOCOLS if rows == DPP_PROTOTYPES_PER_KNOWN * len(OWDFA40_PROTOCOLS[p].known)]
        protocol = matches[0] if len(matches) == 1 else None
    if protocol not in OWDFA40_PROTOCOLS:
        raise DataError(
            f"{path}: cannot tell the protocol from the file name or the weights; give it (p1, p2 or p3)"
            if protocol is None
            else f"{path}: unknown protocol {protocol!r}; choose p1, p2 or p3"
        )
    num_known = len(OWDFA40_PROTOCOLS[protocol].known)
    dpp_rows = DPP_PROTOTYPES_PER_KNOWN * num_known
    if known_k is None:
        known_k = rows != dpp_rows
    want_rows = KNOWN_K_PROTOTYPES if known_k else dpp_rows
    if rows is not None and rows != want_rows:
        setting = "a known-K" if known_k else f"an unknown-K (10 x {num_known} known)"
        raise DataError(
            f"{path}: {OFFICIAL_PROTOTYPES} has {rows} rows, but {setting} {protocol} model has {want_rows}"
        )
    if num_active is not None and known_k:
        raise DataError(f"{path}: num_active is for unknown-K (DPP) models; a known-K model uses all {want_rows} rows")
    if num_active is not None and not num_known <= num_active <= want_rows:
        raise DataError(f"{path}: num_active {num_active} is outside [{num_known}, {want_rows}]")
    state = convert_official_state(official, backbone=backbone, num_active=num_active, where=path)
    classifier = PrototypeRows(want_rows, int(state["num_active"]), active_given=num_active is not None)
    card = official_card(
        source, checkpoint, protocol=protocol, known_k=known_k, seed=seed, backbone=backbone, rows=classifier
    )
    return ImportedCheckpoint(state, card)


@dataclass(frozen=True)
class PrototypeRows:
    """An imported model's classifier rows: how many, how many in use, and whether that count was given at import."""

    num_prototypes: int
    num_active: int
    active_given: bool


def official_card(
    source: CheckpointFile,
    checkpoint: Mapping[str, Any],
    *,
    protocol: str,
    known_k: bool,
    seed: int | None,
    backbone: str,
    rows: PrototypeRows,
) -> ImportedCard:
    """The model card of an imported official model, written as every card is (`ModelCard.to_json`).

    Provenance (Hub repo, commit, file, sha256, the Lightning metadata) is the card's `source`; a field
    left None (`method_state` of a known-K model, `seed` when unknown) is not written.
    """
    provenance = {
        **source.record(),
        "pytorch_lightning_version": checkpoint.get("pytorch-lightning_version"),
        "epoch": checkpoint.get("epoch"),
        "global_step": checkpoint.get("global_step"),
        **_selection_score(checkpoint),
    }
    state: dict[str, Any] = {}
    method_params = dict(OFFICIAL_METHOD_PARAMS)
    if not known_k:
        method_params["dpp_coverage"] = OFFICIAL_DPP_COVERAGE
        state["dpp_faithful"] = True  # the official DPP, defects included
        state["num_active_source"] = (
            "given at import"
            if rows.active_given
            else "not stored in the checkpoint (valid_proto_num is a plain attribute): every row is active, "
            "as the official scripts/evaluate_wok.sh evaluates"
        )
    return ImportedCard(
        backbone=backbone,
        num_prototypes=rows.num_prototypes,
        num_active=rows.num_active,
        num_known=len(OWDFA40_PROTOCOLS[protocol].known),
        dropout=OFFICIAL_DROPOUT,
        image_size=OFFICIAL_IMAGE_SIZE,
        model_options={"ffe": True, "patch_features": False},
        normalisation={"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        preprocessing=OFFICIAL_PREPROCESSING,
        classes=official_classes(protocol),
        num_classes_true=OWDFA40_NUM_CLASSES,
        benchmark="owdfa40",
        protocol=protocol,
        method="cal_official" if known_k else "cal_dpp_official",
        loss="cal",
        method_params=method_params,
        method_state=state or None,
        source=provenance,
        seed=seed,
        val_best_epoch=None,  # the official run selected its epoch on the test split
        trained_on=f"the CAL authors' run ({OFFICIAL_CODE})",
        numerics={"precision": "fp32", "deterministic": True},
    )


def _selection_score(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """ModelCheckpoint's monitored score (the official run's test All-ACC), if the file records it."""
    for key, value in (checkpoint.get("callbacks") or {}).items():
        if str(key).startswith("ModelCheckpoint") and isinstance(value, Mapping):
            score = value.get("best_model_score")
            if isinstance(score, torch.Tensor) and score.numel() == 1:
                return {"monitor": value.get("monitor"), "best_model_score": float(score)}
    return {}


def import_setting(card: ImportedCard) -> str:
    """`known K`, or `unknown K, N active prototypes`: what an imported card is, for one summary line."""
    return "known K" if card.method == "cal_official" else f"unknown K, {card.num_active} active prototypes"


def write_model_dir(out: Path, imported: ImportedCheckpoint) -> None:
    """Write the model directory with the shared writer, as a trained model's (the one place that calls
    `save_model_dir` here): `model.safetensors` and `card.json` (`ModelCard.to_json`)."""
    from owdfa.modeldir.io import save_model_dir

    save_model_dir(Path(out), imported.state, imported.card)


def import_to_model_dir(source: CheckpointFile, out: Path, **options: Any) -> ImportedCard:
    """`import_official_checkpoint` then `write_model_dir`; returns the model card."""
    imported = import_official_checkpoint(source, **options)
    write_model_dir(out, imported)
    return imported.card


__all__ = [
    "OFFICIAL_REPO_ID",
    "OFFICIAL_RUNS",
    "CheckpointFile",
    "ImportedCheckpoint",
    "OfficialRun",
    "convert_official_state",
    "fetch_official_checkpoint",
    "import_official_checkpoint",
    "import_to_model_dir",
    "local_checkpoint",
    "official_class_order",
    "official_run",
    "pickle_globals",
    "read_lightning_checkpoint",
    "resolve_checkpoint",
    "write_model_dir",
]
