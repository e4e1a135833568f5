"""A mask as a DICOM Segmentation object (highdicom) referencing the DICOM series it came from.

Each class is one segment (binary frames, empty frames left out), every frame points to its source
slice, so PACS viewers, 3D Slicer (QuantitativeReporting) and OHIF overlay it on the series.
"""

from __future__ import annotations

import io
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import highdicom as hd
import nibabel as nib
import numpy as np
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from penn.io.dicom import sorted_planes
from penn.io.volume import Volume

__all__ = ["segment_codes", "dicom_seg_bytes"]


def segment_codes(name: str) -> tuple:
    """(category, type) SNOMED CT codes of a class name: vertebra, tumour / lesion, or tissue."""
    lowered = name.lower()
    if "vertebra" in lowered or "bone" in lowered:
        return codes.SCT.AnatomicalStructure, codes.SCT.Vertebra
    if any(word in lowered for word in ("tumor", "tumour", "lesion", "metasta")):
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm
    return codes.SCT.Tissue, codes.SCT.Tissue


def _penn_version() -> str:
    try:
        return version("penn")
    except PackageNotFoundError:  # pragma: no cover - a source tree without metadata
        return "unknown"


def _frames(labels: np.ndarray, volume: Volume, planes) -> tuple[list, np.ndarray]:
    """The source images and the class map as their frames (F, rows, columns).

    ``labels`` is the canonical (RAS+) class map; back on the series' grid it is indexed
    [column, row, slice] with slices sorted as ``planes``. A classic series gives one frame per
    file in that order; an enhanced multi-frame file, its frames in the file's own order.
    """
    native = nib.orientations.apply_orientation(labels, volume.original_ornt).astype(np.uint8)
    per_slice = np.ascontiguousarray(native.transpose(2, 1, 0))  # (slice, row, column)
    if all(plane.frame is None for plane in planes):
        return [plane.ds for plane in planes], per_slice
    frames = np.zeros_like(per_slice)
    for k, plane in enumerate(planes):
        frames[plane.frame] = per_slice[k]
    return [planes[0].ds], frames


def dicom_seg_bytes(
    labels: np.ndarray,
    volume: Volume,
    folder: Path,
    series: str | None,
    class_names: list[str],
    description: str = "penn",
) -> bytes:
    """A DICOM SEG file (binary segments 1..K, one per class) of the series in ``folder``.

    Args:
        labels: canonical (X, Y, Z) class map of ``volume`` (0 background, k class k).
        volume: the scan as read from the series (:func:`penn.io.dicom.read_dicom_series`).
        folder: the series folder; ``series`` its SeriesInstanceUID in a mixed folder, or None.
        class_names: the model's classes, in order.
    """
    planes, _, _ = sorted_planes(folder, series, pixels=False)  # the geometry and UIDs only
    sources, frames = _frames(labels, volume, planes)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="penn", version=_penn_version(), family=codes.cid7162.ArtificialIntelligence
    )
    segments = []
    for k, name in enumerate(class_names, start=1):
        category, kind = segment_codes(name)
        segments.append(
            hd.seg.SegmentDescription(
                segment_number=k,
                segment_label=name,
                segmented_property_category=category,
                segmented_property_type=kind,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
            )
        )
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=generate_uid(),
        series_number=int(sources[0].get("SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="penn",
        manufacturer_model_name="penn",
        software_versions=_penn_version(),
        device_serial_number="0",
        series_description=description[:64],
    )
    buffer = io.BytesIO()
    seg.save_as(buffer)
    return buffer.getvalue()
