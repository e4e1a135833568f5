"""The ``penn`` command: ``penn run|evaluate|predict|lesions [options] [hydra overrides]``.

``penn predict`` and ``penn evaluate`` take conventional options as well, translated into the
overrides of their configs (``conf/predict.yaml``, ``conf/evaluate.yaml``)::

    penn predict -i INPUT -o OUTPUT [-m MODEL] [--device cpu|cuda|auto] [--overlays N]
                 [--no-mesh] [--no-dicom-seg] [--debug] [key=value ...]
    penn evaluate -p PRED_DIR -g LABEL_DIR [-o OUT_DIR]     # score a folder of masks
    penn evaluate -m MODEL -d DATASET [-o OUT_DIR] [key=value ...]   # segment, then score

Each verb runs that entry point's file as ``__main__``, exactly as ``python -m penn.predict ...``
would. Calling the ``@hydra.main`` function from an installed script instead makes Hydra look for
``../conf`` as a Python package next to ``penn`` (there is none), so the file route is the one
that finds the configs.
"""

from __future__ import annotations

import argparse
import importlib.util
import runpy
import sys
from contextlib import contextmanager

__all__ = [
    "VERBS",
    "evaluate_arguments",
    "main",
    "one_line_errors",
    "predict_arguments",
    "require_options",
    "run_as_main",
]

VERBS = {
    "run": ("penn.run", "train, calibrate and test a model (conf/train.yaml)"),
    "evaluate": ("penn.evaluate", "score a model file on a labelled dataset (conf/evaluate.yaml)"),
    "predict": ("penn.predict", "segment new scans with a model file (conf/predict.yaml)"),
    "lesions": ("penn.make_lesions", "write the lesion benchmark dataset (conf/lesions.yaml)"),
}


# what a required option (``???`` in conf/) is, for the one-line error when it is missing
REQUIRED = {
    "ckpt": "the model file, a run's model.pt, or a shipped model's name",
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


def _quoted(value: str) -> str:
    """A value as a quoted Hydra override string (paths may hold spaces, commas, '=')."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _overrides(pairs: tuple[tuple[str, str | None], ...]) -> list[str]:
    """``key='value'`` overrides of the options that were given (a value of None was not)."""
    return [f"{key}={_quoted(value)}" for key, value in pairs if value is not None]


_CONFIG_HELP = "key=value: any option of the verb's config (`--cfg job` prints them all)"


def predict_arguments(argv: list[str]) -> list[str]:
    """``penn predict``'s options as overrides of conf/predict.yaml; others pass through."""
    parser = argparse.ArgumentParser(
        prog="penn predict",
        description="Segment scans (NIfTI files, DICOM series or folders of them).",
        epilog=_CONFIG_HELP,
    )
    parser.add_argument("-i", "--input", help="scan file, DICOM series folder, or folder of scans")
    parser.add_argument("-o", "--output", help="folder for the results (one subfolder per scan)")
    parser.add_argument(
        "-m",
        "--model",
        help="model file, or a shipped model's name: vertebra (the default) or lesion",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto")
    parser.add_argument("--overlays", type=int, help="overlay PNGs per scan (0: none)")
    parser.add_argument("--no-mesh", action="store_true", help="write no surface meshes")
    parser.add_argument(
        "--no-dicom-seg", action="store_true", help="no DICOM SEG (seg.dcm) for DICOM input"
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one line")
    args, rest = parser.parse_known_args(argv)
    overrides = _overrides((("input", args.input), ("output", args.output), ("ckpt", args.model)))
    if args.device:
        overrides.append(f"device={args.device}")
    if args.overlays is not None:
        overrides.append(f"overlays={args.overlays}")
    if args.no_mesh:
        overrides.append("mesh.enabled=false")
    if args.no_dicom_seg:
        overrides.append("dicom_seg=false")
    if args.debug:
        overrides.append("debug=true")
    return overrides + rest


def evaluate_arguments(argv: list[str]) -> tuple[dict | None, list[str]]:
    """``penn evaluate``'s options: ``({"pred", "labels", "out", "debug"}, [])`` to score a
    folder of masks, or ``(None, overrides of conf/evaluate.yaml)`` to segment and score."""
    parser = argparse.ArgumentParser(
        prog="penn evaluate",
        description="Score a folder of masks (-p, -g), or a model on a labelled dataset (-m, -d).",
        epilog=_CONFIG_HELP,
    )
    parser.add_argument("-p", "--pred", help="folder of predicted masks (NAME.nii.gz)")
    parser.add_argument("-g", "--labels", help="folder of label masks (NAME.nii.gz)")
    parser.add_argument(
        "-m", "--model", help="model file (or a shipped model's name) to segment the dataset with"
    )
    parser.add_argument("-d", "--dataset", help="labelled dataset folder (nnU-Net raw layout)")
    parser.add_argument("-o", "--output", help="folder for the scores")
    parser.add_argument(
        "--no-dicom-seg", action="store_true", help="no DICOM SEG (seg.dcm) for DICOM input"
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks instead of one line")
    args, rest = parser.parse_known_args(argv)
    if args.pred or args.labels:
        if not (args.pred and args.labels) or args.model or args.dataset or rest:
            parser.error("-p PRED_DIR -g LABEL_DIR go together, without -m, -d or overrides")
        folder = {"pred": args.pred, "labels": args.labels, "out": args.output}
        return folder | {"debug": args.debug}, []
    overrides = _overrides(
        (("ckpt", args.model), ("data.root", args.dataset), ("hydra.run.dir", args.output))
    )
    if args.debug:
        overrides.append("debug=true")
    return None, overrides + rest


@contextmanager
def one_line_errors(command: str, debug: bool):
    """An error of the input (a file, a setting) inside ends the command with one line naming
    it and exit status 1; with ``debug`` the traceback is raised instead."""
    try:
        yield
    except (ValueError, OSError, KeyError) as err:
        if debug:
            raise
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        sys.stderr.write(f"{command}: error: {message}\n")
        raise SystemExit(1) from None


def _evaluate_folder(options: dict) -> int:
    from penn.reports.folder_scores import evaluate_folder

    with one_line_errors("penn evaluate", options["debug"]):
        summary = evaluate_folder(options["pred"], options["labels"], options["out"])
    mean = summary["foreground_mean"]
    sys.stdout.write(
        f"{len(summary['cases'])} cases, classes {summary['classes']}: "
        + ", ".join(f"{k} {mean[k]:.4f}" for k in ("dice", "iou", "hd95_mm", "asd_mm"))
        + f"\nsummary: {options['out'] or options['pred']}/summary.json\n"
    )
    return 0


def usage() -> str:
    verbs = "\n".join(f"  {verb:<9} {text}" for verb, (_, text) in VERBS.items())
    return (
        f"usage: penn {{{','.join(VERBS)}}} [options] [key=value ...] [--help]\n\n{verbs}\n\n"
        "  penn predict -i scan.nii.gz -o results          segment with the model penn ships\n"
        "  penn evaluate -p predictions/ -g labels/        score a folder of masks\n\n"
        "`penn VERB --help` lists that verb's options.\n"
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
    verb, rest = argv[0], argv[1:]
    if verb == "predict":
        rest = predict_arguments(rest)
    elif verb == "evaluate":
        folder, rest = evaluate_arguments(rest)
        if folder is not None:
            return _evaluate_folder(folder)
    run_as_main(VERBS[verb][0], rest, f"penn {verb}")
    return 0


if __name__ == "__main__":
    sys.exit(main())


def run_main() -> None:
    """The ``penn-run`` console script."""
    run_as_main("penn.run", sys.argv[1:], "penn-run")


def evaluate_main() -> None:
    """The ``penn-evaluate`` console script."""
    run_as_main("penn.evaluate", sys.argv[1:], "penn-evaluate")
