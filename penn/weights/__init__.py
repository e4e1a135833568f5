"""Model files that ship inside penn, read with ``torch.load(weights_only=True)``.

``penn predict`` segments with :data:`DEFAULT` when no model file is given; ``-m NAME`` (or
``ckpt=NAME``) picks another shipped model by its name. Each file's data, recipe, results and
intended use are in docs/model_card.md.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["DEFAULT", "SHIPPED", "shipped_model", "model_file"]

#: shipped model files by name: the file inside this package and how it was trained
SHIPPED = {
    "vertebra": (
        "lumbar_vertebra.pt",
        "vertebral bodies on sagittal lumbar MRI (T1, T2, TIRM); python -m penn.run "
        "+experiment=shipped_vertebra",
    ),
    "lesion": (
        "lumbar_lesion.pt",
        "vertebral bodies and metastasis-like lesions in them on sagittal lumbar T2 MRI "
        "(trained on simulated lesions); python -m penn.run +experiment=shipped_lesion",
    ),
}
#: the model ``penn predict`` uses without ``ckpt=``
DEFAULT = "vertebra"


def shipped_model(name: str = DEFAULT) -> Path:
    """The path of a shipped model file.

    Raises:
        KeyError: an unknown name (the message lists the shipped ones).
        FileNotFoundError: the package was installed without the file.
    """
    if name not in SHIPPED:
        raise KeyError(f"no shipped model {name!r}; penn ships {sorted(SHIPPED)}")
    path = Path(str(files(__name__) / SHIPPED[name][0]))
    if not path.is_file():
        raise FileNotFoundError(f"{path}: the shipped {name!r} model file is missing")
    return path


def model_file(ckpt: str | None) -> str:
    """The model file a ``ckpt`` setting names: a shipped model's name (``vertebra``,
    ``lesion``), a path, or None for :data:`DEFAULT`. A path wins over a name it shadows."""
    if ckpt is None:
        return str(shipped_model())
    if ckpt in SHIPPED and not Path(ckpt).exists():
        return str(shipped_model(ckpt))
    return str(ckpt)
