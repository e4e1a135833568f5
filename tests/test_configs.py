"""Every experiment file and every scale-out option composes and instantiates (no training)."""

from __future__ import annotations

import itertools

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import DictConfig

from penn.data.datamodule import PatchDataModule
from penn.lit.phases import step_group
from penn.models.sparse_ae import StackedSparseAutoencoder
from tests.conftest import CONF

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


def compose_train(overrides: list[str], tmp_path) -> DictConfig:
    """``train.yaml`` with ``overrides``, the Hydra node included, output in ``tmp_path``."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(
            "train",
            return_hydra_config=True,
            overrides=[
                *overrides,
                f"paths.data_dir={tmp_path / 'data'}",
                f"paths.output_dir={tmp_path}",
            ],
        )


def build_trainer(cfg: DictConfig) -> L.Trainer:
    # GPU experiments are built on CPU where there is no GPU; the composed value is checked apart
    cpu = {} if torch.cuda.is_available() else {"accelerator": "cpu"}
    return instantiate(cfg.trainer, max_epochs=1, logger=False, **cpu)


def test_every_experiment_file_is_found():
    assert {"sweep_layers", "ablation_sparsity", "paper", "search_optuna"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_opens_with_the_global_package_line(name):
    # a comment before it makes Hydra file every key under `experiment.` silently
    first = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()[0]
    assert first == "# @package _global_"


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_instantiates_data_model_and_trainer(name, tmp_path):
    cfg = compose_train([f"+experiment={name}"], tmp_path)
    assert cfg.task_name == name  # sweeps land in multirun/<name>/...
    assert cfg.hydra.launcher._target_ == BASIC_LAUNCHER  # experiments never pin a launcher
    assert isinstance(instantiate(cfg.data), PatchDataModule)
    net = instantiate(cfg.model.net, n_outputs=1)
    if cfg.model.level == "patch":
        assert isinstance(net, StackedSparseAutoencoder)
        assert len(net.stages) == cfg.model.n_layers
    else:  # a whole-slice network keeps the slice size
        channels = cfg.model.net.get("in_channels", 1)  # 3: a slice and its two neighbours
        assert net.eval()(torch.rand(1, channels, 40, 36)).shape == (1, 1, 40, 36)
    assert isinstance(build_trainer(cfg), L.Trainer)


def sweep_params(cfg: DictConfig) -> dict[str, str]:
    return dict(cfg.hydra.sweeper.params)


def test_sweep_layers_is_the_fig6_grid(tmp_path):
    cfg = compose_train(["+experiment=sweep_layers"], tmp_path)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert sweep_params(cfg) == {"model.n_layers": "1,2,3,4", "model.n_nodes": "50,100,200,400"}


def test_ablation_sweeps_the_sae_preset_against_none_over_three_seeds(tmp_path):
    cfg = compose_train(["+experiment=ablation_sparsity"], tmp_path)
    assert cfg.hydra.mode.name == "MULTIRUN"
    assert sweep_params(cfg) == {"model/sae": "matlab_example,none", "seed": "1,2,3"}
    for preset, expected in (("matlab_example", (0.004, 4.0)), ("none", (0.0, 0.0))):
        sae = compose_train(
            ["+experiment=ablation_sparsity", f"model/sae={preset}"], tmp_path
        ).model.sae
        assert (sae.lambda_l2, sae.beta, sae.rho) == (*expected, 0.15)


def test_paper_experiment_is_the_papers_protocol(tmp_path):
    cfg = compose_train(["+experiment=paper"], tmp_path)
    assert cfg.trainer.accelerator == "gpu"
    assert (cfg.model.n_layers, cfg.model.n_nodes, cfg.model.pretrain.epochs) == (3, 200, 500)
    assert (cfg.data.loader.batch_size, cfg.data.balance_ratio) == (64, 0.6)
    assert cfg.data.loader.on_device  # batches cut on the GPU (README, Performance)
    # 32 steps of 64 per training step, one CUDA graph on a GPU
    assert step_group(cfg) == {"steps_per_batch": 32, "micro_batch": 64}
    assert (cfg.data.patches.size, cfg.data.patches.threshold) == (32, 0.6)
    assert cfg.model.sae.lambda_l2 > 0 and cfg.model.sae.beta > 0
    # none of penn's additions: plain undersampling, no weight average
    finetune = cfg.model.finetune
    assert finetune.hard_negatives.fraction == 0.0
    assert finetune.weight_average is None


def test_step_groups_are_for_patch_classifiers_only(tmp_path):
    cfg = compose_train(["data.loader.steps_per_batch=4"], tmp_path)
    assert step_group(cfg) == {"steps_per_batch": 4, "micro_batch": 64}
    # a whole-slice net takes one step per batch of slices, whatever the patch stream's groups
    cfg = compose_train(["model=unet", "data.loader.steps_per_batch=4"], tmp_path)
    assert step_group(cfg) == {"steps_per_batch": 1, "micro_batch": 64}


def test_optuna_search_maximises_the_value_train_returns(tmp_path):
    cfg = compose_train(["+experiment=search_optuna"], tmp_path)
    assert cfg.hydra.sweeper._target_.endswith("OptunaSweeper")
    assert cfg.hydra.sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/pixel/dice"
    assert set(sweep_params(cfg)) == {
        "model.n_layers",
        "model.n_nodes",
        "model.sae.lambda_l2",
        "model.sae.beta",
        "model.sae.rho",
        "data.patches.stride",
    }


@pytest.mark.parametrize(
    ("trainer", "logger"), itertools.product(["default", "cpu", "gpu", "ddp"], ["csv", "wandb"])
)
def test_trainer_and_logger_options_instantiate(trainer, logger, tmp_path):
    cfg = compose_train([f"trainer={trainer}", f"logger={logger}"], tmp_path)
    built = build_trainer(cfg)
    if trainer == "ddp":
        assert isinstance(built.strategy, DDPStrategy) and cfg.trainer.num_nodes == 1
        # each process reads its share through a DataLoader: no on-device patch stream
        assert not cfg.data.loader.on_device and cfg.data.loader.steps_per_batch == 1
    loggers = {name: instantiate(node) for name, node in cfg.logger.items()}
    assert isinstance(loggers["csv"], CSVLogger)
    if logger == "wandb":  # building the logger starts no run and touches no network
        wandb = loggers["wandb"]
        assert isinstance(wandb, WandbLogger) and cfg.logger.wandb.offline
        assert cfg.logger.wandb.group.startswith("train-")  # resolves outside a sweep too
        assert list(cfg.logger.wandb.tags) == ["penn", "phantom", "train"]


@pytest.mark.parametrize(
    ("launcher", "target", "knobs"),
    [
        ("joblib_local", "JoblibLauncher", {"n_jobs": 2}),
        (
            "slurm",
            "SlurmLauncher",
            {
                "partition": None,
                "gpus_per_node": 1,
                "timeout_min": 720,
                "cpus_per_task": 8,
                "mem_gb": 32,
                "array_parallelism": 16,
            },
        ),
    ],
)
def test_launchers_extend_the_plugins_config(launcher, target, knobs, tmp_path):
    cfg = compose_train(["+experiment=sweep_layers", f"hydra/launcher={launcher}"], tmp_path)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert {k: cfg.hydra.launcher[k] for k in knobs} == knobs


MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))


def test_baselines_sweeps_every_model_over_three_seeds(tmp_path):
    cfg = compose_train(["+experiment=baselines"], tmp_path)
    assert cfg.hydra.mode.name == "MULTIRUN"
    params = sweep_params(cfg)
    assert sorted(params["model"].split(",")) == MODELS and params["seed"] == "1,2,3"


@pytest.mark.parametrize("name", MODELS)
def test_every_model_config_builds_its_network_and_monitors_its_level(name, tmp_path):
    cfg = compose_train([f"model={name}"], tmp_path)
    assert cfg.model.level in ("patch", "pixel")
    assert cfg.callbacks.checkpoint.monitor == f"val/{cfg.model.level}/loss"
    net = instantiate(cfg.model.net, n_outputs=1)
    if cfg.model.level == "patch":
        out = net(torch.rand(2, getattr(net, "in_channels", 1), 32, 32))  # 2: a context patch
        assert out.shape == (2, 1)
    else:
        channels = 3 if cfg.model.slices.context_offset else 1
        out = net.eval()(torch.rand(1, channels, 40, 36))
        out = out[0] if isinstance(out, tuple) else out
        assert out.shape == (1, 1, 40, 36)


@pytest.mark.parametrize(
    ("overrides", "epochs", "mined", "gamma", "context", "members", "sigma", "ema", "smooth"),
    [
        # model=penn without a recipe: the paper's PENN
        ([], 8, 0.0, [0.8, 1.25], 0, 1, 0.0, None, 2.0),
        (["data=lumbar_vb"], 8, 0.0, [0.8, 1.25], 0, 1, 0.0, None, 2.0),
        (["recipe=penn_phantom"], 8, 0.75, [0.8, 1.25], 8, 3, 3.0, 0.98, 1.0),
        (["data=lumbar_vb", "recipe=penn_lumbar_vb"], 15, 0.5, [0.5, 2.0], 4, 1, 6.0, None, 2.0),
        # a command-line override beats the recipe
        (
            ["data=lumbar_vb", "recipe=penn_lumbar_vb", "model.finetune.epochs=5"],
            5,
            0.5,
            [0.5, 2.0],
            4,
            1,
            6.0,
            None,
            2.0,
        ),
        (["data=lumbar_vb_lesions"], 8, 0.0, [0.8, 1.25], 0, 1, 0.0, None, 2.0),
        # the paper restates its protocol over a recipe
        (
            ["data=lumbar_vb", "recipe=penn_lumbar_vb", "+experiment=paper"],
            15,
            0.0,
            [0.5, 2.0],
            0,
            1,
            0.0,
            None,
            2.0,
        ),
        (["+experiment=paper"], 8, 0.0, [0.8, 1.25], 0, 1, 0.0, None, 2.0),
        (["data=lumbar_vb", "model=unet"], 20, None, [0.8, 1.25], 0, 1, 0.0, None, 2.0),
    ],
)
def test_recipes_set_penns_settings_and_no_recipe_is_the_paper(
    overrides, epochs, mined, gamma, context, members, sigma, ema, smooth, tmp_path
):
    cfg = compose_train(overrides, tmp_path)
    finetune = cfg.model.finetune
    assert finetune.epochs == epochs and finetune.members == members
    assert (finetune.get("weight_average") or {}).get("decay") == ema
    assert cfg.inference.slice_sigma_mm == sigma
    assert cfg.data.preprocess.smooth_sigma == smooth
    assert (finetune.hard_negatives.fraction if "hard_negatives" in finetune else None) == mined
    assert list(cfg.data.augment.gamma) == gamma
    assert cfg.data.patches.context_dilation == context
    assert cfg.model.net.get("context_dilation", 0) == (context if cfg.model.name == "penn" else 0)
    recipe = next((o.split("=", 1)[1] for o in overrides if o.startswith("recipe=")), None)
    assert cfg.recipe_name == recipe
