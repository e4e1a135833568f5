"""Several optimizer steps per Lightning training step, replayed as one CUDA graph on a GPU.

The paper trains a small network (1024-200-200-200) with batches of 64 for about a million steps.
On a GPU each such step is a few dozen tiny kernels: its time goes to launching them and to
Lightning's per-step bookkeeping, not to arithmetic. ``data.loader.steps_per_batch = K`` hands
the module K batches at once (cut on the device,
:class:`penn.data.device_loader.DevicePatchLoader`);
:class:`StepGroup` steps through them one batch at a time -- the same K updates, in the same
order, as K ordinary steps -- and on a CUDA device captures those K steps once as a CUDA graph
(``torch.cuda.graph``) and replays it for every later group of K, so launching costs one call.

The first full group runs eagerly on a side stream (it warms up cuBLAS and creates the
optimizer's state, as PyTorch's capture recipe asks), the second is captured and then replayed,
and every later one is replayed. A shorter last group of an epoch runs eagerly. Nothing in a step
may depend on host-side values (no ``.item()``, no data-dependent Python branches); the
optimizer must be capturable (Adam, AdamW, built with ``capturable=True`` here).

Lightning's ``global_step`` still counts single optimizer steps (:func:`count_optimizer_steps`),
so checkpoints, logging intervals and resuming behave as with ``steps_per_batch = 1``.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable

import lightning as L
import torch

__all__ = ["StepGroup", "grouped_optimizer", "count_optimizer_steps"]

log = logging.getLogger(__name__)

StepFn = Callable[[torch.Tensor, torch.Tensor], dict[str, torch.Tensor]]


def grouped_optimizer(
    make: Callable[..., torch.optim.Optimizer], params, use_graph: bool
) -> torch.optim.Optimizer:
    """The configured optimizer, made capturable when its steps will be captured in a graph."""
    if not use_graph:
        return make(params)
    target = getattr(make, "func", make)
    try:
        capturable = "capturable" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        capturable = False
    if not capturable:
        name = getattr(target, "__name__", repr(target))
        raise ValueError(
            f"data.loader.steps_per_batch > 1 on a GPU captures the optimizer in a CUDA graph, "
            f"which needs an optimizer with a `capturable` option (Adam, AdamW); got {name}. "
            "Use such an optimizer or set data.loader.steps_per_batch=1"
        )
    return make(params, capturable=True)


def count_optimizer_steps(trainer: L.Trainer, n: int) -> None:
    """Advances ``trainer.global_step`` by ``n`` optimizer steps taken outside Lightning's
    optimizer wrapper (manual optimization), as ``LightningOptimizer.step`` would."""
    trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress.increment_by(n)


def _needs_closure(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer's ``step`` requires a closure (LBFGS), as Lightning passes one."""
    try:
        param = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):
        return False
    return param is not None and param.default is inspect.Parameter.empty


class StepGroup:
    """Runs one optimizer step per ``micro_batch`` rows of a batch; on CUDA, as a CUDA graph.

    Args:
        step: forward and loss of one micro-batch ``(x, y) -> {"loss": ..., other tensors}``;
            every value is returned stacked over the steps of the group.
        optimizer: the optimizer of the trained parameters (capturable when ``use_graph``).
        micro_batch: rows per optimizer step (``data.loader.batch_size``).
        steps: optimizer steps in a full group (``data.loader.steps_per_batch``).
        use_graph: capture full groups as a CUDA graph (the batches must be on a CUDA device).
    """

    def __init__(
        self,
        step: StepFn,
        optimizer: torch.optim.Optimizer,
        micro_batch: int,
        steps: int,
        use_graph: bool,
    ):
        if micro_batch < 1 or steps < 1:
            raise ValueError(f"micro_batch and steps must be >= 1, got {micro_batch}, {steps}")
        self.step, self.optimizer = step, optimizer
        self.micro_batch, self.steps, self.use_graph = micro_batch, steps, use_graph
        self._warm = False
        self._graph: torch.cuda.CUDAGraph | None = None
        self._static: tuple[torch.Tensor, torch.Tensor] | None = None
        self._outputs: list[dict[str, torch.Tensor]] = []
        self.needs_closure = _needs_closure(optimizer)

    def _one(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}

        def closure() -> torch.Tensor:
            self.optimizer.zero_grad(set_to_none=False)
            out.update(self.step(x, y))
            out["loss"].backward()
            return out["loss"]

        if self.needs_closure:  # LBFGS evaluates the loss itself, maybe several times
            self.optimizer.step(closure)
        else:
            closure()
            self.optimizer.step()
        return out

    def _eager(self, x: torch.Tensor, y: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        m = self.micro_batch
        return [self._one(x[i : i + m], y[i : i + m]) for i in range(0, len(x), m)]

    def n_steps(self, batch_rows: int) -> int:
        """Optimizer steps in a batch of ``batch_rows`` rows (a whole number of micro-batches)."""
        n, rest = divmod(batch_rows, self.micro_batch)
        if rest or not n:
            raise ValueError(
                f"a batch of {batch_rows} rows is not a whole number of micro-batches of "
                f"{self.micro_batch} (data.loader.batch_size)"
            )
        return n

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Steps through the batch; returns each step output stacked, shape (steps, ...)."""
        n = self.n_steps(len(x))
        if not self.use_graph or n != self.steps:
            outputs = self._eager(x, y)
        elif not self._warm:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                outputs = self._eager(x, y)
            torch.cuda.current_stream().wait_stream(side)
            self._warm = True
        else:
            if self._graph is None:
                self._static = (x.clone(), y.clone())
                self._graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self._graph):
                    self._outputs = self._eager(*self._static)
                log.info("captured %d optimizer steps as one CUDA graph", n)
            else:
                self._static[0].copy_(x)
                self._static[1].copy_(y)
            self._graph.replay()
            outputs = self._outputs
        return {k: torch.stack([o[k].detach() for o in outputs]) for k in outputs[0]}


class GroupedStepsMixin:
    """For LightningModules: ``data.loader.steps_per_batch`` optimizer steps per training step.

    Call :meth:`_init_step_group` in ``__init__``; build the optimizer with
    :meth:`_make_optimizer`; in ``training_step``, when :attr:`grouped`, call
    :meth:`_run_group`. With one step per batch, Lightning's automatic optimization is untouched.
    """

    def _init_step_group(self, steps_per_batch: int, micro_batch: int | None) -> None:
        if steps_per_batch > 1 and not micro_batch:
            raise ValueError("steps_per_batch > 1 needs the micro-batch size (batch_size)")
        self.steps_per_batch, self.micro_batch = int(steps_per_batch), micro_batch
        self._step_group: StepGroup | None = None
        if self.grouped:
            self.automatic_optimization = False

    @property
    def grouped(self) -> bool:
        return self.steps_per_batch > 1

    @property
    def _use_graph(self) -> bool:
        return self.grouped and self.device.type == "cuda"

    def _make_optimizer(self, make, params) -> torch.optim.Optimizer:
        return grouped_optimizer(make, params, self._use_graph)

    def _run_group(self, x: torch.Tensor, y: torch.Tensor, step: StepFn) -> dict[str, torch.Tensor]:
        if self._step_group is None:
            if self._use_graph and self.trainer.precision != "32-true":
                raise ValueError(
                    "data.loader.steps_per_batch > 1 on a GPU replays a CUDA graph and needs "
                    f"trainer.precision=32-true (got {self.trainer.precision})"
                )
            optimizer = self.optimizers().optimizer  # the raw optimizer, stepped in the group
            self._step_group = StepGroup(
                step, optimizer, self.micro_batch, self.steps_per_batch, self._use_graph
            )
        out = self._step_group(x, y)
        count_optimizer_steps(self.trainer, len(out["loss"]))
        return out
