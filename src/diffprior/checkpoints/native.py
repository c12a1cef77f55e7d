"""diffprior's own checkpoint format: NAME.safetensors with its self-description NAME.json beside it
(architecture, network settings, schedule, image size, training record)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from ..io import atomic_write, write_text
from ..networks import build_network
from ..prior import PREDICTIONS, NetworkPrior
from ..schedule import Schedule
from .state import CheckpointError, check_shapes, load_state_strict, read_state_dict

MAX_IMAGE_SIZE = 8192  # the largest image side a checkpoint description may claim


def save_checkpoint(net: nn.Module, config: dict, path: str | Path, *, dtype: torch.dtype | None = None) -> Path:
    """Write `path` (.safetensors) and its self-description `path.with_suffix('.json')`, each atomically.

    config: {"architecture": ..., "network": {...}, "schedule": {...}, "image_size": ..., "channels": ...,
    "learned_variance": ..., "prediction": "eps" or "v" (default "eps"), "v_shift" (v only; default 1), plus
    anything that documents the training}."""
    path = Path(path).with_suffix(".safetensors")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).detach().cpu().contiguous()
             for k, v in net.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp))
    write_text(path.with_suffix(".json"), json.dumps(config, indent=2) + "\n")
    return path


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """The names and shapes of a .safetensors file's tensors, from its header (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path} as a safetensors file ({e})") from e


def load_checkpoint(path: str | Path, device=None) -> NetworkPrior:
    """Load a diffprior checkpoint (NAME.safetensors + NAME.json) as a Prior."""
    path = Path(path)
    weights, meta = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for f in (weights, meta):
        if not f.is_file():
            raise FileNotFoundError(f"checkpoint file {f} is missing (a diffprior checkpoint is NAME.safetensors "
                                    "with NAME.json beside it)")
    try:
        config = json.loads(meta.read_text())
        if not isinstance(config, dict):
            raise ValueError("it is not a JSON object")
        size = config["image_size"]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size {size!r} is not a whole number in [1, {MAX_IMAGE_SIZE}]")
        if config.get("prediction", "eps") not in PREDICTIONS:
            raise ValueError(f"prediction {config['prediction']!r} is not 'eps' or 'v'")
        v_shift = config.get("v_shift", 1.0)
        if isinstance(v_shift, bool) or not isinstance(v_shift, (int, float)) or not (math.isfinite(v_shift)
                                                                                      and v_shift > 0):
            raise ValueError(f"v_shift {v_shift!r} is not a positive number")
        channels, learned_variance = config.get("channels", 3), config.get("learned_variance", False)
        if isinstance(channels, bool) or channels not in (1, 3):
            raise ValueError(f"channels {channels!r}: the images are grey (1) or RGB (3)")
        if not isinstance(learned_variance, bool):
            raise ValueError(f"learned_variance {learned_variance!r} is not true or false")
        if not isinstance(config.get("network", {}), dict):
            raise ValueError(f"network {config['network']!r} is not an object of the network's settings")
        if config.get("network", {}).get("image_size", size) != size:
            raise ValueError(f"image_size {size} differs from the network's {config['network']['image_size']}")
        if not isinstance(config.get("schedule", {}), dict):
            raise ValueError(f"schedule {config['schedule']!r} is not an object such as {Schedule.linear().config}")
        schedule = Schedule.from_config(config.get("schedule", {}))
        # The description is checked against the weights file's header before the network is built for real:
        # a description that does not fit the file never allocates anything (it is built on the meta device).
        with torch.device("meta"):
            skeleton = build_network(config["architecture"], **config.get("network", {}))
            shapes = {k: v.shape for k, v in skeleton.state_dict().items()}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as e:
        if isinstance(e, KeyError):
            reason = f"it has no {e.args[0]!r}"
        elif isinstance(e, json.JSONDecodeError):
            reason = f"not valid JSON: {e}"
        else:
            reason = str(e)
        raise CheckpointError(f"{meta} is not a valid checkpoint description ({reason})") from e
    check_shapes(shapes, safetensors_shapes(weights), f"{weights} (described by {meta.name})")
    net = build_network(config["architecture"], **config.get("network", {}))
    state = {k: v.float() if v.is_floating_point() else v for k, v in read_state_dict(weights).items()}
    load_state_strict(net, state, str(weights))
    device = torch.device(device if device is not None else "cpu")
    net = net.eval().to(device)
    # One forward pass checks that the network maps the described images to what the prior reads: at batch 1
    # where the network will run, which costs less than the first-use set-up of a pass on the meta device
    # (seconds); for a claimed size over 256 px on the meta device, which allocates nothing (a claim of
    # thousands of pixels a side would otherwise take gigabytes).
    probe, where = (net, device) if size <= 256 else (skeleton, torch.device("meta"))
    try:
        with torch.no_grad():
            out = tuple(probe(torch.zeros(1, channels, size, size, device=where),
                              torch.zeros(1, dtype=torch.long, device=where)).shape)
    except torch.OutOfMemoryError:  # the device's memory, not the description
        raise
    except (RuntimeError, ValueError) as e:
        raise CheckpointError(f"{meta} is not a valid checkpoint description (the network does not take "
                              f"{(1, channels, size, size)} images: {e})") from None
    want = (1, channels * (2 if learned_variance else 1), size, size)
    if out != want:
        raise CheckpointError(f"{meta} is not a valid checkpoint description (the network maps "
                              f"{(1, channels, size, size)} images to {out}, not {want})")
    prior = NetworkPrior(net, schedule, (channels, size, size), learned_variance=learned_variance,
                         prediction=config.get("prediction", "eps"), v_shift=v_shift, config=config)
    return prior.to(device)
