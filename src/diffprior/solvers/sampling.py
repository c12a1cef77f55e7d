"""Unconditional sampling (ancestral DDPM and DDIM) and single-step denoising, and the reverse steps
that the posterior solvers share.

A reverse step goes from timestep t to t_prev < t of a (possibly respaced) chain; t_prev = -1 is the
clean data. With respacing, the step uses the respaced forward variance beta = 1 - abar_t / abar_prev
(as guided-diffusion does), so a 100-step chain is a proper DDPM of its own.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..prior import Prior, check_prior
from ..schedule import randn_like

T = TypeVar("T")


def progress_bar(items: Iterable[T], progress: bool, desc: str, total: int | None = None) -> Iterable[T]:
    """`items`, behind a transient progress bar when `progress`: the one set-up every loop shares."""
    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True) if progress else items


def steps_of(prior: Prior, steps: int | None, start: int | None = None, progress: bool = False,
             desc: str = "sampling", timesteps: list[int] | None = None) -> Iterator[tuple[int, int]]:
    """(t, t_prev) pairs of the respaced chain from `start` down to the data (t_prev = -1 at the end), or of
    the given descending `timesteps`."""
    ts = prior.schedule.timesteps(steps, start) if timesteps is None else timesteps
    return iter(progress_bar(list(zip(ts, ts[1:] + [-1])), progress, desc))


def clip_x0(prior: Prior, x0: Tensor, clip: bool = True) -> Tensor:
    """Clip an x0 estimate to the data range when the prior's data are images in [-1, 1] (and `clip`)."""
    return x0.clamp(-1, 1) if clip and prior.bounded else x0


def ddpm_step(prior: Prior, x: Tensor, t: int, t_prev: int, eps: Tensor, v: Tensor | None = None, *,
              clip: bool = True, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One ancestral step of Ho et al. 2020, eq. 6-7: x_prev ~ q(x_prev | x_t, x0_hat).

    mean = sqrt(abar_prev) beta / (1 - abar_t) x0_hat + sqrt(1 - beta) (1 - abar_prev) / (1 - abar_t) x_t,
    variance = the posterior variance beta (1 - abar_prev) / (1 - abar_t), or, when the network learned it,
    exp(f log beta + (1 - f) log posterior variance) with f = (v + 1) / 2 (Nichol & Dhariwal 2021).
    x0_hat is clipped to the data range for image priors unless `clip` is False.
    Returns (x_prev, x0_hat); the final step (t_prev = -1) returns the mean, x0_hat itself.
    """
    sched = prior.schedule
    a, a_prev = sched.abar_at(t), sched.abar_at(t_prev)
    beta = 1 - a / a_prev
    x0 = clip_x0(prior, prior.x0_from_eps(x, t, eps), clip)
    if t_prev < 0:
        return x0, x0
    mean = (a_prev ** 0.5 * beta / (1 - a)) * x0 + ((1 - beta) ** 0.5 * (1 - a_prev) / (1 - a)) * x
    var = beta * (1 - a_prev) / (1 - a)
    if v is None:
        std = var ** 0.5
    else:
        frac = (v + 1) / 2
        std = torch.exp(0.5 * (frac * math.log(beta) + (1 - frac) * math.log(var)))
    return mean + std * randn_like(x, generator), x0


def ddim_step(prior: Prior, x: Tensor, t: int, t_prev: int, eps: Tensor, *, eta: float = 0.0, clip: bool = True,
              generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """One step of Song, Meng & Ermon 2021 (DDIM, eq. 12), eta = 0 deterministic, eta = 1 ancestral-like.

    When x0_hat is clipped (image priors, unless `clip` is False), eps is recomputed from the clipped x0_hat
    so that both stay consistent.
    """
    sched = prior.schedule
    a, a_prev = sched.abar_at(t), sched.abar_at(t_prev)
    x0 = prior.x0_from_eps(x, t, eps)
    if clip and prior.bounded:
        x0 = x0.clamp(-1, 1)
        eps = prior.eps_from_x0(x, t, x0)
    if t_prev < 0:
        return x0, x0
    sigma = eta * ((1 - a_prev) / (1 - a) * (1 - a / a_prev)) ** 0.5  # at most sqrt(1 - abar_prev) for eta <= 1
    return ddim_update(prior, x0, eps, t_prev, sigma, generator=generator), x0


def ddim_update(prior: Prior, x0: Tensor, eps: Tensor, t_prev: int, sigma: float, *,
                generator: torch.Generator | None = None) -> Tensor:
    """DDIM's update (Song et al. 2021, eq. 12) from a pair (x0, eps) that a solver has already corrected:
    x_prev = sqrt(abar_prev) x0 + sqrt(1 - abar_prev - sigma^2) eps + sigma z, with fresh noise of std sigma
    (at most sqrt(1 - abar_prev)). t_prev = -1 returns x0."""
    a_prev = prior.schedule.abar_at(t_prev)
    if t_prev < 0:
        return x0
    sigma = min(sigma, (1 - a_prev) ** 0.5)
    x_prev = a_prev ** 0.5 * x0 + max(1 - a_prev - sigma ** 2, 0.0) ** 0.5 * eps
    return x_prev + sigma * randn_like(x0, generator) if sigma > 0 else x_prev


def jump_schedule(steps: int, jump_length: int = 10, jump_n_sample: int = 5) -> list[int]:
    """The path of respaced indices a resampling chain walks (RePaint's jumps, DDNM's time travel), from
    steps - 1 down to -1 (the data), one index per reverse step; on reaching index k = 0, j, 2j, ...
    (k < steps - j) it jumps up to k + j, r - 1 times (j = jump_length, r = jump_n_sample)."""
    if steps < 1 or jump_length < 1 or jump_n_sample < 1:
        raise ValueError(f"a resampling chain needs steps, jump length and repeats >= 1, got {steps}, "
                         f"{jump_length}, {jump_n_sample} (RePaint's jump_length / jump_n_sample, DDNM's "
                         "travel_length / travel_repeat)")
    left = {k: jump_n_sample - 1 for k in range(0, steps - jump_length, jump_length)}
    path = [steps - 1]
    while path[-1] >= 0:
        k = path[-1] - 1
        path.append(k)
        if left.get(k, 0) > 0:
            left[k] -= 1
            path.append(k + jump_length)
    return path


def reverse_steps(path: list[int]) -> int:
    """The network evaluations of a `jump_schedule` path: its downward moves."""
    return sum(b < a for a, b in zip(path, path[1:]))


def initial_noise(prior: Prior, n: int, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """x_T ~ N(0, I) for n samples of the prior's shape, on the prior's device."""
    return randn_like(torch.empty(n, *prior.shape, device=prior.device, dtype=dtype), generator)


@torch.no_grad()
def sample(prior: Prior, n: int, *,
           steps: int | None = None,       # None: all T steps; fewer: an evenly respaced chain
           sampler: str = "ddpm",         # "ddpm" (ancestral) or "ddim"
           eta: float = 0.0,              # DDIM only: 0 deterministic, 1 ancestral-like
           dtype: torch.dtype = torch.float32,
           generator: torch.Generator | None = None,
           progress: bool = False) -> Tensor:
    """Unconditional samples x_0 ~ p: ancestral DDPM (Ho et al. 2020) or DDIM (Song et al. 2021)."""
    check_prior(prior)
    if sampler not in ("ddpm", "ddim"):
        raise ValueError(f"unknown sampler {sampler!r}; expected 'ddpm' or 'ddim'")
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n={n!r}: the number of samples, a whole number >= 1")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not 0 <= eta <= 1:  # NaN fails too
        raise ValueError(f"eta={eta!r}: DDIM's share of fresh noise, in [0, 1]")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype={dtype}: samples are computed in torch.float32 or torch.float64")
    if isinstance(steps, numbers.Real) and steps > prior.schedule.T:
        raise ValueError(f"steps={steps}: at most the prior's T = {prior.schedule.T} diffusion steps")
    n = int(n)
    x = initial_noise(prior, n, generator, dtype)
    for t, t_prev in steps_of(prior, steps, progress=progress, desc=f"{sampler} sampling"):
        eps, v = prior.predict(x, t)
        if sampler == "ddpm":
            x, _ = ddpm_step(prior, x, t, t_prev, eps, v, generator=generator)
        else:
            x, _ = ddim_step(prior, x, t, t_prev, eps, eta=eta, generator=generator)
    return x


@torch.no_grad()
def denoise(prior: Prior, x0: Tensor, t: int | Tensor, *,
            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Single-step denoising: x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) z, then the Tweedie estimate
    E[x0 | x_t] in one network evaluation (Efron 2011; Ho et al. 2020). Returns (x_t, x0_hat)."""
    check_prior(prior)
    T, ts = prior.schedule.T, torch.as_tensor(t)
    if ts.dtype == torch.uint8:  # indexing with uint8 would read it as a mask
        t = ts = ts.long()
    whole = not (ts.is_floating_point() or ts.is_complex() or ts.dtype == torch.bool)
    if not whole or not bool(((ts >= 0) & (ts < T)).all()):
        raise ValueError(f"t={t!r}: a whole timestep in [0, {T - 1}] (or a tensor of them, one per image)")
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or tuple(x0.shape[1:]) != tuple(prior.shape):
        got = f"{x0.dtype} {tuple(x0.shape)}" if isinstance(x0, Tensor) else type(x0).__name__
        raise ValueError(f"x0 must be a float batch (B, {', '.join(map(str, prior.shape))}) of images in [-1, 1], "
                         f"got {got}")
    if x0.shape[0] == 0:
        raise ValueError("x0 holds no images (a batch of 0)")
    if ts.numel() not in (1, x0.shape[0]):
        raise ValueError(f"t holds {ts.numel()} timesteps for {x0.shape[0]} images: give one, or one per image")
    x_t = prior.schedule.q_sample(x0, t, generator=generator)
    return x_t, clip_x0(prior, prior.x0(x_t, t))
