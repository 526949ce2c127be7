"""Pick the torch device for a run: ``auto`` (CUDA when present), ``cpu`` or ``cuda``."""

from __future__ import annotations


def resolve_device(option: str | None) -> str:
    import torch

    choice = (option or "auto").lower()
    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available here — use --device cpu or auto")
    return choice
