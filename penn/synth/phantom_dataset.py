"""Writes the phantom as a dataset in the nnU-Net raw layout, cached by its spec and seed."""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm.auto import tqdm

from penn.synth.phantom import LABELS, META_NAME, VERSION, PhantomSpec, generate_volume

log = logging.getLogger(__name__)

__all__ = ["write_phantom_dataset"]


def _meta(spec: PhantomSpec, n_volumes: int, seed: int) -> dict:
    """JSON-normalised cache key of a dataset."""
    raw = {
        "generator": "penn.synth.phantom",
        "version": VERSION,
        "spec": asdict(spec),
        "n_volumes": int(n_volumes),
        "seed": int(seed),
    }
    return json.loads(json.dumps(raw))


def _is_cached(root: Path, meta: dict) -> bool:
    """True if ``root`` holds a complete dataset generated from exactly ``meta``."""
    try:
        if json.loads((root / META_NAME).read_text()) != meta:
            return False
        cases = json.loads((root / "dataset.json").read_text())["cases"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return len(cases) == meta["n_volumes"] and all(
        (root / c[k]).is_file() for c in cases for k in ("image", "label")
    )


def _save_nifti(path: Path, array: np.ndarray, spacing: tuple[float, float, float]) -> None:
    """Save with affine diag(spacing) (RAS, mm) as both qform and sform."""
    affine = np.diag([*map(float, spacing), 1.0])
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    nib.save(img, str(path))


def _write_all(out: Path, spec: PhantomSpec, meta: dict) -> None:
    """Generate every case into ``out``; the meta file is written last."""
    (out / "imagesTr").mkdir()
    (out / "labelsTr").mkdir()
    n, cases = meta["n_volumes"], []
    for i in tqdm(range(n), desc="phantom", unit="scan", leave=False):
        case = f"phantom_{i:0{max(3, len(str(n - 1)))}d}"
        image, labels = generate_volume(spec, np.random.default_rng([meta["seed"], i]))
        entry = {
            "id": case,
            "image": f"imagesTr/{case}_0000.nii.gz",
            "label": f"labelsTr/{case}.nii.gz",
            "has_tumor": bool((labels == 2).any()),
        }
        _save_nifti(out / entry["image"], image, spec.spacing)
        _save_nifti(out / entry["label"], labels, spec.spacing)
        cases.append(entry)
    dataset = {
        "name": "penn_phantom",
        "channel_names": {"0": "MRI"},
        "labels": LABELS,
        "numTraining": n,
        "file_ending": ".nii.gz",
        "cases": cases,
    }
    (out / "dataset.json").write_text(json.dumps(dataset, indent=2))
    (out / META_NAME).write_text(json.dumps(meta, indent=2))


def write_phantom_dataset(root: str | Path, n_volumes: int, spec: PhantomSpec, seed: int) -> Path:
    """Generate (or reuse) a phantom dataset in the nnU-Net raw layout.

    Args:
        root: Dataset directory to hold ``dataset.json``, ``imagesTr/`` and ``labelsTr/``.
        n_volumes: Number of volumes.
        spec: Generator tunables.
        seed: Seed; case i uses ``np.random.default_rng([seed, i])``.

    Returns:
        ``root``. A complete dataset with matching ``penn_phantom.json`` is returned untouched;
        otherwise it is built in a sibling temp dir and renamed into place (replacing a stale
        phantom dataset).

    Raises:
        FileExistsError: If ``root`` is a non-empty directory that is not a phantom dataset.
    """
    root = Path(root)
    meta = _meta(spec, n_volumes, seed)
    if _is_cached(root, meta):
        log.info("Reusing cached phantom dataset %s", root)
        return root
    if (
        root.exists()
        and not (root / META_NAME).is_file()
        and (not root.is_dir() or any(root.iterdir()))
    ):
        raise FileExistsError(f"{root} is not a phantom dataset; refusing to replace it")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    old = Path(tempfile.mkdtemp(prefix=f".{root.name}.old-", dir=root.parent))
    try:
        log.info("Writing %d phantom volumes to %s", n_volumes, root)
        _write_all(tmp, spec, meta)
        os.chmod(tmp, 0o755)
        if root.exists():
            os.replace(root, old)  # old is an empty dir: rename(2) replaces it
        try:
            os.replace(tmp, root)
        except OSError:
            if not _is_cached(root, meta):  # tolerate losing a race to an identical writer
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return root
