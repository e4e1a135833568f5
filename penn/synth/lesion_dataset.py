"""Writes the lesion benchmark as a dataset in the nnU-Net raw layout.

The scans of a source dataset with the fixed lesions of a seed (:mod:`penn.synth.lesions`),
labels 0 background / 1 vertebra / 2 tumour; the source is only read.
:func:`lesion_dataset` keeps one such folder per (source, seed, spec) and reuses it.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from tqdm.auto import tqdm

from penn.io.dataset import list_cases, read_case, read_dataset_json
from penn.io.files import write_json
from penn.io.nifti import write_nifti
from penn.io.volume import DataError
from penn.synth.lesions import LesionSpec, implant_lesions, lesion_rng, on_disk_values

__all__ = ["GENERATOR", "write_lesion_dataset", "lesion_dataset"]

log = logging.getLogger(__name__)

GENERATOR = "penn.synth.lesions"  # dataset.json's "generator": marks a folder this may replace


def _check_output(source: Path, out: Path) -> None:
    src, dst = source.resolve(), out.resolve()
    if dst == src or src in dst.parents or dst in src.parents:
        raise DataError(f"{out}: output must lie outside the source dataset {source}")
    if out.is_dir() and any(out.iterdir()):
        try:
            generator = read_dataset_json(out).get("generator")
        except DataError:
            generator = None
        if generator != GENERATOR:
            raise DataError(f"{out}: not empty and not a lesion dataset; refusing to write there")


def write_lesion_dataset(source: str | Path, out: str | Path, spec: LesionSpec, seed: int) -> Path:
    """Writes the source scans with implanted lesions in the nnU-Net raw layout.

    Each case gets the lesions of ``lesion_rng(seed, name)``, the same as the fixed validation
    and test lesions of :class:`penn.data.lesion_data.LesionDataModule` with this seed. Images keep
    their source's data type, orientation and header. The dataset is built in a hidden sibling
    folder and renamed into place, so ``out`` is never half written; a previous lesion dataset
    there is replaced.

    Raises:
        DataError: unreadable source, or ``out`` inside the source or not a lesion dataset.
    """
    source, out = Path(source), Path(out)
    meta = read_dataset_json(source)
    _check_output(source, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    try:
        _write_cases(source, tmp, meta, spec, seed)
        os.chmod(tmp, 0o755)
        if out.exists():
            os.replace(out, old)  # old is an empty folder, which rename(2) replaces
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def _write_cases(source: Path, out: Path, meta: dict, spec: LesionSpec, seed: int) -> None:
    """Writes every case of ``source`` with its lesions into ``out``, then ``dataset.json``."""
    allowed = sorted(int(v) for v in meta["labels"].values())
    cases, lesions = list_cases(source), {}
    for case in tqdm(cases, desc="lesions", unit="scan"):
        volume = read_case(case, allowed)
        image, labels, records = implant_lesions(
            volume.image, volume.labels, volume.spacing, spec, lesion_rng(seed, case.name)
        )
        dtype = volume.header.get_data_dtype()
        image_path = out / "imagesTr" / f"{case.name}_0000.nii.gz"
        write_nifti(image_path, on_disk_values(image, volume), volume, dtype=dtype)
        write_nifti(out / "labelsTr" / f"{case.name}.nii.gz", labels, volume)
        lesions[case.name] = records
        voxels = sum(r["voxels"] for r in records)
        log.info("%s: %d lesions, %d voxels", case.name, len(records), voxels)
    dataset = {
        "name": f"{meta.get('name', source.name)}-lesions",
        "channel_names": meta.get("channel_names", {"0": "MRI"}),
        "labels": {"background": 0, "vertebra": spec.body_label, "tumor": spec.tumor_label},
        "numTraining": len(cases),
        "file_ending": ".nii.gz",
        "cases": [c.name for c in cases],
        "generator": GENERATOR,
        "source": str(source),
        "seed": int(seed),
        "spec": {k: getattr(spec, k) for k in spec.__dataclass_fields__},
        "lesions": lesions,
    }
    write_json(out / "dataset.json", dataset)


def lesion_dataset(source: str | Path, out: str | Path, spec: LesionSpec, seed: int) -> Path:
    """``out`` holding the lesion dataset of (``source``, ``seed``, ``spec``), written by
    :func:`write_lesion_dataset` unless it is there already with those settings."""
    out = Path(out)
    try:
        meta = read_dataset_json(out)
    except DataError:
        meta = {}
    wanted = json.loads(json.dumps({k: getattr(spec, k) for k in spec.__dataclass_fields__}))
    if (
        meta.get("generator") == GENERATOR
        and meta.get("source") == str(source)
        and meta.get("seed") == int(seed)
        and meta.get("spec") == wanted
    ):
        log.info("Reusing the lesion dataset %s", out)
        return out
    log.info("Writing the lesion dataset of %s (seed %d) to %s", source, seed, out)
    return write_lesion_dataset(source, out, spec, seed)
