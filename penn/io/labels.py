"""Label values and class maps: a dataset's label values to the network's classes and back."""

from __future__ import annotations

import numpy as np

__all__ = ["class_map", "label_values", "labelled_mask"]


def class_map(labels: np.ndarray, classes: list[list[int]]) -> np.ndarray:
    """Maps raw label values to class indices: class k for ``classes[k-1]``'s values, else 0."""
    out = np.zeros(labels.shape, dtype=np.uint8)
    for k, values in enumerate(classes, start=1):
        out[np.isin(labels, values)] = k
    return out


def label_values(classes: list[list[int]]) -> list[int]:
    """The value each class is written with in the mask: its first label value in the training
    data (``dataset.json`` of the training data, kept in the model file), so a tumour labelled 2
    there is 2 in the mask too."""
    return [int(values[0]) for values in classes]


def labelled_mask(class_map: np.ndarray, classes: list[list[int]]) -> np.ndarray:
    """A class map (0 background, k for class k) with each class's :func:`label_values` value
    instead of k: uint8, or uint16 when a value passes 255 (the mask's on-disk type)."""
    lut = np.array([0, *label_values(classes)])
    return lut.astype(np.uint8 if lut.max() < 256 else np.uint16)[class_map]
