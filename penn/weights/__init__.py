"""Model files that ship inside penn, read with ``torch.load(weights_only=True)``.

``penn predict`` segments with :data:`DEFAULT` when no model file is given. Each file's data,
recipe, results and intended use are in docs/model_card.md.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

__all__ = ["DEFAULT", "SHIPPED", "shipped_model"]

#: shipped model files by name: the file inside this package and how it was trained
SHIPPED = {
    "vertebra": (
        "lumbar_vertebra.pt",
        "vertebral bodies on sagittal lumbar MRI (T1, T2, TIRM); python -m penn.run "
        "+experiment=shipped_vertebra",
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
