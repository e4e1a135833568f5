"""Hard-negative mining for the patch stream: background patches the network gets wrong.

Random undersampling (the paper's T1MRI module) shows the fine-tuned network about as many
background patches as target patches, drawn at random. Background patches that look like the
target (bright fat or bowel next to an enhancing lesion, say) are a small share of the
background, so few of them are drawn, yet at the true class balance (hundreds of background
patches per target patch) they decide the precision. After each fine-tuning epoch this
callback scores a random pool of training background patches with the current network and hands
the highest-scoring ones to the :class:`~penn.patches.balance.BalancedSampler`, which puts them in
place of as many random background patches in the next epoch: the class ratio and the epoch
length stay as configured ("bootstrapping", Sung and Poggio 1998).

Choices use the training split only. ``fraction: 0`` is the paper's plain random undersampling.
"""

from __future__ import annotations

import logging

import lightning as L
import numpy as np
import torch

from penn.lit.finetune import class_probabilities

__all__ = ["HardNegativeMining", "background_scores"]

log = logging.getLogger(__name__)


@torch.inference_mode()
def background_scores(
    net: torch.nn.Module, dataset, indices: np.ndarray, batch_size: int, device: torch.device
) -> np.ndarray:
    """Probability of "not background" the network gives each patch at ``indices``."""
    was_training = net.training
    net.eval()
    scores = np.empty(len(indices), np.float32)
    try:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            probs = class_probabilities(net(dataset.patches(chunk).to(device)))
            not_background = probs if probs.ndim == 1 else 1.0 - probs[:, 0]
            scores[start : start + len(chunk)] = not_background.float().cpu().numpy()
    finally:
        net.train(was_training)
    return scores


class _HardExampleMining(L.Callback):
    """After every fine-tuning epoch, hand the sampler the patches of one side it gets wrong.

    Subclasses say which patches are candidates, whether a low or a high score makes a patch
    hard, how many the sampler takes, and how it takes them.
    """

    side = ""  # "negatives" or "positives", for messages and the logged metric

    def __init__(self, fraction: float, pool: int, batch_size: int = 4096, seed: int = 0):
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"hard-{self.side[:-1]} fraction must be in [0, 1), got {fraction}")
        self.fraction, self.pool = float(fraction), int(pool)
        self.batch_size, self.seed = int(batch_size), int(seed)
        self._hard = np.zeros(0, np.int64)

    @staticmethod
    def _stream(trainer: L.Trainer):
        dm = trainer.datamodule
        dataset, sampler = getattr(dm, "train_dataset", None), getattr(dm, "train_sampler", None)
        if dataset is None or sampler is None:
            raise TypeError(
                "hard-example mining needs a patch data module with a balanced sampler "
                f"(penn.data.datamodule.PatchDataModule); got {type(dm).__name__}"
            )
        return dataset, sampler

    def _candidates(self, targets: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _per_epoch(self, sampler) -> int:
        raise NotImplementedError

    def _hand_over(self, sampler, indices: np.ndarray) -> None:
        raise NotImplementedError

    def _hardness(self, scores: np.ndarray) -> np.ndarray:
        """Higher is harder."""
        raise NotImplementedError

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fraction > 0 and len(self._hard):  # resumed: the set mined before the stop
            self._hand_over(self._stream(trainer)[1], self._hard)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.fraction <= 0:
            return
        if trainer.max_epochs is not None and 0 < trainer.max_epochs <= trainer.current_epoch + 1:
            return  # the last epoch: no epoch follows that would draw the mined set
        dataset, sampler = self._stream(trainer)
        candidates = self._candidates(dataset.targets)
        wanted = int(round(self.fraction * self._per_epoch(sampler)))
        if wanted == 0 or len(candidates) == 0:
            return
        rng = np.random.default_rng([self.seed, trainer.current_epoch, 17])
        pool = np.sort(rng.choice(candidates, min(self.pool, len(candidates)), replace=False))
        scores = background_scores(pl_module.net, dataset, pool, self.batch_size, pl_module.device)
        order = np.argsort(-self._hardness(scores), kind="stable")[:wanted]
        self._hard = pool[order]
        self._hand_over(sampler, self._hard)
        pl_module.log(f"train/hard_{self.side[:-1]}_score", float(scores[order].mean()))
        log.info(
            "hard %s: %d of %d %s patches per epoch, from a pool of %d "
            "(their mean score %.3f; the pool's %.3f)",
            self.side,
            len(self._hard),
            self._per_epoch(sampler),
            "background" if self.side == "negatives" else "target",
            len(pool),
            float(scores[order].mean()),
            float(scores.mean()),
        )

    def state_dict(self) -> dict:
        return {"hard": self._hard.tolist()}

    def load_state_dict(self, state_dict: dict) -> None:
        self._hard = np.asarray(state_dict.get("hard", []), dtype=np.int64)


class HardNegativeMining(_HardExampleMining):
    """After every fine-tuning epoch, replace part of the random background with hard negatives.

    Args:
        fraction: share of each epoch's background patches taken from the hardest ones found
            (0 disables mining: the paper's random undersampling).
        pool: random training background patches scored after each epoch to find them; the
            hardest ``fraction`` x (background per epoch) of this pool are kept.
        batch_size: patches per forward pass while scoring.
        seed: seeds the pool drawn after each epoch (with the epoch number).
    """

    side = "negatives"

    def _candidates(self, targets: np.ndarray) -> np.ndarray:
        return np.flatnonzero(targets == 0)

    def _per_epoch(self, sampler) -> int:
        return sampler.n_majority

    def _hardness(self, scores: np.ndarray) -> np.ndarray:
        return scores  # background scored as target

    def _hand_over(self, sampler, indices: np.ndarray) -> None:
        sampler.set_hard(indices)
