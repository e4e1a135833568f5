"""The ``penn`` command: ``penn run|evaluate|predict|lesions [hydra overrides]``.

Each verb runs that entry point's file as ``__main__``, exactly as ``python -m penn.predict ...``
would. Calling the ``@hydra.main`` function from an installed script instead makes Hydra look for
``../conf`` as a Python package next to ``penn`` (there is none), so the file route is the one
that finds the configs.
"""

from __future__ import annotations

import importlib.util
import runpy
import sys

__all__ = ["VERBS", "main", "require_options", "run_as_main"]

VERBS = {
    "run": ("penn.run", "train, calibrate and test a model (conf/train.yaml)"),
    "evaluate": ("penn.evaluate", "score a model file on a labelled dataset (conf/evaluate.yaml)"),
    "predict": ("penn.predict", "segment new scans with a model file (conf/predict.yaml)"),
    "lesions": ("penn.make_lesions", "write the lesion benchmark dataset (conf/lesions.yaml)"),
}


# what a required option (``???`` in conf/) is, for the one-line error when it is missing
REQUIRED = {
    "ckpt": "the model file, a run's model.pt",
    "input": "the scan, DICOM series or folder of scans to segment",
    "output": "the folder to write the results into",
    "data.root": "the labelled dataset folder, in the nnU-Net raw layout",
}


def require_options(cfg, command: str) -> None:
    """Exits with one line naming each required option (``???`` in the config) not given."""
    from omegaconf import OmegaConf

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        given = ", ".join(f"{key}=... ({REQUIRED.get(key, 'required')})" for key in missing)
        sys.stderr.write(f"{command}: missing required option {given}\n")
        raise SystemExit(2)


def usage() -> str:
    verbs = "\n".join(f"  {verb:<9} {text}" for verb, (_, text) in VERBS.items())
    return (
        f"usage: penn {{{','.join(VERBS)}}} [key=value ...] [--help]\n\n{verbs}\n\n"
        "`penn VERB --help` lists that verb's configuration.\n"
    )


def run_as_main(module: str, argv: list[str], prog: str) -> None:
    """Runs ``module``'s file as ``__main__`` with ``argv`` as its command line (Hydra reads it)."""
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ModuleNotFoundError(f"penn: entry point {module} not found")
    sys.argv = [prog, *argv]
    runpy.run_path(spec.origin, run_name="__main__")


def main(argv: list[str] | None = None) -> int:
    """Dispatches ``argv`` (default: ``sys.argv[1:]``) to a verb; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0 if argv else 2
    if argv[0] not in VERBS:
        sys.stderr.write(f"penn: unknown command {argv[0]!r}\n\n{usage()}")
        return 2
    run_as_main(VERBS[argv[0]][0], argv[1:], f"penn {argv[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run_main() -> None:
    """The ``penn-run`` console script."""
    run_as_main("penn.run", sys.argv[1:], "penn-run")


def evaluate_main() -> None:
    """The ``penn-evaluate`` console script."""
    run_as_main("penn.evaluate", sys.argv[1:], "penn-evaluate")
