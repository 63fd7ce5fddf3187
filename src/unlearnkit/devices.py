"""Checking a torch device name before any work is done on it."""

from __future__ import annotations

from unlearnkit.errors import UnlearnKitError


def check_device(device, *, what: str = "device", error: type[UnlearnKitError] = UnlearnKitError) -> None:
    """Raise ``error`` unless ``device`` (a name such as ``cpu``, ``cuda:0``, ``mps``, or a
    :class:`torch.device`; None means the default, the CPU) exists on this machine. ``what``
    names the option in the message."""
    import torch

    if device is None:
        return
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise error(f"{what} {str(device)!r} is not a torch device; use cpu, cuda, cuda:0 or mps.") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise error(f"{what} = {str(device)!r}, but this machine has {torch.cuda.device_count()} CUDA device(s); "
                    "use cpu or run where the GPU is.")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise error(f"{what} = 'mps', but MPS is not available here.")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise error(f"{what} = {str(device)!r}: unlearnkit runs on cpu, cuda or mps.")
