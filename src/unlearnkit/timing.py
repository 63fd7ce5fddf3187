"""Honest wall-clock timing of the library's timed regions.

Every time the library reports (:attr:`UnlearnResult.seconds <unlearnkit.influence.updates.UnlearnResult.seconds>`,
a model's ``train_seconds``, a ledger request's latency, a certified request's ``seconds``) is measured with
:func:`start` and :func:`since`:

- :func:`start` first runs, once per process and device, a **warm-up** of the code paths the timed regions use:
  the first call of ``torch.func`` (``grad``, ``vmap``, ``jvp``, ``functional_call``) imports ``torch._dynamo``
  and sets up its tracing machinery, which can cost seconds (10-20 s on a slow file system) and would otherwise
  be counted in the first timed call only. The warm-up runs on a three-parameter function, outside every timer:
  on the CPU, and on a CUDA device too (a small matrix product and the same ``torch.func`` calls there, which
  also pay CUDA's lazy set-up) when :func:`start` is given that device or CUDA is already in use. It draws no
  random numbers: the random streams of torch, NumPy and Python are where they were.
- On a CUDA device, :func:`start` and :func:`since` synchronise it (the device they are given, else the
  current one), so queued kernels are counted in the region that launched them and not in the next one.

A timed call in a fresh process therefore reports about what the same call reports when repeated.
"""

from __future__ import annotations

import logging
import time

logger = logging.getLogger(__name__)

_warmed = False  # the CPU part (torch.func's one-off import) has run
_warmed_devices: set[str] = set()  # the CUDA devices warmed up


def _cuda_device(device=None):
    """``device`` as a ``torch.device`` when it is a CUDA device (``None``: the current one, if CUDA is in use)."""
    import sys

    torch = sys.modules.get("torch")
    if torch is None:
        return None
    if device is None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            return torch.device("cuda", torch.cuda.current_device())
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device if device.index is not None else torch.device("cuda", torch.cuda.current_device())


def warm_up(device=None) -> None:
    """Pay the one-off costs of the first ``torch.func`` call (the lazy import of ``torch._dynamo``, the first
    trace of ``grad``, ``vmap``, ``jvp`` and ``functional_call``) now, outside any timer, on the CPU and on
    ``device`` when it is a CUDA device (``None``: the current CUDA device if CUDA is in use); a no-op for a
    device already warmed up. No random numbers are drawn."""
    global _warmed
    cuda = _cuda_device(device)
    targets = ([] if _warmed else ["cpu"]) + ([cuda] if cuda is not None and str(cuda) not in _warmed_devices else [])
    if not targets:
        return
    begun = time.perf_counter()
    for target in targets:
        _warm(target)
        if target == "cpu":
            _warmed = True
        else:
            _warmed_devices.add(str(target))
    logger.debug("timing warm-up (torch.func first call) on %s took %.3fs, outside every timer",
                 ", ".join(map(str, targets)), time.perf_counter() - begun)


def _warm(device) -> None:
    import torch
    from torch.func import functional_call, grad, jvp, vmap

    with torch.enable_grad():
        with torch.random.fork_rng(devices=[]):  # nn.Linear initialises randomly: leave the CPU stream untouched
            layer = torch.nn.Linear(3, 1)
        params = {k: torch.full(v.shape, 0.5, device=device) for k, v in layer.named_parameters()}
        layer = layer.to(device)
        x = torch.ones(2, 3, device=device)

        def loss(p, row):
            return functional_call(layer, p, (row,)).square().sum()

        per_row = vmap(grad(loss), in_dims=(None, 0))(params, x)
        g = grad(loss)
        jvp(lambda p: g(p, x[0]), (params,), ({k: v[0] for k, v in per_row.items()},))
        torch.linalg.solve(torch.eye(2, device=device), torch.ones(2, device=device))
        (x @ x.T).sum().item()  # waits for the device


def _synchronize(device=None) -> None:
    cuda = _cuda_device(device)
    if cuda is not None:
        import torch

        torch.cuda.synchronize(cuda)


def start(device=None) -> float:
    """The start of a timed region: the warm-up (once per process and device), a synchronisation of ``device`` when
    it is a CUDA device (``None``: the current CUDA device when CUDA is in use), then ``time.perf_counter()``."""
    warm_up(device)
    _synchronize(device)
    return time.perf_counter()


def since(begun: float, device=None) -> float:
    """Seconds since :func:`start` returned ``begun``, after synchronising ``device`` (as in :func:`start`)."""
    _synchronize(device)
    return time.perf_counter() - begun
