"""Network architectures only (no diffusion math). Each is listed by the name a checkpoint's JSON config
gives as its "architecture"; `build_network` makes one from that config's "network" keywords."""

from __future__ import annotations

from torch import nn

from .adm import ADMUNet
from .small import SmallUNet

ARCHITECTURES: dict[str, type[nn.Module]] = {
    "adm": ADMUNet,
    "small-unet": SmallUNet,
}


def build_network(architecture: str, **kwargs) -> nn.Module:
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[architecture](**kwargs)
