"""Named priors and checkpoint files -> `Prior`.

`load_prior(name_or_path)` accepts:
  - a built-in name (`diffprior models` lists them): analytic priors, the embedded face model, and
    remote checkpoints downloaded once into the cache;
  - a diffprior checkpoint: `NAME.safetensors` with `NAME.json` beside it (architecture, network
    settings, schedule, training record), as written by `save_checkpoint`;
  - a guided-diffusion state dict (`*.pt`) with `config=` a built-in config name or a YAML file;
  - a diffusers folder holding `config.json` and the weights of a `UNet2DModel`.
Loading is strict: a missing, unexpected or mis-shaped tensor is an error that names it, never random weights.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoints import CheckpointError, load_checkpoint, load_file, save_checkpoint  # noqa: F401  (re-exported)
from .download import DownloadError, RemoteFile, cache_dir, fetch
from .devices import pick_device, resolve_dtype
from .prior import GaussianMixturePrior, NetworkPrior, Prior

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"


# -- built-in analytic priors ------------------------------------------------------------------------
def demo_mixture(size: int = 64, components: int = 4, seed: int = 0) -> GaussianMixturePrior:
    """A Gaussian mixture over RGB images: each component is a smooth colour field with a soft disc in it,
    varying along smooth (low-frequency) directions, plus a faint isotropic texture. Its exact denoiser
    makes it a ground truth for the solvers and a stand-in prior that needs no trained network."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *s: torch.rand(*s, generator=g, dtype=torch.float64)  # noqa: E731
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size, dtype=torch.float64),
                            torch.linspace(0, 1, size, dtype=torch.float64), indexing="ij")
    waves = torch.stack([torch.cos(math.pi * (i * yy)) * torch.cos(math.pi * (j * xx))
                         for i in range(4) for j in range(4)]).reshape(16, -1)  # smooth patterns (16, s*s)
    waves = waves / waves.norm(dim=1, keepdim=True)
    means, factors = [], []
    for _ in range(components):
        field = (rand(3, 16) - 0.5) * torch.tensor([8.0] + [3.0] * 15, dtype=torch.float64) @ waves / size * 8
        cy, cx, radius = 0.25 + 0.5 * rand(1), 0.25 + 0.5 * rand(1), 0.12 + 0.12 * rand(1)
        disc = torch.sigmoid((radius - ((yy - cy) ** 2 + (xx - cx) ** 2).sqrt()) * size / 2).reshape(1, -1)
        colour = rand(3, 1) * 1.6 - 0.8
        means.append((field * (1 - disc) + colour * disc).clamp(-0.95, 0.95).reshape(-1))
        per_channel = torch.kron(torch.eye(3, dtype=torch.float64), waves.T.contiguous())  # (3 s^2, 48)
        factors.append(per_channel @ (torch.randn(48, 12, generator=g, dtype=torch.float64) * 0.07 * size / 8))
    return GaussianMixturePrior.low_rank(torch.ones(components), torch.stack(means), torch.stack(factors), 1e-3,
                                         shape=(3, size, size))


BUILTIN_ANALYTIC = {
    "gmm-demo": demo_mixture,
}

# Trained networks shipped inside the package (float16 weights + their self-description, see docs/MODEL_CARD.md).
EMBEDDED = {
    "faces64": PACKAGE_WEIGHTS / "faces64.safetensors",
}

DEFAULT_MODEL = "faces64"  # the prior every command uses unless --model says otherwise


# -- remote checkpoints, downloaded once into the cache (see download.py) ------------------------------
@dataclass(frozen=True)
class RemoteModel:
    name: str
    kind: str  # "guided-diffusion" (one raw state dict, architecture `config`) or "diffusers" (a folder of files)
    source: str  # where it is published
    files: tuple[RemoteFile, ...]
    config: str | None = None  # built-in architecture name of a guided-diffusion state dict
    licence: str = ""
    notes: str = ""

    @property
    def size(self) -> int | None:
        sizes = [f.size for f in self.files]
        return None if None in sizes else sum(sizes)


_HF_CELEBAHQ = "https://huggingface.co/google/ddpm-celebahq-256/resolve/cd5c944777ea2668051904ead6cc120739b86c4d"

REMOTE_MODELS: dict[str, RemoteModel] = {m.name: m for m in [
    RemoteModel(
        name="ffhq256-dps", kind="guided-diffusion", config="ffhq256",
        source="huggingface.co/deepinv/diffunet (mirror of the DPS ffhq_10m.pt)",
        files=(RemoteFile("https://huggingface.co/deepinv/diffunet/resolve/main/diffusion_ffhq_10m.pt",
                          "diffusion_ffhq_10m.pt", size=374_417_833,
                          sha256="81d535743156ec6be34d8668e6920da94f0614074d7793a16c8fa9e306237faa"),),
        licence="BSD-3-Clause (the Hugging Face mirror's stated licence)",
        notes="guided-diffusion UNet, FFHQ 256x256, learned variance; trained without the first 1000 FFHQ images"),
    RemoteModel(
        name="celebahq256-ddpm", kind="diffusers",
        source="huggingface.co/google/ddpm-celebahq-256 (revision cd5c944)",
        files=(RemoteFile(f"{_HF_CELEBAHQ}/config.json", "config.json", size=790),
               RemoteFile(f"{_HF_CELEBAHQ}/scheduler_config.json", "scheduler_config.json", size=256),
               RemoteFile(f"{_HF_CELEBAHQ}/diffusion_pytorch_model.bin", "diffusion_pytorch_model.bin",
                          size=454_853_117,
                          sha256="efff89712093ad060ce99d9b461bbe542b49d8dd4ce30f23fe5761dca292361d")),
        licence="Apache-2.0",
        notes="DDPM (Ho et al. 2020) CelebA-HQ 256x256, diffusers UNet2DModel; needs diffprior[diffusers]"),
]}


def remote_path(name: str) -> Path:
    """Where a remote model lives in the cache: its file (guided-diffusion) or its folder (diffusers)."""
    model = REMOTE_MODELS[name]
    folder = cache_dir() / model.name
    return folder / model.files[0].filename if model.kind == "guided-diffusion" else folder


def is_cached(name: str) -> bool:
    """Whether every file of a remote model is in the cache, at its known size (the sha256 is checked on load)."""
    folder = cache_dir() / name
    return all((folder / f.filename).is_file() and f.size in (None, (folder / f.filename).stat().st_size)
               for f in REMOTE_MODELS[name].files)


def fetch_remote(name: str, *, offline: bool | None = None, progress: bool = True) -> Path:
    """Download (once) every file of a remote model into the cache; returns `remote_path(name)`.
    offline=True (or DIFFPRIOR_OFFLINE=1) never touches the network and says what to fetch by hand."""
    model = REMOTE_MODELS[name]
    folder = cache_dir() / model.name
    for f in model.files:
        try:
            fetch(f.url, folder / f.filename, size=f.size, sha256=f.sha256, offline=offline, progress=progress)
        except DownloadError as e:
            others = [g for g in model.files if g is not f and not (folder / g.filename).is_file()]
            if not others:
                raise
            also = "".join(f"\n    {g.url}\n      -> {folder / g.filename}" for g in others)
            raise DownloadError(f"{e}\nModel {name!r} also needs these files:{also}") from e
    return remote_path(name)


def load_remote(name: str, *, offline: bool | None = None, progress: bool = True) -> Prior:
    model = REMOTE_MODELS[name]
    if model.kind == "diffusers":
        from .checkpoints.diffusers import require_diffusers
        require_diffusers()  # fail before a long download, not after it
    return load_file(fetch_remote(name, offline=offline, progress=progress), model.config)


def list_models() -> list[dict]:
    """One row per named prior, for `diffprior models`: name, kind, source, size (bytes or None), cached,
    licence, notes."""
    rows = [{"name": name, "kind": "analytic", "source": "built-in", "size": None, "cached": False, "builtin": True,
             "licence": "", "notes": "a Gaussian mixture with an exact denoiser"} for name in BUILTIN_ANALYTIC]
    for name, path in EMBEDDED.items():
        meta = json.loads(path.with_suffix(".json").read_text())
        rows.append({"name": name, "kind": "embedded", "source": "built-in", "size": path.stat().st_size,
                     "cached": False, "builtin": True, "licence": meta.get("licence", ""),
                     "notes": meta.get("description", "")})
    rows += [{"name": m.name, "kind": m.kind, "source": m.source, "size": m.size, "cached": is_cached(m.name),
              "licence": m.licence, "notes": m.notes} for m in REMOTE_MODELS.values()]
    return rows


def load_prior(name_or_path: str | Path | Prior, device=None, *, config: str | None = None,
               dtype: str | None = None) -> Prior:
    """Load a prior by name or path (see the module docstring); `config` names the architecture of a
    guided-diffusion `.pt` state dict (a built-in config name such as "ffhq256", or a YAML file).
    `dtype` sets how a network prior computes: "fp32", "bf16" (autocast) or "auto" (bf16 where the device
    computes it natively, `devices.native_bf16`; else fp32); None leaves it as it is (a new prior: fp32).
    Analytic priors compute exactly either way."""
    if not isinstance(name_or_path, (str, os.PathLike, Prior)):
        raise TypeError(f"load_prior takes a model's name ({', '.join(model_names())}) or a checkpoint's path; "
                        f"got {type(name_or_path).__name__}")
    named = str(name_or_path) in model_names()
    if config is not None and (named or isinstance(name_or_path, Prior)):
        raise ValueError(f"config (--config) names the architecture of a guided-diffusion .pt file; {name_or_path} "
                         "brings its own")
    if isinstance(name_or_path, Prior):
        prior = name_or_path
    elif str(name_or_path) in BUILTIN_ANALYTIC:
        prior = BUILTIN_ANALYTIC[str(name_or_path)]()
    elif str(name_or_path) in EMBEDDED:
        prior = load_checkpoint(EMBEDDED[str(name_or_path)])
    elif str(name_or_path) in REMOTE_MODELS:
        prior = load_remote(str(name_or_path))
    else:
        prior = _load_path(name_or_path, config)
    prior = prior.to(pick_device(device)) if device is not None else prior
    if dtype is not None:
        dtype = resolve_dtype(dtype, prior.device)
        if isinstance(prior, NetworkPrior):
            prior.configure(dtype=dtype)
    return prior


def model_names() -> list[str]:
    """Every named prior: the analytic ones, the embedded and the downloadable models."""
    return [*BUILTIN_ANALYTIC, *EMBEDDED, *REMOTE_MODELS]


def _load_path(name: str | os.PathLike, config: str | None) -> Prior:
    path = Path(name)
    if not str(name) or not path.exists():  # Path("") is the current folder
        raise FileNotFoundError(f"no prior called {str(name)!r}: not a named model ({', '.join(model_names())}) "
                                "and no such file or folder")
    return load_file(path, config)
