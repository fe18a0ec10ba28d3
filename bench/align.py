"""Measure the align stage's throughput (images/s) in modes crop and aligned, with 1 and 2 workers.

The corpus is generated in a temporary folder: face images made from scikit-image's astronaut photo
(randomly re-framed so the face is 80-115 px wide, rotated by up to 10 degrees, mirrored,
brightness-jittered; 256 x 256 PNG) and images with no face (uniform colours and smooth noise).
Each timing is one whole `align()` call: decoding, detection, landmarks and warping, writing the
cache, and the start of the worker processes (spawn) - what a `dvc repro` of the stage costs. The
start-up alone is estimated by the same call on a two-image index and subtracted for the
"after start-up" rate (the rate a long OWDFA-40 run approaches).
The 1- and 2-worker caches are also compared byte for byte.

Merges its results into reports/bench.json under "align" (other keys are kept) and prints a
table. Needs scikit-image (the `test` extra). Usage:
    python bench/align.py [--faces 600] [--blanks 60] [--workers 1 2] [--out reports/bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import dlib
import numpy as np
from common import cpu_name, merge_into
from PIL import Image

from owdfa.core.config import Section
from owdfa.data.align import align, available_cores
from owdfa.data.index import IndexRow, write_index

SIZE = 256
FACE_CENTRE = (222.0, 126.0)  # the astronaut's face in the 512 x 512 photo (dlib box ~88 px)


def make_corpus(root: Path, faces: int, blanks: int, seed: int) -> list[IndexRow]:
    from scipy import ndimage  # imported here, not at the top: spawned align workers re-import this script

    try:
        from skimage import data
    except ImportError:
        sys.exit("error: bench/align.py needs scikit-image (pip install -e '.[test]')")
    photo = Image.fromarray(data.astronaut())
    rng = np.random.default_rng(seed)
    rows: list[IndexRow] = []

    def save(folder: str, name: str, pixels: np.ndarray) -> None:
        path = root / folder / "id0" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, compress_level=1)
        rows.append(IndexRow(path.relative_to(root).as_posix(), int(folder.split("_")[0]), folder, f"{folder}/id0"))

    for i in range(faces):
        side = rng.uniform(200, 280)  # the face's ~88 px box becomes 80-113 px at 256 px
        cx, cy = FACE_CENTRE[0] + rng.uniform(-25, 25), FACE_CENTRE[1] + rng.uniform(-25, 25)
        img = photo.rotate(rng.uniform(-10, 10), Image.Resampling.BILINEAR, center=(cx, cy))
        left, top = np.clip(cx - side / 2, 0, 512 - side), np.clip(cy - side / 2, 0, 512 - side)
        img = img.resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=(left, top, left + side, top + side))
        pixels = np.clip(np.asarray(img, dtype=np.float64) * rng.uniform(0.8, 1.2), 0, 255).astype(np.uint8)
        save("0_Real_Astronaut", f"{i:05d}.png", pixels[:, ::-1] if rng.random() < 0.5 else pixels)
    for i in range(blanks):
        if i % 2 == 0:
            pixels = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (SIZE, SIZE, 3)).copy()
        else:
            noise = ndimage.gaussian_filter(rng.normal(size=(SIZE, SIZE, 3)), sigma=(8, 8, 0))
            pixels = np.clip(128 + noise / noise.std() * 40, 0, 255).astype(np.uint8)
        save("1_None_Blank", f"{i:05d}.png", pixels)
    rows.sort(key=lambda r: r.path)
    return rows


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine_info() -> dict:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "available_cores": available_cores(),
        "dlib": dlib.__version__,
        "dlib_package": "dlib-bin " + _version("dlib-bin") if _version("dlib-bin") != "not installed" else "dlib",
        "pillow": _version("pillow"),
        "numpy": np.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faces", type=int, default=600)
    parser.add_argument("--blanks", type=int, default=60)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("reports/bench.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="owdfa-bench-align-") as tmp:
        base = Path(tmp)
        start = time.perf_counter()
        rows = make_corpus(base / "raw", args.faces, args.blanks, args.seed)
        write_index(rows, base / "index.csv")
        print(f"corpus: {args.faces} faces + {args.blanks} blanks at {SIZE} px in {time.perf_counter() - start:.1f} s")
        # start-up estimate: the same call on one image per worker (process spawn, imports, dlib models)
        tiny = [rows[0], rows[-1]]
        write_index(tiny, base / "tiny.csv")
        for mode in ("crop", "aligned"):
            caches = []
            for workers in args.workers:
                section = Section({"mode": mode, "image_size": SIZE}, "align")
                start = time.perf_counter()
                align(section, base / "raw", base / "tiny.csv", base / "tiny", workers=workers, progress=False)
                startup = time.perf_counter() - start
                out = base / f"faces-{mode}-{workers}"
                start = time.perf_counter()
                summary = align(section, base / "raw", base / "index.csv", out, workers=workers, progress=False)
                seconds = time.perf_counter() - start
                caches.append(out)
                results.append(
                    {
                        "mode": mode,
                        "workers": workers,
                        "images": summary["images"],
                        "seconds": round(seconds, 2),
                        "images_per_s": round(summary["images"] / seconds, 1),
                        "startup_s": round(startup, 2),
                        "images_per_s_after_startup": round((summary["images"] - len(tiny)) / (seconds - startup), 1),
                        "no_face": summary["no_face"],
                        "no_face_rate_per_class": summary["no_face_rate_per_class"],
                    }
                )
            identical = all(
                (cache / name).read_bytes() == (caches[0] / name).read_bytes()
                for cache in caches[1:]
                for name in ("images.npy", "faces.csv")
            )
            for result in results:
                if result["mode"] == mode:
                    result["identical_to_first_worker_count"] = identical
    report = {
        "machine": machine_info(),
        "corpus": {"faces": args.faces, "blanks": args.blanks, "image_size": SIZE, "seed": args.seed},
        "params": {"detector": {"upsample": 0, "threshold": 0.0}, "margin": 1.2, "padding": 0.25},
        "results": results,
    }
    merge_into(args.out, "align", report)
    print(
        "| mode | workers | images | seconds | images/s | start-up s | images/s after start-up "
        "| no-face rate (faces / blanks) | same bytes as 1 worker |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        rates = r["no_face_rate_per_class"]
        print(
            f"| {r['mode']} | {r['workers']} | {r['images']} | {r['seconds']:.2f} | {r['images_per_s']:.1f} | "
            f"{r['startup_s']:.2f} | {r['images_per_s_after_startup']:.1f} | {rates.get('0_Real_Astronaut', 0):.3f} / "
            f"{rates.get('1_None_Blank', 0):.3f} | {r['identical_to_first_worker_count']} |"
        )
    print(f"machine: {json.dumps(report['machine'])}")
    print(f"merged into {args.out} under 'align'")


if __name__ == "__main__":
    main()
