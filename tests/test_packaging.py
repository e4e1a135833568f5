"""The wheel carries the configs, and an installed (non-editable) penn runs from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import CONF, TINY_DATA

ROOT = CONF.parent


def pip(*args: str) -> None:
    """``pip *args`` quietly, without dependencies (the test environment has them)."""
    command = [sys.executable, "-m", "pip", *args, "-q", "--no-deps"]
    subprocess.run(command, check=True, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    pip("wheel", "--no-build-isolation", "-w", str(out), str(ROOT))
    return next(out.glob("penn-*.whl"))


def test_the_wheel_holds_every_config_file(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "penn/conf/" + str(p.relative_to(CONF)).replace(os.sep, "/") for p in CONF.rglob("*.yaml")
    }
    assert "penn/conf/train.yaml" in expected and "penn/conf/recipe/penn_phantom.yaml" in expected
    assert expected <= names, sorted(expected - names)


def test_the_wheel_holds_the_shipped_model_files(wheel):
    from penn.weights import SHIPPED

    archive = zipfile.ZipFile(wheel)
    for file_name, _ in SHIPPED.values():
        inside = archive.getinfo(f"penn/weights/{file_name}")
        assert inside.file_size == (ROOT / "penn" / "weights" / file_name).stat().st_size


def test_an_installed_wheel_trains_from_an_empty_folder(wheel, tmp_path):
    site = tmp_path / "site"
    pip("install", "--target", str(site), str(wheel))
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "WANDB_MODE": "offline"}

    def python(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, *args],
            cwd=empty,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    where = python("-c", "import penn; print(penn.__file__)")
    assert Path(where.stdout.strip()).is_relative_to(site)  # the installed copy, not the checkout
    helped = python("-m", "penn.cli", "run", "--help")
    assert helped.returncode == 0 and "recipe" in helped.stdout, helped.stderr[-2000:]
    run = python(
        "-m",
        "penn.run",
        *TINY_DATA,
        "model.n_layers=1",
        "model.n_nodes=8",
        "trainer.fast_dev_run=true",
        "hydra.run.dir=run",
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (empty / "run" / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("module", "given", "named"),
    [
        ("penn.evaluate", [], ["ckpt=...", "data.root=..."]),
        ("penn.predict", ["input=scan.nii.gz"], ["output=..."]),
    ],
)
def test_a_missing_required_option_is_one_line_naming_it(module, given, named, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", module, *given, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert all(key in lines[0] for key in named) and "Traceback" not in proc.stderr
    assert "input=" not in lines[0]
