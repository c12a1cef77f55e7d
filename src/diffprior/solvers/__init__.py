"""Solvers: each one function (prior, op, y, *, settings) that mirrors its paper's algorithm."""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable

import torch
from torch import Tensor

from importlib import import_module

from ..io import RANGE_HINT
from ..operators import Operator, check_linear, check_noise_level
from ..prior import check_prior
from .sampling import ddim_step, ddpm_step, denoise, sample
from .spec import PLUMBING, SolverSpec

# The registry: one line per solver, the name of its module, which declares the solver's facts in its SPEC
# (see spec.py) beside the function of the same name.
REGISTRY = (
    "sdedit",
    "scoreald",
    "dps",
    "daps",
    "reddiff",
    "repaint",
    "ddrm",
    "ddnm",
    "pigdm",
    "diffpir",
    "tv",  # the classical baseline: total-variation least squares (ignores the prior)
)
SPECS: dict[str, SolverSpec] = {name: import_module(f".{name}", __name__).SPEC for name in REGISTRY}
SOLVERS: dict[str, Callable[..., Tensor]] = {name: spec.run for name, spec in SPECS.items()}
globals().update(SOLVERS)  # each solver's function as diffprior.solvers.<name>, e.g. diffprior.solvers.dps
# Per-task defaults of every solver that has some (each solver's SPEC.task_settings)
TASK_SETTINGS: dict[str, dict[str, dict]] = {name: s.task_settings for name, s in SPECS.items() if s.task_settings}


def spec_of(method: str) -> SolverSpec:
    """The declared facts of the solver called `method`."""
    if method not in SPECS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(SPECS)}")
    return SPECS[method]


def settings_for(method: str, task: str | None, tuned: dict | None = None, steps: int | None = None,
                 **overrides) -> dict:
    """The settings to run `method` on `task` with, each layer over the one before: the solver's per-task
    defaults (SPEC.task_settings), the values tuned for this prior (`tuned`, see `tuned_settings`), then
    `steps` unless None (the solver's default) and the given overrides, None included (e.g. DPS's
    start=None: no warm start, whatever the prior's tuned settings say)."""
    settings = dict(TASK_SETTINGS.get(method, {}).get(task, {}))
    settings.update((tuned or {}).get(method, {}).get(task, {}))
    settings.update({} if steps is None else {"steps": steps}, **overrides)
    return settings


def tuned_settings(prior) -> dict:
    """The solver settings tuned for this prior, {method: {task: settings}}: its checkpoint's
    `solver_settings` (e.g. faces64's DPS step scales, see docs/MODEL_CARD.md); {} for other priors. Solvers
    this version does not have are left out; the settings of those it has are checked (`check_settings`)."""
    config = getattr(prior, "config", None) or {}
    given = config.get("solver_settings", {})
    where = "the model's solver_settings (in its checkpoint's .json)"
    if not isinstance(given, dict):
        raise ValueError(f"{where} must be an object {{method: {{task: {{setting: value}}}}}}, not {given!r:.80}")
    tuned = {m: v for m, v in given.items() if m in SPECS}
    for method, per_task in tuned.items():
        if not isinstance(per_task, dict) or not all(isinstance(v, dict) for v in per_task.values()):
            raise ValueError(f"{where}: {method} must map each task to its settings, not {per_task!r:.80}")
        for task, settings in per_task.items():
            try:
                check_settings(method, settings, getattr(getattr(prior, "schedule", None), "T", None))
            except (TypeError, ValueError) as e:
                raise ValueError(f"{where}, {method} on {task}: {e}") from None
    return tuned


DIVERGED_ABOVE = 10.0  # |x| beyond this is no image: the data live in about [-1, 1]


class DivergenceError(RuntimeError):
    """A solver's iterates left the range of images (or the finite numbers), or its residual exploded:
    its step size is too large for this problem."""


def solver_settings(method: str) -> dict:
    """The settings of a solver (its keyword-only arguments but the plumbing) with their defaults."""
    return spec_of(method).settings


TIMESTEP_SETTINGS = ("t0", "start")  # a timestep of the prior's chain, in [0, T - 1]
WHOLE_SETTINGS = ("steps", *TIMESTEP_SETTINGS)  # whole numbers, whatever their default (None for some)
SHARE_SETTINGS = ("eta", "eta_b", "zeta", "lr_min_ratio")  # shares of noise or of a rate, in [0, 1]
POSITIVE_SETTINGS = ("rho", "sigma_min", "sigma_max", "ode_sigma_min", "ref_size",  # divided by, or a log taken
                     "step_size")  # a Langevin step of 0 never moves
# setting: the one solver it is for (None: all)
AT_LEAST_ONE = {"steps": None, "langevin_steps": "scoreald", "ode_steps": "daps", "jump_length": "repaint",
                "jump_n_sample": "repaint", "travel_length": "ddnm", "travel_repeat": "ddnm"}


def check_settings(method: str, settings: dict, T: int | None = None) -> dict:
    """Refuse a setting the solver does not have (TypeError) or a value of the wrong kind or out of range
    (ValueError), naming the setting, the value and what is allowed. T: the prior's number of timesteps.
    Returns the settings with whole numbers given as floats (steps=5.0) as ints, as the solvers need them."""
    known = solver_settings(method)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise TypeError(f"{method} has no setting {', '.join(unknown)}; its settings are {', '.join(known)}")
    checked = dict(settings)
    for key, value in settings.items():
        default = known[key]
        if value is None:
            if not spec_of(method).accepts(key, type(None)):
                raise ValueError(f"{method} setting {key}=null: {key} takes a value (default {default!r}); "
                                 "leave it out for the default")
            continue
        if spec_of(method).accepts(key, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{method} setting {key}={value!r}: expected true or false")
            continue
        if isinstance(value, dict) and spec_of(method).accepts(key, dict):
            checked[key] = _check_table(f"{method} setting {key}", value)
            continue
        if isinstance(default, str):
            names = spec_of(method).choices(key)
            if not isinstance(value, str) or value not in names:
                raise ValueError(f"{method} setting {key}={value!r}: expected one of {', '.join(map(repr, names))}")
            continue
        if not isinstance(default, (int, float)) and key not in (*WHOLE_SETTINGS, "weight"):
            continue  # a setting without a numeric default (e.g. a kernel): the solver checks it
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{method} setting {key}={value!r}: expected a finite number")
        if not isinstance(value, (int, float)):  # a NumPy (or other) scalar: a plain number, as JSON takes it
            value = checked[key] = int(value) if isinstance(value, numbers.Integral) else float(value)
        if key in WHOLE_SETTINGS or isinstance(default, int):
            if not float(value).is_integer():
                raise ValueError(f"{method} setting {key}={value!r}: expected a whole number")
            checked[key] = int(value)
        if value < 0:
            raise ValueError(f"{method} setting {key}={value!r}: must not be negative")
        if key in AT_LEAST_ONE and AT_LEAST_ONE[key] in (None, method) and value < 1:
            raise ValueError(f"{method} setting {key}={value!r}: must be at least 1")
        if key in SHARE_SETTINGS and value > 1:
            raise ValueError(f"{method} setting {key}={value!r}: a share, at most 1")
        if key in POSITIVE_SETTINGS and value == 0:
            raise ValueError(f"{method} setting {key}={value!r}: must be greater than 0")
        if T is not None and key in TIMESTEP_SETTINGS and value > T - 1:
            raise ValueError(f"{method} setting {key}={value!r}: a timestep in [0, {T - 1}] (the prior has T = {T})")
        if T is not None and key == "steps" and value > T and method != "tv":
            raise ValueError(f"{method} setting steps={value!r}: at most the prior's T = {T} diffusion steps")
    return checked


def _check_table(what: str, table: dict) -> dict[int, float]:
    """A setting given per chain length, {steps: value} (steps as JSON's text keys or whole numbers): at least
    one point, each chain length a whole number >= 1 given once, each value a finite number > 0."""
    if not table:
        raise ValueError(f"{what}={{}}: give at least one point {{steps: value}}")
    checked = {}
    for steps, value in table.items():
        text = str(steps).strip()
        if isinstance(steps, bool) or not (isinstance(steps, (str, int)) and text.isdigit() and int(text) >= 1):
            raise ValueError(f"{what}: {steps!r} is not a number of steps (a whole number >= 1)")
        if int(text) in checked:
            raise ValueError(f"{what}: {int(text)} steps is given twice")
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
            raise ValueError(f"{what}: at {text} steps {value!r}, expected a finite number > 0")
        checked[int(text)] = float(value)
    return dict(sorted(checked.items()))


def check_measurement_tensor(prior, y) -> None:
    """Refuse a measurement that is not a float32 or float64 tensor of images on the prior's device, or holds
    NaNs: the checks of `check_measurement` that need no operator."""
    if not isinstance(y, Tensor) or not y.is_floating_point():
        kind = y.dtype if isinstance(y, Tensor) else type(y).__name__
        raise TypeError(f"the measurement must be a floating-point tensor (images in [-1, 1]), got {kind}")
    if y.dtype in (torch.float16, torch.bfloat16):  # the solvers' updates lose too much in 16 bits
        raise TypeError(f"the measurement is {y.dtype}: give it in float32 (or float64); a network runs in bf16 "
                        "through prior.configure(dtype='bf16')")
    if y.dim() == 0 or y.shape[0] == 0:
        raise ValueError(f"the measurement holds no images (shape {tuple(y.shape)})")
    if y.device.type == "meta":
        raise ValueError("the measurement is on the meta device: it holds no values")
    device = getattr(prior, "device", None)
    if device is not None and (device.type, device.index or 0) != (y.device.type, y.device.index or 0):
        raise ValueError(f"the measurement is on {y.device} but the prior on {device}: move one, "
                         "e.g. y.to(prior.device)")
    if not bool(y.isfinite().all()):
        raise ValueError("the measurement contains NaN or infinite values")


def check_measurement(prior, op, y, sigma_y: float = 0.0) -> None:
    """Refuse a measurement that `op` could not have made from a batch of the prior's images: not a float32
    or float64 tensor, no images, NaNs, or another shape than op.A gives (also a mask's batch that does not
    fit y's); warn when its values lie far beyond what op makes from images in [-1, 1] (pixels in [0, 255])."""
    check_measurement_tensor(prior, y)
    _check_measurement_shape(prior, op, y, sigma_y)


def _check_measurement_shape(prior, op, y: Tensor, sigma_y: float) -> None:
    """`check_measurement`'s checks of y against what `op` makes (y itself already checked)."""
    shape = getattr(prior, "shape", None)
    if shape is None:
        return
    images = torch.zeros((y.shape[0], *shape), dtype=y.dtype, device=y.device)
    try:
        with torch.no_grad():
            expected = tuple(op.A(images).shape)
    except (RuntimeError, ValueError) as e:
        raise ValueError(f"{op.name} does not take a batch of {y.shape[0]} of the prior's {shape} images "
                         f"(the measurement's batch): {e}") from None
    if len(expected) < 2:
        raise ValueError(f"{op.name}.A makes {expected} from a batch of {y.shape[0]} images: give each image's "
                         "measurement a dimension of its own, (B, 1) for one number (e.g. keepdim=True)")
    if y.dim() != len(expected):
        layout = f"a batch (B, {', '.join(map(str, expected[1:]))})"
        advice = ": for one measurement, add the batch dimension (y[None])" if y.dim() == len(expected) - 1 else ""
        raise ValueError(f"the measurement has shape {tuple(y.shape)}, but {op.name} makes {layout}{advice}")
    if tuple(y.shape) != expected:
        raise ValueError(f"the measurement has shape {tuple(y.shape)}, but {op.name} makes {expected} from a batch "
                         f"of {y.shape[0]} of the prior's {shape} images")
    check_linear(op, images)  # an operator of the user's own: its linearity and adjoint, which solvers trust
    signs = torch.randint(0, 2, images.shape, generator=torch.Generator().manual_seed(0)).to(images) * 2 - 1
    with torch.no_grad():  # a lower bound of max |A x| over images in [-1, 1]
        reach = max(float(op.A(v).abs().max()) for v in (images + 1, images - 1, signs))
    largest = float(y.detach().abs().max())
    if largest > 4 * reach + 6 * sigma_y + 0.5:
        warnings.warn(f"the measurement reaches {largest:.4g}, but {op.name} makes at most about {reach:.3g} from "
                      f"images in [-1, 1]: {RANGE_HINT}", stacklevel=3)


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


STEP_SIZES = ("scale", "step_size", "gamma_scale", "lr")  # the settings that size a solver's data steps


def divergence_hint(spec: SolverSpec) -> str:
    """What to change when `spec`'s solver diverged: only the settings it has."""
    sizes = [k for k in STEP_SIZES if k in spec.settings]
    more = "use more steps" + (" or a larger sigma_y" if "sigma_y" in spec.settings and not sizes else "")
    return f"lower its step size ({' / '.join(sizes)}) or {more}" if sizes else more


def solve(method: str, prior, op, y: Tensor, *, sigma_y: float | None = None, task: str | None = None,
          **settings) -> Tensor:
    """Run the solver called `method` on (prior, op, y). `sigma_y` reaches the solvers that model the measurement
    noise. `task` (a name of `diffprior.TASKS`, or "inpaint" for a mask of one's own): the given settings go over
    the ones the command line runs that task with, the solver's per-task defaults and those tuned for this prior
    (`settings_for`); without it the solver's own defaults apply. A prior or an operator that is not one (a name,
    None) raises a TypeError, so do unknown settings, a bad value a ValueError, a measurement that is not a float
    tensor a TypeError, one with NaNs or of a shape that `op` does not make from the prior's images a ValueError
    (one of values far beyond them, such as [0, 255] pixels, a warning), an operator the solver does not accept a
    TypeError, and a run that diverges (see `divergence`) a DivergenceError. `y` is data: never differentiated."""
    spec = spec_of(method)
    if not (prior is None and not spec.needs_prior):
        check_prior(prior)
    if task is not None:
        from ..tasks import CLASS_TASKS, INPAINTING_TASKS, TASKS
        if task not in (*TASKS, "inpaint"):
            raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}, inpaint")
        named = getattr(op, "name", None)
        fits = CLASS_TASKS.get(named, (named,))
        mask = "inpaint" in (named, task) and {named, task} <= set(INPAINTING_TASKS)  # a mask as a user's own
        if named in (*TASKS, "inpaint", *CLASS_TASKS) and task not in fits and not mask:
            raise ValueError(f"task={task!r}, but the operator is {named}'s: give task="
                             f"{' or '.join(map(repr, fits))} for its settings")
        settings = settings_for(method, task, tuned_settings(prior), **settings)
    if not isinstance(op, Operator):
        raise TypeError(f"the operator must be a diffprior Operator, e.g. dp.make_operator('box-inpaint', "
                        f"(3, 64, 64)); got {type(op).__name__}")
    if "_modules" not in vars(op):
        raise TypeError(f"{type(op).__name__}.__init__ must call super().__init__() (an Operator is a torch Module)")
    if sigma_y is not None:
        sigma_y = check_noise_level(sigma_y)
        if "sigma_y" in spec.settings:
            settings.setdefault("sigma_y", sigma_y)
    schedule = getattr(prior, "schedule", None)
    settings.update(check_settings(method, {k: v for k, v in settings.items() if k not in PLUMBING},
                                   schedule.T if schedule is not None else None))
    noise = settings.get("sigma_y", spec.settings.get("sigma_y", 0.0))
    why = spec.why_not(op, noise, settings)
    if why is not None:  # the operator's fault, or (where it would apply with noise) the noise level's
        blame = f"to {op.name}" if spec.why_not(op, 1.0, settings) is not None else f"at sigma_y = {noise:g}"
        raise TypeError(f"{method} does not apply {blame}: {why}")
    check_measurement_tensor(prior, y)  # before the operator moves to y's device (in place: it is a Module)
    op = op.to(y.device)
    _check_measurement_shape(prior, op, y, settings.get("sigma_y", sigma_y or 0.0))
    y = y.detach()  # data: nothing differentiates through it
    init = settings.get("init")
    if init is not None:  # a start image per measurement (SDEdit, RED-diff)
        if not spec.takes_init:
            starters = ", ".join(name for name, s in SPECS.items() if s.takes_init)
            raise TypeError(f"{method} takes no init: it starts from noise or from y (of the solvers here, "
                            f"{starters} take one)")
        if not isinstance(init, Tensor) or not init.is_floating_point():
            kind = init.dtype if isinstance(init, Tensor) else type(init).__name__
            raise TypeError(f"init must be a floating-point tensor (images in [-1, 1]), got {kind}")
        expected = (y.shape[0], *getattr(prior, "shape", init.shape[1:]))
        if tuple(init.shape) != expected:
            raise ValueError(f"init must have shape {expected}, one image per measurement; got {tuple(init.shape)}")
        if not bool(init.isfinite().all()):
            raise ValueError("init contains NaN or infinite values")
        largest = float(init.detach().abs().max())
        if largest > 1.5:
            warnings.warn(f"init reaches {largest:.4g}: {RANGE_HINT}", stacklevel=2)
        settings["init"] = init.to(y)
    shown = {k: v for k, v in settings.items() if k not in PLUMBING}
    try:
        x = spec.run(prior, op, y, **settings)
    except ArithmeticError as e:  # a step size that overflows Python's floats (e.g. 1 / a tiny sigma_y)
        raise DivergenceError(f"{method} diverged ({type(e).__name__}: {e}) with settings {shown}: a setting "
                              "(a step size, sigma_y, rho) is too extreme") from e
    why = divergence(op, x, y)
    if why is not None:
        raise DivergenceError(f"{method} diverged ({why}) with settings {shown}: {divergence_hint(spec)}")
    return x


__all__ = ["SOLVERS", "SPECS", "SolverSpec", "TASK_SETTINGS", "spec_of", "settings_for", "solver_settings",
           "check_settings", "check_measurement", "DivergenceError", "solve", "sample",
           "denoise", "ddpm_step", "ddim_step", *REGISTRY]
