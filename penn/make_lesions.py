"""Entry point: write the lesion benchmark as a dataset in the nnU-Net raw layout.

    python -m penn.make_lesions                                  # -> data/lumbar-vb-lesions
    python -m penn.make_lesions out=/tmp/vb-lesions data.lesions.seed=1
    penn lesions data.root=/path/to/scans out=/path/to/out

The lesions are those of ``data.lesions`` (conf/data/lumbar_vb_lesions.yaml), the same that
``python -m penn.run data=lumbar_vb_lesions`` validates and tests on with that seed. The source
is only read.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from penn.synth.lesion_dataset import write_lesion_dataset
from penn.synth.lesions import LesionSpec

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://penn.conf", config_name="lesions")
def main(cfg: DictConfig) -> None:
    lesions = OmegaConf.to_container(cfg.data.lesions, resolve=True)
    out = write_lesion_dataset(
        cfg.data.root, cfg.out, LesionSpec.from_config(lesions), int(lesions["seed"])
    )
    log.info("wrote the lesion dataset %s", out)


if __name__ == "__main__":
    main()
