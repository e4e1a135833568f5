"""Datasets in the nnU-Net raw layout: ``dataset.json``, ``imagesTr/``, ``labelsTr/``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from penn.io.nifti import load_canonical, read_volume
from penn.io.volume import Case, DataError, Volume

__all__ = ["SUFFIXES", "read_dataset_json", "list_cases", "read_case"]

SUFFIXES = (".nii.gz", ".nii")


def _strip_suffix(path: Path) -> str:
    for suffix in SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def read_dataset_json(root: Path) -> dict:
    """Reads ``root/dataset.json`` (nnU-Net format).

    Raises:
        DataError: when the file is missing or is not valid JSON with a ``labels`` mapping.
    """
    path = Path(root) / "dataset.json"
    if not Path(root).is_dir():
        raise DataError(f"{root}: data folder not found")
    if not path.is_file():
        raise DataError(f"{path}: dataset.json not found (expected nnU-Net raw layout)")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DataError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(meta.get("labels"), dict):
        raise DataError(f"{path}: no 'labels' mapping of class name to value")
    return meta


def list_cases(root: str | Path, require_labels: bool = True) -> list[Case]:
    """Lists the cases of a dataset in the nnU-Net raw layout, sorted by name.

    Args:
        root: folder holding ``imagesTr/NAME_0000.nii.gz`` and ``labelsTr/NAME.nii.gz``.
        require_labels: raise when an image has no label file.

    Raises:
        DataError: missing folder, no images, or a missing label file.
    """
    root = Path(root)
    images_dir = root / "imagesTr"
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    if not images_dir.is_dir():
        raise DataError(f"{images_dir}: imagesTr folder not found (expected nnU-Net raw layout)")
    cases = []
    for image_path in sorted(images_dir.iterdir()):
        stem = _strip_suffix(image_path)
        if not image_path.name.endswith(SUFFIXES) or not stem.endswith("_0000"):
            continue
        name = stem[: -len("_0000")]
        label_path = next(
            (p for s in SUFFIXES if (p := root / "labelsTr" / f"{name}{s}").is_file()), None
        )
        if label_path is None and require_labels:
            raise DataError(f"{image_path}: no label file labelsTr/{name}.nii.gz")
        cases.append(Case(name, image_path, label_path))
    if not cases:
        raise DataError(f"{images_dir}: no images named NAME_0000.nii.gz")
    return cases


def read_case(case: Case, label_values: list[int] | None = None) -> Volume:
    """Reads a case's image and labels, checks them against each other, returns a :class:`Volume`.

    Args:
        case: the case to read.
        label_values: the allowed label values (from dataset.json); None skips that check.

    Raises:
        DataError: any problem with either file, naming the file.
    """
    image, affine, img, back = read_volume(case.image_path)
    labels = None
    if case.label_path is not None:
        array, _, _ = load_canonical(case.label_path)
        if array.shape != image.shape:
            raise DataError(
                f"{case.label_path}: shape {array.shape} != image {case.image_path.name} "
                f"shape {image.shape}"
            )
        if not np.all(np.isfinite(array)) or not np.all(array == np.round(array)):
            raise DataError(f"{case.label_path}: labels must be finite integers")
        labels = array.astype(np.uint8)
        if label_values is not None:
            unknown = sorted(set(np.unique(array).tolist()) - set(label_values))
            if unknown:
                raise DataError(
                    f"{case.label_path}: label values {unknown} outside the known classes "
                    f"{sorted(label_values)}"
                )
    return Volume(case.name, image, labels, affine, img.affine, back, img.header)
