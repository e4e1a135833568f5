"""Multiruns end to end on the tiny phantom: the Fig. 6 sweep and its report scripts, DDP on two
CPU processes, the joblib launcher, seeded reproducibility, W&B offline and the Optuna search."""

from __future__ import annotations

import csv
import json
import os
import runpy
import struct
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from penn.metrics import METRICS
from penn.reports.tables import collect_runs, grid
from tests.conftest import TINY
from tests.processes import run_module

ROOT = Path(__file__).resolve().parents[1]
# any network access would fail at once: the proxy port is closed
NO_NETWORK = {
    "WANDB_MODE": "offline",
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
    "HYDRA_FULL_ERROR": "1",
}
FAST = ["trainer.limit_train_batches=2"]


def tiny(*swept: str) -> list[str]:
    """TINY without the keys in ``swept`` (Hydra rejects a key given twice), plus FAST."""
    keys = {s.split("=", 1)[0] for s in swept}
    return [o for o in TINY if o.split("=", 1)[0] not in keys] + FAST + list(swept)


def penn_run(
    overrides: list[str], data_dir: Path, env: dict | None = None, fork: bool = True
) -> str:
    """``python -m penn.run`` in a process of its own; returns stdout + stderr, fails on error."""
    args = [*overrides, f"paths.data_dir={data_dir}"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    proc = run_module(
        "penn.run",
        args,
        env={**environ, **NO_NETWORK, **(env or {})},
        cwd=ROOT,
        timeout=400,
        fork=fork,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(proc.args)} failed:\n{out[-6000:]}"
    return out


def jobs(sweep_dir: Path) -> list[Path]:
    return sorted(p.parent for p in sweep_dir.glob("*/metrics.json"))


def metrics(job: Path) -> dict:
    return json.loads((job / "metrics.json").read_text())


@pytest.fixture(scope="module")
def layer_sweep(phantom_dir, tmp_path_factory) -> Path:
    """The Fig. 6 experiment narrowed to 2 x 2 on the tiny phantom; returns the sweep folder."""
    sweep = tmp_path_factory.mktemp("sweep_layers")
    penn_run(
        [
            "+experiment=sweep_layers",
            f"hydra.sweep.dir={sweep}",
            *tiny("model.n_layers=1,2", "model.n_nodes=8,16"),
        ],
        phantom_dir,
    )
    return sweep


def test_layer_sweep_runs_one_job_per_grid_cell(layer_sweep):
    found = jobs(layer_sweep)
    assert len(found) == 4
    cells = {
        (
            OmegaConf.load(j / ".hydra" / "config.yaml").model.n_layers,
            OmegaConf.load(j / ".hydra" / "config.yaml").model.n_nodes,
        )
        for j in found
    }
    assert cells == {(1, 8), (1, 16), (2, 8), (2, 16)}


def load_script(name: str):
    """The ``main`` of an experiments/ script, called in this process (no subprocess start-up)."""
    return runpy.run_path(str(ROOT / "experiments" / f"{name}.py"), run_name="script")["main"]


def test_fig6_script_draws_heatmaps_with_each_jobs_value(layer_sweep, tmp_path, capsys):
    out = tmp_path / "fig6"
    assert load_script("fig6_heatmaps")([str(layer_sweep), "--out", str(out)]) == 0
    expected = {}
    for job in jobs(layer_sweep):
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        expected[(str(cfg.model.n_layers), str(cfg.model.n_nodes))] = metrics(job)
    with open(out / "fig6.csv") as handle:
        rows = list(csv.DictReader(handle))
    for key in ("val/pixel/dice", "test/pixel/dice"):
        cells = {
            (r["model.n_layers"], r["model.n_nodes"]): float(r["mean"])
            for r in rows
            if r["metric"] == key
        }
        assert len(cells) == 4
        for cell, value in cells.items():
            assert value == pytest.approx(100 * expected[cell][key], abs=1e-4)
    names = {p.name for p in out.glob("*.png")}
    assert names == {"val_pixel_dice.png", *(f"test_pixel_{m}.png" for m in METRICS)}
    printed = capsys.readouterr().out
    g = grid(collect_runs([layer_sweep]), "val/pixel/dice")
    assert f"| 1 | {g.mean[0, 0]:.1f} (1) | {g.mean[0, 1]:.1f} (1) |" in printed
    assert "command: `python experiments/fig6_heatmaps.py" in (out / "fig6.md").read_text()


def test_table_scripts_work_with_penn_rows_only(layer_sweep, tmp_path, capsys):
    assert load_script("table2")([str(layer_sweep), "--out", str(tmp_path)]) == 0
    # the sweep's runs had no early stopping: marked as not converged
    assert "| PENN (not converged: 0 of 4 stopped early) | 4 |" in capsys.readouterr().out
    assert load_script("table1_ablation")([str(layer_sweep), "--out", str(tmp_path)]) == 0
    assert "| penn, lambda = 0.004, beta = 4, rho = 0.15 | 4 |" in capsys.readouterr().out
    assert (tmp_path / "table1.csv").is_file() and (tmp_path / "table2.md").is_file()


def test_ddp_on_two_cpu_processes_writes_metrics_once(phantom_dir, tmp_path):
    run = tmp_path / "ddp"
    penn_run(
        [
            f"hydra.run.dir={run}",
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            *tiny(),
        ],
        phantom_dir,
    )
    result = metrics(run)
    for level in ("pixel", "pixel_pooled", "patch"):
        assert {f"test/{level}/{m}" for m in METRICS} <= set(result)
    assert list(tmp_path.rglob("metrics.json")) == [run / "metrics.json"]
    rank1 = (run / "train_ddp_process_1.log").read_text()  # the second rank trained ...
    assert "restored best fine-tuning checkpoint" in rank1
    assert "calibrated threshold" not in rank1  # ... and left testing to rank 0


@pytest.fixture(scope="module")
def joblib_sweep(phantom_dir, tmp_path_factory) -> tuple[Path, str]:
    """Two jobs with one seed, in parallel worker processes; returns (sweep folder, log)."""
    sweep = tmp_path_factory.mktemp("joblib")
    log = penn_run(
        [
            "-m",
            "hydra/launcher=joblib_local",
            "hydra.launcher.n_jobs=2",
            f"hydra.sweep.dir={sweep}",
            *tiny("seed=7,7"),
        ],
        phantom_dir,
        fork=False,  # tests/processes.py
    )
    return sweep, log


def test_joblib_launcher_runs_the_jobs_in_parallel(joblib_sweep):
    sweep, log = joblib_sweep
    assert "Joblib.Parallel(n_jobs=2" in log and "is launching 2 jobs" in log
    assert len(jobs(sweep)) == 2


def test_one_seed_gives_identical_metrics(joblib_sweep):
    first, second = (
        {k: v for k, v in metrics(job).items() if not k.startswith("time/")}
        for job in jobs(joblib_sweep[0])
    )
    assert first == second  # wall-clock times aside
    assert {OmegaConf.load(j / ".hydra" / "config.yaml").seed for j in jobs(joblib_sweep[0])} == {7}


def wandb_records(run_file: Path) -> list:
    """Records of a W&B ``.wandb`` log: a 7-byte file header, then LevelDB-log blocks of 32 KiB
    whose chunks (7-byte header: crc, length, type FULL/FIRST/MIDDLE/LAST) hold protobufs."""
    from wandb.proto import wandb_internal_pb2

    raw, pos, chunk, records = run_file.read_bytes(), 7, b"", []
    while pos + 7 <= len(raw):
        left = 32768 - pos % 32768
        _, length, kind = struct.unpack("<IHB", raw[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # block padding
            pos += left
            continue
        chunk, pos = chunk + raw[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def test_wandb_offline_needs_no_network_and_keeps_every_test_metric(phantom_dir, tmp_path):
    run = tmp_path / "run"
    config_dirs = {f"WANDB_{k}_DIR": str(tmp_path / k.lower()) for k in ("CONFIG", "CACHE", "DATA")}
    penn_run([f"hydra.run.dir={run}", *tiny("logger=wandb")], phantom_dir, env=config_dirs)
    (offline,) = (run / "wandb").glob("offline-run-*")
    # wandb >= 0.19 (wandb-core) writes no files/wandb-summary.json offline; the summary is in
    # the run's log, which `wandb sync` uploads
    summary_file = offline / "files" / "wandb-summary.json"
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
    else:
        records = wandb_records(next(offline.glob("run-*.wandb")))
        summary = {
            item.key: json.loads(item.value_json)
            for r in records
            if r.WhichOneof("record_type") == "summary"
            for item in r.summary.update
        }
        (header,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
        assert header.run_group.startswith("train-") and list(header.tags)[:2] == [
            "penn",
            "phantom",
        ]
    expected = metrics(run)
    for m in METRICS:
        assert summary[f"test/pixel/{m}"] == pytest.approx(expected[f"test/pixel/{m}"])
    # the per-volume table (the test counts of evaluation.json) and the model file go with it
    (table_file,) = (offline / "files" / "media" / "table" / "test").glob("per_volume_*.json")
    table = json.loads(table_file.read_text())
    evaluation = json.loads((run / "evaluation.json").read_text())
    expected_rows = [
        [name, cls, *counts[k], 2 * counts[k][0] / (2 * counts[k][0] + counts[k][1] + counts[k][3])]
        for name, counts in evaluation["test_volumes"].items()
        for k, cls in enumerate(evaluation["class_names"], start=1)
    ]
    assert table["columns"] == ["volume", "class", "tp", "fp", "tn", "fn", "dice"]
    assert table["data"] == expected_rows
    records = wandb_records(next(offline.glob("run-*.wandb")))
    models = [
        r.artifact
        for r in records
        if r.WhichOneof("record_type") == "artifact" and r.artifact.type == "model"
    ]
    assert [[f.path for f in a.manifest.contents] for a in models] == [["model.pt"]]


def test_optuna_search_survives_an_undefined_metric(phantom_dir, tmp_path):
    sweep = tmp_path / "search"
    # a metric key no run writes: train() scores every trial 0.0 instead of NaN
    penn_run(
        [
            "+experiment=search_optuna",
            f"hydra.sweep.dir={sweep}",
            "hydra.sweeper.n_trials=2",
            "optimized_metric=val/pixel/not_a_metric",
            *tiny(
                "model.n_layers=range(1,3)",
                "model.n_nodes=choice(8,16)",
                "data.patches.stride=choice(4,8)",
            ),
        ],
        phantom_dir,
    )
    result = OmegaConf.load(sweep / "optimization_results.yaml")
    assert result.best_value == 0.0
    assert len(jobs(sweep)) == 2
    for job in jobs(sweep):
        cfg = OmegaConf.load(job / ".hydra" / "config.yaml")
        assert cfg.model.n_layers in (1, 2) and cfg.model.n_nodes in (8, 16)
        assert 0.02 <= cfg.model.sae.rho <= 0.3
