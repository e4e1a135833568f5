"""Table 2 like for like: seeds averaged per method, convergence marked, curves from CSV logs."""

from __future__ import annotations

import csv
import math
import runpy
from pathlib import Path

import pytest

from penn.reports.comparison import comparison, comparison_csv, comparison_markdown
from penn.reports.curves import read_curve
from penn.reports.tables import collect_runs
from tests.reports.test_tables import fake_job

TABLE2 = Path(__file__).resolve().parents[2] / "experiments" / "table2.py"


def metrics(dice: float, hd95: float, external: float, stopped: float, seconds: float) -> dict:
    out = {f"test/pixel/{m}": dice for m in ("precision", "recall", "f1", "iou", "dice")}
    out |= {f"external/extent/pixel/{m}": external for m in ("precision", "recall", "dice")}
    return out | {
        "test/pixel_pooled/dice": dice + 0.01,
        "test/pixel/hd95_mm": hd95,
        "external/extent/pixel/hd95_mm": 2 * hd95,
        "train/stopped_early": stopped,
        "train/steps": 1000.0,
        "time/train_s": seconds,
        "model/parameters": 1_250_000.0,
        "machine": "CPU, 2 cores",
    }


@pytest.fixture
def two_methods(tmp_path):
    """UNet over two seeds (both converged), D-TVNet once (hit its epoch cap)."""
    fake_job(
        tmp_path / "u1", {"seed": 1, "model": {"name": "unet"}}, metrics(0.80, 10, 0.5, 1, 600)
    )
    fake_job(
        tmp_path / "u2", {"seed": 2, "model": {"name": "unet"}}, metrics(0.86, 14, 0.7, 1, 1200)
    )
    fake_job(
        tmp_path / "d1", {"seed": 1, "model": {"name": "dtvnet"}}, metrics(0.7, 20, 0.4, 0, 60)
    )
    return collect_runs([tmp_path])


def test_seeds_average_per_method_with_hand_checked_means_and_sds(two_methods):
    rows = comparison(two_methods)
    assert [r.method for r in rows] == ["UNet", "D-TVNet"]  # the paper's order
    unet = rows[0]
    sd = math.sqrt(2 * 0.03**2) * 100  # sample sd of 80 and 86: 4.243
    assert unet.values["test/pixel/dice"] == pytest.approx((83.0, sd))
    assert unet.values["test/pixel_pooled/dice"] == pytest.approx((84.0, sd))
    assert unet.values["test/pixel/hd95_mm"] == pytest.approx((12.0, math.sqrt(8)))
    assert unet.values["external/extent/pixel/dice"] == pytest.approx((60.0, math.sqrt(200)))
    assert unet.values["time/train_s"] == pytest.approx((15.0, math.sqrt(50)))  # minutes
    assert unet.values["model/parameters"][0] == pytest.approx(1.25)
    assert (unet.n, unet.converged, unet.label) == (2, 2, "UNet")
    assert math.isnan(rows[1].values["test/pixel/dice"][1])  # one run: no sd
    assert rows[1].label == "D-TVNet (not converged: 0 of 1 stopped early)"
    assert math.isnan(unet.values["external/extent/pixel/f1"][0])  # absent from every run


def test_markdown_and_csv_carry_the_rows(two_methods):
    rows = comparison(two_methods)
    text = comparison_markdown(rows)
    assert "| UNet | 2 | 83.0 ± 4.2 | 83.0 ± 4.2 | 83.0 ± 4.2 | 83.0 ± 4.2 | 83.0 ± 4.2 |" in text
    assert "| 84.0 ± 4.2 | 12.0 ± 2.8 | 82.5 |" in text  # pooled, HD95, the paper's Dice
    assert "| D-TVNet (not converged: 0 of 1 stopped early) | 1 | 70.0 |" in text
    assert "| 2 / 2 | CPU, 2 cores |" in text
    table = list(csv.DictReader(comparison_csv(rows).splitlines()))
    assert table[0]["method"] == "UNet" and table[0]["converged"] == "2"
    assert float(table[0]["test/pixel/dice_mean"]) == pytest.approx(83.0)
    assert float(table[0]["test/pixel/dice_sd"]) == pytest.approx(4.2426, abs=1e-4)
    assert table[1]["test/pixel/dice_sd"] == ""


def test_a_recipe_is_its_own_method(tmp_path):
    fake_job(tmp_path / "a", {"model": {"name": "seg_unet"}}, metrics(0.8, 1, 0.5, 1, 1))
    fake_job(
        tmp_path / "b",
        {"model": {"name": "seg_unet"}, "recipe_name": "seg_lumbar_vb"},
        metrics(0.9, 1, 0.5, 1, 1),
    )
    rows = comparison(collect_runs([tmp_path]))
    assert {r.method: r.values["test/pixel/dice"][0] for r in rows} == {
        "seg_unet": pytest.approx(80.0),
        "seg_unet, recipe seg_lumbar_vb": pytest.approx(90.0),
    }


def write_log(run, rows: list[dict]) -> None:
    (run / "csv").mkdir(parents=True)
    keys = ["epoch", "step", "val/pixel/dice", "val/pixel/loss", "train/pixel/loss_epoch"]
    keys += ["val/patch/dice", "val/patch/loss"]
    with open(run / "csv" / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, keys)
        writer.writeheader()
        writer.writerows(rows)


def test_curve_reads_validations_and_the_epoch_its_checkpoint_kept(tmp_path):
    run = tmp_path / "run"
    rows = [
        {"epoch": 0, "step": 9, "val/pixel/dice": 0.5, "val/pixel/loss": 0.9},
        {"epoch": 0, "step": 9, "train/pixel/loss_epoch": 1.0},  # a training line: left out
        {"epoch": 1, "step": 19, "val/pixel/dice": 0.8, "val/pixel/loss": 0.6},
        {"epoch": 2, "step": 29, "val/pixel/dice": 0.7, "val/pixel/loss": 0.5},
    ]
    write_log(run, rows)
    fake_job(run, {"callbacks": {"checkpoint": {"monitor": "val/pixel/dice", "mode": "max"}}}, {})
    curve = read_curve(run)
    assert (curve.epochs, curve.dice, curve.kept) == ([1, 2, 3], [0.5, 0.8, 0.7], 2)
    other = tmp_path / "other"
    write_log(other, rows)
    fake_job(other, {"callbacks": {"checkpoint": {"monitor": "val/pixel/loss", "mode": "min"}}}, {})
    assert read_curve(other).kept == 3


def test_a_patch_net_curve_is_its_patch_validations(tmp_path):
    """A patch net validates patches each epoch; its final pixel metrics row has no epoch."""
    run = tmp_path / "run"
    rows = [
        {"epoch": 0, "step": 9, "val/patch/dice": 0.4, "val/patch/loss": 0.9},
        {"epoch": 1, "step": 19, "val/patch/dice": 0.6, "val/patch/loss": 0.7},
        {"val/pixel/dice": 0.3},
    ]
    write_log(run, rows)
    fake_job(run, {"callbacks": {"checkpoint": {"monitor": "val/patch/dice", "mode": "max"}}}, {})
    curve = read_curve(run)
    assert (curve.level, curve.epochs, curve.dice, curve.kept) == ("patch", [1, 2], [0.4, 0.6], 2)


def test_table2_script_writes_tables_and_one_curve_per_method(two_methods, tmp_path, capsys):
    for run in two_methods:
        write_log(run.path, [{"epoch": 0, "step": 1, "val/pixel/dice": 0.6, "val/pixel/loss": 1}])
    out = tmp_path / "out"
    folder = two_methods[0].path.parent
    main = runpy.run_path(str(TABLE2), run_name="script")["main"]
    assert main([str(folder), "--out", str(out)]) == 0
    assert "| UNet | 2 | 83.0 ± 4.2 |" in capsys.readouterr().out
    assert "command: `python experiments/table2.py" in (out / "table2.md").read_text()
    assert sorted(p.name for p in (out / "curves").glob("*.png")) == ["D-TVNet.png", "UNet.png"]
    assert main([str(tmp_path / "missing")]) == 1
