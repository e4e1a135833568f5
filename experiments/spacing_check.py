"""Does a trained model keep its accuracy on scans of another resolution?

    python experiments/spacing_check.py outputs/train/RUN DATA_ROOT [--sizes 0.5 0.75 1.0]
        [--json docs/results/issue2/spacing_check_lumbar.jsonl]

Takes the run's test scans (the names in its ``evaluation.json``) from DATA_ROOT, resamples them
in-plane to each pixel size of ``--sizes`` (mm; image bilinear, labels nearest), as if another
scanner had acquired them, writes them to a temporary folder in the nnU-Net layout and scores
the run's ``model.pt`` on them twice:

- ``resampled``: as ``penn.evaluate`` / ``penn.predict`` do, resampling each scan to the
  network's pixel size (the model's ``data.preprocess.spacing``) and the output back;
- ``as_is``: with that spacing removed, i.e. the scan's own pixels, as without resampling.

Prints one line per (size, way) and, with ``--json``, writes them all. Nothing under DATA_ROOT
is written.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from penn.checkpoint import load_model
from penn.evaluate import score_folder
from penn.io import list_cases, read_case, read_dataset_json
from penn.preprocess import PLANE_AXIS, from_slices, resize_in_plane, to_slices


def resample_case(volume, plane: str, size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image, labels, affine) of a canonical volume with in-plane pixels of ``size`` mm."""
    axes = [a for a in range(3) if a != PLANE_AXIS[plane]]
    spacing = np.asarray(volume.spacing)
    shape = tuple(int(round(volume.image.shape[a] * spacing[a] / size)) for a in axes)
    image = from_slices(resize_in_plane(to_slices(volume.image, plane), shape, 1), plane)
    labels = from_slices(resize_in_plane(to_slices(volume.labels, plane), shape, 0), plane)
    affine = volume.affine.copy()
    for a, n in zip(axes, shape, strict=True):
        factor = volume.image.shape[a] / n  # new voxel size / old
        # voxel centres of the resized grid: old index (i + 0.5) * factor - 0.5
        affine[:3, 3] += affine[:3, a] * (factor - 1) / 2
        affine[:3, a] *= factor
    return image.astype(np.float32), labels.astype(np.uint8), affine


def write_folder(out: Path, root: Path, names: set[str], transform) -> Path:
    """Writes ``transform(volume)`` = (image, labels, affine) of the named cases of ``root``."""
    meta = read_dataset_json(root)
    allowed = sorted(int(v) for v in meta["labels"].values())
    (out / "imagesTr").mkdir(parents=True)
    (out / "labelsTr").mkdir()
    (out / "dataset.json").write_text(json.dumps(meta))
    for case in list_cases(root):
        if case.name not in names:
            continue
        image, labels, affine = transform(read_case(case, allowed))
        nib.save(nib.Nifti1Image(image, affine), out / "imagesTr" / f"{case.name}_0000.nii.gz")
        nib.save(nib.Nifti1Image(labels, affine), out / "labelsTr" / f"{case.name}.nii.gz")
    return out


def dice_of(net, meta: dict, folder: Path) -> dict[str, float]:
    """The model's test pixel Dice (mean per volume and pooled) on a dataset folder, as the
    model file says to preprocess, segment and decide."""
    data = meta["data"]
    metrics = score_folder(net, meta, folder, data["classes"], data["class_names"],
                           dict(meta["inference"]))  # fmt: skip
    return {
        "pixel_dice": metrics["test/pixel/dice"],
        "pixel_pooled_dice": metrics["test/pixel_pooled/dice"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("data_root", type=Path)
    parser.add_argument("--sizes", type=float, nargs="+", default=[0.5, 0.75, 1.0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    net, meta = load_model(args.run / "model.pt")
    names = set(json.loads((args.run / "evaluation.json").read_text())["test_volumes"])
    data = meta["data"]
    trained = data["preprocess"].get("spacing")
    as_is = copy.deepcopy(meta)
    as_is["data"]["preprocess"]["spacing"] = None
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            folder = write_folder(Path(tmp) / f"px{size}", args.data_root, names,
                                  lambda v, s=size: resample_case(v, data["plane"], s))  # fmt: skip
            for way, m in (("resampled", meta), ("as_is", as_is)):
                row = {
                    "pixel_mm": size,
                    "way": way,
                    "model_spacing_mm": trained if way == "resampled" else None,
                    "volumes": len(names),
                    **dice_of(net, m, folder),
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
