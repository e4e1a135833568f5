"""Where one 512 x 512 slice's time goes on the CPU: the network engine against the whole call.

    python experiments/cpu_slice_breakdown.py [--strides 2 4] [--repeats 5]

For each stride: the best time of ``segment_slices`` (pad, network, read-out, copy out), of the
network engine alone (``rows_conv``, the CPU default) on the padded slice, the matrix-product
rate measured just before, and the floor FLOP / rate. ``efficiency`` in ``make bench`` is floor
over the whole call (with the best rate of its run), so the gap between the two times is what
the read-out and copies cost it. Prints one JSON line per stride.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import best_time, grid_size, matmul_rate, patch_flops  # noqa: E402

from penn.inference.dense import segment_slices
from penn.inference.engines import dense_logits as dense_logits
from penn.inference.readout import pad_amount as pad_amount
from penn.models.sparse_ae import StackedSparseAutoencoder  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strides", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    net = StackedSparseAutoencoder(patch_size=32, n_layers=3, n_nodes=200, n_outputs=1).eval()
    image = np.random.default_rng(0).random((1, 512, 512), dtype=np.float32)
    cpu = torch.device("cpu")
    for stride in args.strides:
        engine = dense_logits(net, stride, cpu, "auto", 4096, 2048, None, None)
        extra = pad_amount(512, 32, stride)  # as segment_slices pads (mean read-out)
        x = F.pad(torch.from_numpy(image)[:, None], (0, extra, 0, extra), mode="reflect")
        with torch.inference_mode():
            whole = 1e3 * best_time(
                lambda s=stride: segment_slices(net, image, s, 1, cpu), args.repeats, cpu
            )
            network = 1e3 * best_time(lambda e=engine, xs=x: e(xs), args.repeats, cpu)
        rate = matmul_rate(4096, 3, cpu)  # as conf/bench.yaml's matmul, best of 3
        flops = grid_size(512, 32, stride) ** 2 * patch_flops(32, 3, 200, 1)
        floor = 1e3 * flops / rate
        print(
            json.dumps(
                {
                    "stride": stride,
                    "whole_ms": round(whole, 1),
                    "engine_ms": round(network, 1),
                    "rate_gflops": round(rate / 1e9),
                    "floor_ms": round(floor, 1),
                    "efficiency_whole": round(floor / whole, 2),
                    "efficiency_engine": round(floor / network, 2),
                }
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
