"""Lightning plumbing (penn.lit.trainer): loggers of a resumed run."""

from __future__ import annotations

import csv

import pytest
from omegaconf import OmegaConf

from penn.lit.trainer import close_loggers, make_loggers


def csv_cfg(out, ckpt_path):
    return OmegaConf.create(
        {
            "ckpt_path": ckpt_path,
            "logger": {
                "csv": {
                    "_target_": "lightning.pytorch.loggers.CSVLogger",
                    "save_dir": str(out),
                    "name": "csv",
                    "version": "",
                }
            },
        }
    )


@pytest.mark.parametrize("resumed", [False, True])
def test_a_resumed_run_appends_to_its_csv_log(tmp_path, resumed):
    """The rows logged before the interruption stay when the run resumes (a fresh run in the
    same folder starts a new file, as Lightning does)."""
    loggers = make_loggers(csv_cfg(tmp_path, None))
    loggers[0].log_metrics({"val/loss": 0.9, "epoch": 0}, step=10)
    close_loggers(loggers)
    loggers = make_loggers(csv_cfg(tmp_path, "last.ckpt" if resumed else None))
    loggers[0].log_metrics({"val/loss": 0.5, "epoch": 1, "lr": 0.1}, step=20)
    close_loggers(loggers)
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    steps = [int(r["step"]) for r in rows]
    assert steps == ([10, 20] if resumed else [20])
    assert float(rows[-1]["val/loss"]) == 0.5 and float(rows[-1]["lr"]) == 0.1
    if resumed:
        assert float(rows[0]["val/loss"]) == 0.9 and rows[0]["lr"] == ""
