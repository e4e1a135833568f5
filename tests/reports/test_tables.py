"""Collecting job folders, averaging over seeds, and the Table 1 / Fig. 6 layouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from penn.reports.figures import write_heatmaps
from penn.reports.tables import (
    PAPER_TABLE1,
    collect_runs,
    grid,
    grid_csv,
    grid_separation,
    mean_std,
    table1,
    to_csv,
    to_markdown,
)


def fake_job(folder, config: dict, metrics: dict) -> None:
    """A finished job as Hydra and penn.run leave it: .hydra/config.yaml and metrics.json."""
    (folder / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), folder / ".hydra" / "config.yaml")
    (folder / "metrics.json").write_text(json.dumps(metrics))


def penn_config(n_layers=3, n_nodes=200, lam=0.004, beta=4.0, seed=1) -> dict:
    return {
        "seed": seed,
        "model": {
            "name": "penn",
            "n_layers": n_layers,
            "n_nodes": n_nodes,
            "sae": {"lambda_l2": lam, "beta": beta, "rho": 0.15},
        },
    }


def pixel_metrics(value: float) -> dict:
    return {
        f"test/pixel/{m}": value for m in ("precision", "recall", "accuracy", "f1", "iou", "dice")
    }


def test_mean_std_leaves_out_undefined_values():
    mean, std, n = mean_std([0.5, None, 0.7, math.nan])
    assert (mean, n) == (pytest.approx(0.6), 2)
    assert std == pytest.approx(math.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2) / 1))
    assert math.isnan(mean_std([0.5])[1]) and math.isnan(mean_std([None])[0])


def test_collect_runs_reads_configs_not_folder_names(tmp_path):
    # folder names say the opposite of the configs: only the configs may count
    fake_job(tmp_path / "n_layers=4" / "0", penn_config(n_layers=1), pixel_metrics(0.1))
    fake_job(tmp_path / "n_layers=1" / "1", penn_config(n_layers=4), pixel_metrics(0.2))
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "metrics.json").write_text("{}")  # no .hydra: not a job
    runs = collect_runs([tmp_path])
    assert {(r.get("model.n_layers"), r.metrics["test/pixel/dice"]) for r in runs} == {
        (1, 0.1),
        (4, 0.2),
    }


def test_collect_runs_names_an_empty_or_missing_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent: results folder not found"):
        collect_runs([tmp_path / "absent"])
    with pytest.raises(FileNotFoundError, match="no job with metrics.json"):
        collect_runs([tmp_path])


def test_grid_averages_seeds_per_cell(tmp_path):
    values = {(1, 50): [0.5, 0.7], (1, 100): [0.6, 0.6], (2, 50): [0.9, None]}
    for k, ((layers, nodes), seeds) in enumerate(values.items()):
        for seed, v in enumerate(seeds):
            fake_job(
                tmp_path / f"{k}{seed}",
                penn_config(layers, nodes, seed=seed),
                {"val/pixel/dice": v},
            )
    g = grid(collect_runs([tmp_path]), "val/pixel/dice")
    assert (g.rows, g.cols) == ([1, 2], [50, 100])
    np.testing.assert_allclose(g.mean, [[60.0, 60.0], [90.0, np.nan]])
    np.testing.assert_allclose(g.std[0], [100 * math.sqrt(0.02), 0.0])
    np.testing.assert_array_equal(g.count, [[2, 2], [1, 0]])
    csv_lines = grid_csv([g]).splitlines()
    assert csv_lines[0] == "metric,model.n_layers,model.n_nodes,mean,std,n"
    assert "val/pixel/dice,2,100,,,0" in csv_lines
    pngs = write_heatmaps(tmp_path / "fig", [g])
    assert [p.name for p in pngs] == ["val_pixel_dice.png", "val_pixel_dice_sd.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in pngs)


def test_grid_separation_names_the_cells_beyond_the_seed_spread(tmp_path):
    values = {
        (1, 50): [0.90, 0.92, 0.94],  # best: 92 ± 2
        (1, 100): [0.80, 0.82, 0.84],  # 82 ± 2: Welch t = 10 / sqrt(4/3 + 4/3) = 6.1, p = 0.004
        (2, 50): [0.89, 0.91, 0.93],  # 91 ± 2: t = 0.61, p = 0.57
        (2, 100): [0.5],  # one run
    }
    for k, ((layers, nodes), seeds) in enumerate(values.items()):
        for seed, v in enumerate(seeds):
            config = penn_config(layers, nodes, seed=seed)
            fake_job(tmp_path / f"{k}{seed}", config, {"val/pixel/dice": v})
    text = grid_separation(grid(collect_runs([tmp_path]), "val/pixel/dice"))
    assert text.startswith("val/pixel/dice: best cell model.n_layers=1, model.n_nodes=50, 92.0")
    assert "the seed spread (Welch's t-test, p < 0.05): (1, 100)." in text
    assert "within the seed spread of it: (2, 50)." in text
    assert "not testable (fewer than two runs): (2, 100)." in text


def test_table1_puts_the_unregularised_row_first_with_the_papers_numbers(tmp_path):
    for seed, (plain, regular) in enumerate([(0.80, 0.90), (0.82, 0.94)]):
        fake_job(
            tmp_path / f"a{seed}", penn_config(lam=0.0, beta=0.0, seed=seed), pixel_metrics(plain)
        )
        fake_job(tmp_path / f"b{seed}", penn_config(seed=seed), pixel_metrics(regular))
    table = table1(collect_runs([tmp_path]))
    assert [(r.label, r.n) for r in table.rows] == [
        ("penn, lambda = beta = 0", 2),
        ("penn, lambda = 0.004, beta = 4, rho = 0.15", 2),
    ]
    assert table.rows[0].ours["dice"] == pytest.approx((81.0, 100 * math.sqrt(0.0002)))
    assert table.rows[0].paper == PAPER_TABLE1["unregularised"]
    assert table.rows[1].paper["dice"] == 91.1
    markdown = to_markdown(table)
    assert "| penn, lambda = beta = 0 | 2 | 81.0 ± 1.4 | 86.8 |" in markdown
    assert "not ours" in markdown
    csv_lines = to_csv(table).splitlines()
    assert csv_lines[0].startswith("method,n,precision_mean,precision_std,precision_paper")
    assert csv_lines[2].startswith('"penn, lambda = 0.004, beta = 4, rho = 0.15",2,92.0000,')
