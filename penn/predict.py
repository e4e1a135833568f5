"""Entry point: segment new scans with a model file and write masks, reports, overlays, meshes.

    python -m penn.predict input=scan.nii.gz output=results      # the model penn ships
    python -m penn.predict ckpt=outputs/train/<run>/model.pt input=scan.nii.gz output=results
    python -m penn.predict ckpt=model.pt input=scans/ output=results mesh.format=stl
    penn predict ckpt=model.pt input=dicom/series1 output=results write_probabilities=true

A folder is processed scan by scan: unreadable scans are logged and skipped, and the command
exits non-zero at the end, naming them.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from penn.checkpoint import load_model
from penn.cli import one_line_errors, require_options
from penn.inference.predictor import default_device
from penn.io.files import write_atomic_bytes
from penn.io.inputs import PredictError, check_output, list_scans, read_mask, read_scan
from penn.io.labels import class_map
from penn.io.volume import DataError
from penn.reports.clinical import csv_bytes, report_row
from penn.reports.mesh import FORMATS
from penn.reports.scan_outputs import build_report, segment_volume, write_scan
from penn.weights import model_file

log = logging.getLogger(__name__)


def check_settings(settings: dict) -> None:
    """Validates the predict config before any work is done.

    Raises:
        PredictError: naming the setting and the allowed values.
    """
    if settings["mesh"]["format"] not in FORMATS:
        raise PredictError(
            f"mesh.format={settings['mesh']['format']!r}: use one of {sorted(FORMATS)}"
        )
    if int(settings["mesh"]["step_size"]) < 1:
        raise PredictError(f"mesh.step_size={settings['mesh']['step_size']}: must be >= 1")
    if int(settings["overlays"]) < 0:
        raise PredictError(f"overlays={settings['overlays']}: must be >= 0")
    if settings["report"]["connectivity"] not in (1, 2, 3):
        raise PredictError(
            f"report.connectivity={settings['report']['connectivity']}: use 1, 2 or 3"
        )
    if (settings["labels"] or settings["vertebrae"]) and not Path(settings["input"]).is_file():
        raise PredictError(
            "labels= and vertebrae= belong to a single input file, "
            f"but input={settings['input']} is a folder"
        )


def resolve_device(name: str) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu`` or ``cuda``.

    Raises:
        PredictError: an unknown name, or ``cuda`` without a GPU.
    """
    if name == "auto":
        return default_device()
    if name not in ("cpu", "cuda"):
        raise PredictError(f"device={name!r}: use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise PredictError("device=cuda: no CUDA GPU is available")
    return torch.device(name)


def results_table(reports: list[dict], class_names: list[str]) -> str:
    """Markdown table: one row per scan with class volumes (mL), lesion count and levels."""
    head = ["scan", *(f"{n} (mL)" for n in class_names), "lesions", "levels"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for report in reports:
        tumor = report["tumor"]
        cells = [
            report["name"],
            *(f"{report['volumes'][n]['ml']:.2f}" for n in class_names),
            "n/a" if tumor["components"] is None else str(tumor["components"]),
            "n/a" if tumor["levels"] is None else (", ".join(tumor["levels"]) or "-"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def load_bodies_model(settings: dict, class_names: list[str], device: torch.device):
    """``(net, meta, path)`` of ``report.bodies_model``, or None where it is not used.

    It numbers the vertebral bodies of a model with a tumour class (a separate vertebra model
    keeps neighbouring bodies apart where a lesion model's vertebra class joins them), unless
    a ``vertebrae=`` mask is given.

    Raises:
        PredictError: the bodies model has no vertebra class.
    """
    report = settings["report"]
    name = report["bodies_model"]
    if not name or settings["vertebrae"] or report["tumor_class"] not in class_names:
        return None
    path = model_file(name)
    net, meta = load_model(path)
    if report["vertebra_class"] not in meta["data"]["class_names"]:
        raise PredictError(
            f"report.bodies_model={name}: {path} has no {report['vertebra_class']!r} class "
            f"(its classes: {meta['data']['class_names']})"
        )
    return net.to(device), meta, Path(path)


def model_bodies(bodies_model, volume, vertebra_class: str, device) -> tuple[np.ndarray, str]:
    """(vertebral-body mask, source) of one scan segmented by the bodies model."""
    net, meta, path = bodies_model
    _, labels, _ = segment_volume(
        net, volume, meta["data"], dict(meta["inference"]), device, meta["model"]
    )
    index = meta["data"]["class_names"].index(vertebra_class) + 1
    return labels == index, f"model {path.name} class {vertebra_class!r}"


def predict(cfg: DictConfig) -> list[dict]:
    """Segments every scan of ``cfg.input`` into ``cfg.output``; returns the reports.

    Raises:
        PredictError: bad settings or paths (before any work), or, at the end, the scans that
            could not be read.
        CheckpointError: an unreadable or inconsistent model file.
    """
    settings = OmegaConf.to_container(cfg, resolve=True)
    check_settings(settings)
    scans = list_scans(settings["input"])
    out = check_output(settings["input"], settings["output"])
    settings["ckpt"] = model_file(settings["ckpt"])
    net, meta = load_model(settings["ckpt"])
    data = meta["data"]
    inference = dict(meta["inference"])
    inference.update({k: v for k, v in settings["inference"].items() if v is not None})
    device = resolve_device(settings["device"])
    net = net.to(device)
    bodies_model = load_bodies_model(settings, data["class_names"], device)
    reports, failures = [], []
    quiet = not settings["progress"] or len(scans) < 2
    bar = tqdm(scans, desc="predict", unit="scan", disable=quiet)
    with logging_redirect_tqdm():
        for scan in bar:
            try:
                volume = read_scan(scan, settings["labels"])
                vertebrae = None
                if settings["vertebrae"]:
                    vertebrae = read_mask(settings["vertebrae"], volume), "vertebrae mask"
            except DataError as err:  # the batch goes on; failures are listed at the end
                log.error("skipped %s: %s", scan.path, err)
                failures.append(str(err))
                continue
            one = settings["progress"] and len(scans) == 1  # a bar over its slices instead
            result = segment_volume(net, volume, data, inference, device, meta["model"], one)
            if bodies_model is not None:
                vertebra_class = settings["report"]["vertebra_class"]
                vertebrae = model_bodies(bodies_model, volume, vertebra_class, device)
            truth = None if volume.labels is None else class_map(volume.labels, data["classes"])
            report = build_report(
                scan, volume, result[1], data["class_names"], vertebrae, settings["report"]
            )
            report["model"] = str(settings["ckpt"])
            path = write_scan(
                out,
                scan,
                volume,
                result,
                truth,
                report,
                data["classes"],
                data["class_names"],
                data["plane"],
                settings,
            )
            log.info("%s -> %s", scan.path, path)
            reports.append(report)
    if len(scans) > 1 and reports:
        write_atomic_bytes(out / "summary.csv", csv_bytes([report_row(r) for r in reports]))
    print(f"\n{results_table(reports, data['class_names'])}\n\nresults: {out}")  # the one print
    if failures:
        listing = "\n  ".join(failures)
        raise PredictError(f"{len(failures)} of {len(scans)} scans failed:\n  {listing}")
    return reports


@hydra.main(version_base="1.3", config_path="pkg://penn.conf", config_name="predict")
def hydra_main(cfg: DictConfig) -> None:
    require_options(cfg, "penn predict")
    with one_line_errors("penn predict", bool(cfg.debug)):
        predict(cfg)


def main() -> None:
    """The ``penn-predict`` console script: runs this file as ``__main__`` (see :mod:`penn.cli`)."""
    from penn.cli import run_as_main

    run_as_main(__name__, sys.argv[1:], "penn-predict")


if __name__ == "__main__":
    hydra_main()
