"""DPS: Chung et al. 2023, "Diffusion Posterior Sampling for General Noisy Inverse Problems",
Algorithm 1 (Gaussian noise)."""

from __future__ import annotations

import bisect
import math
from typing import Literal

import torch
from torch import Tensor

from ..operators import Inpaint, Operator
from ..prior import Prior
from ..tasks import INPAINTING_TASKS
from .sampling import clip_x0, ddpm_step, initial_noise, steps_of
from .spec import SolverSpec
from .tv import rough_guess, why_no_rough_guess


def dps(prior: Prior, op: Operator, y: Tensor, *,
        steps: int | None = None,     # reverse steps; None: all T (the paper uses 1000)
        scale: float | dict[int, float] = 0.5,  # zeta for a T-step chain on 3x256x256 images (the reference's
                                      # setting: 0.5 inpainting, 0.3 blur and SR), rescaled below; or a table
                                      # {steps: scale} tuned at several chain lengths (`scale_at`)
        loss: Literal["norm", "squared"] = "norm",  # "norm": gradient of ||y - A(x0_hat)|| as the reference
                                      # code; "squared": gradient of ||y - A(x0_hat)||^2 with a constant step
        ref_size: int | None = 3 * 256 * 256,  # values per image the scale was tuned at; None: no rescaling
        clip: bool = True,            # clip x0_hat to [-1, 1] for image priors (official: clip_denoised)
        start: int | None = None,     # None: from pure noise at T (the paper); t0: from the naive reconstruction
                                      # noised to t0 (CCDF's warm start, Chung, Sim & Ye 2022)
        generator: torch.Generator | None = None,
        progress: bool = False) -> Tensor:
    """Diffusion posterior sampling (Chung et al. 2023, Algorithm 1). At each step t -> t_prev:
        x0_hat = (x_t - sqrt(1 - abar_t) eps(x_t, t)) / sqrt(abar_t)          (clipped for images if clip)
        x'     ~ ancestral DDPM step from (x_t, x0_hat)
        x_prev = x' - zeta * grad_{x_t} L,   L = ||y - A(x0_hat)|| (default) or ||y - A(x0_hat)||^2
    The gradient flows through the network by autograd, so A may be non-linear and y may have any shape.
    The default, the unsquared norm, is the official code's choice; it equals the paper's squared-norm
    step with zeta_t = zeta' / ||y - A(x0_hat)|| and zeta' = zeta / 2. Norms are per image.

    Warm start (`start` = t0, "come closer, diffuse faster"): the chain begins at
    x_t0 = sqrt(abar_t0) x_y + sqrt(1 - abar_t0) z, with x_y = `warm_start_image(op, y)` (for inpainting the
    visible pixels and a smooth fill of the hole), and runs the same steps from t0 down. A prior whose one-step
    estimate is calibrated at high noise settles a face's layout there, before the guidance is strong enough
    to align it with y; for box inpainting the warm start hands it the layout of the visible part instead
    (docs/MODEL_CARD.md has the measurements).

    The step size, for a chain of S steps over the N timesteps it spans (N = T, or t0 + 1 with a warm start)
    and images of d values:
        zeta = scale * (N / S) * sqrt(d / ref_size)     (loss "norm"; without the last factor for "squared")
    Resolution: the reference's scales (0.5 inpainting, 0.3 blur and SR) were tuned on 3x256x256 images
    (ref_size). The gradient of the unsquared norm, A^T r / ||r||, has a per-pixel size that scales as
    1 / sqrt(number of measurements) (larger with fewer), since ||r|| ~ sigma_y sqrt(m) near the data: at 64x64 (16x fewer
    values) the same zeta would be a 4x stronger step. sqrt(d / ref_size) keeps the reference's per-pixel
    step at every resolution (0.25 at 3x64x64, 1 for the 256-px models). The squared norm's gradient,
    2 A^T r, does not depend on m, so loss="squared" is not rescaled. Chain length: each step of a
    respaced chain stands for N / S steps of the full one, so it takes their summed guidance (N / S), the
    Euler rule for a drift; with all T steps the factor is 1. On the built-in prior (3x64x64,
    sigma_y = 0.05, 3 seeds, box and random inpainting, deblurring, sr4) this rule beat the sqrt(T / S) rule
    at 20 and 100 steps on every task (with sqrt(T / S), 5 of 6 sr4 runs fell 1-10 dB below the naive
    reconstruction), and the full 1000-step chain at 100 steps on every task and at 20 steps on all but box
    inpainting (0.5 dB short). A prior tuned at several chain lengths gives `scale` as a table {steps: scale}
    (`scale_at`): faces64's DPS on Gaussian blur takes 2 at 50 steps, 3 at 100 and 4.5 at 1000, where
    one scale under the N / S rule overshoots the short chains and undershoots the long one.
    """
    if loss not in ("norm", "squared"):
        raise ValueError(f"unknown DPS loss {loss!r}; expected 'norm' or 'squared'")
    if start is None:
        x = initial_noise(prior, y.shape[0], generator, y.dtype)
    else:
        x = prior.schedule.q_sample(warm_start_image(op, y), start, generator=generator)
    zeta = step_size(prior, steps, scale, loss, ref_size, start)
    for t, t_prev in steps_of(prior, steps, start, progress=progress, desc="dps"):
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            eps, v = prior.predict(x, t)
            x0 = clip_x0(prior, prior.x0_from_eps(x, t, eps), clip)
            residual = (y - op.A(x0)).flatten(1).norm(dim=1)  # (B,)
            objective = residual.sum() if loss == "norm" else residual.square().sum()
            (grad,) = torch.autograd.grad(objective, x)
        with torch.no_grad():
            x, _ = ddpm_step(prior, x.detach(), t, t_prev, eps.detach(), None if v is None else v.detach(),
                             clip=clip, generator=generator)
            x = x - zeta * grad
    return clip_x0(prior, x.detach(), clip)


def warm_start_image(op: Operator, y: Tensor) -> Tensor:
    """The image DPS's warm start noises: for inpainting `rough_guess`, the visible pixels with each hole filled by
    harmonic interpolation of its border; for another linear A the naive reconstruction less its
    null-space part, A^+ A naive(y) (blur: y less the frequencies A removes); for a non-linear A the naive
    reconstruction itself. The hole's fill survives in x_t0 at sqrt(abar_t0) of its contrast and steers the
    face the chain draws: a flat fill of the visible pixels' mean colour came out as a band of shadow where
    the visible part was dark, zeros cost 2 dB on tightly cropped faces, and the harmonic fill was the best
    of the three on both framings (docs/MODEL_CARD.md has the measurements)."""
    if op.linear and not isinstance(op, Inpaint):
        return op.A_pinv(op.A(op.naive(y)))
    return rough_guess(op, y)


def step_size(prior: Prior, steps: int | None, scale: float | dict[int, float], loss: str = "norm",
              ref_size: int | None = 3 * 256 * 256, start: int | None = None) -> float:
    """DPS's zeta per step: scale_at(scale, steps) * N / S * sqrt(d / ref_size) for S steps over N timesteps (T,
    or start + 1) and d values per image (the resolution factor only for the unsquared norm, and not when
    ref_size is None); see `dps`."""
    T = prior.schedule.T
    span = T if start is None else start + 1
    zeta = scale_at(scale, steps or T) * span / len(prior.schedule.timesteps(steps, start))
    if loss == "norm" and ref_size is not None:
        zeta *= (math.prod(prior.shape) / ref_size) ** 0.5
    return zeta


def scale_at(scale: float | dict[int, float], steps: int) -> float:
    """The step scale of a chain of `steps` steps: `scale` itself, or from a table {steps: scale} tuned at
    several chain lengths the straight line through its points in log steps and log scale (a power law
    between each two), continued beyond its ends; a table of one point is that point's scale."""
    if not isinstance(scale, dict):
        return scale
    points = sorted((int(s), v) for s, v in scale.items())
    if len(points) == 1:
        return points[0][1]
    i = min(max(bisect.bisect_left([s for s, _ in points], steps), 1), len(points) - 1)
    (s0, v0), (s1, v1) = points[i - 1], points[i]
    return v0 * (v1 / v0) ** (math.log(steps / s0) / math.log(s1 / s0))


def _requires(op: Operator, sigma_y: float, settings: dict) -> str | None:
    """The warm start noises a rough guess from y (`warm_start_image`)."""
    why = why_no_rough_guess(op) if settings["start"] is not None else None
    return f"its warm start (start = {settings['start']}) {why}: leave start out" if why else None


SPEC = SolverSpec(
    dps, backprop=True, requires=_requires, nfe=lambda sched, s: len(sched.timesteps(s["steps"], s["start"])),
    # the step scales of the DPS reference configs
    task_settings={**{task: {"scale": 0.5} for task in INPAINTING_TASKS}, "gaussian-blur": {"scale": 0.3},
                   "motion-blur": {"scale": 0.3}, "sr4": {"scale": 0.3}, "denoise": {"scale": 0.3}})
