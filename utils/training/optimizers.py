"""The original's optimizers, Adam and SGD with Nesterov momentum, as torch.optim implements
them, built so that a run does not import torch._dynamo, which torch.optim's wrappers import at
their first call (1.5 s of a 2-core CPU) only to steer ``torch.compile``, which training here
never runs."""

from __future__ import annotations

import sys

import torch
from torch import nn

from utils.settings.config import OptimizerSettings


def _without_dynamo(optimizer: type[torch.optim.Optimizer]) -> type[torch.optim.Optimizer]:
    """``optimizer`` whose ``step`` runs under ``torch.no_grad()`` directly: torch wraps it in a
    function that sets the grad mode from ``differentiable`` (off here) and imports torch._dynamo
    at every call to mark a graph break for ``torch.compile``."""
    step = torch.no_grad()(optimizer.step.__wrapped__)  # the same signature, for GradScaler
    return type(optimizer.__name__, (optimizer,), {"step": step, "__module__": __name__})


Adam = _without_dynamo(torch.optim.Adam)
SGD = _without_dynamo(torch.optim.SGD)


def build_optimizer(
    model: nn.Module, settings: OptimizerSettings, lr: float
) -> torch.optim.Optimizer:
    """Adam with betas (momentum, 0.999), or SGD with Nesterov momentum, as the original.

    Adam is torch's fused implementation, on the CPU as on CUDA: one kernel per step, the
    original's formula, equal to it up to float rounding (parameters within 2e-8 after 5
    steps). A step over the VGG UNet's 25M parameters took 22 ms instead of 76 ms on one core of
    a Zen 4 held to AVX2; with fp16 the GradScaler's inf check stays on the GPU. SGD keeps
    torch's default: the fused SGD of torch 2.14 fails when the backbone joins at the unfreeze
    epoch (some momentum buffers exist and some not yet).
    """
    defer_dynamo_import()
    if settings.optimizer_type == "adam":
        return Adam(
            model.parameters(),
            lr,
            betas=(settings.momentum, 0.999),
            weight_decay=settings.weight_decay,
            fused=True,
        )
    return SGD(
        model.parameters(),
        lr,
        momentum=settings.momentum,
        nesterov=True,
        weight_decay=settings.weight_decay,
    )


def defer_dynamo_import() -> None:
    """Let ``torch.optim.Optimizer``'s methods run without importing torch._dynamo until
    something compiles.

    torch wraps them in ``torch._disable_dynamo``, whose first call imports torch._dynamo (1.5 s
    of a run's start-up on a 2-core CPU) only to keep ``torch.compile`` from tracing them.
    Nothing can trace before torch._dynamo is imported, so until then each method is called
    as it is; from then on, torch's own wrapper is made and used, as without this function.
    """
    for method in vars(torch.optim.Optimizer).values():
        code = getattr(method, "__code__", None)
        if code is None or code.co_name != "inner" or "fn" not in code.co_freevars:
            continue  # not a torch._disable_dynamo wrapper
        cells = dict(
            zip(code.co_freevars, (c.cell_contents for c in method.__closure__), strict=True)
        )
        function = cells["fn"]
        if getattr(function, "__dynamo_disable", None) is None:
            function.__dynamo_disable = _dynamo_on_demand(function, cells.get("recursive", True))


def _dynamo_on_demand(function, recursive: bool):
    def call(*args, **kwargs):
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None:
            return function(*args, **kwargs)
        disabled = dynamo.disable(function, recursive, wrapping=False)
        function.__dynamo_disable = disabled  # torch's own wrapper from now on
        return disabled(*args, **kwargs)

    return call
