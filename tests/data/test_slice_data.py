import numpy as np
import torch
from hydra.utils import instantiate

from penn.data.slice_data import SliceDataModule, SliceDataset


def test_slice_dataset_maps_labels_to_classes_and_replicates_edge_neighbours():
    slices = [np.arange(4, dtype=np.float32)[:, None, None] * np.ones((4, 3, 5), np.float32)]
    labels = [np.zeros((4, 3, 5), np.uint8)]
    labels[0][1, 0, 0], labels[0][1, 0, 1] = 2, 7
    single = SliceDataset(slices, labels, [[2, 3]], context_offset=0)
    image, mask = single[1]
    assert image.shape == (1, 3, 5) and mask.dtype == torch.int64
    assert mask[0, 0] == 1 and mask[0, 1] == 0 and mask.sum() == 1
    triplets = SliceDataset(slices, labels, [[2, 3]], context_offset=2)
    assert len(triplets) == 4
    assert triplets[0][0][:, 0, 0].tolist() == [0.0, 0.0, 2.0]
    assert triplets[3][0][:, 0, 0].tolist() == [1.0, 3.0, 3.0]


def test_slice_datamodule_serves_whole_slices_of_the_patch_split(cfg_tiny):
    dm = instantiate(
        cfg_tiny.data,
        _target_="penn.data.slice_data.SliceDataModule",
        slice_batch=2,
        context_offset=1,
    )
    assert isinstance(dm, SliceDataModule)
    dm.prepare_data()
    dm.setup("fit")
    images, masks = next(iter(dm.train_dataloader()))
    shape = dm.splits["train"].slices[0].shape[1:]
    assert images.shape == (2, 3, *shape) and masks.shape == (2, *shape)
    assert int(masks.max()) <= len(dm.classes)
    n_val = sum(len(s) for s in dm.splits["val"].slices)
    assert sum(len(b[0]) for b in dm.val_dataloader()) == n_val
