"""Where a training step's time goes on a GPU: the paper's fine-tuning step (batch 64).

    python experiments/gpu_step_probe.py [--steps 500] [--batch 64]

Patches per second of the same forward + backward + Adam step of the 1024-200-200-200 network,
(1) with the batch copied from host memory each step, (2) with it already on the GPU, (3) replayed
as one captured CUDA graph (no per-kernel launch cost), (4) through penn's StepGroup, which
replays --group steps as one graph per call (what ``data.loader.steps_per_batch`` runs inside
Lightning). The Lightning figure comes from ``make bench`` (training section). The gap between
(2) and (3) is the launch overhead per step.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from penn.lit.step_group import StepGroup
from penn.models.sparse_ae import StackedSparseAutoencoder


def rate(step, steps: int, batch: int) -> float:
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--group", type=int, default=32)
    args = parser.parse_args()
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=32, n_layers=3, n_nodes=200, n_outputs=1).to(device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3, capturable=True)
    host_x = torch.rand(args.batch, 1, 32, 32)
    host_y = (torch.rand(args.batch) < 0.4).float()
    x, y = host_x.to(device), host_y.to(device)

    def step(xb=None, yb=None):
        xb = x if xb is None else xb
        yb = y if yb is None else yb
        opt.zero_grad(set_to_none=False)
        loss = F.binary_cross_entropy_with_logits(net(xb)[:, 0], yb)
        loss.backward()
        opt.step()

    out = {"gpu": torch.cuda.get_device_name(0), "batch": args.batch}
    out["host_batch_patches_s"] = rate(
        lambda: step(host_x.to(device, non_blocking=True), host_y.to(device, non_blocking=True)),
        args.steps,
        args.batch,
    )
    out["device_batch_patches_s"] = rate(step, args.steps, args.batch)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):  # warm-up on a side stream before capture (PyTorch's recipe)
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step()
    out["cuda_graph_patches_s"] = rate(graph.replay, args.steps, args.batch)

    def group_step(xb, yb):
        return {"loss": F.binary_cross_entropy_with_logits(net(xb)[:, 0], yb)}

    group = StepGroup(group_step, opt, args.batch, args.group, use_graph=True)
    xs, ys = x.repeat(args.group, 1, 1, 1), y.repeat(args.group)
    calls = max(1, args.steps // args.group)
    out["step_group"] = args.group
    out["step_group_patches_s"] = rate(lambda: group(xs, ys), calls, args.group * args.batch)
    for key in ("host_batch", "device_batch", "cuda_graph", "step_group"):
        out[f"{key}_ms_per_step"] = 1e3 * args.batch / out[f"{key}_patches_s"]
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
