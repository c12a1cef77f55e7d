"""SDEdit: Meng et al. 2022, "SDEdit: Guided Image Synthesis and Editing with Stochastic Differential
Equations", Algorithm 1 (VP form)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..operators import Operator
from ..prior import Prior
from .sampling import ddpm_step, steps_of
from .spec import SolverSpec
from .tv import rough_guess, why_no_rough_guess


@torch.no_grad()
def sdedit(prior: Prior, op: Operator, y: Tensor, *,
           t0: int | None = None,         # the timestep the rough guess is noised to (report: 400, 500, 600);
                                          #   None: half the prior's chain, 500 of T = 1000
           steps: int | None = None,      # reverse steps from t0 to 0; None: all t0 + 1 of them
           init: Tensor | None = None,    # the rough guess; default `rough_guess(op, y)`
           generator: torch.Generator | None = None,
           progress: bool = False) -> Tensor:
    """SDEdit (Meng et al. 2022): x_t0 = sqrt(abar_t0) g + sqrt(1 - abar_t0) z for a rough guess g of x,
    then the unconditional ancestral reverse process from t0 to 0. The measurement enters only through
    g: a larger t0 gives a more realistic image that is less faithful to y."""
    t0 = default_t0(prior.schedule.T) if t0 is None else t0
    x = rough_guess(op, y) if init is None else init
    x = prior.schedule.q_sample(x, t0, generator=generator)
    for t, t_prev in steps_of(prior, steps, start=t0, progress=progress, desc="sdedit"):
        eps, v = prior.predict(x, t)
        x, _ = ddpm_step(prior, x, t, t_prev, eps, v, generator=generator)
    return x


def default_t0(T: int) -> int:
    """SDEdit's t0 when none is given: half the prior's chain of T timesteps."""
    return T // 2


SPEC = SolverSpec(sdedit, requires=lambda op, sigma_y, settings: why_no_rough_guess(op),
                  nfe=lambda sched, s: len(sched.timesteps(s["steps"], default_t0(sched.T) if s["t0"] is None
                                                           else s["t0"])),
                  budget=lambda nfe, T: {"steps": min(nfe, default_t0(T) + 1)})  # from its default t0 down
