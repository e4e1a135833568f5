"""experiments/protocol_time.py against a hand-written log; penn.lit.timing.EpochTimer in a fit."""

from __future__ import annotations

import runpy

import lightning as L
import pytest
import torch

from penn.lit.timing import EpochTimer
from tests.conftest import CONF
from tests.lit.trainers import bare_trainer

LOG = """\
[2026-11-26 10:00:00,000][penn.data.datamodule][INFO] - split by volume: 11 train, 2 val, 4 test
[2026-11-26 10:00:05,000][penn.lit.timing][INFO] - pretrain_stage1 epoch 1: 2.00 s, 640 samples, 320 samples/s
[2026-11-26 10:00:07,000][penn.lit.timing][INFO] - pretrain_stage1 epoch 2: 1.00 s, 640 samples, 640 samples/s
[2026-11-26 10:00:07,500][penn.lit.timing][INFO] - pretrain_stage1: 2 epochs in 4.00 s (2.000 s per epoch, validation and checkpoints included)
[2026-11-26 10:00:09,000][penn.lit.timing][INFO] - pretrain_stage2 epoch 1: 1.00 s, 640 samples, 640 samples/s
[2026-11-26 10:00:10,000][penn.lit.timing][INFO] - pretrain_stage2 epoch 2: 1.00 s, 640 samples, 640 samples/s
[2026-11-26 10:00:10,500][penn.lit.timing][INFO] - pretrain_stage2: 2 epochs in 2.00 s (1.000 s per epoch, validation and checkpoints included)
[2026-11-26 10:00:20,000][penn.lit.timing][INFO] - finetune: 3 epochs in 6.00 s (2.000 s per epoch, validation and checkpoints included)
[2026-11-26 10:01:00,000][__main__][INFO] - done
"""  # noqa: E501


def test_projection_by_hand(tmp_path):
    (tmp_path / "run.log").write_text(LOG)
    project = runpy.run_path(str(CONF.parent / "experiments" / "protocol_time.py"))["project"]
    result = project(tmp_path, 500)
    # the log spans 60 s, of which 4 + 2 s are pretraining fits: 54 s + 500 x (2 + 1) s
    assert result["wall_s"] == pytest.approx(60.0)
    assert result["pretrain_epoch_s"] == {"pretrain_stage1": 2.0, "pretrain_stage2": 1.0}
    assert result["pretrain_epoch_median_s"] == {"pretrain_stage1": 1.5, "pretrain_stage2": 1.0}
    assert result["everything_else_s"] == pytest.approx(54.0)
    assert result["projected_min"] == pytest.approx((54.0 + 1500.0) / 60)
    assert project(tmp_path, 10, wall_s=100.0)["projected_min"] == pytest.approx((94 + 30) / 60)


class Tiny(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_epoch_timer_logs_each_epoch_with_its_sample_count(tmp_path, caplog):
    data = torch.utils.data.TensorDataset(torch.rand(40, 4), torch.zeros(40))
    loader = torch.utils.data.DataLoader(data, batch_size=8)  # 5 batches, 40 samples
    trainer = bare_trainer(3, callbacks=[EpochTimer()], default_root_dir=tmp_path)
    with caplog.at_level("INFO", logger="penn.lit.timing"):
        trainer.fit(Tiny(), loader)
    lines = [r.getMessage() for r in caplog.records if r.name == "penn.lit.timing"]
    assert [ln.split(":")[0] for ln in lines] == [
        "finetune epoch 1",
        "finetune epoch 2",
        "finetune epoch 3",
        "finetune",
    ]
    assert all(", 40 samples, " in ln for ln in lines[:3])
    assert lines[3].startswith("finetune: 3 epochs in ")
    logged = trainer.callback_metrics
    assert logged["time/finetune/samples_s"] > 0 and logged["time/finetune/epoch_s"] > 0
