"""experiments/bench.py on tiny sizes: every section runs and the JSON has the headline figures.

No timing is asserted (the machine may be shared); only that the figures exist and are positive.
"""

from __future__ import annotations

import json
import runpy

import pytest

from tests.conftest import CONF, TINY

BENCH = CONF.parent / "experiments" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    return runpy.run_path(str(BENCH), run_name="bench")


def test_flops_and_grid_follow_the_network_and_padding(bench):
    # 1024 x 200 + 2 x 200 x 200 + 200 x 1 multiply-adds per patch
    assert bench["patch_flops"](32, 3, 200, 1) == 2 * 285_000
    assert bench["grid_size"](512, 32, 4) == 121
    assert bench["grid_size"](381, 32, 4) == 89  # padded to 384
    assert bench["grid_size"](20, 32, 4) == 1  # smaller than a patch: one padded patch


def test_bench_writes_the_headline_json(bench, phantom_dir, tmp_path, capsys):
    out = tmp_path / "bench.json"
    train = json.dumps([*TINY, f"paths.data_dir={phantom_dir}"])  # conf/train.yaml overrides
    code = bench["main"](
        [
            f"out={out}",
            "matmul.size=128",
            "matmul.repeats=1",
            "network.patch_size=16",
            "network.n_layers=2",
            "network.n_nodes=16",
            "slice.shape=[48,40]",
            "slice.strides=[1,4]",
            "slice.repeats=1",
            "volume.shapes=[[3,40,36]]",
            "volume.stride=4",
            "volume.batch_slices=2",
            "stream.num_workers=2",
            "stream.warmup_batches=2",
            "stream.batches=5",
            "training.warmup_batches=2",
            "training.batches=3",
            "training.threads=[null,1]",
            f"train_overrides={train}",
            "sections=[slice,volume,stream,training]",
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    last = capsys.readouterr().out.strip().splitlines()[-1]
    head = json.loads(last)
    assert head == result["headline"]
    for key in (
        "slice_stride4_s",
        "slice_stride1_s",
        "efficiency_stride4",
        "speedup_vs_patch_by_patch_stride1",
        "min_efficiency_stride_le4",
        "volume_3x40x36_s",
        "volume_3x40x36_peak_rss_gb",
        "stream_patches_s",
        "stream_ratio",
        "finetune_patches_s",
        "matmul_gflops",
    ):
        assert head[key] > 0, key
    assert head["device"] in ("cpu", "cuda")
    assert result["machine"]["cpu_count"] >= 1
    for row in result["slice"]:
        assert row["engines_ms"]["fcn"] > 0 and row["engines_ms"]["unfold"] > 0
    training = result["training"]
    assert all(training[f"pretrain_stage{i}_patches_s"] > 0 for i in (1, 2))
    assert [run["threads"] for run in training["runs"]][1] == 1
    assert result["volume"][0]["peak_rss_mb"] >= result["volume"][0]["rss_before_mb"] > 0
    assert set(result["targets"]) >= {"slice_stride4_s", "efficiency_stride_le4", "stream_ratio"}
    assert result["targets"]["volume_rss_gb"]["met"] is None  # no 200 x 512 x 512 volume here
