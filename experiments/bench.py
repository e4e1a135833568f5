"""Speed benchmarks: dense segmentation, volumes, the patch stream and training.

    make bench                                       # = python experiments/bench.py
    python experiments/bench.py slice.strides=[4] sections=[slice,volume]

Settings: conf/bench.yaml (any key as key=value). Every figure is measured in this one run beside
its reference, as a ratio: slice times against a patch-by-patch baseline (unfold + MLP) and
against the machine's matrix-product rate (a large torch.mm timed in the same run); the patch
stream against the rate at which fine-tuning consumes patches. Prints Markdown tables, writes
``out`` (docs/results/bench.json) and ends with one JSON line of the headline figures.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from penn.inference.dense import segment_slices
from penn.models.sparse_ae import StackedSparseAutoencoder

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
NO_GPU = (
    "no GPU on this machine: every figure is CPU-only; the same code segments on CUDA (the "
    "convolutional twin, channels-last) and trains with trainer=gpu when a GPU is present"
)


# ---------------------------------------------------------------- helpers


def load_config(argv: list[str]) -> DictConfig:
    """conf/bench.yaml merged with ``key=value`` overrides."""
    return OmegaConf.merge(OmegaConf.load(CONF / "bench.yaml"), OmegaConf.from_dotlist(argv))


def best_time(fn, repeats: int, device: torch.device) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call (seconds)."""
    fn()
    times = []
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return min(times)


def matmul_rate(size: int, repeats: int, device: torch.device) -> float:
    """FLOP/s of a square float32 ``torch.mm`` of side ``size`` (best of ``repeats``)."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device)
    b = torch.randn(size, size, generator=gen).to(device)
    with torch.inference_mode():
        seconds = best_time(lambda: torch.mm(a, b), repeats, device)
    return 2 * size**3 / seconds


def patch_flops(patch_size: int, n_layers: int, n_nodes: int, n_outputs: int) -> int:
    """Multiply-adds x 2 of one patch through the network (biases and sigmoids not counted)."""
    widths = [patch_size * patch_size] + [n_nodes] * n_layers + [n_outputs]
    return 2 * sum(a * b for a, b in zip(widths[:-1], widths[1:], strict=True))


def grid_size(length: int, patch_size: int, stride: int) -> int:
    """Patches along one axis of segment_slices' grid (the slice padded to fit the stride)."""
    padded = max(length, patch_size)
    padded += (-(padded - patch_size)) % stride
    return (padded - patch_size) // stride + 1


def make_net(network: DictConfig, seed: int) -> StackedSparseAutoencoder:
    torch.manual_seed(seed)
    return StackedSparseAutoencoder(**network).eval()


def machine() -> dict:
    """The machine the numbers come from."""
    model = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [
            ln.split(":", 1)[1].strip()
            for ln in cpuinfo.read_text().splitlines()
            if ln.startswith("model name")
        ]
        model = names[0] if names else model
    gpu = torch.cuda.is_available()
    return {
        "cpu": model,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(0) if gpu else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if gpu else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if gpu else None,
        "device": "cuda" if gpu else "cpu",
        "note": None if gpu else NO_GPU,
    }


def markdown(rows: list[dict], columns: list[tuple[str, str, str]]) -> str:
    """A Markdown table of ``rows`` with (key, header, format) columns."""
    lines = ["| " + " | ".join(h for _, h, _ in columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for key, _, fmt in columns:
            value = row.get(key)
            cells.append("—" if value is None else format(value, fmt))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- a. one slice


def bench_slices(cfg: DictConfig, device: torch.device, rate: float) -> list[dict]:
    """Dense segmentation of one slice per stride, beside its references in the same process.

    The matrix-product rate is measured again right before each stride (``rate_gflops``, whose
    ratio is ``efficiency_adjacent``) and once more after the last; ``efficiency`` takes the
    highest rate seen in the run, so that a busy spell on a shared machine cannot inflate it.
    """
    s = cfg.slice
    net = make_net(cfg.network, cfg.seed).to(device)
    height, width = s.shape
    image = np.random.default_rng(cfg.seed).random((1, height, width), dtype=np.float32)
    per_patch = patch_flops(**cfg.network)
    # auto is rows on a CPU and fcn_stacked on a GPU; fcn (the one-channel twin) for comparison
    engines = ["auto", "fcn"]
    rows = []
    for stride in s.strides:
        positions = grid_size(height, cfg.network.patch_size, stride) * grid_size(
            width, cfg.network.patch_size, stride
        )
        flops = positions * per_patch
        adjacent = matmul_rate(cfg.matmul.size, cfg.matmul.repeats, device)
        times = {}
        for engine in engines + ["unfold"]:
            repeats = s.repeats if engine == "auto" else s.baseline_repeats
            times[engine] = best_time(
                lambda e=engine, st=stride: segment_slices(
                    net, image, st, 1, device, engine=e, chunk_positions=s.chunk_positions
                ),
                repeats,
                device,
            )
        seconds = times["auto"]
        row = {
            "stride": stride,
            "positions": positions,
            "gflop": flops / 1e9,
            "ms": 1e3 * seconds,
            "rate_gflops": adjacent / 1e9,
            "efficiency_adjacent": flops / adjacent / seconds,
            "baseline_ms": 1e3 * times["unfold"],
            "speedup_vs_baseline": times["unfold"] / seconds,
            "engines_ms": {e: 1e3 * t for e, t in times.items()},
        }
        if device.type == "cuda":
            row.update(gpu_throughput(net, cfg, device, stride))
        rows.append(row)
        engines_ms = {e: round(v, 1) for e, v in row["engines_ms"].items()}
        log.info(
            "stride %d: %.1f ms (efficiency %.2f against the rate just before), engines %s",
            stride,
            row["ms"],
            row["efficiency_adjacent"],
            engines_ms,
        )
    best = max(
        [rate, matmul_rate(cfg.matmul.size, cfg.matmul.repeats, device)]
        + [row["rate_gflops"] * 1e9 for row in rows]
    )
    for row in rows:
        flops, seconds = row["gflop"] * 1e9, row["ms"] / 1e3
        row.update(
            best_rate_gflops=best / 1e9,
            floor_ms=1e3 * flops / best,
            efficiency=flops / best / seconds,
        )
    return rows


def gpu_throughput(net, cfg: DictConfig, device: torch.device, stride: int) -> dict:
    """Slices per second on a GPU, host array in and out, timed end to end (upload, network,
    read-out, download into numpy).

    ``slice.gpu_batch`` slices in one call and one batch: float32 (convolutions in TF32 where
    cuDNN allows it, PyTorch's default), bfloat16 autocast, and bfloat16 with the batch copied
    through page-locked memory. Then a scan-like stack of ``slice.gpu_stack`` slices in batches
    of ``gpu_batch``, pixel maps only (as ``penn.predict`` asks): there each batch's copy back
    overlaps the next batch's network.
    """
    s = cfg.slice
    rng = np.random.default_rng(cfg.seed)
    images = rng.random((max(s.gpu_batch, s.gpu_stack), *s.shape), dtype=np.float32)
    out = {"gpu_batch": s.gpu_batch, "gpu_stack": s.gpu_stack}
    # named by what they do, whatever segment_slices' defaults: unpinned, then pinned batches
    runs = [
        ("fp32", None, False, s.gpu_batch),
        ("bf16", torch.bfloat16, False, s.gpu_batch),
        ("bf16_pinned", torch.bfloat16, True, s.gpu_batch),  # page-locked copy of each batch
        ("fp32_stack", None, True, s.gpu_stack),
        ("bf16_stack", torch.bfloat16, True, s.gpu_stack),
    ]
    for name, dtype, pinned, count in runs:
        stack = name.endswith("_stack")
        seconds = best_time(
            lambda d=dtype, p=pinned, c=count, k=stack: segment_slices(
                net,
                images[:c],
                stride,
                s.gpu_batch,
                device,
                autocast_dtype=d,
                pin_memory=p,
                patches=not k,
            ),
            s.repeats,
            device,
        )
        out[f"gpu_{name}_slices_s"] = count / seconds
    log.info(
        "stride %d on the GPU: %.0f slices/s float32, %.0f bfloat16 (batches of %d); "
        "stacks of %d: %.0f float32, %.0f bfloat16",
        stride,
        out["gpu_fp32_slices_s"],
        out["gpu_bf16_slices_s"],
        s.gpu_batch,
        s.gpu_stack,
        out["gpu_fp32_stack_slices_s"],
        out["gpu_bf16_stack_slices_s"],
    )
    return out


# ---------------------------------------------------------------- b. whole volumes

VOLUME_CHILD = """
import json, sys, time
import numpy as np, torch
from penn.inference.dense import segment_slices
from penn.postprocess import decide
from penn.models.sparse_ae import StackedSparseAutoencoder
def hwm():  # this process's peak resident memory in MB (ru_maxrss survives exec on Linux)
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
a = json.loads(sys.argv[1])
if a["threads"]:
    torch.set_num_threads(a["threads"])
torch.manual_seed(a["seed"])
net = StackedSparseAutoencoder(**a["network"]).eval()
device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
volume = np.random.default_rng(a["seed"]).random(a["shape"], dtype=np.float32)
segment_slices(net, volume[:1], a["stride"], 1, device)  # warm-up
before = hwm()
start = time.perf_counter()
probs, _ = segment_slices(net, volume, a["stride"], a["batch_slices"], device)
labels = decide(probs, 0.5)
seconds = time.perf_counter() - start
print(json.dumps({"seconds": seconds, "peak_rss_mb": hwm(), "rss_before_mb": before,
                  "output_mb": (probs.nbytes + labels.nbytes) / 2**20}))
"""


def bench_volume(cfg: DictConfig, shape: list[int]) -> dict:
    """Seconds and peak resident memory of one volume, segmented in a fresh process."""
    args = {
        "shape": list(shape),
        "stride": cfg.volume.stride,
        "batch_slices": cfg.volume.batch_slices,
        "network": OmegaConf.to_container(cfg.network),
        "seed": cfg.seed,
        "threads": cfg.threads,
    }
    done = subprocess.run(
        [sys.executable, "-c", VOLUME_CHILD, json.dumps(args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"volume benchmark {shape} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    slices = shape[0]
    row = {"shape": "x".join(map(str, shape)), "stride": cfg.volume.stride, **result}
    row["s_per_slice"] = result["seconds"] / slices
    row["input_mb"] = np.prod(shape) * 4 / 2**20
    log.info(
        "volume %s: %.1f s, peak RSS %.0f MB", row["shape"], row["seconds"], row["peak_rss_mb"]
    )
    return row


# ---------------------------------------------------------------- c, d. stream and training


def compose_train(cfg: DictConfig, extra: list[str] = ()) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=[*cfg.train_overrides, *extra])


def datamodule(train_cfg: DictConfig):
    from hydra.utils import instantiate

    dm = instantiate(train_cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def bench_stream(cfg: DictConfig, dm) -> dict:
    """Balanced training patches per second delivered by the DataModule's train loader."""
    loader = dm.train_dataloader()
    warmup, wanted = cfg.stream.warmup_batches, cfg.stream.batches
    count, seen, start = 0, 0, None
    while seen < warmup + wanted:
        for x, _ in loader:
            seen += 1
            if seen == warmup:
                start = time.perf_counter()
            elif seen > warmup:
                count += len(x)
            if seen >= warmup + wanted:
                break
    seconds = time.perf_counter() - start
    result = {
        "num_workers": loader.num_workers,
        "batch_size": loader.batch_size,
        "patches_s": count / seconds,
        "patches_per_epoch": len(loader.sampler),
        "batches": wanted,
    }
    log.info(
        "patch stream: %.0f patches/s on %d workers", result["patches_s"], result["num_workers"]
    )
    return result


class Clock(L.Callback):
    """Lightning callback: the start time and size of every training batch."""

    def __init__(self):
        self.times, self.sizes = [], []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.times.append(time.perf_counter())
        self.sizes.append(len(batch[0]))

    def on_train_epoch_end(self, trainer, module):
        self.times.append(time.perf_counter())


def lightning_rate(train_cfg: DictConfig, module, loader, batches: int, warmup: int) -> float:
    """Patches per second of ``Trainer.fit`` over ``batches`` batches after ``warmup``."""
    from hydra.utils import instantiate

    clock = Clock()
    trainer = instantiate(
        train_cfg.trainer,
        max_epochs=1,
        limit_train_batches=warmup + batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        callbacks=[clock],
    )
    trainer.fit(module, train_dataloaders=loader)
    return sum(clock.sizes[warmup:]) / (clock.times[-1] - clock.times[warmup])


def bench_training(cfg: DictConfig, train_cfg: DictConfig, dm) -> dict:
    """Pretraining and fine-tuning throughput, from memory (consumption) and from the loader."""
    from hydra.utils import instantiate

    from penn.lit.finetune import FinetuneModule
    from penn.lit.pretrain import PretrainModule

    warmup, batches = cfg.training.warmup_batches, cfg.training.batches
    torch.manual_seed(cfg.seed)
    net = instantiate(train_cfg.model.net, n_outputs=dm.n_outputs)
    loader = dm.train_dataloader()
    memory = []
    for x, y in loader:  # the same batches, held in memory: the model's own consumption rate
        memory.append((x, y))
        if len(memory) == warmup + batches:
            break
    while len(memory) < warmup + batches:
        memory = memory + memory[: warmup + batches - len(memory)]
    in_memory = torch.utils.data.DataLoader(memory, batch_size=None)

    def finetune_module():
        opt = instantiate(train_cfg.model.finetune.optimizer)
        return FinetuneModule(net, dm.n_classes, optimizer=opt)

    def pretrain_module(stage: int):
        opt = instantiate(train_cfg.model.pretrain.optimizer)
        return PretrainModule(net, stage, optimizer=opt, **train_cfg.model.sae)

    def rates() -> dict:
        out = {}
        for stage in range(len(net.stages)):
            out[f"pretrain_stage{stage + 1}_patches_s"] = lightning_rate(
                train_cfg, pretrain_module(stage), loader, batches, warmup
            )
        out["finetune_consume_patches_s"] = lightning_rate(
            train_cfg, finetune_module(), in_memory, batches, warmup
        )
        out["finetune_patches_s"] = lightning_rate(
            train_cfg, finetune_module(), loader, batches, warmup
        )
        out["finetune_step_patches_s"] = _plain_steps(net, memory, warmup, train_cfg)
        return out

    result: dict = {"batch_size": len(memory[0][0]), "batches": batches, "runs": []}
    default = torch.get_num_threads()
    for threads in cfg.training.threads:
        torch.set_num_threads(int(threads or default))
        try:
            run = {"threads": torch.get_num_threads(), **rates()}
        finally:
            torch.set_num_threads(default)
        result["runs"].append(run)
        log.info("training: %s", {k: round(v) for k, v in run.items()})
    result.update({k: v for k, v in result["runs"][0].items() if k.endswith("_patches_s")})
    return result


def _plain_steps(net, batches, warmup: int, train_cfg: DictConfig) -> float:
    """Patches per second of bare forward + backward + optimizer steps (no Lightning).

    On the GPU when the trainer config asks for one (batches moved there inside the timing).
    """
    import torch.nn.functional as F
    from hydra.utils import instantiate

    gpu = torch.cuda.is_available() and train_cfg.trainer.accelerator in ("gpu", "cuda", "auto")
    device = torch.device("cuda" if gpu else "cpu")
    net.to(device).train()
    optimizer = instantiate(train_cfg.model.finetune.optimizer)(net.parameters())
    count, start = 0, None
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            if gpu:
                torch.cuda.synchronize()
            start = time.perf_counter()
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        optimizer.zero_grad()
        logits = net(x)
        if logits.shape[1] == 1:
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], y.float())
        else:
            loss = F.cross_entropy(logits, y)
        loss.backward()
        optimizer.step()
        count += len(x) if i >= warmup else 0
    if gpu:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    net.cpu()
    return count / seconds


def bench_protocol(cfg: DictConfig) -> dict:
    """Wall time of the default protocol, ``python -m penn.run``, in a fresh process.

    Stopped after ``protocol.timeout_s``; the result then says so (seconds is None).
    """
    shown = ["python", "-m", "penn.run", *cfg.train_overrides, *cfg.protocol.overrides]
    result = {"command": shlex.join(shown), "seconds": None, "timeout_s": cfg.protocol.timeout_s}
    with tempfile.TemporaryDirectory(prefix="penn-bench-") as tmp:
        overrides = [*cfg.train_overrides, *cfg.protocol.overrides, f"hydra.run.dir={tmp}/run"]
        command = [sys.executable, "-m", "penn.run", *overrides]
        start = time.perf_counter()
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                capture_output=True,
                text=True,
                check=False,
                timeout=cfg.protocol.timeout_s,
            )
        except subprocess.TimeoutExpired:
            log.warning("default protocol stopped after %s s", cfg.protocol.timeout_s)
            return result
        result["seconds"] = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"{shlex.join(command)} failed:\n{done.stderr[-3000:]}")
    log.info("default protocol: %.0f s", result["seconds"])
    return result


# ---------------------------------------------------------------- report


GPU_SLICE_RUNS = tuple(
    f"gpu_{name}_slices_s" for name in ("fp32", "bf16", "bf16_pinned", "fp32_stack", "bf16_stack")
)


def headline(results: dict, cfg: DictConfig) -> dict:
    """The figures the issue's targets name, with the targets beside them."""
    out: dict = {"device": results["machine"]["device"], "gpu": results["machine"]["gpu"]}
    out["matmul_gflops"] = results.get("matmul_gflops")
    slices = {row["stride"]: row for row in results.get("slice", [])}
    for stride, row in slices.items():
        out[f"slice_stride{stride}_s"] = row["ms"] / 1e3
        out[f"efficiency_stride{stride}"] = row["efficiency"]
        out[f"speedup_vs_patch_by_patch_stride{stride}"] = row["speedup_vs_baseline"]
        for key in GPU_SLICE_RUNS:
            if key in row:
                out[f"{key[:-2]}_stride{stride}_s"] = row[key]
    small = [row["efficiency"] for s, row in slices.items() if s <= 4]
    out["min_efficiency_stride_le4"] = min(small) if small else None
    for row in results.get("volume", []):
        out[f"volume_{row['shape']}_s"] = row["seconds"]
        out[f"volume_{row['shape']}_peak_rss_gb"] = row["peak_rss_mb"] / 1024
    if "stream" in results:
        out["stream_patches_s"] = results["stream"]["patches_s"]
    if "training" in results:
        # the stream must keep up with the fastest consumption measured (any thread setting)
        runs = results["training"]["runs"]
        fastest = max(runs, key=lambda run: run["finetune_consume_patches_s"])
        consume = fastest["finetune_consume_patches_s"]
        out["finetune_consume_patches_s"] = consume
        out["finetune_consume_threads"] = fastest["threads"]
        out["finetune_patches_s"] = max(run["finetune_patches_s"] for run in runs)
        if "stream" in results:
            out["stream_ratio"] = results["stream"]["patches_s"] / consume
    if results.get("protocol", {}).get("seconds"):
        out["protocol_min"] = results["protocol"]["seconds"] / 60
    out["load_avg_1min_before_after"] = results["load_before_after"]
    return out


def check_targets(head: dict, cfg: DictConfig) -> dict:
    """Met (True), missed (False) or not measured (None) per target, with the measured value."""
    t = cfg.targets
    big = next(
        (k for k in head if k.startswith("volume_200x512x512") and k.endswith("rss_gb")), None
    )
    checks = {
        "slice_stride4_s": (head.get("slice_stride4_s"), t.slice_stride4_s, "<="),
        "slice_stride1_s": (head.get("slice_stride1_s"), t.slice_stride1_s, "<="),
        "efficiency_stride_le4": (head.get("min_efficiency_stride_le4"), t.efficiency, ">="),
        "volume_rss_gb": (head.get(big) if big else None, t.volume_rss_gb, "<="),
        "stream_ratio": (head.get("stream_ratio"), t.stream_ratio, ">="),
        "stream_patches_s": (head.get("stream_patches_s"), t.stream_patches_s, ">="),
    }
    if head.get("device") == "cuda":  # the GPU target: the fastest way measured
        fast = [head.get(f"{key[:-2]}_stride1_s") for key in GPU_SLICE_RUNS]
        fast = [v for v in fast if v is not None]
        checks["gpu_slices_s_stride1"] = (max(fast) if fast else None, t.gpu_slices_s, ">=")
    out = {}
    for name, (value, target, op) in checks.items():
        met = None if value is None else (value <= target if op == "<=" else value >= target)
        out[name] = {"value": value, "target": f"{op} {target}", "met": met}
    return out


TRAINING_LABELS = {
    "pretrain_stage1_patches_s": "pretraining stage 1 (Lightning, from the loader)",
    "pretrain_stage2_patches_s": "pretraining stage 2 (Lightning, from the loader)",
    "pretrain_stage3_patches_s": "pretraining stage 3 (Lightning, from the loader)",
    "finetune_consume_patches_s": "fine-tuning consumption (Lightning, batches in memory)",
    "finetune_patches_s": "fine-tuning (Lightning, from the loader)",
    "finetune_step_patches_s": "fine-tuning bare steps (no Lightning, in memory)",
}


def print_tables(results: dict, cfg: DictConfig) -> None:
    m = results["machine"]
    print(
        f"\nmachine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} "
        f"({m['torch_threads']} threads), GPU: {m['gpu'] or 'none'}; "
        f"matrix-product rate (best in the run) {results['matmul_gflops']:.0f} GFLOP/s; "
        f"load average before/after {results['load_before_after']}"
    )
    if "slice" in results:
        rows = [
            dict(r, **{f"e_{k}": v for k, v in r["engines_ms"].items()}) for r in results["slice"]
        ]
        h, w = cfg.slice.shape
        print(
            f"\na. one {h} x {w} slice, network {cfg.network.patch_size}^2-"
            f"{cfg.network.n_layers}x{cfg.network.n_nodes} (paper: about {cfg.paper.slice_s} s)"
        )
        columns = [
            ("stride", "stride", "d"),
            ("gflop", "GFLOP", ".2f"),
            ("ms", "ms", ".1f"),
            ("floor_ms", "floor ms (FLOP / rate)", ".1f"),
            ("efficiency", "efficiency", ".2f"),
            ("efficiency_adjacent", "eff. (adjacent rate)", ".2f"),
            ("baseline_ms", "patch-by-patch ms", ".0f"),
            ("speedup_vs_baseline", "speed-up", ".1f"),
        ]
        if "gpu_fp32_slices_s" in rows[0]:
            batch = rows[0]["gpu_batch"]
            columns += [
                ("gpu_fp32_slices_s", f"GPU slices/s fp32 (x{batch})", ".0f"),
                ("gpu_bf16_slices_s", "GPU slices/s bf16", ".0f"),
                ("gpu_bf16_pinned_slices_s", "bf16, pinned per batch", ".0f"),
                ("gpu_fp32_stack_slices_s", f"fp32, stack of {rows[0]['gpu_stack']}", ".0f"),
                ("gpu_bf16_stack_slices_s", "bf16, stack", ".0f"),
            ]
        labels = {"fcn": "conv twin ms"}
        columns += [(f"e_{e}", labels[e], ".1f") for e in rows[0]["engines_ms"] if e in labels]
        print(markdown(rows, columns))
    if "volume" in results:
        print(f"\nb. whole volumes at stride {cfg.volume.stride} (fresh process each)")
        print(
            markdown(
                results["volume"],
                [
                    ("shape", "slices x H x W", "s"),
                    ("seconds", "s", ".1f"),
                    ("s_per_slice", "s / slice", ".3f"),
                    ("peak_rss_mb", "peak RSS MB", ".0f"),
                    ("rss_before_mb", "RSS before MB", ".0f"),
                    ("input_mb", "input MB", ".0f"),
                    ("output_mb", "output MB", ".0f"),
                ],
            )
        )
    if "stream" in results:
        st = results["stream"]
        print(
            f"\nc. patch stream: {st['patches_s']:.0f} balanced patches/s from the DataModule on "
            f"{st['num_workers']} workers (batches of {st['batch_size']})"
        )
    runs = results.get("training", {}).get("runs", [])
    if runs:
        print("\nd. training throughput, patches/s, per torch thread setting")
        rows = []
        for key in (k for k in runs[0] if k.endswith("_patches_s")):
            rows.append(
                {
                    "what": TRAINING_LABELS.get(key, key),
                    **{f"t{i}": run[key] for i, run in enumerate(runs)},
                }
            )
        columns = [("what", "what", "s")]
        columns += [(f"t{i}", f"{run['threads']} threads", ".0f") for i, run in enumerate(runs)]
        print(markdown(rows, columns))
    if "protocol" in results:
        p = results["protocol"]
        took = (
            f"{p['seconds'] / 60:.1f} min"
            if p["seconds"]
            else f"not finished within {p['timeout_s']} s"
        )
        print(
            f"\ndefault protocol `{p['command']}`: {took} "
            f"(paper: {cfg.paper.training_h} h of training)"
        )
    print("\ntargets:")
    for name, check in results["targets"].items():
        value = check["value"]
        shown = "—" if value is None else f"{value:.3g}"
        print(
            f"  {name}: {shown} (target {check['target']}) "
            f"{ {True: 'met', False: 'MISSED', None: 'not measured'}[check['met']] }"
        )


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = load_config(sys.argv[1:] if argv is None else list(argv))
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    sections = set(cfg.sections)
    unknown = sections - {"slice", "volume", "stream", "training", "protocol"}
    if unknown:
        raise ValueError(f"unknown sections {sorted(unknown)}")
    load_before = os.getloadavg()[0]
    results: dict = {"machine": machine(), "config": OmegaConf.to_container(cfg)}
    started = time.perf_counter()
    rate = matmul_rate(cfg.matmul.size, cfg.matmul.repeats, device)
    results["matmul_gflops"] = rate / 1e9
    log.info("matrix-product rate: %.0f GFLOP/s", rate / 1e9)
    if "slice" in sections:
        results["slice"] = bench_slices(cfg, device, rate)
        results["matmul_gflops"] = results["slice"][0]["best_rate_gflops"]
    if "volume" in sections:
        results["volume"] = [bench_volume(cfg, shape) for shape in cfg.volume.shapes]
    if sections & {"stream", "training"}:
        # the host DataLoader stream (worker processes, one optimizer step per batch), the one
        # a multi-process (DDP) run reads; single-device runs cut their batches on the device
        host = ["data.loader.on_device=false", "data.loader.steps_per_batch=1"]
        train_cfg = compose_train(cfg, [*host, f"data.loader.num_workers={cfg.stream.num_workers}"])
        dm = datamodule(train_cfg)
        if "stream" in sections:
            results["stream"] = bench_stream(cfg, dm)
        if "training" in sections:
            results["training"] = bench_training(cfg, train_cfg, dm)
    if "protocol" in sections:
        results["protocol"] = bench_protocol(cfg)
    results["bench_seconds"] = time.perf_counter() - started
    results["load_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]
    results["peak_rss_mb_bench_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results["command"] = shlex.join(
        ["python", "experiments/bench.py", *(sys.argv[1:] if argv is None else argv)]
    )
    head = headline(results, cfg)
    results["targets"] = check_targets(head, cfg)
    results["headline"] = head
    out = Path(cfg.out)
    out = out if out.is_absolute() else ROOT / out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print_tables(results, cfg)
    print(f"\nwrote {out}")
    print(json.dumps(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
