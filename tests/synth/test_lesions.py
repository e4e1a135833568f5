"""Lesion simulation (penn.synth.lesions), the lesion DataModule and the derived-dataset writer."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from scipy import ndimage

from penn.data.lesion_data import EpochShuffle, LesionSliceDataModule
from penn.io.dataset import list_cases, read_case
from penn.io.labels import class_map
from penn.io.volume import DataError
from penn.preprocess import to_slices
from penn.run import make_datamodule, train
from penn.synth.lesion_dataset import lesion_dataset, write_lesion_dataset
from penn.synth.lesions import (
    LesionSpec,
    find_bodies,
    fluid_reference,
    implant_lesions,
    lesion_rng,
    on_disk_values,
)
from tests.conftest import CONF

SPACING = (1.5, 1.0, 1.0)


def lesion_cfg(overrides: list[str]) -> DictConfig:
    """The train config with ``data=lumbar_vb_lesions`` (the phantom overrides do not apply)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=["data=lumbar_vb_lesions", *overrides])


@pytest.fixture(scope="module")
def spec() -> LesionSpec:
    """The configured lesion model, so the tests exercise the numbers users get."""
    cfg = lesion_cfg([])
    return LesionSpec.from_config(OmegaConf.to_container(cfg.data.lesions, resolve=True))


def box_scan(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (16, 48, 72) T2-like scan: two box-shaped 'bodies' of textured marrow on tissue."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((16, 48, 72), np.uint8)
    labels[3:13, 10:38, 6:32] = 1
    labels[3:13, 10:38, 40:66] = 1
    image = np.where(labels == 1, 52.0, 40.0) + rng.normal(0, 5, labels.shape)
    image[:, :4] = 250.0  # bright CSF-like band sets the scan's maximum
    return np.clip(np.round(image), 0, 255).astype(np.float32), labels


def test_bodies_are_the_connected_components(spec):
    _, labels = box_scan()
    bodies = find_bodies(labels, spec)
    assert len(bodies) == 2
    assert sum(int(mask.sum()) for _, mask in bodies) == int((labels == 1).sum())


@pytest.mark.parametrize("seed", range(6))
def test_lesions_never_leave_the_vertebral_body_mask(spec, seed):
    image, labels = box_scan()
    big = replace(spec, none_probability=0.0, count=(3, 4), radius_mm=(6.0, 20.0))
    out_image, out_labels, records = implant_lesions(
        image, labels, SPACING, big, lesion_rng(seed, "case")
    )
    body = labels == 1
    assert records and (out_labels == 2).any()
    assert not ((out_labels == 2) & ~body).any()
    assert not ((out_image != image) & ~body).any()  # intensities change only inside bodies
    assert np.array_equal(out_labels[~body], labels[~body])
    assert np.isin(out_labels, [0, 1, 2]).all()
    assert image.min() <= out_image.min() and out_image.max() <= image.max()
    assert sum(r["voxels"] for r in records) >= (out_labels == 2).sum()


def test_same_seed_gives_the_same_lesions_and_inputs_are_kept(spec):
    image, labels = box_scan()
    copies = image.copy(), labels.copy()
    first = implant_lesions(image, labels, SPACING, spec, lesion_rng(3, "vb2_02"))
    again = implant_lesions(image, labels, SPACING, spec, lesion_rng(3, "vb2_02"))
    other = implant_lesions(image, labels, SPACING, spec, lesion_rng(3, "vb2_02", 1, 42))
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1])
    assert first[2] == again[2]
    assert not np.array_equal(first[1], other[1]) or first[2] != other[2]
    assert np.array_equal(image, copies[0]) and np.array_equal(labels, copies[1])


def test_label_values_are_0_1_2_and_counts_follow_the_spec(spec):
    image, labels = box_scan()
    n_lesions = []
    for seed in range(30):
        _, out, records = implant_lesions(image, labels, SPACING, spec, lesion_rng(seed, "c"))
        assert set(np.unique(out).tolist()) <= {0, 1, 2}
        assert (len(records) == 0) == (not (out == 2).any())
        n_lesions.append(len(records))
    assert 0 in n_lesions  # none_probability > 0
    assert max(n_lesions) <= spec.count[1] and min(n for n in n_lesions if n) >= spec.count[0]
    none = replace(spec, none_probability=1.0)
    assert implant_lesions(image, labels, SPACING, none, lesion_rng(0, "c"))[2] == []


def canal_scan(fluid: float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`box_scan` with the 12 mm behind the bodies (the canal band) at ``fluid``: dark CSF
    as on T1 (below the marrow's 52) or bright as on T2."""
    image, labels = box_scan()
    image[:, :10] = fluid
    return image, labels


def test_fluid_reference_is_the_canal_behind_the_bodies(spec):
    for fluid in (20.0, 150.0):
        image, labels = canal_scan(fluid)
        assert fluid_reference(image, labels, SPACING, spec) == fluid
    assert fluid_reference(*canal_scan(20.0), SPACING, replace(spec, canal_mm=(11.0, 12.0))) is None


@pytest.mark.parametrize(("fluid", "lytic"), [(20.0, 1.0), (150.0, 1.0), (20.0, 0.0), (150.0, 0.0)])
def test_contrast_follows_the_sequence(spec, fluid, lytic):
    """Lytic lesions are dark on a T1-like scan (CSF darker than marrow) and bright on a T2-like
    one; sclerotic lesions are dark on both."""
    image, labels = canal_scan(fluid)
    one = replace(
        spec,
        none_probability=0.0,
        count=(1, 1),
        radius_mm=(6.0, 6.0),
        lytic_probability=lytic,
        rim_probability=0.0,
    )
    out_image, out_labels, records = implant_lesions(
        image, labels, SPACING, one, lesion_rng(1, "c")
    )
    marrow = np.median(image[labels == 1])
    ratio = out_image[out_labels == 2].mean() / marrow
    assert records[0]["kind"] == ("lytic" if lytic else "sclerotic")
    assert records[0]["fluid_ratio"] == pytest.approx(fluid / marrow, abs=1e-3)
    if not lytic:
        low, high = one.sclerotic_contrast
    elif fluid < marrow:  # between marrow and fluid, at least lytic_min_contrast below marrow
        low, high = fluid / marrow, 1.0 - one.lytic_min_contrast
    else:
        low, high = (
            1.0 + one.lytic_min_contrast,
            1.0 + one.lytic_fluid_fraction[1] * (fluid / marrow - 1.0),
        )
    assert low - 0.15 < ratio < high + 0.15
    assert (ratio > 1) == bool(lytic and fluid > marrow)


def test_a_fixed_fluid_ratio_overrides_the_measured_one(spec):
    image, labels = canal_scan(150.0)  # T2-like canal, but the collection is declared T1
    t1 = replace(spec, none_probability=0.0, count=(1, 1), lytic_probability=1.0, fluid_ratio=0.5)
    out_image, out_labels, records = implant_lesions(image, labels, SPACING, t1, lesion_rng(2, "c"))
    assert records[0]["fluid_ratio"] == 0.5
    assert out_image[out_labels == 2].mean() < np.median(image[labels == 1])


def test_spec_rejects_reversed_ranges(spec):
    with pytest.raises(ValueError, match="radius_mm"):
        replace(spec, radius_mm=(10.0, 2.0))
    with pytest.raises(ValueError, match="none_probability"):
        replace(spec, none_probability=1.5)


def write_source(root: Path, n_cases: int) -> Path:
    """A tiny source dataset in the nnU-Net raw layout (uint8 images, LAS like some scanners)."""
    affine = np.diag([-1.5, 1.0, 1.0, 1.0])
    for i in range(n_cases):
        image, labels = box_scan(i)
        files = (("imagesTr", f"case_{i}_0000", image), ("labelsTr", f"case_{i}", labels))
        for sub, name, array in files:
            (root / sub).mkdir(parents=True, exist_ok=True)
            nib.save(
                nib.Nifti1Image(array[::-1].astype(np.uint8), affine), root / sub / f"{name}.nii.gz"
            )
    meta = {
        "labels": {"background": 0, "vertebra": 1},
        "channel_names": {"0": "MRI"},
        "name": "src",
    }
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path).encode() + (path.read_bytes() if path.is_file() else b""))
    return digest.hexdigest()


def test_derived_dataset_round_trip(spec, tmp_path):
    source = write_source(tmp_path / "src", 2)
    before = tree_digest(source)
    out = write_lesion_dataset(source, tmp_path / "out", spec, seed=5)
    assert tree_digest(source) == before  # the source is only read
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "vertebra": 1, "tumor": 2}
    assert meta["cases"] == ["case_0", "case_1"] and meta["seed"] == 5
    for case, src_case in zip(list_cases(out), list_cases(source), strict=True):
        written, original = read_case(case, [0, 1, 2]), read_case(src_case, [0, 1])
        image, labels, records = implant_lesions(
            original.image, original.labels, original.spacing, spec, lesion_rng(5, case.name)
        )
        assert np.array_equal(written.labels, labels)
        assert np.array_equal(written.image, on_disk_values(image, original))
        np.testing.assert_allclose(written.affine, original.affine)
        assert written.header.get_data_dtype() == np.uint8
        assert meta["lesions"][case.name] == json.loads(json.dumps(records))
    write_lesion_dataset(source, out, spec, seed=5)  # rewriting its own output is allowed
    with pytest.raises(DataError, match="outside the source"):
        write_lesion_dataset(source, source / "derived", spec, seed=5)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not a lesion dataset"):
        write_lesion_dataset(source, tmp_path / "other", spec, seed=5)


@pytest.fixture
def lesion_dm(tmp_path):
    source = write_source(tmp_path / "src", 5)
    cfg = lesion_cfg(
        [
            f"data.root={source}",
            "data.split.val=0.2",
            "data.split.test=0.2",
            "data.lesions.none_probability=0.0",
            "data.lesions.radius_mm=[4.0,8.0]",
            "data.preprocess.smooth_sigma=1.0",
            "data.patches.size=16",
        ]
    )
    dm = instantiate(cfg.data)
    dm.setup("fit")
    return dm


def test_datamodule_has_three_classes_and_fixed_eval_lesions(lesion_dm):
    dm = lesion_dm
    assert dm.class_names == ["vertebra", "tumor"] and dm.n_outputs == 3
    assert set(dm._raw) == set(dm.splits["train"].names)  # raw images of training scans only
    for name in ("val", "test"):
        split = dm.splits[name]
        for volume, labels in zip(split.volumes, split.labels, strict=True):
            case = next(c for c in list_cases(dm.root) if c.name == volume.name)
            raw = read_case(case, [0, 1])
            rng = lesion_rng(dm.lesion_seed, volume.name)
            expected = implant_lesions(raw.image, raw.labels, raw.spacing, dm.spec, rng)[1]
            assert np.array_equal(labels, to_slices(expected, dm.plane))


def test_split_is_the_same_for_every_target(tmp_path):
    source = write_source(tmp_path / "src", 6)
    splits = []
    for target in ("all", "tumor", "vertebra"):
        dm = instantiate(lesion_cfg([f"data.root={source}", f"data.target={target}"]).data)
        dm.setup("fit")
        splits.append({k: v.names for k, v in dm.splits.items()})
    assert splits[0] == splits[1] == splits[2]


def test_training_scans_get_new_lesions_each_epoch(lesion_dm):
    dm = lesion_dm
    loader = dm.train_dataloader()
    dataset, sampler = loader.dataset, loader.sampler
    epoch0 = [lab.copy() for lab in dm.splits["train"].labels]
    length = len(list(sampler))  # epoch 0: the fixed lesions
    before = dataset.patches(np.arange(len(dataset)))  # (the dataset caches its slices)
    sampler.set_epoch(1)
    epoch1 = [lab.copy() for lab in dm.splits["train"].labels]
    assert any(not np.array_equal(a, b) for a, b in zip(epoch0, epoch1, strict=True))
    # the patches are cut from the new scans, not from epoch 0's cached slices
    after = dataset.patches(np.arange(len(dataset)))
    changed = np.flatnonzero((before != after).flatten(1).any(1).numpy())
    assert len(changed) > 0
    vol, s, y, x = dataset.index[changed[0]]
    n = dataset.patch_size
    new = dm.splits["train"].slices[vol][s, y : y + n, x : x + n]
    np.testing.assert_array_equal(after[changed[0], 0].numpy(), new)
    # the dataset's patch classes follow the new labels, and the epoch keeps its length
    assert np.array_equal(dataset.targets, dm._index(dm.splits["train"])[1])
    assert len(list(sampler)) == length == len(sampler)
    drawn = np.bincount(dataset.targets[list(sampler)], minlength=3)
    assert drawn[2] / length == pytest.approx(dm.min_class_fraction, abs=0.03)  # oversampled
    sampler.set_epoch(0)  # back to epoch 0 (a new fit): the same lesions as before
    assert all(np.array_equal(a, b) for a, b in zip(epoch0, dm.splits["train"].labels, strict=True))
    x, y = dataset.__getitems__(list(range(8)))
    assert x.shape[0] == 8 and int(y.max()) <= 2


def test_tumor_target_and_bad_source_labels(tmp_path):
    source = write_source(tmp_path / "src", 4)
    cfg = lesion_cfg([f"data.root={source}", "data.target=tumor"])
    dm = instantiate(cfg.data)
    dm._resolve_classes({"background": 0, "vertebra": 1})
    assert dm.classes == [[2]] and dm.n_outputs == 1
    with pytest.raises(DataError, match="free tumour label 2"):
        dm._resolve_classes({"background": 0, "vertebra": 1, "tumor": 2})


def test_lesions_entry_config_reads_the_benchmark_settings():
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("lesions", overrides=["out=/tmp/x", "data.lesions.seed=3"])
    assert cfg.data.root == "../shared/data/lumbar-vb" and cfg.out == "/tmp/x"
    lesions = OmegaConf.to_container(cfg.data.lesions, resolve=True)
    assert LesionSpec.from_config(lesions).tumor_label == 2 and lesions["seed"] == 3


def test_pixelwise_baselines_get_the_lesion_slice_twin(tmp_path):
    source = write_source(tmp_path / "src", 5)
    cfg = lesion_cfg(
        [
            f"data.root={source}",
            "model=unet",
            "data.lesions.none_probability=0.0",
            "data.split.val=0.2",
            "data.split.test=0.2",
        ]
    )
    dm = make_datamodule(cfg)
    dm.setup("fit")
    assert isinstance(dm, LesionSliceDataModule) and dm.n_outputs == 3
    loader = dm.train_dataloader()
    masks = [m.copy() for m in loader.dataset.masks]
    loader.sampler.set_epoch(1)
    new = [class_map(lab, dm.classes) for lab in dm.splits["train"].labels]
    assert all(np.array_equal(a, b) for a, b in zip(loader.dataset.masks, new, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(masks, new, strict=True))
    image, mask = next(iter(loader))
    assert image.shape[0] == mask.shape[0] and int(mask.max()) <= 2
    dataset = loader.dataset  # the classes each slice shows, against np.unique
    expected = [set(np.unique(dataset.masks[v][k]).tolist()) | {0} for v, k in dataset.index]
    assert dm._slice_classes() == expected and any(2 in c for c in expected)


def test_device_loader_is_refused_while_training_scans_change(lesion_dm):
    lesion_dm.loader_cfg = dict(lesion_dm.loader_cfg, on_device=True)
    with pytest.raises(ValueError, match="new lesions every epoch"):
        lesion_dm.train_dataloader()
    assert lesion_dm.val_dataloader() is not None  # evaluation loaders are unaffected


def test_lesion_dataset_is_written_once_per_settings(spec, tmp_path):
    source = write_source(tmp_path / "src", 2)
    out = lesion_dataset(source, tmp_path / "cache", spec, seed=1)
    stamp = (out / "dataset.json").stat().st_mtime_ns
    assert lesion_dataset(source, out, spec, seed=1) == out
    assert (out / "dataset.json").stat().st_mtime_ns == stamp  # reused
    lesion_dataset(source, out, spec, seed=2)
    assert json.loads((out / "dataset.json").read_text())["seed"] == 2


@pytest.mark.parametrize(
    "model",
    [
        ["model.n_nodes=16", "model.n_layers=1"],  # PENN
        [  # the lesion model's recipe with a weighted tumour class
            "+experiment=lesion_model",
            "hydra.mode=RUN",
            "model.finetune.class_weights=[1,1,4]",
            "model.net.features=[4,4,8,8,8,4]",
            "model.slices.crop=32",
        ],
    ],
    ids=["penn", "lesion_model"],
)
def test_lesion_run_reports_lesion_detection_in_domain_and_external(tmp_path, model):
    """A three-class run on the lesion benchmark scores lesions on its test split and on an
    external collection that gets the fixed lesions of the benchmark's seed."""
    source, external = write_source(tmp_path / "src", 5), write_source(tmp_path / "ext", 2)
    cfg = lesion_cfg(
        [
            *model,
            f"data.root={source}",
            f"data.external.root={external}",
            "data.lesions.none_probability=0.0",
            "data.split.val=0.2",
            "data.split.test=0.2",
            "data.patches.size=16",
            "data.loader.max_eval_patches=500",
            "trainer.fast_dev_run=true",
            "trainer.enable_progress_bar=false",
        ]
    )
    with open_dict(cfg):
        cfg.paths.data_dir, cfg.paths.output_dir = str(tmp_path / "data"), str(tmp_path / "run")
    train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    written = tmp_path / "data" / "lumbar_vb_xseq_lesions"
    true_lesions = 0
    for case in list_cases(written):
        labels = read_case(case, [0, 1, 2]).labels
        true_lesions += ndimage.label(labels == 2, structure=np.ones((3, 3, 3)))[1]
    assert true_lesions > 0
    assert metrics["external/lesion/lesions"] == true_lesions
    assert metrics["test/lesion/lesions"] >= 1
    for stage in ("test", "external"):
        found, missed = metrics[f"{stage}/lesion/found"], metrics[f"{stage}/lesion/missed"]
        assert found + missed == metrics[f"{stage}/lesion/lesions"]
        by_size = [
            metrics[f"{stage}/lesion/lesions_{b}"] for b in ("under_1ml", "1_5ml", "over_5ml")
        ]
        assert sum(by_size) == metrics[f"{stage}/lesion/lesions"]
        assert metrics[f"{stage}/lesion/false_per_scan"] >= 0


def test_slice_shuffle_shows_a_rare_class_in_its_share_of_the_epoch():
    shown = [{0, 1, 2} if i < 5 else {0, 1} if i < 60 else {0} for i in range(100)]
    plain = EpochShuffle(100, 0, lambda epoch: None)
    assert sorted(plain.draw(0).tolist()) == list(range(100))  # every slice once
    sampler = EpochShuffle(100, 0, lambda epoch: None, 0.15, lambda: shown)
    order = sampler.draw(0)
    assert len(order) == 100
    with_tumour = sum(2 in shown[i] for i in order)
    assert with_tumour == 15  # ceil(0.15 * 100) slots, from 5 slices repeated
    assert {int(i) for i in order if 2 in shown[i]} == set(range(5))
    assert sum(1 in shown[i] for i in order) >= 55  # the common class keeps most of its slots
    assert np.array_equal(order, sampler.draw(0)) and not np.array_equal(order, sampler.draw(1))
