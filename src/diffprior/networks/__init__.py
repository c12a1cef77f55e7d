"""Network architectures only (no diffusion math). Each is registered by the name a checkpoint's JSON
config gives as its "architecture"; `build_network` makes one from that config's "network" keywords."""

from __future__ import annotations

from torch import nn

ARCHITECTURES: dict[str, type[nn.Module]] = {}


def register(name: str):
    def add(cls):
        ARCHITECTURES[name] = cls
        return cls
    return add


def build_network(architecture: str, **kwargs) -> nn.Module:
    _import_all()
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {', '.join(sorted(ARCHITECTURES))}")
    return ARCHITECTURES[architecture](**kwargs)


def _import_all() -> None:
    from . import adm, small  # noqa: F401  (registration side effects)
