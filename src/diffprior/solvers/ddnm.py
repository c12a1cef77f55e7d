"""DDNM and DDNM+: Wang, Yu & Zhang 2023, "Zero-Shot Image Restoration Using Denoising Diffusion Null-Space
Model", Algorithm 1 (noiseless), eq. 17-19 (noisy, DDNM+) and Algorithm 2 (time travel)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import LinearOperator, implements
from ..prior import Prior
from ..schedule import randn_like
from .sampling import clip_x0, ddim_update, initial_noise, jump_schedule, progress_bar, reverse_steps
from .spec import SolverSpec


@torch.no_grad()
def ddnm(prior: Prior, op: LinearOperator, y: Tensor, *,
         steps: int | None = 100,      # reverse steps, respaced (the official code: 100)
         eta: float = 0.85,            # the share of fresh noise in each step (the official code: 0.85)
         sigma_y: float = 0.05,        # measurement noise std ([-1, 1] units); 0: DDNM, > 0: DDNM+
         travel_length: int = 1,       # time travel (DDNM+): jump back this many steps ...
         travel_repeat: int = 1,       # ... this many times minus one; 1 and 1: no time travel
         clip: bool = False,           # clip x0_hat to [-1, 1] for image priors (the official code does not)
         generator: torch.Generator | None = None,
         progress: bool = False) -> Tensor:
    """Denoising Diffusion Null-space Model (Wang et al. 2023) in the DDIM form of the official code.

    Each step t -> t_prev corrects the network's estimate x0_hat (clipped for images if clip) in the range of A^T
    and keeps its null-space part, then re-noises it with the network's eps and fresh noise z
    (sigma = sqrt(1 - abar_prev)):
      DDNM  (sigma_y = 0):  x0 = A^+ y + (I - A^+ A) x0_hat = x0_hat - A^+ (A x0_hat - y)
                            x_prev = sqrt(abar_prev) x0 + sigma (sqrt(1 - eta^2) eps + eta z)
      DDNM+ (sigma_y > 0):  x0 = x0_hat - Sigma_t A^+ (A x0_hat - y),  Sigma_t = V diag(lambda_i) V^T,
                            and the noise is shaped per spectral component i (Phi_t), with
                            n_i = sqrt(abar_prev) sigma_y / s_i, the noise that y brings to sqrt(abar_prev) x0:
        s_i = 0:      lambda_i = 0, noise sigma (sqrt(1 - eta^2) eps + eta z)        (as DDNM)
        sigma >= n_i: lambda_i = 1, noise sqrt(sigma^2 - n_i^2) z                      (y is less noisy than x_prev)
        sigma < n_i:  lambda_i = sigma sqrt(1 - eta^2) / n_i, noise eta sigma z      (y's own noise fills the rest)
    This is the official SVD-based DDNM+; on the SVD it coincides with DDRM at eta_b = 1. DDNM+ needs the
    operator's SVD; DDNM only A and A_pinv. Time travel (Algorithm 2, RePaint's jump schedule): on reaching
    every `travel_length`-th step from the end, the chain is diffused forward again, x_{t+L} ~ q(x_{t+L} | x_t),
    and re-run down, `travel_repeat - 1` times. Assumes a linear A.
    """
    if sigma_y > 0 and not op.has_svd:
        raise ValueError(f"DDNM+ (sigma_y > 0) needs an operator with a closed-form SVD; {op.name} has none. "
                         "Use sigma_y=0 (DDNM) or another solver")
    sched = prior.schedule
    x = initial_noise(prior, y.shape[0], generator, y.dtype)
    ts = sched.timesteps(steps)[::-1]  # ascending: respaced index i -> timestep ts[i]; index -1 = the data
    path = jump_schedule(len(ts), travel_length, travel_repeat)  # RePaint's schedule: DDNM's time travel
    for i, i_next in progress_bar(list(zip(path, path[1:])), progress, "ddnm"):
        t, t_next = ts[i], (ts[i_next] if i_next >= 0 else -1)
        if i_next > i:  # time travel: back up to t_next by the forward process
            ratio = sched.abar_at(t_next) / sched.abar_at(t)
            x = ratio ** 0.5 * x + (1 - ratio) ** 0.5 * randn_like(x, generator)
            continue
        eps = prior.eps(x, t)
        x0 = clip_x0(prior, prior.x0_from_eps(x, t, eps), clip)
        a_prev = sched.abar_at(t_next)
        sigma = (1 - a_prev) ** 0.5
        correction = op.A_pinv(op.A(x0) - y)
        if sigma_y == 0:
            x = ddim_update(prior, x0 - correction, eps, t_next, eta * sigma, generator=generator)
            continue
        s = op.singulars(x0)
        n = torch.where(s > 0, a_prev ** 0.5 * sigma_y / torch.where(s > 0, s, 1), torch.inf)
        lam = torch.where(sigma >= n, 1, sigma * (1 - eta ** 2) ** 0.5 / n)  # 0 where s = 0 (n = inf)
        fresh = torch.where(sigma >= n, (sigma ** 2 - n ** 2).clamp_min(0).sqrt(), eta * sigma)
        keep = torch.where(s > 0, 0, sigma * (1 - eta ** 2) ** 0.5)
        x0 = x0 - op.V(lam * op.V_T(correction))
        x = a_prev ** 0.5 * x0 + op.V(fresh * op.V_T(randn_like(x, generator)) + keep * op.V_T(eps))
    return x


def _requires(op, sigma_y: float, settings: dict) -> str | None:
    if sigma_y > 0 and not op.has_svd:
        return "DDNM+ (noisy measurements) needs a closed-form SVD of the operator"
    if sigma_y == 0 and not implements(op, "A_pinv"):
        return "DDNM needs the operator's pseudo-inverse A_pinv (and DDNM+, for noisy measurements, its SVD)"
    return None


SPEC = SolverSpec(ddnm, operators="linear", requires=_requires,
                  nfe=lambda sched, s: reverse_steps(jump_schedule(len(sched.timesteps(s["steps"])),
                                                                   s["travel_length"], s["travel_repeat"])))
