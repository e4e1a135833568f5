"""Packaging beside pyproject.toml: the top-level ``conf/`` ships inside the wheel as ``penn.conf``.

Hydra's entry points read their configs as ``pkg://penn.conf``, which works the same for an
editable install (the checkout's ``conf/``) and for ``pip install .`` (the copy in the wheel).
The model files penn ships (``penn/weights/*.pt``) are package data of ``penn.weights``.
Everything else about the package is in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["penn", "penn.*"]) + ["penn.conf"],
    package_dir={"penn.conf": "conf"},
    # every config group folder, as package data of penn.conf (three levels deep at most)
    package_data={
        "penn.conf": ["*.yaml", "*/*.yaml", "*/*/*.yaml", "*/*/*/*.yaml"],
        "penn.weights": ["*.pt"],  # the model files penn ships (penn/weights/__init__.py)
    },
)
