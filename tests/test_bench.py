"""The benchmark scripts run, measure something plausible, and merge into bench.json without losing keys.

Tiny set-ups only: these check the scripts, not the speed (speed goals live in reports/bench.json).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"


def bench(script: str, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture
def bench_json(tmp_path: Path) -> Path:
    out = tmp_path / "bench.json"
    out.write_text(json.dumps({"someone_else": {"kept": True}}))
    return out


@pytest.mark.slow
def test_train_bench_tiny(bench_json: Path) -> None:
    tiny = ("--image-size", "32", "--batch-size", "8", "--steps", "1", "--threads", "1")
    text = bench("train.py", *tiny, "--out", str(bench_json))
    report = json.loads(bench_json.read_text())
    assert report["someone_else"] == {"kept": True}
    train = report["train"]
    assert train["config"]["batch_size"] == 8 and train["machine"]["device"] == "cpu"
    for key in ("step_images_per_s", "backbone_images_per_s", "network_images_per_s", "input_images_per_s"):
        assert train[key] > 0, key
    assert train["step_efficiency"] == pytest.approx(train["step_images_per_s"] / train["backbone_images_per_s"], 1e-2)
    assert "(a) step efficiency" in text and "(b) input headroom" in text


@pytest.mark.slow
def test_budget_bench_tiny(bench_json: Path) -> None:
    tiny = ("--backbone", "test_resnet", "--image-size", "64", "--global-batch", "64")
    bench("budget.py", *tiny, "--out", str(bench_json))
    budget = json.loads(bench_json.read_text())["budget"]
    per_view = budget["activation_mib_per_image_view"]
    # bf16 autocast keeps half-size copies of what convolutions save: less than fp32, more than nothing
    assert 0 < per_view["bf16"] < per_view["fp32"]
    assert budget["gflop_per_image_view_fwd_bwd"] > 0 and budget["trainable_parameters"] > 0
    memory = budget["gib_per_process_before_workspace"]
    assert memory["1"]["fp32"] > memory["8"]["fp32"] >= budget["model_state_gib"]


@pytest.mark.slow
def test_repro_bench_times_only_an_up_to_date_pipeline(tmp_path: Path, bench_json: Path, run_dvc, run_git, dvc_env):
    repo = tmp_path / "repo"
    repo.mkdir()
    run_git(repo, "init", "-q")
    run_dvc(repo, "init", "-q")
    (repo / "input.txt").write_text("one\n")
    (repo / "dvc.yaml").write_text(
        "stages:\n  copy:\n    cmd: python -c \"open('output.txt','w').write(open('input.txt').read())\"\n"
        "    deps: [input.txt]\n    outs: [output.txt]\n"
    )
    run_dvc(repo, "repro", "-q")
    text = bench("repro.py", "--repo", str(repo), "--repeats", "1", "--out", str(bench_json), env=dvc_env)
    noop = json.loads(bench_json.read_text())["repro_noop"]
    assert noop["stages"] == 1 and noop["repro_seconds_median"] > 0 and "dvc repro with nothing to do" in text
    (repo / "input.txt").write_text("two\n")
    done = subprocess.run(
        [sys.executable, str(BENCH / "repro.py"), "--repo", str(repo), "--repeats", "1", "--out", str(bench_json)],
        env=dvc_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0 and "not up to date" in done.stderr
    assert (repo / "output.txt").read_text() == "one\n"  # nothing was re-run


def test_table_marks_what_was_not_run(bench_json: Path) -> None:
    bench_json.write_text(
        json.dumps({"metrics": {"samples": 18000, "seconds_median": 0.02}, "repro_noop": None}, indent=1)
    )
    text = bench("run.py", "--table", "--out", str(bench_json))
    lines = {line.split("  ")[0]: line for line in text.splitlines()}
    assert "0.020 s" in lines["(d) metrics, 18,000 samples"] and "yes" in lines["(d) metrics, 18,000 samples"]
    assert "not run" in lines["(a) step efficiency"] and "not run" in lines["(e) dvc repro no-op"]


@pytest.mark.slow
def test_numerics_bench_tiny(bench_json: Path) -> None:
    tiny = ("--image-size", "32", "--batch-size", "8", "--steps", "1", "--rounds", "1", "--threads", "1")
    text = bench("numerics.py", *tiny, "--out", str(bench_json))
    report = json.loads(bench_json.read_text())
    assert report["someone_else"] == {"kept": True}
    numerics = report["numerics"]
    assert set(numerics["images_per_s"]) == {
        "none (reproducible: false)",
        "ATEN_CPU_CAPABILITY only",
        "ONEDNN_MAX_CPU_ISA only",
        "MKL_CBWR only",
        "NPY_DISABLE_CPU_FEATURES only",
        "all (exact mode)",
    }
    assert all(rate > 0 for rate in numerics["images_per_s"].values())
    # each set-up really ran under its own pins: ATen's kernels are AVX2 exactly where they are pinned
    assert numerics["aten_capability"]["all (exact mode)"] == "AVX2"
    assert numerics["aten_capability"]["ATEN_CPU_CAPABILITY only"] == "AVX2"
    assert numerics["time_vs_unpinned"]["none (reproducible: false)"] == 1.0
    assert "all (exact mode)" in text
    # another network (the OWDFA-40 preset's, on a CPU): exact mode against no pin only, under its own key
    bench("numerics.py", *tiny, "--backbone", "test_resnet", "--only-exact", "--out", str(bench_json))
    report = json.loads(bench_json.read_text())
    other = report["numerics_test_resnet_32px"]
    assert set(other["images_per_s"]) == {"none (reproducible: false)", "all (exact mode)"}
    assert other["config"]["backbone"] == "test_resnet" and report["numerics"] == numerics


@pytest.mark.slow
def test_concurrency_bench_tiny(bench_json: Path) -> None:
    tiny = ("--image-size", "32", "--batch-size", "8", "--steps", "1", "--warmup", "1", "--repeats", "1")
    only = ("--spins", "1000", "--only", "libgomp default", "GOMP_SPINCOUNT=1000", "--busy")
    text = bench("concurrency.py", *tiny, *only, "--out", str(bench_json))
    report = json.loads(bench_json.read_text())
    assert report["someone_else"] == {"kept": True}
    concurrency = report["concurrency"]
    assert concurrency["machine"]["cores"] >= 1 and concurrency["machine"]["cpu_name"]
    assert set(concurrency["candidates"]) == {"libgomp default", "GOMP_SPINCOUNT=1000"}
    spin = concurrency["candidates"]["GOMP_SPINCOUNT=1000"]
    assert spin["env"] == {"GOMP_SPINCOUNT": "1000"} and spin["threads"] == 2
    assert spin["alone_ms_per_step"] > 0 and spin["together_ms_per_step"] > 0 and spin["busy_ms_per_step"] > 0
    assert len(spin["rounds"][0]["together"]) == 2  # two jobs at once
    assert concurrency["candidates"]["libgomp default"]["alone_vs_today"] == 1.0
    assert "vs serial" in text and "GOMP_SPINCOUNT=1000" in text


def test_concurrency_bench_reads_variants_from_either_section() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        from concurrency import load_variant
    finally:
        sys.path.remove(str(BENCH))
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    variants = params.get("methods") or params["train"]["methods"]
    top = load_variant({"methods": variants, "train": {}}, "cal")
    old = load_variant({"run": {"methods": ["cal"]}, "train": {"methods": variants}}, "cal")
    assert type(top) is type(old) and top.name == "cal"


def test_stage_times_from_a_stamped_log(tmp_path: Path, bench_json: Path) -> None:
    log = tmp_path / "repro.log"
    log.write_text(
        "     1.0 Running stage 'fetch':\n     4.5 > python stages/fetch.py\n"
        "    10.0 Running stage 'train@p1-cal-0':\n    70.0 done\nTOTAL 75.0 s rc=0\n"
    )
    proc = subprocess.run(
        [sys.executable, str(BENCH / "stage_times.py"), "--log", str(log), "--out", str(bench_json)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(bench_json.read_text())["stage_times"]
    assert report["stages"] == {"fetch": 9.0, "train@p1-cal-0": 65.0} and report["total_s"] == 75.0


@pytest.mark.slow
def test_numerics_fingerprint_is_stable_and_names_the_first_differing_probe(tmp_path: Path) -> None:
    first = tmp_path / "here.json"
    bench("numerics_fingerprint.py", "--image-size", "32", "--out", str(first))
    fingerprint = json.loads(first.read_text())
    names = [name for name, _ in fingerprint["probes"]]
    assert names[0].startswith("forward ") and any(n.startswith("gradient ") for n in names)
    assert any(n.startswith("train step 3 cal") for n in names) and "numpy matmul float64" in names
    assert fingerprint["numerics"]["mode"] == "exact" and fingerprint["onednn_implementations"]
    # another machine whose bits differ from the fifth probe on: the rerun here matches every other probe
    other = dict(
        fingerprint,
        cpu="Other CPU",
        probes=[[n, "0" * 16 if i >= 4 else h] for i, (n, h) in enumerate(fingerprint["probes"])],
    )
    other_path = tmp_path / "other.json"
    other_path.write_text(json.dumps(other))
    text = bench(
        "numerics_fingerprint.py",
        "--image-size",
        "32",
        "--out",
        str(tmp_path / "again.json"),
        "--compare",
        str(other_path),
    )
    assert f"first difference: {names[4]} ({len(names) - 4} of {len(names)} probes differ)" in text
    assert json.loads((tmp_path / "again.json").read_text())["probes"] == fingerprint["probes"]
    identity = fingerprint["cpu_identity"]
    assert identity["vendor"] in ("intel", "amd", "unknown") and identity["isa"] in ("avx512", "avx2", "sse")
    # The file compared against is never overwritten, even where it is where this run would write.
    before = other_path.read_bytes()
    same = ("--out", str(other_path), "--compare", str(other_path))
    text = bench("numerics_fingerprint.py", "--image-size", "32", *same)
    assert "not written" in text and other_path.read_bytes() == before
    assert f"first difference: {names[4]}" in text  # compared with the reference, not with itself
    # --check: every comparable fingerprint in a folder; a difference names the probe and both machines
    folder = tmp_path / "committed"
    folder.mkdir()
    (folder / "fingerprint-other.json").write_text(json.dumps(other))
    legacy = {k: v for k, v in other.items() if k not in ("numerics_version", "code")}  # numerics version 1
    (folder / "fingerprint-legacy.json").write_text(json.dumps(legacy))
    stale = dict(fingerprint, code="0" * 16)
    (folder / "fingerprint-stale.json").write_text(json.dumps(stale))
    done = subprocess.run(
        [sys.executable, str(BENCH / "numerics_fingerprint.py"), "--image-size", "32", "--check", str(folder)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert f"DIFFERS: probe '{names[4]}': this machine ({fingerprint['cpu']}" in done.stdout
    assert "fingerprint-other.json (Other CPU)" in done.stdout
    assert "not compared: fingerprint-legacy.json (numerics version 1" in done.stdout
    assert "not compared: fingerprint-stale.json (made on other code" in done.stdout
    assert fingerprint["numerics_version"] >= 2 and len(fingerprint["code"]) == 16


@pytest.mark.slow
def test_this_machine_gives_the_bits_of_every_committed_fingerprint() -> None:
    # The committed fingerprints of other machines (reports/numerics), made by the same code under the
    # same numerics version: exact mode must give their bits here. A file of other code is listed as
    # not comparable, and where none is comparable the test says so and skips.
    done = subprocess.run(
        [sys.executable, str(BENCH / "numerics_fingerprint.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    if "no committed fingerprint" in done.stdout:
        pytest.skip(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_gpu_check_dry_runs_every_part_on_the_cpu(tmp_path: Path) -> None:
    # The GPU check's own code paths, at tiny sizes on the CPU, so that it works the day a GPU is lent.
    out = tmp_path / "bench-gpu.json"
    text = bench("gpu_check.py", "--dry", "--out", str(out))
    report = json.loads(out.read_text())
    assert report["ok"] and report["dry"], text
    parts = report["parts"]
    assert set(parts) == {"tests", "model", "pipeline", "ddp"}
    assert parts["tests"]["counts"].get("skipped", 0) >= 1  # the cuda tests are collected (and skip here)
    assert "tests/models/test_ffe.py" in parts["tests"]["files"]
    assert set(parts["model"]["runs"]) == {"fp32-eager", "fp32-compiled", "bf16-eager", "bf16-compiled"}
    assert all(run["loss_ok"] and run["images_per_s"] > 0 for run in parts["model"]["runs"].values())
    assert parts["pipeline"]["trained_on"] == "cpu" and "last" in parts["pipeline"]["metrics"]
    assert parts["ddp"]["backend"] == "gloo" and parts["ddp"]["world_size"] == 1


def test_gpu_check_reports_a_broken_part_as_failed() -> None:
    sys.path.insert(0, str(BENCH))
    import gpu_check

    def broken(sizes: gpu_check.Sizes) -> dict:
        raise RuntimeError("CUDA error: an illegal memory access")

    result = gpu_check.run_part("model", broken, gpu_check.DRY)
    assert result["ok"] is False and "illegal memory access" in result["error"]


def test_gpu_check_collects_every_file_that_marks_a_test_cuda(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCH))
    import gpu_check

    tests = tmp_path / "tests"
    tests.mkdir()
    (tests / "test_a.py").write_text("from helpers.markers import requires_cuda\n")
    (tests / "test_b.py").write_text("import pytest\npytestmark = pytest.mark.cuda\n")
    (tests / "test_c.py").write_text("def test_cpu():\n    pass\n")
    (tests / "helper_cuda.py").write_text("requires_cuda\n")  # not a test file
    assert gpu_check.cuda_test_files(tests) == ["tests/test_a.py", "tests/test_b.py"]
