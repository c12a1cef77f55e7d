"""Solvers: each one function (prior, op, y, *, settings) that mirrors its paper's algorithm."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import Tensor

from .daps import daps
from .ddnm import ddnm
from .ddrm import ddrm
from .diffpir import diffpir
from .dps import dps
from .pigdm import pigdm
from .reddiff import reddiff
from .repaint import repaint
from .sampling import ddim_step, ddpm_step, denoise, sample
from .scoreald import scoreald
from .sdedit import sdedit
from .tv import tv

SOLVERS: dict[str, Callable[..., Tensor]] = {
    "sdedit": sdedit,
    "scoreald": scoreald,
    "dps": dps,
    "daps": daps,
    "reddiff": reddiff,
    "repaint": repaint,
    "ddrm": ddrm,
    "ddnm": ddnm,
    "pigdm": pigdm,
    "diffpir": diffpir,
    "tv": tv,  # the classical baseline: total-variation least squares (ignores the prior)
}


# Settings tuned per task where the defaults of a solver are not right for every task (step scales of the
# DPS reference configs); `settings_for` merges them under the user's own settings.
TASK_SETTINGS: dict[str, dict[str, dict]] = {
    "dps": {"box-inpaint": {"scale": 0.5}, "random-inpaint": {"scale": 0.5}, "gaussian-blur": {"scale": 0.3},
            "motion-blur": {"scale": 0.3}, "sr4": {"scale": 0.3}, "denoise": {"scale": 0.3}},
    # DiffPIR's official scripts: deblurring lambda 7 (1.75 in our units) and zeta 0.3; super-resolution zeta
    # 0.25 with lambda swept over 2..12 (0.5..3 here; 1 was best or within 0.1 dB on the built-in prior);
    # inpainting (noiseless there) zeta 1, drawing all of each step's noise afresh. Elsewhere lam 1, zeta 0.1.
    "diffpir": {"box-inpaint": {"zeta": 1.0}, "random-inpaint": {"zeta": 1.0},
                "gaussian-blur": {"lam": 1.75, "zeta": 0.3}, "motion-blur": {"lam": 1.75, "zeta": 0.3},
                "sr4": {"lam": 1.0, "zeta": 0.25}},
    # ScoreALD's likelihood slack gamma_t = gamma_scale sigma_t assumes that A passes noise of std sigma_t; the
    # 4x super-resolution operator passes about 0.2 sigma_t, and with gamma_scale 1 its data term was too weak at
    # the noise levels where the built-in prior's component is chosen (2 of 4 runs in a wrong one at 1000 steps)
    "scoreald": {"sr4": {"gamma_scale": 0.5}},
    # TV weights per unit of sigma_y, best at sigma_y = 0.05 on synthetic piecewise-constant images (1.0 elsewhere)
    "tv": {"random-inpaint": {"weight_scale": 0.5}, "gaussian-blur": {"weight_scale": 0.5},
           "motion-blur": {"weight_scale": 0.25}, "sr4": {"weight_scale": 0.25}},
}


def settings_for(method: str, task: str | None, **overrides) -> dict:
    """The settings to run `method` on `task` with: the task's tuned values, then the given overrides
    (None values are dropped, so optional CLI flags pass through untouched)."""
    settings = dict(TASK_SETTINGS.get(method, {}).get(task, {}))
    settings.update({k: v for k, v in overrides.items() if v is not None})
    return settings


class DivergenceError(RuntimeError):
    """A solver's iterates left the finite numbers: its step size is too large for this problem."""


def solve(method: str, prior, op, y: Tensor, *, sigma_y: float | None = None, **settings) -> Tensor:
    """Run the solver called `method` on (prior, op, y). `sigma_y` reaches the solvers that model the
    measurement noise. Unknown settings raise a TypeError, a measurement with NaNs a ValueError, and a
    run that diverges a DivergenceError."""
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(SOLVERS)}")
    if not bool(y.isfinite().all()):
        raise ValueError("the measurement contains NaN or infinite values")
    solver = SOLVERS[method]
    accepted = [name for name, p in inspect.signature(solver).parameters.items() if p.kind == p.KEYWORD_ONLY]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        raise TypeError(f"{method} has no setting {', '.join(unknown)}; its settings are {', '.join(accepted)}")
    if sigma_y is not None and "sigma_y" in accepted:
        settings.setdefault("sigma_y", sigma_y)
    x = solver(prior, op.to(y.device), y, **settings)
    if not bool(x.isfinite().all()):
        raise DivergenceError(f"{method} diverged (non-finite output) with settings {settings}: "
                              "lower its step size (scale / step_size) or use more steps")
    return x


__all__ = ["SOLVERS", "TASK_SETTINGS", "settings_for", "DivergenceError", "solve", "sample", "denoise", "ddpm_step", "ddim_step", "sdedit", "scoreald", "dps", "daps", "reddiff", "repaint",
           "ddrm", "ddnm", "pigdm", "diffpir", "tv"]
