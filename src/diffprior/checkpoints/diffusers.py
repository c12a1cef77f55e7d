"""diffusers checkpoints: a `UNet2DModel` folder (e.g. google/ddpm-celebahq-256).

A diffusers folder holds `config.json` and `diffusion_pytorch_model.safetensors` (or `.bin`), with
`scheduler_config.json` beside them; a pipeline folder has them in `unet/` and `scheduler/` instead.
The network is built from its config and its state dict is loaded strictly, so a checkpoint that does
not fit is an error, never random weights. diffusers is an optional dependency.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from ..prior import NetworkPrior
from ..schedule import Schedule
from .state import CheckpointError, load_state_strict, read_state_dict

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
INSTALL_HINT = 'loading a diffusers model needs the optional dependency: pip install "diffprior[diffusers]"'


def require_diffusers():
    """Import diffusers, or fail with the command that installs it."""
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(INSTALL_HINT) from e
    return diffusers


PREDICTIONS = {"epsilon": "eps", "v_prediction": "v"}  # diffusers' prediction_type -> NetworkPrior's


class DiffusersUNet(nn.Module):
    """net(x, t) -> the UNet2DModel's output tensor (eps or v; its forward returns an output object)."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.unet(x, t).sample


def load_diffusers(folder: str | Path) -> NetworkPrior:
    """Load a diffusers UNet2DModel folder (flat, or a pipeline with unet/ and scheduler/) as a Prior."""
    diffusers = require_diffusers()
    folder = Path(folder)
    unet_dir = folder if (folder / "config.json").is_file() else folder / "unet"
    config = _read_json(unet_dir / "config.json")
    if config.get("_class_name", "UNet2DModel") != "UNet2DModel":
        raise CheckpointError(f"{unet_dir / 'config.json'} describes a {config['_class_name']}, "
                              "but only UNet2DModel (pixel-space DDPM) networks are supported")
    sched_path = next((p for p in (folder / "scheduler_config.json", folder / "scheduler" / "scheduler_config.json")
                       if p.is_file()), None)
    sched = _read_json(sched_path) if sched_path else {}
    schedule = schedule_from_diffusers(sched, str(sched_path))

    why = _not_a_ddpm_network(config, sched)
    if why:
        raise CheckpointError(f"{unet_dir / 'config.json'}: {why}")
    try:
        unet = diffusers.UNet2DModel.from_config(config)
    except Exception as e:  # diffusers raises many error types for settings it cannot build
        raise CheckpointError(f"{unet_dir / 'config.json'} does not describe a UNet2DModel diffusers can build "
                              f"({type(e).__name__}: {e})") from e
    state = _rename_legacy_attention(_read_weights(unet_dir), set(unet.state_dict()))
    load_state_strict(unet, state, f"diffusers weights in {unet_dir}")

    channels, out = int(unet.config.in_channels), int(unet.config.out_channels)
    learned = sched.get("variance_type") == "learned_range"
    if out != (2 * channels if learned else channels):
        raise CheckpointError(f"{unet_dir}: the UNet has {channels} input and {out} output channels, but an epsilon "
                              f"prior needs {channels} outputs ({2 * channels} with variance_type learned_range)")
    size = unet.config.sample_size
    if size is None:
        raise CheckpointError(f"{unet_dir / 'config.json'} gives no sample_size (the image size)")
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    meta = {"architecture": "diffusers-UNet2DModel", "source": str(folder), "network": config, "scheduler": sched}
    return NetworkPrior(DiffusersUNet(unet).eval(), schedule, (channels, int(h), int(w)),
                        learned_variance=learned, prediction=PREDICTIONS[sched.get("prediction_type", "epsilon")],
                        config=meta)


def _not_a_ddpm_network(config: dict, sched: dict) -> str | None:
    """Why a UNet2DModel is not an unconditional DDPM network of 1 or 3 image channels, or None."""
    if config.get("time_embedding_type", "positional") == "fourier":
        return ("the network takes a continuous noise level (time_embedding_type 'fourier', a score-SDE model), "
                "not the DDPM timesteps diffprior's priors are run with")
    if config.get("num_class_embeds") is not None or config.get("class_embed_type") is not None:
        return "a class-conditional network (num_class_embeds / class_embed_type): diffprior's priors are unconditional"
    if config.get("in_channels", 3) not in (1, 3):
        return (f"a network of {config['in_channels']} input channels (a latent model?): diffprior's priors are "
                "images of 1 (grey) or 3 (RGB) channels")
    if sched.get("variance_type") == "learned":
        return ("variance_type 'learned' (a log-variance output) is not supported; learned_range (an interpolation "
                "between beta and the posterior variance, as guided-diffusion's) is")
    return None


def schedule_from_diffusers(sched: dict, source: str = "scheduler_config.json") -> Schedule:
    """The training noise schedule a diffusers scheduler config describes ({} gives DDPM's linear 1e-4..0.02)."""
    try:
        return _schedule(sched)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{source}: {e}") from None


def _schedule(sched: dict) -> Schedule:
    prediction = sched.get("prediction_type", "epsilon")
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction_type is {prediction!r}; diffprior priors need a network that "
                         "predicts the noise or v (prediction_type 'epsilon' or 'v_prediction')")
    if sched.get("rescale_betas_zero_snr"):
        raise ValueError("rescale_betas_zero_snr (abar_T = 0) is not supported")
    T = sched.get("num_train_timesteps", 1000)
    if isinstance(T, bool) or not isinstance(T, int) or T < 2:
        raise ValueError(f"num_train_timesteps {T!r} is not a whole number >= 2")
    start, end = float(sched.get("beta_start", 1e-4)), float(sched.get("beta_end", 0.02))
    kind = sched.get("beta_schedule", "linear")
    if sched.get("trained_betas") is not None:
        return Schedule(torch.tensor(sched["trained_betas"], dtype=torch.float64))
    if kind == "linear":
        return Schedule.linear(T, start, end)
    if kind == "scaled_linear":  # linear in sqrt(beta)
        return Schedule(torch.linspace(start ** 0.5, end ** 0.5, T, dtype=torch.float64) ** 2)
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal cosine, s = 0.008, betas capped at 0.999
        return Schedule.cosine(T)
    raise ValueError(f"beta_schedule {kind!r} is not supported (expected linear, scaled_linear or squaredcos_cap_v2)")


# Attention projections as named by diffusers before 0.14 (checkpoints converted in 2022, such as
# google/ddpm-*), and their current names; group_norm kept its name.
LEGACY_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _rename_legacy_attention(state: dict[str, Tensor], own: set[str]) -> dict[str, Tensor]:
    """Rename old attention keys to the current layout, only where the network expects the new name."""
    renamed = {}
    for k, v in state.items():
        prefix, _, leaf = k.rpartition(".")  # e.g. "mid_block.attentions.0.query", "weight"
        path, _, old = prefix.rpartition(".")
        new = f"{path}.{LEGACY_ATTENTION[old]}.{leaf}" if old in LEGACY_ATTENTION and path else k
        renamed[new if k not in own and new in own else k] = v
    return renamed


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing (a diffusers folder needs config.json and its weights)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON ({e})") from e
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a JSON object of settings (it holds a {type(config).__name__})")
    return config


def _read_weights(unet_dir: Path) -> dict[str, Tensor]:
    path = next((unet_dir / f for f in WEIGHT_FILES if (unet_dir / f).is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{unet_dir} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")
    state = read_state_dict(path)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
