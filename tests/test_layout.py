"""The package's layout: modules along the data's path, imports pointing down it, short units."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "penn"

# the data's path, top to bottom: a module may import from its own step or from steps above it
PATH = [
    ("io",),
    ("synth",),
    ("preprocess", "metrics", "lesion_detection"),
    ("patches",),
    ("data",),
    ("models",),
    ("checkpoint",),
    ("lit",),
    ("inference",),
    ("postprocess",),
    ("calibration",),
    ("scoring",),
    ("reports",),
    ("weights",),
    ("cli",),
    ("run", "evaluate", "predict", "make_lesions"),
    ("__main__",),
]
STEP = {name: i for i, names in enumerate(PATH) for name in names}
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60  # without the docstring


def modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if name != "penn":
            found.append((name, path))
    return found


def step(module: str) -> int:
    top = module.split(".")[1]
    if top not in STEP:
        raise AssertionError(f"{module}: not on the data's path (tests/test_layout.py PATH)")
    return STEP[top]


def test_every_module_has_a_place_on_the_path():
    for name, _ in modules():
        step(name)


@pytest.mark.parametrize("name,path", modules(), ids=lambda v: v if isinstance(v, str) else "")
def test_imports_point_down_the_path(name, path):
    here = step(name)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("penn."):
            assert step(node.module) <= here, f"{name} imports {node.module}, later on the path"
            same_step = step(node.module) == here
            other_top = node.module.split(".")[1] != name.split(".")[1]
            assert not (same_step and other_top), f"{name} imports its sibling {node.module}"


def test_modules_and_functions_stay_short():
    long_modules, long_functions = [], []
    for name, path in modules():
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long_modules.append(name)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                first = node.body[0]
                if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                    lines -= first.end_lineno - first.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long_functions.append(f"{name}.{node.name} ({lines})")
    assert not long_modules, f"over {MAX_MODULE_LINES} lines: {long_modules}"
    assert not long_functions, f"over {MAX_FUNCTION_LINES} lines: {long_functions}"


def test_the_path_ranks_steps_in_order_and_refuses_other_modules():
    """The ranks themselves: the data before the reports, io first, an unknown module refused."""
    assert step("penn.data.datamodule") < step("penn.reports.external")
    assert step("penn.io.nifti") < step("penn.synth.phantom") < step("penn.run")
    with pytest.raises(AssertionError, match="not on the data's path"):
        step("penn.nowhere")
