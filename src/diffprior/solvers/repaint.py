"""RePaint: Lugmayr et al. 2022, "RePaint: Inpainting using Denoising Diffusion Probabilistic Models",
Algorithm 1 with the jump schedule of its Section 4.2 (resampling)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import Inpaint, Operator
from ..prior import Prior
from ..schedule import randn_like
from .sampling import ddpm_step, initial_noise, jump_schedule, progress_bar, reverse_steps
from .spec import SolverSpec


@torch.no_grad()
def repaint(prior: Prior, op: Operator, y: Tensor, *,
            steps: int = 100,            # reverse steps of the respaced chain (paper: 250)
            jump_length: int = 10,       # j: how many steps each resampling jumps back up (paper: 10)
            jump_n_sample: int = 5,      # r: how often each jump point is passed (paper: 10)
            clip: bool = True,           # clip x0_hat to [-1, 1] for image priors (official: clip_denoised)
            generator: torch.Generator | None = None,
            progress: bool = False) -> Tensor:
    """RePaint (Lugmayr et al. 2022) for an `Inpaint` operator with mask m (1 = known). At each reverse
    step from t to t_prev of the respaced chain:
        x_known   = sqrt(abar_prev) y + sqrt(1 - abar_prev) z      (y itself at the last step)
        x_unknown ~ ancestral DDPM step from x_t (Ho et al. 2020)
        x_prev    = m * x_known + (1 - m) * x_unknown
    and, resampling, the chain jumps back up j steps, x_up ~ q(x_up | x_t) = N(sqrt(abar_up / abar_t) x_t,
    (1 - abar_up / abar_t) I), every j steps (after reaching step 0, j, 2j, ... of the respaced chain, from
    the bottom) until each such point has been passed r times (`jump_schedule`). The jump is the
    composition of the j single forward steps of the official code, drawn at once.

    Assumes noiseless observed pixels: y is pasted into the known region as it is, so measurement noise
    stays in the output. Costs steps + (r - 1) j floor((steps - 1) / j) network evaluations (`repaint_nfe`).
    The paper's setting, 250 steps with j = 10 and r = 10, costs 2,410; the default here, 100 steps with
    j = 10 and r = 5, costs 460 (less than half of 1000-step DPS, and without backpropagation).
    """
    if not isinstance(op, Inpaint):
        raise TypeError(f"RePaint solves inpainting only: it needs an Inpaint operator (a pixel mask), "
                        f"not {type(op).__name__}")
    sched = prior.schedule
    ts = sched.timesteps(steps)[::-1]  # ascending: respaced index i -> timestep ts[i]; index -1 = the data
    mask = op.mask.to(y.dtype)
    x = initial_noise(prior, y.shape[0], generator, y.dtype)
    path = jump_schedule(len(ts), jump_length, jump_n_sample)
    for i, i_next in progress_bar(list(zip(path, path[1:])), progress, "repaint"):
        t, t_next = ts[i], (ts[i_next] if i_next >= 0 else -1)
        if i_next < i:  # a reverse step, then the known region pasted in at the new level
            eps, v = prior.predict(x, t)
            x, _ = ddpm_step(prior, x, t, t_next, eps, v, clip=clip, generator=generator)
            known = y if t_next < 0 else sched.q_sample(y, t_next, generator=generator)
            x = mask * known + (1 - mask) * x
        else:  # resampling: back up to t_next by the forward process
            ratio = sched.abar_at(t_next) / sched.abar_at(t)
            x = ratio ** 0.5 * x + (1 - ratio) ** 0.5 * randn_like(x, generator)
    return x


def repaint_nfe(steps: int, jump_length: int = 10, jump_n_sample: int = 5) -> int:
    """Network evaluations of a RePaint run: the reverse steps of its jump schedule."""
    return reverse_steps(jump_schedule(steps, jump_length, jump_n_sample))


def _budget(nfe: int, T: int) -> dict:
    """The most steps whose run fits nfe, with jumps of steps / 10 (at most the paper's 10) and 5 resamplings."""
    for steps in range(nfe, 0, -1):
        jump = min(10, max(1, steps // 10))
        if repaint_nfe(steps, jump, 5) <= nfe:
            return {"steps": steps, "jump_length": jump, "jump_n_sample": 5}
    return {"steps": 1, "jump_length": 1, "jump_n_sample": 1}


SPEC = SolverSpec(repaint, operators="inpaint", budget=_budget,
                  nfe=lambda sched, s: repaint_nfe(len(sched.timesteps(s["steps"])), s["jump_length"], s["jump_n_sample"]))
