"""Whether a ``--device`` value ('cpu', 'cuda', 'cuda:N') exists on this machine."""

from __future__ import annotations

from gdig.io.errors import UsageError
from gdig.io.validate import parse_device  # the one syntax check (io: no torch needed)

__all__ = ["check_device_available", "parse_device"]


def check_device_available(device: str) -> str:
    """Parse ``device`` and make sure this machine has it; returns the parsed device.

    Raises :class:`UsageError` when CUDA is asked for but torch sees no CUDA device, or
    when ``cuda:N`` names a device past the ones visible.
    """
    device = parse_device(device)
    if device == "cpu":
        return device
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        raise UsageError(
            f"--device {device}: torch sees no CUDA device on this machine; use --device cpu"
        )
    if device.startswith("cuda:"):
        if int(device.split(":", 1)[1]) >= count:
            valid = "cuda:0" if count == 1 else f"cuda:0 to cuda:{count - 1}"
            raise UsageError(f"--device {device}: only {count} CUDA device(s) visible; use {valid}")
    return device
