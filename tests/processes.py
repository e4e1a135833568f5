"""``python -m MODULE ARGS`` for the end-to-end tests, without paying the imports every time.

Each run of penn's entry points in a fresh interpreter spends about 5 s on 2 CPU cores importing
torch, Lightning, Hydra and scipy before it does anything; the suite starts about 25 of them. A
fork server (``multiprocessing``'s ``forkserver``) imports those libraries once, in a process that
never runs a torch operation (so no thread pool is forked), and forks a child for every run. The
child is still a process of its own: it gets the requested environment and working directory,
its stdout and stderr go to files, ``sys.argv`` and ``__main__`` are what ``python -m MODULE``
would give (:func:`runpy.run_module` with ``alter_sys``, so Lightning's DDP launcher re-runs the
same module), its exit code is that of ``sys.exit``, and atexit handlers run before it ends. The
entry points' own modules are not preloaded: each run executes them afresh as ``__main__``.
"""

from __future__ import annotations

import atexit
import multiprocessing
import os
import runpy
import subprocess
import sys
import tempfile
from pathlib import Path

__all__ = ["run_module"]

# the heavy imports every entry point shares (not the entry points themselves)
PRELOAD = [
    "torch",
    "lightning",
    "hydra",
    "torchmetrics",
    "scipy.ndimage",
    "skimage.measure",
    "nibabel",
    "penn.data.datamodule",
    "penn.inference.predictor",
    "penn.checkpoint",
    "penn.lit.finetune",
    "penn.lit.pretrain",
    "penn.lit.segmentation",
    "penn.lit.mining",
    "penn.reports.run_files",
    "penn.lit.trainer",
]

_context = None


def _server():
    global _context
    if _context is None:
        _context = multiprocessing.get_context("forkserver")
        _context.set_forkserver_preload(PRELOAD)
    return _context


def _child(module: str, args: list[str], env: dict, cwd: str, out: str, err: str) -> None:
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, out), (2, err)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(handle, fd)
        os.close(handle)
    sys.argv = [module, *args]
    code = 0
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if isinstance(stop.code, int):
            code = stop.code
        elif stop.code is not None:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    try:
        atexit._run_exitfuncs()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_module(
    module: str,
    args: list[str],
    env: dict | None = None,
    cwd: Path | None = None,
    timeout: float = 600,
    fork: bool = True,
) -> subprocess.CompletedProcess:
    """Runs ``python -m module *args`` in a forked child; stdout and stderr come back as text.

    ``fork=False`` starts a fresh interpreter instead: Hydra's joblib launcher took 5 min
    instead of 20 s from a forked child (not investigated further).
    """
    env = dict(os.environ if env is None else env)
    cwd = str(cwd or Path.cwd())
    cmd = [sys.executable, "-m", module, *args]
    if not fork:
        return subprocess.run(
            cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
        )
    with tempfile.TemporaryDirectory() as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        child = _server().Process(target=_child, args=(module, list(args), env, cwd, out, err))
        child.start()
        child.join(timeout)
        if child.is_alive():
            child.kill()
            child.join()
            raise subprocess.TimeoutExpired([module, *args], timeout)
        stdout, stderr = (Path(p).read_text() if os.path.exists(p) else "" for p in (out, err))
    return subprocess.CompletedProcess(cmd, child.exitcode, stdout, stderr)
