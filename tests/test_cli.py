"""The `owdfa` command line: output formats, bad inputs, exit codes and agreement with the evaluate stage.

A tiny untrained model (test_resnet, 5 prototypes with large random rows so predictions vary) and
a hand-made card stand in for a train stage output. Subprocess runs (each pays a ~5 s torch
import) check what a user sees; the rest call `main()` in-process.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from skimage import data

from owdfa import attribution, cli
from owdfa.modeldir.io import save_model_dir
from owdfa.models import AttributionModel
from owdfa.models.inference import predict

SIZE = 32
NAMES = ["Real", "Swap_A", "Reenact_B", "Gan_C", "Diff_D"]
HAS_UNCERTAINTY = importlib.util.find_spec("owdfa.evaluate.uncertainty") is not None
ROW_KEYS = {"path", "attribution", "known", "cluster", "confidence", "face_found"}


def make_card(**extra: Any) -> dict[str, Any]:
    return {
        "backbone": "test_resnet",
        "num_prototypes": 5,
        "num_active": 5,
        "dropout": 0.2,
        "num_known": 3,
        "num_classes_true": 5,
        "classes": [
            {"target": i, "label": i, "name": n, "folder": f"{i}_{n}", "known": i < 3} for i, n in enumerate(NAMES)
        ],
        "benchmark": "synthetic",
        "protocol": "p1",
        "normalisation": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
        "val_best_epoch": 1,
        "history": [{"epoch": 0}, {"epoch": 1}],
        "params_hash": "0123456789abcdef",
        "method": "cal",
        "loss": "cal",
        "model_options": {"ffe": False, "patch_features": False},
        "method_state": {"k_trajectory": [5, 4]},
        "seed": 0,
        "image_size": SIZE,
        **extra,
    }


@pytest.fixture(scope="module")
def model() -> AttributionModel:
    torch.manual_seed(0)
    net = AttributionModel("test_resnet", 5, dropout=0.2)
    with torch.no_grad():
        net.prototypes.normal_()
    return net.eval()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory, model: AttributionModel) -> Path:
    out = tmp_path_factory.mktemp("cli") / "model"
    save_model_dir(out, model.state_dict(), make_card(), val_best_state=model.state_dict())
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nested generated images, a real face, a blank, a non-image, a dotfile and a __MACOSX copy."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for i, sub in enumerate(["a", "a/deep", "b"]):
        (root / sub).mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(root / sub / f"gen{i}.png")
    Image.fromarray(data.astronaut()).save(root / "astronaut.jpg", quality=95)
    Image.new("RGB", (120, 90), (128, 128, 128)).save(root / "blank.png")
    (root / "broken.png").write_bytes(b"not an image at all")
    (root / "notes.txt").write_text("ignored: not an image suffix")
    (root / ".hidden.png").write_bytes(b"ignored dotfile")
    (root / "__MACOSX").mkdir()
    (root / "__MACOSX" / "gen.png").write_bytes(b"ignored resource fork")
    return root


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "owdfa.cli", *map(str, args)], capture_output=True, text=True, timeout=300
    )


def call(capsys: pytest.CaptureFixture, *args: str | Path) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def check_schema(doc: dict[str, Any], mc: bool = False) -> None:
    assert set(doc) == {"model", "checkpoint", "align", "results", "errors"}
    assert doc["errors"] == sum("error" in r for r in doc["results"])
    for r in doc["results"]:
        keys = ROW_KEYS | ({"epistemic", "aleatoric"} if mc else set())
        assert set(r) - {"error"} == keys
        if "error" in r:
            assert isinstance(r["error"], str) and r["error"]
            assert all(r[k] is None for k in keys - {"path"})
            continue
        assert isinstance(r["known"], bool) and isinstance(r["cluster"], int)
        assert r["known"] == (r["cluster"] < 3)
        assert r["attribution"] == (NAMES[r["cluster"]] if r["known"] else f"novel-{r['cluster']}")
        assert 0.2 <= r["confidence"] <= 1.0 and round(r["confidence"], 6) == r["confidence"]
        assert r["face_found"] in (True, False, None)


# --------------------------------------------------------------------------------------------
# subprocess runs: what a user sees


@pytest.mark.slow
def test_json_run_with_face_detection_and_bad_files(images: Path, model_dir: Path, tmp_path: Path) -> None:
    missing = tmp_path / "missing.png"
    proc = run_cli("attribute", images, missing, "--model", model_dir, "--format", "json", "--align", "crop")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)  # stdout holds the JSON document and nothing else
    check_schema(doc)
    assert doc["model"] == str(model_dir) and doc["checkpoint"] == "last" and doc["align"] == "crop"
    rows = {
        Path(r["path"]).relative_to(images).as_posix() if r["path"] != str(missing) else "missing": r
        for r in doc["results"]
    }
    assert list(rows) == [
        "a/deep/gen1.png",
        "a/gen0.png",
        "astronaut.jpg",
        "b/gen2.png",
        "blank.png",
        "broken.png",
        "missing",
    ]
    assert rows["astronaut.jpg"]["face_found"] is True
    assert rows["blank.png"]["face_found"] is False  # no face: the whole image is used, not an error
    assert "error" not in rows["blank.png"]
    assert "unreadable image" in rows["broken.png"]["error"]
    assert "no such file" in rows["missing"]["error"]
    assert doc["errors"] == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors == [
        f"error: {images / 'broken.png'}: {rows['broken.png']['error']}",
        f"error: {missing}: {rows['missing']['error']}",
    ]
    assert "records no face preprocessing" in proc.stderr  # said once
    assert proc.stderr.count("note: ") == 1


@pytest.mark.slow
def test_a_pickle_with_code_is_never_unpickled(model_dir: Path, images: Path, tmp_path: Path) -> None:
    marker, probe = tmp_path / "pwned", tmp_path / "probe"

    class Payload:
        def __init__(self, target: Path) -> None:
            self.target = target

        def __reduce__(self) -> tuple:
            return exec, (f"open({str(self.target)!r}, 'w').write('code ran')",)

    pickle.loads(pickle.dumps(Payload(probe)))  # the payload does run code when unpickled
    assert probe.exists()
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "card.json").write_text((model_dir / "card.json").read_text())
    torch.save({"state": Payload(marker)}, evil / "model.safetensors")  # a torch.save pickle, renamed
    proc = run_cli("attribute", images / "blank.png", "--model", evil)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert "unreadable safetensors file" in proc.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_console_script_info_json(model_dir: Path) -> None:
    script = Path(sys.executable).parent / "owdfa"
    if not script.exists():
        pytest.skip("the owdfa console script is not installed (pip install -e .)")
    proc = subprocess.run([str(script), "info", str(model_dir), "--format", "json"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads((model_dir / "card.json").read_text())


# --------------------------------------------------------------------------------------------
# in-process


def test_help_and_version(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "info" in out and "attribute" in out
    with pytest.raises(SystemExit):
        cli.main(["--version"])
    assert capsys.readouterr().out.startswith("owdfa ")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["attribute", "x.png"])  # --model missing: a usage error
    assert exit_info.value.code == 2


def test_info_text(capsys: pytest.CaptureFixture, model_dir: Path) -> None:
    rc, out, _ = call(capsys, "info", model_dir)
    assert rc == 0
    assert "protocol p1" in out and "cal" in out and "test_resnet" in out
    assert "0 Real, 1 Swap_A, 2 Reenact_B" in out and "3 Gan_C, 4 Diff_D" in out
    assert "K-hat         4 (DPP k_trajectory)" in out
    assert "epoch index 1" in out and "0123456789abcdef" in out and "last, val_best" in out
    assert "not recorded: assumed resize at 32 px" in out


def test_csv_and_table_formats(capsys: pytest.CaptureFixture, images: Path, model_dir: Path) -> None:
    rc, out, _ = call(capsys, "attribute", images, "--model", model_dir, "--format", "json")
    doc = json.loads(out)
    check_schema(doc)
    assert all(r["face_found"] is None for r in doc["results"] if "error" not in r)  # resize: not checked
    rc, out, err = call(capsys, "attribute", images, "--model", model_dir, "--format", "csv")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0] == "path,attribution,known,cluster,confidence,face_found,error"
    assert len(lines) == 1 + len(doc["results"])
    for line, r in zip(lines[1:], doc["results"], strict=True):
        cells = line.split(",", 6)
        assert cells[0] == r["path"]
        if "error" in r:
            assert cells[1:6] == [""] * 5 and cells[6] == r["error"]
        else:
            assert cells[1:4] == [r["attribution"], str(r["known"]).lower(), str(r["cluster"])]
            assert float(cells[4]) == r["confidence"] and cells[5] == ""
    rc, out, _ = call(capsys, "attribute", images, "--model", model_dir, "--checkpoint", "val_best")
    assert rc == 0
    table = out.splitlines()
    assert table[0].split() == ["path", "attribution", "confidence", "face"]
    assert any("error: unreadable image" in line for line in table)
    assert any(line.split()[1] == doc["results"][0]["attribution"] for line in table[1:2])


def test_preprocessing_from_the_card(
    capsys: pytest.CaptureFixture, images: Path, model: AttributionModel, tmp_path: Path
) -> None:
    prep = {
        "mode": "crop",
        "image_size": SIZE,
        "detector": {"upsample": 0, "threshold": 0.0},
        "margin": 1.2,
        "padding": 0.25,
        "predictor": "auto",
    }
    save_model_dir(tmp_path / "m", model.state_dict(), make_card(preprocessing=prep))
    files = [images / "astronaut.jpg", images / "blank.png"]
    rc, out, err = call(capsys, "attribute", *files, "--model", tmp_path / "m", "--format", "json")
    assert rc == 0 and "note:" not in err
    doc = json.loads(out)
    assert doc["align"] == "crop"
    assert [r["face_found"] for r in doc["results"]] == [True, False]
    rc, out, err = call(capsys, "attribute", *files, "--model", tmp_path / "m", "--format", "json", "--align", "resize")
    assert [r["face_found"] for r in json.loads(out)["results"]] == [None, None]
    assert "overrides the card's crop" in err
    rc, out, _ = call(capsys, "info", tmp_path / "m")
    assert "crop at 32 px, detector upsample 0 threshold 0.0, margin 1.2" in out


def test_matches_the_evaluate_stage_exactly(
    capsys: pytest.CaptureFixture, model: AttributionModel, model_dir: Path, tmp_path: Path
) -> None:
    """A face cache written as PNGs: the CLI (resize at the cache size: identical pixels) equals `predict`."""
    rng = np.random.default_rng(1)
    colour = rng.integers(0, 256, (10, 1, 1, 3))
    cache = np.clip(colour + rng.normal(0, 20, (10, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)
    folder = tmp_path / "cache"
    folder.mkdir()
    for i, image in enumerate(cache):
        Image.fromarray(image).save(folder / f"face_{i:03d}.png")
        assert np.array_equal(np.asarray(Image.open(folder / f"face_{i:03d}.png")), image)  # lossless
    # what owdfa.evaluate.evaluation.evaluate computes and writes to data/predictions/<key>.csv
    logits, _, pred = predict(model, cache, np.arange(len(cache)), 4, torch.device("cpu"))
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    confidence = (shifted / shifted.sum(axis=1, keepdims=True)).max(axis=1)
    written = pd.DataFrame({"pred": pred, "confidence": np.round(confidence, 6)}).to_csv(
        index=False, lineterminator="\n"
    )
    evaluate_rows = [line.split(",") for line in written.splitlines()[1:]]
    rc, out, _ = call(
        capsys, "attribute", folder, "--model", model_dir, "--format", "json", "--batch-size", "4", "--device", "cpu"
    )
    assert rc == 0
    results = json.loads(out)["results"]
    assert [r["cluster"] for r in results] == pred.tolist()
    assert [r["confidence"] for r in results] == [float(c) for _, c in evaluate_rows]
    rc, out, _ = call(
        capsys, "attribute", folder, "--model", model_dir, "--format", "csv", "--batch-size", "4", "--device", "cpu"
    )
    cli_rows = [line.split(",") for line in out.splitlines()[1:]]
    assert [[r[3], r[4]] for r in cli_rows] == evaluate_rows  # the same text as the predictions CSV
    assert len(set(pred.tolist())) > 1  # the check is not vacuous
    expected = [NAMES[p] if p < 3 else f"novel-{p}" for p in pred]
    assert [r["attribution"] for r in results] == expected


def test_exit_status_when_nothing_can_be_read(
    capsys: pytest.CaptureFixture, images: Path, model_dir: Path, tmp_path: Path
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, out, err = call(
        capsys,
        "attribute",
        images / "broken.png",
        images / "notes.txt",
        empty,
        "--model",
        model_dir,
        "--format",
        "json",
    )
    assert rc == 1
    doc = json.loads(out)
    assert doc["errors"] == 3 and len(doc["results"]) == 3
    assert "no images" in doc["results"][2]["error"]
    assert err.count("error: ") == 3


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("missing", "not a model directory"),
        ("not_json", "malformed model card"),
        ("no_backbone", "card.backbone: missing key"),
        ("bad_backbone", "not a timm architecture"),
        ("bad_prep", "preprocessing"),
        ("model_pt", "model.pt ignored: pickled checkpoints are never loaded"),
        ("no_val_best", "no val_best checkpoint"),
        ("wrong_shape", "weights do not match"),
    ],
)
def test_model_errors_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture,
    images: Path,
    model: AttributionModel,
    tmp_path: Path,
    breakage: str,
    message: str,
) -> None:
    target = tmp_path / "m"
    card, state, checkpoint = make_card(), model.state_dict(), "last"
    if breakage == "no_backbone":
        del card["backbone"]
    elif breakage == "bad_backbone":
        card["backbone"] = "no_such_net"
    elif breakage == "bad_prep":
        card["preprocessing"] = {"mode": "squash", "image_size": SIZE}
    elif breakage == "no_val_best":
        checkpoint = "val_best"
    elif breakage == "wrong_shape":
        card["num_prototypes"] = 7
    if breakage != "missing":
        save_model_dir(target, state, card)
    if breakage == "not_json":
        (target / "card.json").write_text("{not json")
    elif breakage == "model_pt":
        (target / "model.safetensors").unlink()
        torch.save(state, target / "model.pt")
    rc, out, err = call(capsys, "attribute", images / "blank.png", "--model", target, "--checkpoint", checkpoint)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_without_a_gpu_is_a_usage_error(capsys: pytest.CaptureFixture, images: Path, model_dir: Path) -> None:
    rc, out, err = call(capsys, "attribute", images / "blank.png", "--model", model_dir, "--device", "cuda")
    assert rc == 2 and "CUDA is not available" in err


def test_progress_goes_to_stderr_only(
    capsys: pytest.CaptureFixture, images: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(attribution, "PROGRESS_MIN_IMAGES", 1)
    rc, out, err = call(capsys, "attribute", images, "--model", model_dir, "--format", "json")
    assert rc == 0 and "attribute: 100%" in err
    check_schema(json.loads(out))


def test_mc_dropout_wiring(
    capsys: pytest.CaptureFixture, images: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The call against `mc_dropout_predict`'s agreed signature, with a stand-in module."""
    calls: list[dict[str, Any]] = []

    def fake(
        model: Any, images: np.ndarray, rows: np.ndarray, passes: int, batch_size: int, device: Any, seed: int
    ) -> Any:
        calls.append({"rows": list(rows), "passes": passes, "batch_size": batch_size, "seed": seed})
        n = len(rows)
        return types.SimpleNamespace(epistemic=np.full(n, 0.125), aleatoric=np.arange(n) / 8.0)

    module = types.ModuleType("owdfa.evaluate.uncertainty")
    module.mc_dropout_predict = fake
    monkeypatch.setitem(sys.modules, "owdfa.evaluate.uncertainty", module)
    monkeypatch.setattr(attribution, "CHUNK_IMAGES", 4)
    args = ("attribute", images, "--model", model_dir, "--mc-dropout", "3", "--batch-size", "4", "--seed", "5")
    rc, out, _ = call(capsys, *args, "--format", "json")
    assert rc == 0
    doc = json.loads(out)
    check_schema(doc, mc=True)
    good = [r for r in doc["results"] if "error" not in r]
    assert [r["epistemic"] for r in good] == [0.125] * len(good)
    assert [c["passes"] for c in calls] == [3, 3] and [c["seed"] for c in calls] == [5, 6]
    # chunks of 4: [gen1, gen0, astronaut, gen2], [blank, broken]; a failed file keeps its slot
    assert [c["rows"] for c in calls] == [[0, 1, 2, 3], [0]]
    rc, out, _ = call(capsys, *args, "--format", "csv")
    assert out.splitlines()[0].endswith("face_found,epistemic,aleatoric,error")


@pytest.mark.skipif(not HAS_UNCERTAINTY, reason="owdfa.evaluate.uncertainty not written yet")
def test_mc_dropout_real(capsys: pytest.CaptureFixture, images: Path, model_dir: Path) -> None:
    base = json.loads(call(capsys, "attribute", images, "--model", model_dir, "--format", "json")[1])
    args = ("attribute", images, "--model", model_dir, "--format", "json", "--mc-dropout", "8")
    rc, out, _ = call(capsys, *args, "--batch-size", "2")
    assert rc == 0
    doc = json.loads(out)
    check_schema(doc, mc=True)
    for r, b in zip(doc["results"], base["results"], strict=True):
        assert r["attribution"] == b["attribution"]  # the attribution is the deterministic (eval) pass
        assert r["confidence"] == b["confidence"]
        if "error" not in r:
            assert r["epistemic"] >= 0 and r["aleatoric"] > 0
    assert any(r["epistemic"] > 0 for r in doc["results"] if "error" not in r)
    again = json.loads(call(capsys, *args, "--batch-size", "64")[1])
    assert again["results"] == doc["results"]  # keyed by the input list and --seed, not the batch size


# --- hostile inputs: links out of a folder, FIFOs, absurd counts ------------------------------------


def test_links_out_of_a_folder_fifos_and_loops_are_skipped(
    capsys: pytest.CaptureFixture, images: Path, model_dir: Path, tmp_path: Path
) -> None:
    import faulthandler
    import os

    faulthandler.dump_traceback_later(240, exit=True, file=sys.__stderr__)  # a FIFO read would hang: fail instead
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(images / "a" / "gen0.png").save(folder / "good.png")
    secret = tmp_path / "secret"
    secret.mkdir()
    Image.open(images / "b" / "gen2.png").save(secret / "outside.png")
    (folder / "evil.png").symlink_to(secret / "outside.png")
    (folder / "evil_dir").symlink_to(secret)
    (folder / "loop").symlink_to(".")
    os.mkfifo(folder / "pipe.png")
    fifo = tmp_path / "direct.png"
    os.mkfifo(fifo)

    def snapshot() -> dict[str, tuple[int, int, int]]:
        entries = [Path(d, n) for root in (folder, secret) for d, ds, fs in os.walk(root) for n in ds + fs]
        return {str(p): (p.lstat().st_mode, p.lstat().st_size, p.lstat().st_mtime_ns) for p in entries}

    before = snapshot()
    rc, out, err = call(capsys, "attribute", folder, fifo, "--model", model_dir, "--format", "json")
    faulthandler.cancel_dump_traceback_later()
    assert snapshot() == before  # nothing under the input folders changed
    assert rc == 0
    doc = json.loads(out)
    by_name = {Path(r["path"]).name: r for r in doc["results"]}
    assert by_name["good.png"].get("error") is None and by_name["good.png"]["attribution"]
    assert "outside" in by_name["evil.png"]["error"] and "outside" in by_name["evil_dir"]["error"]
    assert "not a regular file" in by_name["pipe.png"]["error"]
    assert "not a regular file" in by_name["direct.png"]["error"]
    assert "loop" in by_name["loop"]["error"]
    assert "outside.png" not in by_name  # never read through the link
    assert all("\n" not in line and line.isprintable() for line in err.splitlines())


@pytest.mark.parametrize(
    "option, value", [("--mc-dropout", "1000000000"), ("--batch-size", "10000000"), ("--threads", "100000")]
)
def test_absurd_counts_are_one_line_usage_errors(
    capsys: pytest.CaptureFixture, images: Path, model_dir: Path, option: str, value: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["attribute", str(images / "blank.png"), "--model", str(model_dir), option, value])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}: must be between 1 and" in err and value in err


def test_names_with_control_characters_or_bad_utf8_never_reach_the_terminal_raw(
    capsys: pytest.CaptureFixture, images: Path, model: AttributionModel, tmp_path: Path
) -> None:
    import os

    hostile = "\x1b[2J\x1b[31mEvil\rSwap\x07"
    card = make_card()
    card["classes"][1]["name"] = hostile
    card["classes"][0]["name"] = os.fsdecode(b"Real\xff")
    target = tmp_path / "m"
    save_model_dir(target, model.state_dict(), card)
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (b"bad\xff.png", b"esc\x1b[1m.png"):
        Image.open(images / "a" / "gen0.png").save(folder / os.fsdecode(name))
    rc, info, _ = call(capsys, "info", target)
    assert rc == 0 and "\\x1b[31mEvil\\rSwap\\x07" in info and "Real\\xff" in info
    for fmt in ("table", "csv", "json"):
        rc, out, err = call(capsys, "attribute", folder, "--model", target, "--format", fmt)
        assert rc == 0, err
        for text in (out, err, info):
            assert all(line.isprintable() for line in text.splitlines()), (fmt, text)
        assert "bad\\xff.png" in out.replace("\\\\", "\\") and "esc\\x1b[1m.png" in out.replace("\\\\", "\\")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"backbone": "hf-hub:someone/model"}, "card.backbone: 'hf-hub:someone/model' is fetched from the network"),
        ({"backbone": 7}, "card.backbone: expected a string"),
        ({"num_prototypes": 5.0}, "card.num_prototypes: expected an integer"),
        ({"num_prototypes": 10**9}, "card.num_prototypes: must be <="),
        ({"image_size": 1}, "card.image_size: must be >= 16"),
        ({"image_size": 100000}, "card.image_size: must be <= 1024"),
        ({"dropout": float("nan")}, "card.dropout: must be a finite number"),
        ({"dropout": 1.5}, "card.dropout: must be < 1"),
        ({"model_options": "ffe"}, "card.model_options: expected a mapping"),
        ({"model_options": {"ffe": "yes"}}, "card.model_options.ffe: expected true or false"),
        ({"model_options": {"warp": True}}, "card.model_options.warp: unknown key"),
        ({"num_known": -1}, "card.num_known: must be >= 0"),
        ({"classes": [{"target": 99, "name": "x"}]}, "card.classes[0].target: must be <= 4"),
        ({"method_state": {"k_trajectory": [5, 0]}}, "card.method_state.k_trajectory"),
        ({"preprocessing": {"mode": "crop", "image_size": SIZE, "detector": {"upsample": 12}}}, "upsample: must be"),
        ({"preprocessing": {"mode": "crop", "image_size": SIZE, "margin": float("nan")}}, "margin: must be a fin"),
    ],
)
def test_a_card_that_lies_is_refused_in_one_line_before_any_image_is_read(
    capsys: pytest.CaptureFixture, images: Path, model: AttributionModel, tmp_path: Path, change, message
) -> None:
    target = tmp_path / "m"
    save_model_dir(target, model.state_dict(), make_card(**change))
    rc, out, err = call(capsys, "attribute", images / "blank.png", "--model", target)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"error: {target}/card.json: ") and message in err, err


def _weights(model: AttributionModel, breakage: str) -> dict[str, torch.Tensor]:
    state = {k: v.clone() for k, v in model.state_dict().items()}  # "no_ffe": these weights, an FFE card
    if breakage in ("float16", "bfloat16"):
        return {k: v.to(getattr(torch, breakage)) if v.is_floating_point() else v for k, v in state.items()}
    if breakage == "int8":
        state["prototypes"] = state["prototypes"].to(torch.int8)
    elif breakage == "nan":
        state["prototypes"][0, 0] = float("nan")
    elif breakage == "inf":
        state["neck.weight" if "neck.weight" in state else "prototypes"].view(-1)[0] = float("inf")
    elif breakage == "active_0":
        state["num_active"] = torch.tensor(0)
    elif breakage == "active_99":
        state["num_active"] = torch.tensor(99)
    elif breakage == "extra":
        state["smuggled"] = torch.zeros(3)
    elif breakage == "huge":  # finite, but logits of such weights overflow to infinite, uniform ones
        state["prototypes"][0, 0] = 1e30
    return state


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("float16", "is float16"),
        ("bfloat16", "is bfloat16"),
        ("int8", "tensor prototypes is int8, expected float32"),
        ("nan", "tensor prototypes holds NaN or infinite values"),
        ("inf", "holds NaN or infinite values"),
        ("active_0", "num_active 0 is outside [3, 5]"),
        ("active_99", "num_active 99 is outside [3, 5]"),
        ("extra", "weights do not match the card's model (unexpected smuggled)"),
        ("huge", "tensor prototypes holds values up to 1e+30; beyond 1e+06 is refused"),
        ("no_ffe", "card.json: model_options.ffe is true but the weights hold none of its tensors (ffe.*)"),
    ],
)
def test_weights_that_lie_are_refused_in_one_line(
    capsys: pytest.CaptureFixture, images: Path, model: AttributionModel, tmp_path: Path, breakage, message
) -> None:
    from safetensors.torch import save_file

    target = tmp_path / "m"
    options = {"ffe": breakage == "no_ffe", "patch_features": False}  # no_ffe: the card says FFE, the weights lack it
    save_model_dir(target, model.state_dict(), make_card(model_options=options))
    save_file({k: v.contiguous() for k, v in _weights(model, breakage).items()}, str(target / "model.safetensors"))
    rc, out, err = call(capsys, "attribute", images / "blank.png", "--model", target)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and str(target) in err and message in err, err
    # `owdfa info` shows the card and says, with attribute's reason, that the model is invalid
    rc, out, err = call(capsys, "info", target)
    assert rc == 2 and "backbone      test_resnet" in out
    assert err.count("\n") == 1 and err.startswith("error: invalid model: ") and message in err, err


def test_a_card_nested_deeper_than_any_card_is_one_line(
    capsys: pytest.CaptureFixture, images: Path, model: AttributionModel, tmp_path: Path
) -> None:
    # valid JSON, 100,000 lists deep: the parser's recursion must not end in a traceback
    target = tmp_path / "m"
    save_model_dir(target, model.state_dict(), make_card())
    card = (target / "card.json").read_text().rstrip().removesuffix("}")
    deep = "[" * 100_000 + "]" * 100_000
    for nested in (deep, "[" * 17 + "]" * 17):  # past the parser's limit, and past a card's (16 levels)
        (target / "card.json").write_text(f'{card}, "history_extra": {nested}}}')
        for command in (["info", target], ["attribute", images / "blank.png", "--model", target]):
            rc, out, err = call(capsys, *command)
            assert rc == 2 and err.count("\n") == 1, err[-500:]
            assert f"{target}/card.json: nested deeper than a model card is (at most 16 levels)" in err, err


def test_a_card_never_makes_attribute_read_a_file_outside_its_directory(
    capsys: pytest.CaptureFixture, images: Path, model: AttributionModel, tmp_path: Path, monkeypatch
) -> None:
    # A stranger's card naming /etc/passwd as the landmark model: dlib is never handed it; the bundled
    # model is used (with a note), as where the card's file is not here. A file inside the directory is used.
    from owdfa.data import faces

    opened: list[str] = []
    real = faces.dlib.shape_predictor
    monkeypatch.setattr(faces.dlib, "shape_predictor", lambda path: opened.append(path) or real(path))
    bundled = faces.bundled_predictor_path()
    target = tmp_path / "m"
    aligned = {"mode": "aligned", "image_size": SIZE, "predictor": "/etc/passwd"}
    save_model_dir(target, model.state_dict(), make_card(preprocessing=aligned))
    rc, out, err = call(capsys, "attribute", images / "astronaut.jpg", "--model", target)
    assert rc == 0, err
    assert opened == [str(bundled)], opened
    assert "the card's predictor /etc/passwd is outside the model directory: not read" in err
    # a predictor inside the model directory (relative to it) is the card's own
    shutil.copyfile(bundled, target / "landmarks.dat")  # a copy: a link out of the directory is outside it
    card = json.loads((target / "card.json").read_text())
    card["preprocessing"]["predictor"] = "landmarks.dat"
    (target / "card.json").write_text(json.dumps(card))
    opened.clear()
    rc, out, err = call(capsys, "attribute", images / "astronaut.jpg", "--model", target)
    assert rc == 0 and opened == [str((target / "landmarks.dat").resolve())] and "predictor" not in err, (opened, err)


@pytest.mark.slow
def test_attribute_and_info_never_reach_the_network(images: Path, model: AttributionModel, tmp_path: Path) -> None:
    """A listening local port as the Hub endpoint: a card naming a Hub model must not make a connection."""
    import os
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    connections: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            connections.append(conn)
            conn.close()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.getsockname()[1]}"
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HUB_OFFLINE": "0", "no_proxy": "*", "NO_PROXY": "*"}
    good, hub = tmp_path / "good", tmp_path / "hub"
    save_model_dir(good, model.state_dict(), make_card())
    save_model_dir(hub, model.state_dict(), make_card(backbone="hf-hub:timm/resnet18.a1_in1k"))
    try:
        runs = [
            ["attribute", str(images / "blank.png"), "--model", str(good)],
            ["attribute", str(images / "blank.png"), "--model", str(hub)],
            ["info", str(good)],
            ["info", str(hub)],
        ]
        command = [sys.executable, "-m", "owdfa.cli"]
        results = [subprocess.run([*command, *a], env=env, capture_output=True, text=True, timeout=300) for a in runs]
    finally:
        stop.set()
        thread.join()
        server.close()
    assert [r.returncode for r in results][:2] == [0, 2], [r.stderr for r in results]
    assert "fetched from the network" in results[1].stderr
    assert connections == []


@pytest.mark.parametrize(
    "change, message",
    [
        ({"dropout": "lots", "method_state": [1, 2], "val_best_epoch": "x"}, "card.dropout: expected a number"),
        ({"image_size": 100000}, "card.image_size: must be <= 1024"),
        ({"classes": "\x1b[2J"}, "card.classes: expected a list"),
    ],
)
def test_info_shows_a_broken_card_and_says_what_is_wrong(
    capsys: pytest.CaptureFixture, model: AttributionModel, tmp_path: Path, change, message
) -> None:
    target = tmp_path / "m"
    save_model_dir(target, model.state_dict(), make_card(**change))
    rc, out, err = call(capsys, "info", target)
    assert rc == 2
    assert "backbone      test_resnet" in out and all(line.isprintable() for line in out.splitlines()), out
    assert err.count("\n") == 1 and message in err and "refuses this model" in err, err
