"""guided-diffusion checkpoints: one raw state dict (`*.pt`) of the ADM UNet, whose architecture a built-in
config name or a model_config.yaml gives."""

from __future__ import annotations

from pathlib import Path

import torch

from ..networks.adm import ADMUNet, adm_config
from ..prior import NetworkPrior
from ..schedule import Schedule
from .state import CheckpointError, load_state_strict, read_state_dict


def load_guided_diffusion(path: str | Path, config: str | Path | dict) -> NetworkPrior:
    """A guided-diffusion checkpoint as a Prior, loaded strictly: `config` is a built-in name ("ffhq256",
    "imagenet256-uncond"), a model_config.yaml, or a settings dict. The schedule is linear, 1000 steps."""
    settings = adm_config(config)
    state = read_state_dict(path)
    try:
        with torch.device("meta"):  # no random initialisation: every tensor comes from the checkpoint
            net = ADMUNet(**settings)
    except (TypeError, ValueError, ArithmeticError) as e:
        source = "the config's" if isinstance(config, dict) else f"{config}:"
        raise CheckpointError(f"{source} settings do not build an ADM network ({e})") from None
    net = net.to_empty(device="cpu")
    load_state_strict(net, state, str(path))
    schedule = Schedule.linear(1000)
    size = int(settings["image_size"])
    meta = {"architecture": "adm", "network": settings, "schedule": schedule.config, "image_size": size,
            "channels": 3, "learned_variance": bool(settings["learn_sigma"]), "source": str(path),
            "format": "guided-diffusion"}
    return NetworkPrior(net.eval(), schedule, (3, size, size), learned_variance=bool(settings["learn_sigma"]),
                        config=meta)
