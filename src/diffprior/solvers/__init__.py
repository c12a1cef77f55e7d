"""Solvers: each one function (prior, op, y, *, settings) that mirrors its paper's algorithm."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable

import torch
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


PLUMBING = ("generator", "progress", "init")  # keyword arguments of every solver that are not settings
DIVERGED_ABOVE = 100.0  # |x| beyond this is no image: the data live in about [-1, 1]


class DivergenceError(RuntimeError):
    """A solver's iterates left the range of images (or the finite numbers), or its residual exploded:
    its step size is too large for this problem."""


def solver_settings(method: str) -> dict:
    """The settings of a solver (its keyword-only arguments but the plumbing) with their defaults."""
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(SOLVERS)}")
    params = inspect.signature(SOLVERS[method]).parameters.items()
    return {k: p.default for k, p in params if p.kind == p.KEYWORD_ONLY and k not in PLUMBING}


def check_settings(method: str, settings: dict, T: int | None = None) -> None:
    """Refuse a setting the solver does not have (TypeError) or a value of the wrong kind or out of range
    (ValueError), naming the setting, the value and what is allowed. T: the prior's number of timesteps."""
    known = solver_settings(method)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise TypeError(f"{method} has no setting {', '.join(unknown)}; its settings are {', '.join(known)}")
    for key, value in settings.items():
        default = known[key]
        if value is None:
            continue
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{method} setting {key}={value!r}: expected true or false")
            continue
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError(f"{method} setting {key}={value!r}: expected a name such as {default!r}")
            continue
        if not isinstance(default, (int, float)) and key not in ("steps", "t0", "weight"):
            continue  # a setting without a numeric default (e.g. a kernel): the solver checks it
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{method} setting {key}={value!r}: expected a finite number")
        if (key in ("steps", "t0") or (isinstance(default, int) and not isinstance(default, bool))) \
                and not float(value).is_integer():
            raise ValueError(f"{method} setting {key}={value!r}: expected a whole number")
        if value < 0:
            raise ValueError(f"{method} setting {key}={value!r}: must not be negative")
        if key == "steps" and value < 1:
            raise ValueError(f"{method} setting steps={value!r}: must be at least 1")
        if T is not None and key == "t0" and value > T - 1:
            raise ValueError(f"{method} setting t0={value!r}: a timestep in [0, {T - 1}] (the prior has T = {T})")
        if T is not None and key == "steps" and value > T and method != "tv":
            raise ValueError(f"{method} setting steps={value!r}: at most the prior's T = {T} diffusion steps")


def divergence(op, x: Tensor, y: Tensor) -> str | None:
    """Why x is a diverged result for measurement y, or None: non-finite values, values far outside the
    data's range, or a residual ||y - A x|| more than ten times what any image in range could leave."""
    if not bool(x.isfinite().all()):
        return "non-finite output"
    if float(x.abs().max()) > DIVERGED_ABOVE:
        return f"output values up to {float(x.abs().max()):.3g}, far outside the data's [-1, 1]"
    with torch.no_grad():
        r = float((y - op.A(x)).flatten(1).norm(dim=1).max())
    bound = 10 * max(float(y.flatten(1).norm(dim=1).max()), y[0].numel() ** 0.5)
    if not r <= bound:
        return f"residual ||y - A x|| = {r:.3g}, more than ten times what any image in range leaves ({bound:.3g})"
    return None


def solve(method: str, prior, op, y: Tensor, *, sigma_y: float | None = None, **settings) -> Tensor:
    """Run the solver called `method` on (prior, op, y). `sigma_y` reaches the solvers that model the
    measurement noise. Unknown settings raise a TypeError, a bad value or a measurement with NaNs a
    ValueError, and a run that diverges (see `divergence`) a DivergenceError."""
    if method not in SOLVERS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(SOLVERS)}")
    if not bool(y.isfinite().all()):
        raise ValueError("the measurement contains NaN or infinite values")
    schedule = getattr(prior, "schedule", None)
    check_settings(method, {k: v for k, v in settings.items() if k not in PLUMBING},
                   schedule.T if schedule is not None else None)
    if sigma_y is not None and "sigma_y" in solver_settings(method):
        settings.setdefault("sigma_y", sigma_y)
    x = SOLVERS[method](prior, op.to(y.device), y, **settings)
    why = divergence(op, x, y)
    if why is not None:
        shown = {k: v for k, v in settings.items() if k not in PLUMBING}
        raise DivergenceError(f"{method} diverged ({why}) with settings {shown}: lower its step size "
                              "(scale / step_size / lr) or use more steps")
    return x


__all__ = ["SOLVERS", "TASK_SETTINGS", "settings_for", "solver_settings", "check_settings", "DivergenceError", "solve", "sample", "denoise", "ddpm_step", "ddim_step", "sdedit", "scoreald", "dps", "daps", "reddiff", "repaint",
           "ddrm", "ddnm", "pigdm", "diffpir", "tv"]
