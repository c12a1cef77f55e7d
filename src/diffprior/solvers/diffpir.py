"""DiffPIR: Zhu, Zhang, Liang, Cao, Wen, Timofte & Van Gool 2023, "Denoising Diffusion Models for
Plug-and-Play Image Restoration", Algorithm 1."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from ..operators import LinearOperator
from ..prior import Prior
from ..tasks import INPAINTING_TASKS
from ..schedule import Schedule
from .sampling import clip_x0, ddim_update, initial_noise, steps_of
from .spec import SolverSpec


@torch.no_grad()
def diffpir(prior: Prior, op: LinearOperator, y: Tensor, *,
            steps: int = 100,             # reverse steps; network evaluations are the distinct
                                          # timesteps (equal up to 501; the paper: NFE 100)
            lam: float = 1.0,             # lambda: rho_t = lam sigma_y^2 / sigma_t^2 (see below; official
                                          # scripts: 1.75 deblurring, 0.5..3 SR, in these units)
            zeta: float = 0.1,            # zeta: the share of fresh noise per step (official scripts: 0.3
                                          # deblurring, 0.25 SR, 1.0 noiseless inpainting)
            sigma_y: float = 0.05,        # measurement noise std, in the units of x ([-1, 1])
            skip: Literal["quad", "uniform"] = "quad",  # timestep spacing: "quad" (the official default)
            clip: bool = True,            # clip x0_hat to [-1, 1] for image priors (official: clip_denoised)
            generator: torch.Generator | None = None,
            progress: bool = False) -> Tensor:
    """Plug-and-play restoration with a diffusion denoiser (Zhu et al. 2023, Algorithm 1): half-quadratic
    splitting whose prior step is the network's denoiser. Each step t -> t_prev:
        x0     = x0_hat(x_t)                                         (clipped for images if clip)
        x0_hat = argmin_x ||y - A x||^2 + rho_t ||x - x0||^2 = op.prox(x0, y, rho_t),
                 rho_t = lam sigma_y^2 / sigma_t^2,  sigma_t = sqrt((1 - abar_t) / abar_t)
        eps    = (x_t - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)       (the effective noise)
        x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev) (sqrt(1 - zeta) eps + sqrt(zeta) z)
    and the last step returns x0_hat. rho_t weighs the data fit against the denoiser's estimate, whose error
    is taken as N(0, sigma_t^2 / lam): lam = 1 is the half-quadratic-splitting value (data term
    ||y - A x||^2 / (2 sigma_y^2), prior term ||x - x0||^2 / (2 sigma_t^2)), and the best of 0.25 .. 20 on the
    exact Gaussian problems of the tests. Units: sigma_y and sigma_t are both in the units of x here; the
    official code measures sigma_y on [0, 1] images but sigma_t on [-1, 1] ones (its rho_t is
    lambda_ sigma_y'^2 / sigma_t^2 with sigma_y' = sigma_y / 2), so its lambda_ is 4 lam: its deblurring
    script (lambda_ 7, zeta 0.3) is lam = 1.75 here, its super-resolution script sweeps lambda_ over 2 .. 12
    (lam 0.5 .. 3) with zeta 0.25, and its inpainting script (lambda_ 1, zeta 1) is noiseless, where lambda
    hardly matters. These per-task values are `SPEC.task_settings` below; the defaults, lam 1 and zeta 0.1,
    serve the other tasks. sigma_y = 0 makes the data step a projection onto {A x = y} (rho_t = 0). The data
    step is the operator's closed form where it has an SVD, conjugate gradients otherwise. x_T is pure noise
    (the official code starts from y noised to t = T-1, which differs by sqrt(abar_{T-1}) ~ 0.006). Assumes a
    linear A with Gaussian noise.
    """
    sched = prior.schedule
    x = initial_noise(prior, y.shape[0], generator, y.dtype)
    ts = diffpir_timesteps(sched, steps, skip)
    for t, t_prev in steps_of(prior, steps, progress=progress, desc="diffpir", timesteps=ts):
        x0 = clip_x0(prior, prior.x0(x, t), clip)
        x0 = op.prox(x0, y, lam * sigma_y ** 2 / sched.sigma_at(t) ** 2)
        eps = prior.eps_from_x0(x, t, x0)
        x = ddim_update(prior, x0, eps, t_prev, (zeta * (1 - sched.abar_at(t_prev))) ** 0.5, generator=generator)
    return x


def diffpir_timesteps(schedule: Schedule, steps: int, skip: str = "quad") -> list[int]:
    """Descending timesteps from T-1 to 0. "uniform": evenly spaced. "quad" (the official code's spacing):
    t_i = T-1 - floor(T sqrt(i / (steps-1))), large jumps at high noise and small ones near the data."""
    if skip not in ("quad", "uniform"):
        raise ValueError(f"unknown timestep spacing {skip!r}; expected 'quad' or 'uniform'")
    if skip == "uniform" or steps < 2:
        return schedule.timesteps(steps)
    T = schedule.T
    return sorted({max(T - 1 - math.floor(T * math.sqrt(i / (steps - 1))), 0) for i in range(steps)}, reverse=True)


def _budget(nfe: int, T: int) -> dict:
    """The most steps, at most T, whose distinct timesteps fit nfe (the quadratic spacing merges repeated
    ones: 1000 steps of T = 1000 make 750 evaluations)."""
    lo, hi = min(nfe, T), min(4 * nfe, T)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if len(diffpir_timesteps(Schedule.linear(T), mid)) <= nfe else (lo, mid - 1)
    return {"steps": lo}


SPEC = SolverSpec(
    diffpir, operators="adjoint", budget=_budget,
    nfe=lambda sched, s: len(diffpir_timesteps(sched, s["steps"], s["skip"])),
    # the official scripts: deblurring lambda 7 (1.75 in our units) and zeta 0.3; super-resolution zeta 0.25
    # with lambda swept over 2..12 (0.5..3 here; 1 was best or within 0.1 dB on the built-in prior); inpainting
    # (noiseless there) zeta 1, drawing all of each step's noise afresh, for every mask (a user's: "inpaint").
    # Elsewhere lam 1, zeta 0.1.
    task_settings={**{task: {"zeta": 1.0} for task in INPAINTING_TASKS},
                   "gaussian-blur": {"lam": 1.75, "zeta": 0.3}, "motion-blur": {"lam": 1.75, "zeta": 0.3},
                   "sr4": {"lam": 1.0, "zeta": 0.25}})
