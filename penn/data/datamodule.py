"""The LightningDataModule: reads a raw dataset, splits it by volume, streams balanced patches."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader

from penn.data.device_loader import DevicePatchLoader
from penn.data.patch_stream import PatchDataset, PatchLoader, keep_batch
from penn.data.split import SplitVolumes, split_cases
from penn.io.dataset import list_cases, read_case, read_dataset_json
from penn.io.volume import DataError
from penn.patches.balance import BalancedSampler, class_counts
from penn.patches.extract import label_patches
from penn.preprocess import label_slices, preprocess_volume, to_slices
from penn.synth.phantom import PhantomSpec
from penn.synth.phantom_dataset import write_phantom_dataset

__all__ = ["PatchDataModule"]

log = logging.getLogger(__name__)


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
        patches: ``size``, ``stride``, ``rule`` and ``threshold`` of the PE module (training
            patches lie inside the slices, as in the paper) and ``context_dilation`` (d > 0: a
            context patch as second channel, :mod:`penn.patches.context`).
        balance_ratio: share of the majority class after undersampling the training split.
        resample_each_epoch: draw a new undersampled subset of the majority class every epoch.
        split: ``val`` and ``test`` fractions and the ``seed`` of the split by volume.
        preprocess: keyword arguments of :func:`penn.preprocess.preprocess_volume` but ``plane``.
        augment: intensity augmentation ranges for training, or None.
        loader: ``batch_size``, ``num_workers``, ``pin_memory``, ``max_eval_patches``.
        external: a labelled collection (``name``, ``root``) that ``penn.run`` scores the trained
            model on after the test split (:mod:`penn.reports.external`); not read by the data
            module.
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

    def patch_labels(self, labels: np.ndarray) -> np.ndarray:
        """Patch classes of one volume's (S, H, W) labels on the training grid."""
        p = self.patch_cfg
        return label_patches(
            labels,
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
        if train:  # kept for hard-example mining (penn.lit.mining)
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
            collate_fn=keep_batch,
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
