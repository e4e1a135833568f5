"""Would a second, dilated context patch help a PENN-like classifier on the phantom? An A/B test.

    python experiments/context_patch_check.py single  [--seed S] [--out DIR]
    python experiments/context_patch_check.py context [--dilation 4] [--context-pad reflect|zero]
        [--seed S] [--out DIR]

The zero-padded context is now a penn option, ``data.patches.context_dilation``
(``penn/context.py``, on by default for PENN through ``conf/tuning/``); this script stays as the
record of the prototype's A/B test (docs/results/issue2/README.md).

A prototype outside the penn pipeline, so both arms are trained and read out the same way:

- data: the default phantom and split (`conf/`), preprocessed by penn;
- training centres: every second pixel of each training slice at least 16 px from its edge,
  labelled by the centre pixel (the default rule); each epoch all tumour centres and 1.5 times
  as many background centres (0.6 / 0.4), 75 % of them the highest-scoring of 200,000 random
  background centres after epoch 0 (hard negatives: `model.finetune.hard_negatives` of the
  phantom's tuning file, read from `conf/`);
- `single`: the 32 x 32 patch around each centre (1,024 inputs), as PENN;
- `context`: the same plus 32 x 32 samples taken every `dilation` px from the slice smoothed by a
  Gaussian of `dilation / 2` px (2,048 inputs: 16 mm and 64 mm of view at dilation 4);
- network 1024 (or 2048)-200-200-200-1 with sigmoid units, no pretraining, Adam 1e-3, batches of
  128, `model.finetune.epochs` (8) epochs, the `data.augment` ranges (gamma 0.8-1.25, scale
  0.9-1.1, noise 0.01; no clip to [0, 1] as penn's stream does);
- read-out: the patch grid at stride 2 as convolutions (the context part dilated), bilinear to
  pixels, a Gaussian of 2 px (the default centre read-out);
- decision: threshold (0.05-0.99) and min_size (0, 250, 1000 voxels; `penn.inference.postprocess`)
  with the best pooled validation Dice, then the test split is scored with them.

Prints one Markdown row (validation pooled / mean, test mean / pooled, test per volume) and
appends it as JSON to ``--out``/context_patch_check.jsonl. One run takes 2 (single) to 3.5
(context) min on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig
from scipy import ndimage as ndi
from torch import nn

from penn.evaluation import class_map
from penn.inference import postprocess

CONF = Path(__file__).resolve().parents[1] / "conf"
N, HALF, BATCH = (
    32,
    16,
    128,
)  # the prototype's patch size and batch (penn: data.loader.batch_size 64)


def load_splits(mode: str, dilation: int, context_pad: str) -> tuple[dict, DictConfig]:
    """(per split and volume: (slices, truth, padded slices, padded context image or None),
    the default training config, whose augmentation, mining, epochs and read-out it follows).

    ``context_pad``: how the context image extends past the slice (``reflect``: mirrored, as
    the dense read-out pads the slices; ``zero``: nothing there, so the edge stays visible).
    """
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train")
    dm = instantiate(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    data = {}
    for split in ("train", "val", "test"):
        volumes = []
        for x, labels in zip(dm.splits[split].slices, dm.splits[split].labels, strict=True):
            truth = class_map(labels, dm.classes).astype(bool)
            padded = np.pad(x, ((0, 0), (HALF, HALF), (HALF, HALF)), mode="reflect")
            context = None
            if mode == "context":
                smooth = ndi.gaussian_filter(x, (0, dilation / 2, dilation / 2))
                pad = dilation * HALF
                width = ((0, 0), (pad, pad), (pad, pad))
                context = np.pad(
                    smooth, width, mode="reflect" if context_pad == "reflect" else "constant"
                )
            volumes.append((x, truth, padded, context))
        data[split] = volumes
    return data, cfg


def training_centres(volumes: list) -> tuple[np.ndarray, np.ndarray]:
    """(tumour, background) centres as rows (volume, slice, row, column)."""
    pos, neg = [], []
    for v, (x, truth, _, _) in enumerate(volumes):
        s, y, c = np.meshgrid(np.arange(x.shape[0]), np.arange(HALF, x.shape[1] - HALF, 2),
                              np.arange(HALF, x.shape[2] - HALF, 2), indexing="ij")  # fmt: skip
        s, y, c = s.ravel(), y.ravel(), c.ravel()
        rows = np.stack([np.full_like(s, v), s, y, c], 1)
        label = truth[s, y, c]
        pos.append(rows[label])
        neg.append(rows[~label])
    return np.concatenate(pos), np.concatenate(neg)


class PatchCutter:
    """Cuts the (centre and context) patches of rows (volume, slice, row, column)."""

    def __init__(self, volumes: list, dilation: int):
        self.padded = np.stack([v[2] for v in volumes])
        contexts = [v[3] for v in volumes]
        self.context = None if contexts[0] is None else np.stack(contexts)
        self.dilation, self.offsets = dilation, np.arange(N)

    def __call__(self, rows: np.ndarray) -> torch.Tensor:
        v, s, y, x = (rows[:, k][:, None, None] for k in range(4))
        i, j = self.offsets[None, :, None], self.offsets[None, None, :]
        out = [torch.from_numpy(self.padded[v, s, y + i, x + j].astype(np.float32))]
        if self.context is not None:
            d = self.dilation
            out.append(
                torch.from_numpy(self.context[v, s, y + d * i, x + d * j].astype(np.float32))
            )
        return torch.cat([t.reshape(len(rows), -1) for t in out], 1)


def augment(x: torch.Tensor, ranges: DictConfig) -> torch.Tensor:
    """``data.augment``'s gamma, scale and noise, drawn as ``penn.datamodule.augment_patches``
    draws them (without its final clip to [0, 1])."""
    gamma = torch.empty(len(x), 1).uniform_(*np.log(ranges.gamma)).exp()
    scale = torch.empty(len(x), 1).uniform_(*ranges.scale)
    return (x.clamp(min=0) ** gamma) * scale + ranges.noise_std * torch.randn_like(x)


def train(net: nn.Module, cut: PatchCutter, pos: np.ndarray, neg: np.ndarray,
          rng: np.random.Generator, cfg: DictConfig) -> None:  # fmt: skip
    mining = cfg.model.finetune.hard_negatives
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    n_neg = int(len(pos) * 0.6 / 0.4)
    for epoch in range(cfg.model.finetune.epochs):
        start = time.time()
        if epoch > 0:
            pool = neg[rng.choice(len(neg), mining.pool, replace=False)]
            with torch.no_grad():
                scores = torch.cat(
                    [net(cut(pool[i : i + 8192])) for i in range(0, len(pool), 8192)]
                )
            k = int(mining.fraction * n_neg)
            hard = pool[np.argsort(-scores[:, 0].numpy())[:k]]
            negatives = np.concatenate([hard, neg[rng.choice(len(neg), n_neg - k, replace=False)]])
        else:
            negatives = neg[rng.choice(len(neg), n_neg, replace=False)]
        rows = np.concatenate([pos, negatives])
        target = np.concatenate([np.ones(len(pos)), np.zeros(len(negatives))]).astype(np.float32)
        order = rng.permutation(len(rows))
        rows, target = rows[order], target[order]
        total = 0.0
        for i in range(0, len(rows), BATCH):
            y = torch.from_numpy(target[i : i + BATCH])
            loss = F.binary_cross_entropy_with_logits(
                net(augment(cut(rows[i : i + BATCH]), cfg.data.augment))[:, 0], y
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(y)
        print(
            f"epoch {epoch}: loss {total / len(rows):.4f}, {time.time() - start:.0f} s", flush=True
        )


@torch.no_grad()
def dense_probabilities(net: nn.Sequential, volume: tuple, dilation: int) -> np.ndarray:
    """(S, H, W) probabilities: the patch grid at stride 2 as convolutions, centre read-out."""
    x, _, padded, context = volume
    first = net[0].weight
    probs = []
    for s in range(x.shape[0]):
        image = torch.from_numpy(np.ascontiguousarray(padded[s]))[None, None]
        z = F.conv2d(image, first[:, : N * N].reshape(-1, 1, N, N), net[0].bias, stride=2)
        if context is not None:
            ctx = torch.from_numpy(np.ascontiguousarray(context[s]))[None, None]
            weight = first[:, N * N :].reshape(-1, 1, N, N)
            zc = F.conv2d(ctx, weight, None, stride=2, dilation=dilation)
            z = z + zc[..., : z.shape[-2], : z.shape[-1]]
        h = torch.sigmoid(z)[0].permute(1, 2, 0)
        for layer in list(net)[2:]:
            h = layer(h)
        grid = torch.sigmoid(h[..., 0])  # grid point k is pixel 2k
        size = (2 * grid.shape[0] - 1, 2 * grid.shape[1] - 1)
        p = F.interpolate(grid[None, None], size=size, mode="bilinear", align_corners=True)
        probs.append(ndi.gaussian_filter(p[0, 0, : x.shape[1], : x.shape[2]].numpy(), 2.0))
    return np.stack(probs)


def dice_scores(probs: list, truths: list, threshold: float, min_size: int):
    """(mean per volume, pooled, per volume) Dice; NaN for a volume without either."""
    per, counts = [], np.zeros(3)
    for p, t in zip(probs, truths, strict=True):
        m = postprocess((p >= threshold).astype(np.uint8), min_size, None, 0).astype(bool)
        c = np.array([(m & t).sum(), (m & ~t).sum(), (~m & t).sum()], float)
        per.append(np.nan if c.sum() == 0 else 2 * c[0] / (2 * c[0] + c[1] + c[2]))
        counts += c
    return (
        float(np.nanmean(per)),
        float(2 * counts[0] / (2 * counts[0] + counts[1] + counts[2])),
        per,
    )


def choose_and_score(probs: dict, truths: dict) -> dict:
    """Threshold and min_size chosen on pooled validation Dice; the test split scored with them."""
    best = None
    for min_size in (0, 250, 1000):
        for threshold in np.arange(0.05, 0.995, 0.01):
            _, pooled, _ = dice_scores(probs["val"], truths["val"], threshold, min_size)
            if best is None or pooled > best[0] + 1e-12:
                best = (pooled, float(threshold), min_size)
    _, threshold, min_size = best
    val = dice_scores(probs["val"], truths["val"], threshold, min_size)
    test = dice_scores(probs["test"], truths["test"], threshold, min_size)
    return {"threshold": round(threshold, 2), "min_size": min_size,
            "val_pooled": val[1], "val_mean": val[0], "val_per_volume": val[2],
            "test_mean": test[0], "test_pooled": test[1], "test_per_volume": test[2]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("single", "context"))
    parser.add_argument("--dilation", type=int, default=4)
    parser.add_argument("--context-pad", choices=("reflect", "zero"), default="reflect")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("outputs/context_patch_check"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    data, cfg = load_splits(args.mode, args.dilation, args.context_pad)
    pos, neg = training_centres(data["train"])
    print(f"training centres: {len(pos)} tumour, {len(neg)} background", flush=True)
    n_in = N * N * (2 if args.mode == "context" else 1)
    net = nn.Sequential(nn.Linear(n_in, 200), nn.Sigmoid(), nn.Linear(200, 200), nn.Sigmoid(),
                        nn.Linear(200, 200), nn.Sigmoid(), nn.Linear(200, 1))  # fmt: skip
    train(net, PatchCutter(data["train"], args.dilation), pos, neg, rng, cfg)
    probs = {
        s: [dense_probabilities(net, v, args.dilation) for v in data[s]] for s in ("val", "test")
    }
    truths = {s: [v[1] for v in data[s]] for s in ("val", "test")}
    result = {"mode": args.mode, "dilation": args.dilation, "seed": args.seed}
    if args.mode == "context":
        result["context_pad"] = args.context_pad
    result |= choose_and_score(probs, truths)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "context_patch_check.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    per = " ".join("–" if np.isnan(d) else f"{100 * d:.0f}" for d in result["test_per_volume"])
    print("| mode | seed | val pooled | val mean | test mean | test pooled | test per volume |")
    print(f"| {args.mode} | {args.seed} | {100 * result['val_pooled']:.1f} | "
          f"{100 * result['val_mean']:.1f} | {100 * result['test_mean']:.1f} | "
          f"{100 * result['test_pooled']:.1f} | {per} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
