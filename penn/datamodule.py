"""The LightningDataModule: reads a raw dataset, splits it by volume, streams balanced patches.

Patches are never stored: the datasets hold the preprocessed slices of their volumes and a small
integer index (volume, slice, y, x) per patch, and cut each batch out of the slices on the fly.
"""

from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from penn.balance import class_counts, undersample
from penn.context import context_image, input_channels
from penn.io import DataError, Volume, list_cases, read_case, read_dataset_json
from penn.patches import border_pad, label_patches, pad_slices
from penn.phantom import PhantomSpec, write_phantom_dataset
from penn.preprocess import PLANE_AXIS, label_slices, preprocess_volume, to_slices

__all__ = [
    "SplitVolumes",
    "PatchBatch",
    "PatchLoader",
    "PatchDataset",
    "DevicePatchLoader",
    "augment_patches",
    "BalancedSampler",
    "PatchDataModule",
    "split_cases",
]

log = logging.getLogger(__name__)

try:  # widening the loader's pipe is Linux-only
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


@dataclass
class SplitVolumes:
    """The volumes of one split, preprocessed and sliced along the configured plane.

    Attributes:
        volumes: the volumes as read (image, labels, affine) for writing results.
        slices: per volume, (S, H, W) float32 preprocessed intensities.
        labels: per volume, (S, H, W) uint8 raw label values.
    """

    volumes: list[Volume]
    slices: list[np.ndarray]
    labels: list[np.ndarray]

    @property
    def names(self) -> list[str]:
        return [v.name for v in self.volumes]

    def slice_spacings(self, plane: str) -> list[float]:
        """Per volume, the distance in mm between its slices along ``plane``."""
        return [v.spacing[PLANE_AXIS[plane]] for v in self.volumes]


def split_cases(
    names: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    strata: list[bool] | None = None,
):
    """Splits case names into (train, val, test) by volume with a seeded permutation.

    Val and test each get at least one volume. With ``strata`` (e.g. "holds the target class"),
    each stratum is shuffled on its own and the strata are interleaved in proportion, so that
    the validation split used for calibration does not end up without a single target voxel.
    """
    if len(names) < 3:
        raise DataError(f"need at least 3 volumes for train/val/test splits, found {len(names)}")
    rng = np.random.default_rng(seed)
    strata = [False] * len(names) if strata is None else list(strata)
    rank = np.empty(len(names))
    for value in set(strata):
        members = np.flatnonzero(np.array(strata) == value)
        spread = (np.arange(len(members)) + rng.random()) / len(members)
        rank[members[rng.permutation(len(members))]] = spread
    order = np.argsort(rank, kind="stable")
    n_test = max(1, int(round(test_fraction * len(names))))
    n_val = max(1, int(round(val_fraction * len(names))))
    if n_test + n_val >= len(names):
        raise DataError(f"{len(names)} volumes are too few for val={n_val} and test={n_test}")
    picked = [names[i] for i in order]
    test, val, train = picked[:n_test], picked[n_test : n_test + n_val], picked[n_test + n_val :]
    return sorted(train), sorted(val), sorted(test)


def _identity(batch):
    return batch


def _rebuild_batch(patches: np.ndarray, targets: np.ndarray) -> PatchBatch:
    return PatchBatch((torch.from_numpy(patches), torch.from_numpy(targets)))


class PatchBatch(tuple):
    """A batch ``(patches (B, C, n, n) float32, targets (B,) int64)``: a plain tuple of tensors
    that crosses from a loader worker to the main process by value.

    Torch sends tensors between processes as shared-memory file descriptors, one handshake per
    tensor; for 64 small patches that handshake, not the cutting, capped the training stream near
    22,000 patches/s on 2 workers whatever their number (docs/results/bench.json). Pickled as
    NumPy arrays, a batch is a 256 kB copy through the worker's pipe.
    """

    __slots__ = ()

    def __reduce__(self):
        return _rebuild_batch, (self[0].numpy(), self[1].numpy())


class PatchLoader(DataLoader):
    """A DataLoader whose worker-to-main pipe holds several batches at once (Linux).

    A batch of 64 patches is 256 kB, four times the default 64 kB pipe, so every batch used to
    make its worker wait for the main process to drain the pipe in four rounds. Widening the
    pipe to ``pipe_bytes`` (within ``/proc/sys/fs/pipe-max-size``) lifted the 2-worker stream by
    about a quarter (docs/results/bench.json); where that is refused, nothing changes.
    """

    pipe_bytes = 1 << 20

    def _get_iterator(self):
        iterator = super()._get_iterator()
        queue = getattr(iterator, "_worker_result_queue", None)
        if queue is not None and fcntl is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
            try:
                fcntl.fcntl(queue._reader.fileno(), fcntl.F_SETPIPE_SZ, self.pipe_bytes)
            except (OSError, AttributeError) as err:
                log.debug("patch loader: pipe left at its default size (%s)", err)
        return iterator


class PatchDataset(Dataset):
    """Patches cut on demand from preprocessed slices; batches are gathered in one call.

    Args:
        slices: per volume, (S, H, W) float32.
        index: (N, 4) int32 rows of (volume, slice, y, x), the top-left corner of each patch.
        targets: (N,) uint8 patch classes.
        patch_size: patch side n.
        augment: intensity augmentation ranges (``gamma``, ``scale``, ``noise_std``) and
            ``flip`` (random mirroring of each patch in both in-plane axes), or None.
        pad: (before, after) pixels added to both in-plane axes of every slice
            (:func:`penn.patches.pad_slices`); ``index`` counts in the padded slices.
        context_dilation: d > 0: each patch also gets its context patch as a second channel
            (:mod:`penn.context`), cut from :meth:`context_volume`; 0: the patch alone.
    """

    def __init__(
        self,
        slices,
        index,
        targets,
        patch_size: int,
        augment: dict | None,
        pad: tuple[int, int] = (0, 0),
        context_dilation: int = 0,
    ):
        self.slices, self.index, self.targets = slices, index, targets
        self.patch_size, self.augment, self.pad = patch_size, augment, tuple(pad)
        self.context_dilation = int(context_dilation)
        self._offsets: dict[tuple[int, int], np.ndarray] = {}
        self._flat: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def channels(self) -> int:
        """Channels of a patch: 1, or 2 with the context patch."""
        return input_channels(self.context_dilation)

    def _cached(self, kind: str, vol: int, make) -> np.ndarray:
        """``make(slices)`` of volume ``vol``, kept until ``slices[vol]`` is replaced (the lesion
        benchmark gives its training scans new lesions every epoch)."""
        source = self.slices[vol]
        cached = self._flat.get((kind, vol))
        if cached is None or cached[0] is not source:
            made = np.ascontiguousarray(make(np.asarray(source, np.float32)), dtype=np.float32)
            cached = self._flat[(kind, vol)] = (source, made)
        return cached[1]

    def volume(self, vol: int) -> np.ndarray:
        """Volume ``vol``'s slices as the patches are cut from them: (S, H', W') float32, padded."""
        return self._cached("patch", vol, lambda x: pad_slices(x, *self.pad))

    def context_volume(self, vol: int) -> np.ndarray:
        """Volume ``vol``'s context image (S, H'', W''), :func:`penn.context.context_image`."""
        d, n = self.context_dilation, self.patch_size
        return self._cached(
            "context",
            vol,
            lambda x: context_image(torch.from_numpy(x)[:, None], d, n)[:, 0].numpy(),
        )

    def sources(self) -> list[tuple[str, int, int]]:
        """Per channel: (kind, shift, step). A patch's channel is the n x n values ``step``
        pixels apart from (y + shift, x + shift) of that kind's volume, (y, x) its index row.

        The patch whose corner is y in the padded slice is centred on pixel
        c = y - pad_before + n // 2 of the slice, and sample 0 of its context is element c of
        the context image (:func:`penn.context.context_image`), so the context's shift is
        n // 2 - pad_before.
        """
        out = [("patch", 0, 1)]
        if self.context_dilation > 0:
            out.append(("context", self.patch_size // 2 - self.pad[0], self.context_dilation))
        return out

    def source(self, kind: str, vol: int) -> np.ndarray:
        """The array that channels of ``kind`` (``patch`` or ``context``) are cut from."""
        return self.volume(vol) if kind == "patch" else self.context_volume(vol)

    def _cut(self, vol: int, rows: np.ndarray, sources=None) -> np.ndarray:
        """Patches (k, C, n, n) of one volume: one ``np.take`` per channel from its flat slices.

        Channel 0 holds the same values as :func:`penn.patches.gather_patches`; the n x n
        offsets of each row length and step are computed once. ``sources``: the channels'
        sources (default :meth:`sources`).
        """
        out = []
        for kind, shift, step in sources or self.sources():
            slices = self.source(kind, vol)
            _, height, width = slices.shape
            offsets = self._offsets.get((width, step))
            if offsets is None:
                n = np.arange(self.patch_size) * step
                offsets = self._offsets[(width, step)] = n[:, None] * width + n[None, :]
            y, x = rows[:, 2].astype(np.int64) + shift, rows[:, 3].astype(np.int64) + shift
            corner = (rows[:, 1].astype(np.int64) * height + y) * width + x
            out.append(np.take(slices.reshape(-1), corner[:, None, None] + offsets))
        return out[0][:, None] if len(out) == 1 else np.stack(out, axis=1)

    def patches(self, indices, sources=None) -> torch.Tensor:
        """The patches at ``indices`` as they are, without augmentation: (B, C, n, n) float32
        (``sources``: as in :meth:`_cut`)."""
        rows = self.index[np.asarray(indices)]
        n = self.patch_size
        patches = np.empty((len(rows), self.channels, n, n), dtype=np.float32)
        vols = rows[:, 0]
        if len(rows) and (vols == vols[0]).all():
            patches[:] = self._cut(int(vols[0]), rows, sources)
        else:
            for vol in np.unique(vols):
                sel = np.flatnonzero(vols == vol)
                patches[sel] = self._cut(int(vol), rows[sel], sources)
        return torch.from_numpy(patches)

    def __getitems__(self, indices: list[int]) -> PatchBatch:
        indices = np.asarray(indices)
        x = self.patches(indices)
        if self.augment:
            x = augment_patches(x, self.augment)
        y = torch.from_numpy(self.targets[indices].astype(np.int64))
        return PatchBatch((x, y))

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]


def augment_patches(
    x: torch.Tensor, augment: dict, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Per-patch gamma, contrast scale, noise and optional flips.

    ``x`` (B, C, n, n) on any device (a patch's channels share its gamma, scale and flips);
    random draws from ``generator`` (on that device) or, by default, torch's global generator.
    """
    n, dev, g = x.shape[0], x.device, generator
    g0, g1 = augment["gamma"]
    s0, s1 = augment["scale"]
    gamma = torch.empty(n, 1, 1, 1, device=dev).uniform_(np.log(g0), np.log(g1), generator=g).exp()
    scale = torch.empty(n, 1, 1, 1, device=dev).uniform_(s0, s1, generator=g)
    x = (x.clamp_min(0).log() * gamma).exp() * scale  # x ** gamma, 5x faster than pow here
    x = x + augment["noise_std"] * torch.randn(x.shape, device=dev, generator=g)
    if augment.get("flip"):  # mirror each patch along each in-plane axis with p = 0.5
        for dim in (-1, -2):
            x = torch.where(torch.rand(n, 1, 1, 1, device=dev, generator=g) < 0.5, x.flip(dim), x)
    return x.clamp(0.0, 1.0)


class DevicePatchLoader:
    """Training batches cut and augmented on the training device (``data.loader.on_device``).

    The split's preprocessed slices (and context images) are copied to the device once, as one
    flat tensor each (the slices of lumbar-vb's 11 training scans are about 0.5 GB); each batch
    is then one gather of B x n x n values per channel at the sampler's patch corners, followed
    by the augmentation, all on the device. A small network on a GPU, stepped with the paper's
    batches of 64, is otherwise held back by cutting patches on the host and copying them over.
    Same patches, classes, order and epoch length as :class:`PatchLoader` with the same sampler;
    the augmentation draws come from a device generator seeded with (seed, epoch). Lightning sets
    the sampler's epoch through ``.sampler``.

    With ``steps_per_batch`` K > 1 each yielded batch holds K consecutive batches of
    ``batch_size`` (fewer in an epoch's last one), for K optimizer steps in one training step
    (:mod:`penn.lit.step_group`); the patches and their order are the same (the augmentation is
    drawn per yielded batch, so its random values differ).
    """

    def __init__(
        self,
        dataset: PatchDataset,
        sampler: Sampler,
        batch_size: int,
        device: torch.device,
        seed: int,
        drop_last: bool = True,
        steps_per_batch: int = 1,
    ):
        if steps_per_batch > 1 and not drop_last:
            raise ValueError("steps_per_batch > 1 needs whole batches (drop_last=True)")
        self.dataset, self.sampler, self.batch_size = dataset, sampler, batch_size
        self.steps_per_batch = int(steps_per_batch)
        self.device, self.seed, self.drop_last = torch.device(device), int(seed), drop_last
        # the (volume, slice, y, x) rows as they are (on the CPU: the dataset's own array)
        self.index = torch.from_numpy(np.ascontiguousarray(dataset.index)).to(self.device)
        self.channels = self._flat_sources(dataset, dataset.sources())
        self.targets = torch.from_numpy(dataset.targets.astype(np.int64)).to(self.device)
        self.steps = torch.arange(dataset.patch_size, device=self.device)

    def _flat_sources(self, dataset: PatchDataset, sources) -> list[tuple]:
        """Per channel: (flat volumes, (V, 3) base/height/width, shift, step) on the device."""
        out = []
        for kind, shift, step in sources:
            volumes = [dataset.source(kind, v) for v in range(len(dataset.slices))]
            shapes = np.array([s.shape for s in volumes], dtype=np.int64)  # (V, 3)
            base = np.concatenate([[0], np.cumsum(shapes.prod(axis=1))[:-1]])
            geometry = np.stack([base, shapes[:, 1], shapes[:, 2]], axis=1)
            flat = torch.from_numpy(np.concatenate([s.reshape(-1) for s in volumes]))
            out.append(
                (flat.to(self.device), torch.from_numpy(geometry).to(self.device), shift, step)
            )
        return out

    def _cut(self, rows: torch.Tensor, flat, geometry, shift: int, step: int) -> torch.Tensor:
        """One channel of the patches at ``rows``: (B, n, n), one gather on the device."""
        index = self.index[rows].long()  # (B, 4)
        base, height, width = geometry[index[:, 0]].unbind(1)
        y, x = index[:, 2] + shift, index[:, 3] + shift
        corner = base + (index[:, 1] * height + y) * width + x
        steps = self.steps * step
        offsets = steps[:, None] * width[:, None, None] + steps[None, :]  # (B, n, n)
        return flat[corner[:, None, None] + offsets]

    def _steps(self) -> int:
        full, rest = divmod(len(self.sampler), self.batch_size)
        return full + (0 if self.drop_last or not rest else 1)

    def __len__(self) -> int:
        return -(-self._steps() // self.steps_per_batch)

    def __iter__(self):
        epoch = getattr(self.sampler, "epoch", 0)
        order = torch.as_tensor(np.fromiter(iter(self.sampler), np.int64), device=self.device)
        generator = torch.Generator(self.device).manual_seed(self.seed * 1_000_003 + epoch)
        augment = self.dataset.augment
        rows_per_batch = self.batch_size * self.steps_per_batch
        end = min(len(order), self._steps() * self.batch_size)
        for start in range(0, end, rows_per_batch):
            rows = order[start : min(start + rows_per_batch, end)]
            x = self._cut_channels(rows, self.channels)
            if augment:
                x = augment_patches(x, augment, generator)
            yield x, self.targets[rows]

    def _cut_channels(self, rows: torch.Tensor, channels) -> torch.Tensor:
        parts = [self._cut(rows, *channel) for channel in channels]
        return parts[0].unsqueeze(1) if len(parts) == 1 else torch.stack(parts, dim=1)


class BalancedSampler(Sampler[int]):
    """Random undersampling of the majority class, drawn anew for every epoch (seed + epoch).

    Every minority patch is used in every epoch; each epoch sees a different random subset of
    the background patches, so over a run the network meets far more of the background's
    variety than one fixed undersampling would show it, at the same cost per epoch. Lightning
    calls :meth:`set_epoch` (also through its distributed wrapper), which makes a resumed run
    draw the same subsets as an uninterrupted one.

    Hard-negative mining (:class:`penn.mining.HardNegativeMining`) may hand over background
    patches the network gets wrong (:meth:`set_hard`); they then take the place of as many
    random background patches in the following epochs, so the class ratio and the epoch length
    stay the same.

    Args:
        targets: (N,) patch classes of the dataset.
        majority_fraction: share of class 0 in each epoch.
        seed: base seed.
        resample: draw a new subset per epoch (False: the epoch-0 subset every time).
    """

    def __init__(self, targets: np.ndarray, majority_fraction: float, seed: int, resample: bool):
        self.targets, self.majority_fraction = targets, majority_fraction
        self.seed, self.resample, self.epoch = int(seed), resample, 0
        self.hard = np.zeros(0, np.int64)
        self._length = len(self._draw(0))

    @property
    def n_majority(self) -> int:
        """Background (class 0) patches in each epoch."""
        return self._length - int(np.count_nonzero(self.targets))

    def set_hard(self, indices: np.ndarray) -> None:
        """Background patches to include in every following epoch (at most ``n_majority``)."""
        indices = np.unique(np.asarray(indices, dtype=np.int64))
        if len(indices) and (self.targets[indices] != 0).any():
            raise ValueError("hard negatives must be background (class 0) patches")
        if len(indices) > self.n_majority:
            raise ValueError(f"{len(indices)} hard negatives exceed the epoch's {self.n_majority}")
        self.hard = indices

    def _draw(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch if self.resample else 0])
        keep = undersample(self.targets, self.majority_fraction, rng)
        if len(self.hard):
            background = keep[self.targets[keep] == 0]
            random_part = background[~np.isin(background, self.hard)]
            random_part = rng.choice(random_part, len(background) - len(self.hard), replace=False)
            keep = np.concatenate([keep[self.targets[keep] != 0], self.hard, random_part])
        return rng.permutation(keep)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self._length

    def __iter__(self):
        indices = self._draw(self.epoch)
        self.epoch += 1  # a fresh draw next time even if nobody calls set_epoch
        return iter(indices.tolist())


class PatchDataModule(L.LightningDataModule):
    """Reads a dataset in the nnU-Net raw layout and serves 2D patches for PENN.

    Args:
        name: dataset name (for logs and tags).
        root: dataset folder (read only; the phantom is generated there when ``phantom`` is set).
        phantom: the synthetic phantom's spec and size (``n_volumes`` + :class:`PhantomSpec`
            fields), or None for real data.
        plane: anatomical plane of the 2D slices (``sagittal``, ``coronal``, ``axial``).
        target: ``all`` (every labelled class, softmax head) or a key of ``targets``.
        targets: binary targets, each the label values that make up the positive class.
        patches: ``size``, ``stride``, ``rule`` and ``threshold`` of the PE module,
            ``pad_borders`` (centre rule: training patches centred on border pixels too) and
            ``context_dilation`` (d > 0: a context patch as second channel, :mod:`penn.context`).
        balance_ratio: share of the majority class after undersampling the training split.
        resample_each_epoch: draw a new undersampled subset of the majority class every epoch.
        split: ``val`` and ``test`` fractions and the ``seed`` of the split by volume.
        preprocess: keyword arguments of :func:`penn.preprocess.preprocess_volume` but ``plane``.
        augment: intensity augmentation ranges for training, or None.
        loader: ``batch_size``, ``num_workers``, ``pin_memory``, ``max_eval_patches``.
        external: a labelled collection (``name``, ``root``) that ``penn.run`` scores the trained
            model on after the test split (:mod:`penn.external`); not read by the data module.
        extra_train: roots of further labelled collections (the nnU-Net raw layout, the same
            label values) whose every case joins the training split; validation and test stay
            ``root``'s. Case names must not repeat across collections.
    """

    def __init__(
        self,
        name,
        root,
        phantom,
        plane,
        target,
        targets,
        patches,
        balance_ratio,
        resample_each_epoch,
        split,
        preprocess,
        augment,
        loader,
        external=None,
        extra_train=(),
    ):
        super().__init__()
        self.name, self.root, self.external = name, Path(root), external
        self.extra_train = [Path(r) for r in extra_train or ()]
        self.phantom, self.plane, self.target, self.targets = phantom, plane, target, targets
        self.patch_cfg, self.balance_ratio, self.split_cfg = patches, balance_ratio, split
        self.resample_each_epoch = resample_each_epoch
        self.preprocess_cfg, self.augment, self.loader_cfg = preprocess, augment, loader
        self.splits: dict[str, SplitVolumes] = {}
        self.class_names: list[str] = []
        self.classes: list[list[int]] = []
        self.balance_log: dict[str, list[int]] = {}
        self.train_dataset: PatchDataset | None = None
        self.train_sampler: BalancedSampler | None = None
        # added to split.seed for the training stream; penn.run gives each ensemble member its own
        self.stream_offset = 0

    @property
    def stream_seed(self) -> int:
        """Seed of the training stream: the balanced draws, the patch order and the on-device
        cutting (``split.seed`` + ``stream_offset``). The validation subset keeps ``split.seed``."""
        return int(self.split_cfg["seed"]) + int(self.stream_offset)

    @property
    def n_classes(self) -> int:
        """Number of patch classes including background."""
        return len(self.classes) + 1

    @property
    def n_outputs(self) -> int:
        """Network outputs: 1 (sigmoid) for a binary target, else one per class (softmax)."""
        return 1 if self.n_classes == 2 else self.n_classes

    def prepare_data(self) -> None:
        if self.phantom is not None:
            spec = {
                k: tuple(v) if isinstance(v, list) else v
                for k, v in self.phantom.items()
                if k not in ("n_volumes", "seed")
            }
            write_phantom_dataset(
                self.root, self.phantom["n_volumes"], PhantomSpec(**spec), self.phantom["seed"]
            )

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        meta = read_dataset_json(self.root)
        labels_map = {name: int(v) for name, v in meta["labels"].items()}
        self._resolve_classes(labels_map)
        allowed = sorted(labels_map.values())
        loaded = self._load(list_cases(self.root), allowed)
        by_name = dict(
            zip(
                loaded.names,
                zip(loaded.volumes, loaded.slices, loaded.labels, strict=True),
                strict=True,
            )
        )
        has_target = self._strata(loaded.labels)
        train, val, test = split_cases(
            loaded.names,
            self.split_cfg["val"],
            self.split_cfg["test"],
            self.split_cfg["seed"],
            strata=has_target,
        )
        log.info(
            "split by volume (stratified by presence of the target): %d train, %d val, %d test",
            len(train),
            len(val),
            len(test),
        )
        for name, members in (("train", train), ("val", val), ("test", test)):
            self.splits[name] = SplitVolumes(
                *map(list, zip(*(by_name[m] for m in members), strict=True))
            )
        for root in self.extra_train:
            self._add_training_collection(root, labels_map, set(by_name))

    def _add_training_collection(self, root: Path, labels_map: dict[str, int], seen: set[str]):
        """Every case of ``root`` joins the training split (``extra_train``)."""
        path = root / "dataset.json"
        theirs = {k: int(v) for k, v in read_dataset_json(root)["labels"].items()}
        if theirs != labels_map:
            raise DataError(f"{path}: labels {theirs} differ from {self.root}'s {labels_map}")
        extra = self._load(list_cases(root), sorted(labels_map.values()))
        repeated = sorted(seen & set(extra.names))
        if repeated:
            raise DataError(f"{root}: case names {repeated} repeat those of another collection")
        seen |= set(extra.names)
        train = self.splits["train"]
        for field in ("volumes", "slices", "labels"):
            getattr(train, field).extend(getattr(extra, field))
        log.info("training split: %d more cases from %s", len(extra.names), root)

    def _strata(self, labels: list[np.ndarray]) -> list[bool]:
        """Per volume, whether it holds the target: the split is stratified by this."""
        targets = [v for values in self.classes for v in values]
        return [bool(np.isin(lab, targets).any()) for lab in labels]

    def _resolve_classes(self, labels_map: dict[str, int]) -> None:
        if self.target == "all":
            named = sorted((v, k) for k, v in labels_map.items() if v != 0)
            self.classes = [[v] for v, _ in named]
            self.class_names = [k for _, k in named]
        elif self.target in self.targets:
            values = list(self.targets[self.target])
            unknown = set(values) - set(labels_map.values())
            if unknown:
                raise DataError(
                    f"{self.root / 'dataset.json'}: target {self.target!r} uses "
                    f"label values {sorted(unknown)} not in its labels {labels_map}"
                )
            self.classes, self.class_names = [values], [self.target]
        else:
            raise ValueError(
                f"data.target={self.target!r}: use 'all' or one of {list(self.targets)}"
            )

    def _load(self, cases, allowed: list[int]) -> SplitVolumes:
        split = SplitVolumes([], [], [])
        for case in cases:
            volume = read_case(case, allowed)
            split.volumes.append(volume)
            split.slices.append(self.preprocess(volume.image, volume.spacing))
            split.labels.append(self.working_labels(volume.labels, volume.spacing))
            volume.image = None  # the preprocessed slices are all that is used from here on
        return split

    def preprocess(self, image: np.ndarray, voxel_spacing) -> np.ndarray:
        """A canonical volume's preprocessed (S, H', W') slices on the working grid."""
        return preprocess_volume(
            image, self.plane, voxel_spacing=voxel_spacing, **self.preprocess_cfg
        )

    def working_labels(self, labels: np.ndarray, voxel_spacing) -> np.ndarray:
        """A canonical label volume's (S, H', W') slices on the working grid (nearest)."""
        return label_slices(labels, self.plane, self.preprocess_cfg.get("spacing"), voxel_spacing)

    def native_labels(self, split: str) -> list[np.ndarray]:
        """The (S, H, W) label slices of a split's volumes on their own grid (for scoring)."""
        return [to_slices(v.labels, self.plane) for v in self.splits[split].volumes]

    @property
    def context_dilation(self) -> int:
        """``patches.context_dilation``: d > 0 adds a context patch to each patch (0: none)."""
        return int(self.patch_cfg.get("context_dilation", 0) or 0)

    @property
    def pad(self) -> tuple[int, int]:
        """Padding of the training slices: :func:`~penn.patches.border_pad` with
        ``patches.pad_borders`` and the centre rule, so that border pixels centre training
        patches as they centre the dense read-out's; else none (the paper: patches inside)."""
        p = self.patch_cfg
        if p["rule"] == "center" and p.get("pad_borders", False):
            return border_pad(p["size"])
        return 0, 0

    def patch_labels(self, labels: np.ndarray) -> np.ndarray:
        """Patch classes of one volume's (S, H, W) labels on the training grid (padded slices)."""
        p = self.patch_cfg
        return label_patches(
            pad_slices(labels, *self.pad),
            self.classes,
            p["size"],
            p["stride"],
            p["rule"],
            p["threshold"],
        )

    def _index(self, split: SplitVolumes) -> tuple[np.ndarray, np.ndarray]:
        """All patch positions of a split as (N, 4) rows (volume, slice, y, x) and their classes."""
        stride, rows, targets = self.patch_cfg["stride"], [], []
        for vol, labels in enumerate(split.labels):
            classes = self.patch_labels(labels)
            s, iy, ix = np.indices(classes.shape).reshape(3, -1)
            rows.append(np.stack([np.full_like(s, vol), s, iy * stride, ix * stride], axis=1))
            targets.append(classes.ravel())
        if not rows:
            return np.zeros((0, 4), np.int32), np.zeros(0, np.uint8)
        return np.concatenate(rows).astype(np.int32), np.concatenate(targets)

    def _dataset(self, name: str) -> PatchDataset:
        split = self.splits[name]
        index, targets = self._index(split)
        rng = np.random.default_rng(self.split_cfg["seed"])
        if name != "train" and len(index) > self.loader_cfg["max_eval_patches"]:
            keep = np.sort(rng.choice(len(index), self.loader_cfg["max_eval_patches"], False))
            index, targets = index[keep], targets[keep]
        if len(index) == 0:
            raise DataError(
                f"{self.root}: the {name} split yields no {self.patch_cfg['size']}px "
                "patches (slices smaller than a patch?)"
            )
        augment = self.augment if name == "train" else None
        return PatchDataset(
            split.slices,
            index,
            targets,
            self.patch_cfg["size"],
            augment,
            pad=self.pad,
            context_dilation=self.context_dilation,
        )

    def _balanced_sampler(self, dataset: PatchDataset) -> BalancedSampler:
        """Training sampler (paper step 4, T1MRI); logs the class counts before and after."""
        sampler = BalancedSampler(
            dataset.targets, self.balance_ratio, self.stream_seed, self.resample_each_epoch
        )
        before = class_counts(dataset.targets, self.n_classes)
        after = class_counts(dataset.targets[sampler._draw(0)], self.n_classes)
        self.balance_log = {"before": before.tolist(), "after": after.tolist()}
        log.info(
            "training patches per class before balancing %s (%s), after %s (%s)%s",
            before.tolist(),
            np.round(before / before.sum(), 3).tolist(),
            after.tolist(),
            np.round(after / after.sum(), 3).tolist(),
            ", background redrawn every epoch" if self.resample_each_epoch else "",
        )
        return sampler

    def _loader(self, name: str) -> DataLoader:
        cfg = self.loader_cfg
        train = name == "train"
        if train:
            # Each training phase (pretraining stage, ensemble member) fits with a new Trainer;
            # the last one's loader and dataset (copies of every training slice, hundreds of
            # MB) sit in reference cycles with it until a full collection. Free them first.
            gc.collect()
        workers, dataset = cfg["num_workers"], self._dataset(name)
        sampler = self._balanced_sampler(dataset) if train else None
        if train:  # kept for hard-example mining (penn.mining)
            self.train_dataset, self.train_sampler = dataset, sampler
        if train and cfg.get("steps_per_batch", 1) > 1 and not cfg.get("on_device"):
            raise ValueError(
                f"data.loader.steps_per_batch={cfg['steps_per_batch']} needs "
                "data.loader.on_device=true (groups of batches are cut on the training device)"
            )
        if train and cfg.get("on_device"):
            device = self._training_device()
            log.info("training patches cut and augmented on %s", device)
            return DevicePatchLoader(
                dataset,
                sampler,
                cfg["batch_size"],
                device,
                self.stream_seed,
                steps_per_batch=cfg.get("steps_per_batch", 1),
            )
        return PatchLoader(
            dataset,
            batch_size=cfg["batch_size"],
            sampler=sampler,
            num_workers=workers,
            collate_fn=_identity,
            pin_memory=cfg["pin_memory"] and torch.cuda.is_available(),
            persistent_workers=workers > 0,
            drop_last=train,
            generator=torch.Generator().manual_seed(self.stream_seed),
        )

    def _training_device(self) -> torch.device:
        """The attached trainer's device (one device only), else CUDA when there is one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if trainer.world_size > 1:
            raise ValueError(
                "data.loader.on_device=true trains on one device; set it to false for "
                f"{trainer.world_size} processes (the DistributedSampler needs a DataLoader)"
            )
        return trainer.strategy.root_device

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")
