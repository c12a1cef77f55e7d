"""The discrete variance-preserving (VP) noise schedule of DDPM (Ho et al. 2020).

x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) z, for integer timesteps t = 0..T-1 as the checkpoints
expect. The schedule lives on the CPU in float64; per-step coefficients are Python floats, so sampling
loops never synchronise with the device to read them.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, eq=False)
class Schedule:
    betas: Tensor  # (T,) float64, beta_t of the forward process
    config: dict | None = None  # how it was made, e.g. {"kind": "linear", "T": 1000, ...}; None for raw betas

    def __post_init__(self):
        betas = torch.as_tensor(self.betas, dtype=torch.float64).flatten()
        if betas.numel() < 2 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("betas must be a 1-D sequence of values in (0, 1)")
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "abar", torch.cumprod(1.0 - betas, dim=0))

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def linear(cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        """Ho et al. 2020: betas linear from beta_start to beta_end (the DPS and DDPM default)."""
        return cls(torch.linspace(beta_start, beta_end, T, dtype=torch.float64),
                   {"kind": "linear", "T": T, "beta_start": beta_start, "beta_end": beta_end})

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> "Schedule":
        """Nichol & Dhariwal 2021: abar_t = cos^2(((t/T + s) / (1 + s)) pi/2), betas clipped at max_beta."""
        f = lambda u: math.cos((u + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
        betas = [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]
        return cls(torch.tensor(betas, dtype=torch.float64), {"kind": "cosine", "T": T})

    @classmethod
    def from_config(cls, config: dict) -> "Schedule":
        """Build from {"kind": "linear"|"cosine", "T": ..., "beta_start": ..., "beta_end": ...}."""
        kind, T = config.get("kind", "linear"), config.get("T", 1000)
        if isinstance(T, bool) or not isinstance(T, int) or T < 2:
            raise ValueError(f"the schedule's T {T!r} is not a whole number of steps >= 2")
        if kind == "linear":
            return cls.linear(T, float(config.get("beta_start", 1e-4)), float(config.get("beta_end", 0.02)))
        if kind == "cosine":
            return cls.cosine(T)
        raise ValueError(f"unknown schedule kind {kind!r}; expected 'linear' or 'cosine'")

    # -- values -----------------------------------------------------------------------------------
    @property
    def T(self) -> int:
        return self.betas.numel()

    def abar_at(self, t: int) -> float:
        """abar_t as a float; t = -1 stands for the clean data (abar = 1)."""
        return 1.0 if t < 0 else float(self.abar[t])

    def abar_like(self, t: int | Tensor, x: Tensor) -> Tensor | float:
        """abar_t broadcastable against x: a float for an int t, a (B, 1, ..., 1) tensor for a (B,) t."""
        if isinstance(t, int):
            return self.abar_at(t)
        t = torch.as_tensor(t).reshape(-1).cpu()
        return self.abar[t].to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))

    def sigma_at(self, t: int) -> float:
        """The noise-to-signal ratio sqrt((1 - abar_t) / abar_t): the noise level of x_t / sqrt(abar_t)."""
        a = self.abar_at(t)
        return math.sqrt((1 - a) / a)

    def q_sample(self, x0: Tensor, t: int | Tensor, noise: Tensor | None = None,
                 generator: torch.Generator | None = None) -> Tensor:
        """Draw x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
        if noise is None:
            noise = randn_like(x0, generator)
        a = self.abar_like(t, x0)
        return a ** 0.5 * x0 + (1 - a) ** 0.5 * noise

    def timesteps(self, steps: int | None = None, start: int | None = None) -> list[int]:
        """Respaced timesteps, descending from `start` (default T-1) to 0, `steps` of them, evenly spaced.

        steps=None (or more than are available) keeps every integer timestep: the full ancestral chain.
        The spacing matches guided-diffusion's `space_timesteps("N")` for the full range.
        """
        start = self.T - 1 if start is None else int(start)
        if not 0 <= start < self.T:
            raise ValueError(f"start timestep must lie in [0, {self.T - 1}], got {start}")
        if steps is not None:
            if isinstance(steps, bool) or not isinstance(steps, numbers.Real) or not float(steps).is_integer():
                raise ValueError(f"steps must be a whole number, got {steps!r}")
            steps = int(steps)
        if steps is None or steps >= start + 1:
            return list(range(start, -1, -1))
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if steps == 1:
            return [start]
        stride = start / (steps - 1)
        return sorted({round(i * stride) for i in range(steps)}, reverse=True)


def check_generator(generator) -> None:
    """Refuse (TypeError) a generator that is neither None nor a torch.Generator, naming what it is."""
    if generator is not None and not isinstance(generator, torch.Generator):
        kind = type(generator)
        raise TypeError(f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)), got "
                        f"{kind.__module__}.{kind.__qualname__}")


def randn_like(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Standard normal noise shaped like x, drawn from `generator` (which may live on any device)."""
    check_generator(generator)
    if generator is None or generator.device == x.device:
        return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype).to(x.device)


def eps_from_v(x_t: Tensor, v: Tensor, abar: Tensor | float, shift: float = 1.0) -> Tensor:
    """The noise estimate of a v-predicting network (Salimans & Ho 2022, v = sqrt(abar) eps - sqrt(1 - abar) x_0):
    eps = sqrt(1 - abar) x_t + sqrt(abar) v. The network then only has to get the small part right: where
    abar is tiny, eps is nearly x_t itself, which a direct eps prediction must reproduce to within about
    sqrt(abar) of its size for x_0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) to keep even its mean colour.

    `shift` s < 1 reads v at the signal-to-noise ratio SNR / s (SNR = abar / (1 - abar)), so that v is the
    noise eps where the image is clear and -x_0 only where noise dominates:
        v = a eps - b x_0,  a = sqrt(abar / D),  b = sqrt(s (1 - abar) / D),  D = abar + s (1 - abar),
        eps = (sqrt(abar D) v + sqrt(s (1 - abar)) x_t) / (abar + sqrt(s) (1 - abar))   (s = 1: the line above).
    An eps network can then be turned into a v network without relearning the low-noise timesteps."""
    d = abar + shift * (1 - abar)
    return ((abar * d) ** 0.5 * v + (shift * (1 - abar)) ** 0.5 * x_t) / (abar + shift ** 0.5 * (1 - abar))


def v_loss_weight(abar: Tensor, shift: float = 1.0) -> Tensor:
    """w(t) with w || eps_hat - eps ||^2 = || v_hat - v ||^2 for the v of `eps_from_v` (s = 1: 1 / abar)."""
    return (abar + shift ** 0.5 * (1 - abar)) ** 2 / (abar * (abar + shift * (1 - abar)))
