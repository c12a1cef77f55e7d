"""DDRM: Kawar, Elad, Ermon & Song 2022, "Denoising Diffusion Restoration Models", eq. 7-8 (the
variational posterior in the spectral space of the operator)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import LinearOperator
from ..prior import Prior
from ..schedule import randn_like
from .sampling import clip_x0, initial_noise, steps_of
from .spec import SolverSpec


@torch.no_grad()
def ddrm(prior: Prior, op: LinearOperator, y: Tensor, *,
         steps: int | None = 20,       # reverse steps, respaced (the paper: 20)
         eta: float = 0.85,            # eta: the share of fresh noise (paper default 0.85)
         eta_b: float = 1.0,           # eta_b: the weight of y on components noisier than y (paper default 1)
         sigma_y: float = 0.05,        # measurement noise std, in the units of x ([-1, 1])
         clip: bool = False,           # clip x0_hat to [-1, 1] for image priors (the official code does not)
         generator: torch.Generator | None = None,
         progress: bool = False) -> Tensor:
    """Denoising Diffusion Restoration Models (Kawar et al. 2022), for a linear operator with an SVD
    A = U diag(s) V^T (`op.has_svd`).

    It works on u_t = x_t / sqrt(abar_t) = x_0 + sigma_t z (sigma_t = sqrt((1 - abar_t) / abar_t)) in the
    spectral basis: ubar = V^T u, ybar = U^T y / s, whose noise has std n_i = sigma_y / s_i. With
    x0bar = V^T x0_hat (the network's estimate, clipped for images if clip) and z standard normal, one step
    t -> t_prev sets each spectral component i to
        s_i = 0 (unobserved):  x0bar + sqrt(1 - eta^2) sigma_prev (ubar_t - x0bar) / sigma_t + eta sigma_prev z
        sigma_prev < n_i:      x0bar + sqrt(1 - eta^2) sigma_prev (ybar - x0bar) / n_i + eta sigma_prev z
        sigma_prev >= n_i:     (1 - eta_b) x0bar + eta_b ybar + sqrt(sigma_prev^2 - eta_b^2 n_i^2) z
    and x_prev = sqrt(abar_prev) V ubar. The chain starts from ubar_T = ybar + sqrt(sigma_T^2 - n_i^2) z on the
    components observed through less noise than sigma_T, and sigma_T z elsewhere. The last step
    (sigma_prev = 0) returns x0bar, or ybar where y is noiseless. Assumes a linear A and Gaussian noise.
    """
    if not op.has_svd:
        raise ValueError(f"DDRM needs an operator with a closed-form SVD; {op.name} has none")
    sched = prior.schedule
    pairs = list(steps_of(prior, steps, progress=progress, desc="ddrm"))
    template = initial_noise(prior, y.shape[0], generator, y.dtype)  # also the pixel noise of x_T
    s = op.singulars(template)
    observed = s > 0
    ybar = op.U_T(y) / torch.where(observed, s, 1)
    noise_y = torch.where(observed, sigma_y / torch.where(observed, s, 1), torch.inf)  # n_i
    spectral_noise = lambda: op.V_T(randn_like(template, generator))  # noqa: E731  V^T z ~ N(0, I)

    sigma_T = sched.sigma_at(pairs[0][0])
    ubar = torch.where(observed & (noise_y <= sigma_T),
                       ybar + (sigma_T ** 2 - noise_y ** 2).clamp_min(0).sqrt() * op.V_T(template),
                       sigma_T * op.V_T(template))
    x = sched.abar_at(pairs[0][0]) ** 0.5 * op.V(ubar)
    for t, t_prev in pairs:
        a, sigma, sigma_prev = sched.abar_at(t), sched.sigma_at(t), sched.sigma_at(t_prev)
        x0 = clip_x0(prior, prior.x0(x, t), clip)
        x0bar, ubar = op.V_T(x0), op.V_T(x / a ** 0.5)
        z = spectral_noise()
        unobserved = x0bar + (1 - eta ** 2) ** 0.5 * sigma_prev * (ubar - x0bar) / sigma + eta * sigma_prev * z
        less_noisy = (x0bar + (1 - eta ** 2) ** 0.5 * sigma_prev * (ybar - x0bar) / noise_y.clamp_min(1e-30)
                      + eta * sigma_prev * z)
        noisier = ((1 - eta_b) * x0bar + eta_b * ybar
                   + (sigma_prev ** 2 - eta_b ** 2 * noise_y ** 2).clamp_min(0).sqrt() * z)
        ubar = torch.where(~observed, unobserved, torch.where(noise_y <= sigma_prev, noisier, less_noisy))
        x = sched.abar_at(t_prev) ** 0.5 * op.V(ubar)
    return x


SPEC = SolverSpec(ddrm, operators="svd")
