"""Atomic writes: an output file appears whole or not at all."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

__all__ = ["write_atomic_bytes", "write_json"]


def write_atomic_bytes(path: str | Path, payload: bytes) -> Path:
    """Writes bytes to ``path`` through a temporary file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
        os.chmod(tmp, 0o644)  # mkstemp creates owner-only files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json(path: str | Path, obj: dict) -> Path:
    """Writes a JSON object atomically (sorted keys, indented)."""
    text = json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n"
    return write_atomic_bytes(path, text.encode())
