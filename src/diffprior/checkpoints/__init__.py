"""Checkpoint files -> `Prior`, one module per format, chosen by `checkpoint_format`:

  native            NAME.safetensors + NAME.json, diffprior's own (`native.save_checkpoint` writes it)
  guided-diffusion  a raw ADM state dict (`*.pt`) with `config=` a built-in config name or a YAML file
  diffusers         a folder holding `config.json` and the weights of a `UNet2DModel`

Loading is strict (`state.load_state_strict`): a checkpoint that does not fit is an error, never random weights.
"""

from __future__ import annotations

from pathlib import Path

from ..prior import Prior
from .native import load_checkpoint, save_checkpoint
from .state import CheckpointError, check_shapes, load_state_strict, load_tensors, read_state_dict

DIFFUSERS_FILES = ("config.json", "scheduler_config.json", "model_index.json")  # a diffusers folder's descriptions
RAW_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")  # what a raw state dict may be saved as


def checkpoint_format(path: Path, config: str | None = None) -> str:
    """Which format the file or folder at `path` is: "native", "guided-diffusion" or "diffusers"."""
    if path.is_dir():
        if (path / "config.json").is_file() or (path / "unet" / "config.json").is_file():
            if config is not None:
                raise ValueError(f"config (--config) names the architecture of a raw .pt state dict; {path} is a "
                                 "diffusers folder, described by its config.json: drop the config")
            return "diffusers"
        if (path / "model.safetensors").is_file():
            raise ValueError(f"{path} is a training run's folder: its model is {path / 'model.safetensors'}")
        raise FileNotFoundError(f"{path} is a folder without a diffusers config.json")
    if path.name in DIFFUSERS_FILES and not path.with_suffix(".safetensors").is_file():
        folder = path.parent.parent if path.parent.name in ("unet", "scheduler") else path.parent
        raise ValueError(f"{path} is one file of a diffusers model: give its folder, {folder}")
    if path.suffix in (".safetensors", ".json") and (config is None or path.with_suffix(".json").is_file()):
        if config is not None:
            raise ValueError(f"config (--config) names the architecture of a raw .pt state dict; {path} is "
                             f"diffprior's format, described by {path.with_suffix('.json').name}: drop the config")
        return "native"
    if path.suffix in RAW_SUFFIXES:
        if config is None:
            if path.name == "state.pt" and (path.parent / "model.safetensors").is_file():
                raise ValueError(f"{path} is a training run's state: its model is {path.parent / 'model.safetensors'}")
            raise ValueError(f"{path} is not diffprior's format (.safetensors + .json); for a raw state dict "
                             "(e.g. guided-diffusion's .pt), say which architecture it is with config= (a built-in "
                             "name such as 'ffhq256' or a model_config.yaml)")
        return "guided-diffusion"
    raise ValueError(f"cannot tell what kind of checkpoint {path} is (expected .safetensors+.json, .pt, or a folder)")


def load_file(path: str | Path, config: str | None = None) -> Prior:
    """The prior a checkpoint file or folder holds, in any of the formats above."""
    path = Path(path)
    kind = checkpoint_format(path, config)
    if kind == "native":
        return load_checkpoint(path)
    if kind == "guided-diffusion":
        from .guided_diffusion import load_guided_diffusion
        return load_guided_diffusion(path, config)
    from .diffusers import load_diffusers
    return load_diffusers(path)


__all__ = ["CheckpointError", "check_shapes", "load_state_strict", "load_tensors", "read_state_dict",
           "load_checkpoint", "save_checkpoint", "checkpoint_format", "load_file"]
