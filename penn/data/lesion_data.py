"""The lesion benchmark's DataModule: real scans with simulated lesions, new ones every epoch.

Every scan is read and given the fixed lesions of ``lesions.seed`` (those of
``python -m penn.make_lesions``), so validation and test never change. The training scans'
raw images are kept, and at the start of every epoch e >= 1 they get new lesions from
``(lesions.seed, case, epoch, run seed)`` and are preprocessed again; the patch grid stays, only
the slices and the patch classes are replaced in place. Epoch 0 trains on the fixed lesions.
:class:`LesionSliceDataModule` does the same for the pixel-wise baselines (whole slices); the
patch module names it as its ``slice_twin``, which ``penn.run`` instantiates for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
from torch.utils.data import DataLoader, Sampler

from penn.data.datamodule import PatchDataModule
from penn.data.patch_stream import PatchDataset
from penn.data.slice_data import SliceDataModule, SliceDataset
from penn.data.split import SplitVolumes
from penn.io.dataset import read_case
from penn.io.labels import class_map
from penn.io.volume import DataError
from penn.patches.balance import BalancedSampler
from penn.synth.lesions import LesionSpec, implant_lesions, lesion_rng, on_disk_values

__all__ = ["LesionSampler", "EpochShuffle", "LesionDataModule", "LesionSliceDataModule"]

log = logging.getLogger(__name__)


class LesionSampler(BalancedSampler):
    """A :class:`BalancedSampler` that has the training scans re-implanted before each epoch.

    ``refresh(epoch)`` runs in :meth:`set_epoch` (Lightning calls it before the epoch's loader
    iterator, and so before fresh worker processes fork) and again, idempotently, in
    :meth:`__iter__`. Each epoch yields exactly as many indices as epoch 0, because the number
    of lesion patches changes from epoch to epoch and Lightning sizes the epoch once.

    Args:
        min_class_fraction: every foreground class present makes up at least this share of the
            undersampled epoch; a rarer one (tumour patches) is drawn again with replacement.
        refresh: gives the training scans the lesions of an epoch.
        others: as :class:`~penn.patches.balance.BalancedSampler`.
    """

    def __init__(
        self,
        targets: np.ndarray,
        majority_fraction: float,
        seed: int,
        resample: bool,
        min_class_fraction: float,
        refresh: Callable[[int], None],
    ):
        self.min_class_fraction, self.refresh = float(min_class_fraction), refresh
        super().__init__(targets, majority_fraction, seed, resample)

    def _draw(self, epoch: int) -> np.ndarray:
        keep = super()._draw(epoch)
        rng = np.random.default_rng([self.seed, epoch if self.resample else 0, 1])
        f, drawn = self.min_class_fraction, np.bincount(self.targets[keep])
        short = [c for c in np.unique(self.targets[self.targets > 0]) if drawn[c] < f * len(keep)]
        if f * len(short) >= 1.0:
            raise ValueError(f"data.min_class_fraction={f}: {len(short)} classes cannot each be it")
        # n_c + x_c = f * (K + sum x): every short class ends at share f of the enlarged epoch
        total = (len(keep) - drawn[short].sum()) / (1.0 - f * len(short)) if short else len(keep)
        extra = [
            rng.choice(np.flatnonzero(self.targets == c), int(np.ceil(f * total)) - drawn[c])
            for c in short
        ]
        return rng.permutation(np.concatenate([keep, *extra]))

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.refresh(epoch)

    def __iter__(self):
        self.refresh(self.epoch)
        indices = np.resize(self._draw(self.epoch), self._length)  # repeats or cuts the draw
        self.epoch += 1
        return iter(indices.tolist())


class EpochShuffle(Sampler[int]):
    """A shuffle drawn from (seed, epoch) that has the training scans re-implanted first.

    The whole-slice twin of :class:`LesionSampler`: every slice once, in a new order each epoch.
    With ``min_class_fraction`` f > 0 and ``classes_of`` (the set of classes each slice shows,
    read after the refresh), a foreground class shown by fewer than f of the slices gets slots
    of slices without it handed to (repeated) slices with it, rarest class first, so it is
    shown in about f of the epoch; the epoch keeps its length.
    """

    def __init__(
        self,
        length: int,
        seed: int,
        refresh: Callable[[int], None],
        min_class_fraction: float = 0.0,
        classes_of: Callable[[], list[set[int]]] | None = None,
    ):
        self.length, self.seed, self.refresh, self.epoch = length, int(seed), refresh, 0
        self.min_class_fraction, self.classes_of = float(min_class_fraction), classes_of

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.refresh(epoch)

    def __len__(self) -> int:
        return self.length

    def draw(self, epoch: int) -> np.ndarray:
        """The slice indices of ``epoch`` (the scans must hold that epoch's lesions)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(self.length)
        if self.min_class_fraction <= 0 or self.classes_of is None:
            return order
        shown = self.classes_of()
        classes = sorted({c for cs in shown for c in cs if c > 0})
        counts = {c: sum(c in cs for cs in shown) for c in classes}
        want = int(np.ceil(self.min_class_fraction * self.length))
        for c in sorted(classes, key=counts.get):
            has = np.array([c in shown[i] for i in order])
            short = want - int(has.sum())
            if short <= 0:
                continue
            # replace slots of slices without c (never those that carry a rarer class)
            rarer = [r for r in classes if counts[r] < counts[c] or r == c]
            free = np.flatnonzero([not (shown[i] & set(rarer)) for i in order])
            take = rng.choice(free, size=min(short, len(free)), replace=False)
            order[take] = rng.choice(order[has], size=len(take), replace=True)
        return order

    def __iter__(self):
        self.refresh(self.epoch)
        order = self.draw(self.epoch)
        self.epoch += 1
        return iter(order.tolist())


class _LesionMixin:
    """Reading with fixed lesions, and new training lesions per epoch, for a data module.

    Args:
        lesions: ``seed`` (the benchmark's fixed lesions), ``resample_each_epoch`` (new training
            lesions every epoch) and the :class:`~penn.synth.lesions.LesionSpec` fields.
        **kwargs: the arguments of the data module it is mixed into.
    """

    def __init__(self, lesions: dict, **kwargs):
        super().__init__(**kwargs)
        self.spec = LesionSpec.from_config(lesions)
        self.lesion_seed = int(lesions["seed"])
        self.resample_lesions = bool(lesions["resample_each_epoch"])
        self._raw: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # training scans before lesions
        self._lesion_epoch = 0

    def setup(self, stage: str | None = None) -> None:
        first = not self.splits
        super().setup(stage)
        if first:  # keep the raw images of the training scans only
            train = set(self.splits["train"].names)
            self._raw = {k: v for k, v in self._raw.items() if k in train}

    def _strata(self, labels: list[np.ndarray]) -> list[bool]:
        """Stratified by "has a lesion" whatever the target: one split for every target/model."""
        return [bool((lab == self.spec.tumor_label).any()) for lab in labels]

    def _resolve_classes(self, labels_map: dict[str, int]) -> None:
        values = set(labels_map.values())
        if self.spec.body_label not in values or self.spec.tumor_label in values:
            raise DataError(
                f"{self.root / 'dataset.json'}: lesions need the body label "
                f"{self.spec.body_label} and a free tumour label {self.spec.tumor_label}, "
                f"found labels {labels_map}"
            )
        super()._resolve_classes({**labels_map, "tumor": self.spec.tumor_label})

    def _load(self, cases, allowed: list[int]) -> SplitVolumes:
        """Reads every scan and implants its fixed lesions (the source labels are checked)."""
        split = SplitVolumes([], [], [])
        for case in cases:
            volume = read_case(case, allowed)
            self._raw[volume.name] = (volume.image, volume.labels)
            image, labels = self._implant(volume, lesion_rng(self.lesion_seed, volume.name))
            split.volumes.append(volume)
            volume.labels = labels  # with the lesions: what the scan is scored against
            split.slices.append(self.preprocess(image, volume.spacing))
            split.labels.append(self.working_labels(labels, volume.spacing))
            volume.image = None
        return split

    def _implant(self, volume, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self._raw[volume.name]
        image, labels, records = implant_lesions(image, labels, volume.spacing, self.spec, rng)
        log.debug("%s: %d lesions", volume.name, len(records))
        return on_disk_values(image, volume), labels

    def refresh_training(self, epoch: int) -> None:
        """Gives the training scans the lesions of ``epoch`` (no-op if they have them already).

        The split's lists are updated in place, so loaders built on them see the new scans.
        """
        epoch = epoch if self.resample_lesions else 0
        if epoch == self._lesion_epoch:
            return
        split, run_seed = self.splits["train"], int(self.split_cfg["seed"])
        for i, volume in enumerate(split.volumes):
            keys = () if epoch == 0 else (epoch, run_seed)
            image, labels = self._implant(volume, lesion_rng(self.lesion_seed, volume.name, *keys))
            volume.labels = labels
            split.slices[i] = self.preprocess(image, volume.spacing)
            split.labels[i] = self.working_labels(labels, volume.spacing)
        self._lesion_epoch = epoch
        self._relabel_training()
        log.info("epoch %d: new lesions in %d training scans", epoch, len(split.volumes))

    def _relabel_training(self) -> None:
        """Updates what the training loader derived from the labels (its targets or masks)."""


class LesionDataModule(_LesionMixin, PatchDataModule):
    """:class:`~penn.data.datamodule.PatchDataModule` on scans with implanted lesions
    (labels 0/1/2).

    Args:
        lesions: see :class:`_LesionMixin`.
        min_class_fraction: least share of each foreground class in a training epoch
            (see :class:`LesionSampler`).
        **kwargs: the arguments of :class:`~penn.data.datamodule.PatchDataModule`.
    """

    #: what ``penn.run`` instantiates instead for pixel-wise networks
    slice_twin = "penn.data.lesion_data.LesionSliceDataModule"

    def __init__(self, lesions: dict, min_class_fraction: float, **kwargs):
        super().__init__(lesions=lesions, **kwargs)
        self.min_class_fraction = min_class_fraction
        self._train_targets: np.ndarray | None = None

    def _relabel_training(self) -> None:
        if self._train_targets is not None:  # the loader's dataset and sampler share this array
            self._train_targets[:] = self._index(self.splits["train"])[1]

    def _dataset(self, name: str) -> PatchDataset:
        dataset = super()._dataset(name)
        if name == "train":
            self._train_targets = dataset.targets
        return dataset

    def _balanced_sampler(self, dataset: PatchDataset) -> LesionSampler:
        super()._balanced_sampler(dataset)  # logs the class counts of the current lesions
        sampler = LesionSampler(
            dataset.targets,
            self.balance_ratio,
            self.split_cfg["seed"],
            self.resample_each_epoch,
            self.min_class_fraction,
            self.refresh_training,
        )
        after = np.bincount(dataset.targets[sampler._draw(sampler.epoch)], minlength=self.n_classes)
        self.balance_log["after"] = after.tolist()
        log.info("training patches per class after oversampling rare classes %s", after.tolist())
        return sampler

    def _loader(self, name: str) -> DataLoader:
        if name == "train" and self.loader_cfg.get("on_device"):
            raise ValueError(
                f"data.loader.on_device=true is not available for {self.name}: its training "
                "scans get new lesions every epoch (set data.loader.on_device=false)"
            )
        loader = super()._loader(name)
        if name != "train" or loader.num_workers == 0:
            return loader
        # persistent workers would keep copies of the first epoch's slices forever
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=loader.sampler,
            num_workers=loader.num_workers,
            collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory,
            persistent_workers=False,
            drop_last=loader.drop_last,
            generator=loader.generator,
        )


class LesionSliceDataModule(_LesionMixin, SliceDataModule):
    """:class:`~penn.data.slice_data.SliceDataModule` (pixel-wise baselines) on the lesion
    benchmark.

    Args:
        lesions: see :class:`_LesionMixin`.
        min_class_fraction: least share of the training slices of an epoch that show each
            foreground class (:class:`EpochShuffle`).
        **kwargs: the arguments of :class:`~penn.data.slice_data.SliceDataModule`.
    """

    def __init__(self, lesions: dict, min_class_fraction: float, **kwargs):
        super().__init__(lesions=lesions, **kwargs)
        self.min_class_fraction = float(min_class_fraction)
        self._train_dataset: SliceDataset | None = None

    def _slice_classes(self) -> list[set[int]]:
        """The classes each training slice shows (in the dataset's slice order)."""
        masks = self._train_dataset.masks
        # per volume, (class, slice) flags of the foreground classes: one pass per class
        shows = [
            np.stack([(m == c).any(axis=(1, 2)) for c in range(1, self.n_classes)]) for m in masks
        ]
        return [
            {0, *(np.flatnonzero(shows[v][:, k]) + 1).tolist()}
            for v, k in self._train_dataset.index
        ]

    def _relabel_training(self) -> None:
        if self._train_dataset is not None:
            split = self.splits["train"]
            self._train_dataset.masks[:] = [class_map(lab, self.classes) for lab in split.labels]

    def _loader(self, name: str) -> DataLoader:
        loader = super()._loader(name)
        if name != "train":
            return loader
        self._train_dataset = loader.dataset
        sampler = EpochShuffle(
            len(loader.dataset),
            self.split_cfg["seed"],
            self.refresh_training,
            self.min_class_fraction,
            self._slice_classes,
        )
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            sampler=sampler,
            num_workers=loader.num_workers,
            persistent_workers=False,  # fresh workers each epoch see the new lesions
        )
