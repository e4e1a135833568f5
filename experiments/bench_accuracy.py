"""Accuracy benchmark: trains each recipe on lumbar-vb, scores it in-domain and on lumbar-vb-xseq,
times the shipped model on one scan, and prints one Markdown table.

    make bench-accuracy                           # = python experiments/bench_accuracy.py
    python experiments/bench_accuracy.py --recipes seg_lumbar_vb --out /tmp/acc
    python experiments/bench_accuracy.py --collect outputs/acc   # table of finished runs only

Each recipe runs as ``python -m penn.run data=lumbar_vb recipe=NAME`` into ``OUT/NAME/``
(``--collect`` skips training and reads the ``metrics.json`` already there). Columns: test
pixel Dice (mean over the held-out test scans, and pooled), validation pooled Dice, external
Dice over the whole volumes and over the labelled extent (lumbar-vb-xseq, never used to choose
anything inside a run), external HD95 over the extent, and the run's wall time. The last line
times ``penn predict`` with the shipped model on one lumbar-vb scan (read, segment, write the
mask; no meshes or overlays), end to end in a fresh process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RECIPES = ["penn_lumbar_vb", "seg_lumbar_vb"]
COLUMNS = [
    ("test Dice", "test/pixel/dice"),
    ("test pooled", "test/pixel_pooled/dice"),
    ("val pooled", "val/pixel_pooled/dice"),
    ("external whole", "external/whole/pixel/dice"),
    ("external extent", "external/extent/pixel/dice"),
]
HD95 = "external/extent/pixel/hd95_mm"


def train(recipe: str, out: Path, extra: list[str]) -> float:
    """Runs one recipe into ``out``; returns its wall time in seconds."""
    command = [
        sys.executable,
        "-m",
        "penn.run",
        "data=lumbar_vb",
        f"recipe={recipe}",
        f"hydra.run.dir={out}",
        "trainer.enable_progress_bar=false",
        *extra,
    ]
    start = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - start
    (out / "wall_seconds.txt").write_text(f"{seconds:.1f}\n")
    return seconds


def predict_seconds(scan: Path) -> float:
    """Wall time of ``penn predict`` with the shipped model on ``scan``, in a fresh process."""
    with tempfile.TemporaryDirectory() as tmp:
        command = [
            sys.executable,
            "-m",
            "penn.cli",
            "predict",
            "-i",
            str(scan),
            "-o",
            str(Path(tmp) / "out"),
            "--no-mesh",
            "--overlays",
            "0",
            "--device",
            "cpu",
        ]
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        return time.perf_counter() - start


def row(name: str, folder: Path) -> str:
    metrics = json.loads((folder / "metrics.json").read_text())
    wall = folder / "wall_seconds.txt"
    minutes = f"{float(wall.read_text()) / 60:.1f} min" if wall.is_file() else "n/a"
    cells = [f"{100 * metrics[key]:.1f}" if key in metrics else "n/a" for _, key in COLUMNS]
    hd95 = f"{metrics[HD95]:.1f}" if HD95 in metrics else "n/a"
    return f"| {name} | " + " | ".join([*cells, hd95, minutes]) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=RECIPES)
    parser.add_argument("--out", type=Path, default=Path("outputs/bench_accuracy"))
    parser.add_argument("--collect", type=Path, help="read finished runs from this folder")
    parser.add_argument("--scan", type=Path, help="scan to time penn predict on")
    parser.add_argument("overrides", nargs="*", help="key=value for every run")
    args = parser.parse_args()
    root = args.collect or args.out
    if args.collect is None:
        for recipe in args.recipes:
            train(recipe, root / recipe, args.overrides)
    head = ["recipe", *(name for name, _ in COLUMNS), "external HD95 (mm)", "run time"]
    print("| " + " | ".join(head) + " |\n" + "|---" * len(head) + "|")
    for recipe in args.recipes:
        if (root / recipe / "metrics.json").is_file():
            print(row(recipe, root / recipe))
    data = Path(os.environ.get("PENN_DATA_ROOT", "../shared/data"))
    scan = args.scan or data / "lumbar-vb" / "imagesTr" / "vb2_10_0000.nii.gz"
    if scan.is_file():
        print(f"\npenn predict, shipped model, {scan.name}: {predict_seconds(scan):.1f} s")


if __name__ == "__main__":
    main()
