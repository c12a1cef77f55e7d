"""Reading state dicts from checkpoint files and loading them strictly: a tensor that is missing, unexpected or
mis-shaped is an error that names it, never random weights."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor, nn


class CheckpointError(ValueError):
    """A checkpoint that does not match the network it is loaded into, or cannot be read."""


def load_state_strict(net: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load `state` into `net`, failing with the names of missing, unexpected, mis-shaped and non-finite tensors."""
    check_shapes({k: v.shape for k, v in net.state_dict().items()}, {k: v.shape for k, v in state.items()}, source)
    broken = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if broken:
        names = ", ".join(broken[:3]) + (" ..." if len(broken) > 3 else "")
        raise CheckpointError(f"{source} holds NaN or infinite weights ({names}): it is damaged, or was saved "
                              "after training diverged")
    net.load_state_dict(state, strict=True)


def check_shapes(own: dict[str, tuple], state: dict[str, tuple], source: str = "checkpoint") -> None:
    """Fail with the names of missing, unexpected and mis-shaped tensors of `state` against a network's `own`."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(f"{k}: checkpoint {tuple(state[k])} vs network {tuple(own[k])}"
                       for k in set(own) & set(state) if tuple(own[k]) != tuple(state[k]))
    if missing or unexpected or misshaped:
        def show(title, items):
            return f"\n  {title} ({len(items)}): " + ", ".join(items[:12]) + (" ..." if len(items) > 12 else "") if items else ""
        raise CheckpointError(f"{source} does not fit the network:" + show("missing", missing)
                              + show("unexpected", unexpected) + show("wrong shape", misshaped))


def load_tensors(path: Path):
    """torch.load(path) of tensors and plain containers only (weights_only: no code runs); a CheckpointError
    that says why a file is refused, without torch's advice to load it unsafely."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling raises many error types
        if "Unsupported global" in str(e):
            why = "it holds Python objects besides tensors, and loading those could run code"
        else:
            why = f"it is damaged or not a PyTorch file ({type(e).__name__})"
        raise CheckpointError(f"cannot read {path}: {why}") from e


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a checkpoint file: a .safetensors file, or a torch.save'd state dict (read with
    weights_only=True, so no code runs), possibly wrapped under "state_dict" or "model" or saved from
    DataParallel ("module." prefixes). Unreadable files raise CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint file {path}")
    if path.suffix != ".safetensors":
        state = load_tensors(path)
    else:
        try:
            state = load_file(str(path))
        except Exception as e:  # safetensors raises many error types
            raise CheckpointError(f"cannot read {path} as a state dict ({e})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (names -> tensors)")
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel wrapper
        state = {k[len("module."):]: v for k, v in state.items()}
    return state
