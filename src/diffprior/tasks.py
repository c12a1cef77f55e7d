"""Named tasks: each a factory (shape, seed, **options) -> Operator, with sizes that default to the DPS
reference values at 256x256 scaled to the image size; `make_operator` builds one by name. The linear
operators live in operators.py, the non-linear ones in nonlinear.py; this table sits above both."""

from __future__ import annotations

import inspect
import math
import numbers
import operator
from typing import Callable

import torch

from .arguments import MAX_SEED
from .nonlinear import HighDynamicRange, PhaseRetrieval, Saturation
from .operators import Blur, Colorize, Identity, Inpaint, Operator, SuperResolution, box_mask, gaussian_kernel, \
    motion_kernel, random_mask, stroke_mask


def _odd(v: float) -> int:
    return max(3, int(round(v)) // 2 * 2 + 1)


def _box(shape, seed, size=None, margin=None, position=None):
    H, W = shape[-2:]
    size = min(H, W) // 2 if size is None else size  # 128 at 256x256
    margin = min(H, W) // 16 if margin is None else margin  # 16 at 256x256
    g = torch.Generator().manual_seed(seed)
    return Inpaint(box_mask(size, H, W, position=position, margin=margin, generator=g))


def _random(shape, seed, fraction=0.7):
    H, W = shape[-2:]
    return Inpaint(random_mask(fraction, H, W, generator=torch.Generator().manual_seed(seed)))


def _strokes(shape, seed, strokes=4, brush=None):
    H, W = shape[-2:]
    brush = max(1, min(H, W) // 16) if brush is None else brush  # 16 at 256x256, 4 at 64x64
    return Inpaint(stroke_mask(strokes, brush, H, W, generator=torch.Generator().manual_seed(seed)))


def _fits(size: int, H: int, W: int) -> int:
    """A blur kernel's side, refused (ValueError) before the kernel is built where it exceeds the image."""
    if size > min(H, W):
        raise ValueError(f"a {size}x{size} kernel is larger than the {H}x{W} image")
    return size


def _gaussian(shape, seed, size=None, std=None):
    H, W = shape[-2:]
    std = 3.0 * H / 256 if std is None else std  # 3.0 at 256x256
    size = _fits(_odd(61 * H / 256) if size is None else size, H, W)  # 61 at 256x256
    return Blur(gaussian_kernel(size, std), (H, W))


def _motion(shape, seed, size=None, intensity=0.5):
    H, W = shape[-2:]
    size = _fits(_odd(61 * H / 256) if size is None else size, H, W)
    return Blur(motion_kernel(size, intensity, generator=torch.Generator().manual_seed(seed)), (H, W))


def _sr(factor):
    def make(shape, seed, kernel="bicubic"):
        return SuperResolution(factor, tuple(shape[-2:]), kernel=kernel)
    return make


# Non-linear tasks: nothing random in them, so the seed is unused.
def _phase_retrieval(shape, seed, oversample=2.0, unit_range=True):
    return PhaseRetrieval(oversample, unit_range=unit_range)


def _hdr(shape, seed, scale=2.0):
    return HighDynamicRange(scale)


def _saturation(shape, seed, gain=2.0):
    return Saturation(gain)


LINEAR_TASKS: dict[str, Callable[..., Operator]] = {
    "box-inpaint": _box,
    "random-inpaint": _random,
    "stroke-inpaint": _strokes,
    "gaussian-blur": _gaussian,
    "motion-blur": _motion,
    "sr4": _sr(4),
    "denoise": lambda shape, seed: Identity(),
    "colorize": lambda shape, seed, weights="mean": Colorize(weights),
}

NONLINEAR_TASKS: dict[str, Callable[..., Operator]] = {
    "phase-retrieval": _phase_retrieval,
    "hdr": _hdr,
    "saturation": _saturation,
}

TASKS: dict[str, Callable[..., Operator]] = {**LINEAR_TASKS, **NONLINEAR_TASKS}
# the tasks whose operator is a mask, for settings that every inpainting shares; "inpaint" is a user's own mask
# (`restore --mask`, the web app's brush), not in TASKS
INPAINTING_TASKS = ("box-inpaint", "random-inpaint", "stroke-inpaint", "inpaint")
# The tasks whose settings fit an operator built from its class rather than by make_operator
CLASS_TASKS = {"blur": ("gaussian-blur", "motion-blur"), "super-resolution": ("sr4",)}
PIXEL_OPTIONS = ("size", "margin", "position", "brush", "strokes")  # whole numbers, never negative (position: a pair)
NUMBER_OPTIONS = ("std", "fraction", "intensity", "oversample", "scale", "gain")  # real numbers


def make_operator(task: str, shape: tuple[int, ...], *, seed: int = 0, **options) -> Operator:
    """The operator of a named task for images of `shape` (..., H, W); `seed` draws its random parts.

    Options override the defaults, e.g. make_operator("gaussian-blur", (3, 64, 64), std=1.5).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")
    try:  # whole numbers of any integer type (numpy's too), never floats
        shape = tuple(map(operator.index, shape))
    except TypeError:
        raise ValueError(f"shape={shape!r}: whole numbers ending in H, W (e.g. (3, 64, 64))") from None
    try:
        seed = operator.index(seed)
    except TypeError:
        raise ValueError(f"seed={seed!r}: a whole number") from None
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(f"shape {shape}: sizes > 0, ending in H, W (e.g. (3, 64, 64))")
    if not 0 <= seed <= MAX_SEED:
        raise ValueError(f"seed={seed}: a whole number in [0, 2**63 - 1]")
    known = [k for k in inspect.signature(TASKS[task]).parameters if k not in ("shape", "seed")]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(f"{task} has no option {', '.join(unknown)}; its options are {', '.join(known) or 'none'}")
    for key, value in options.items():
        if key in PIXEL_OPTIONS and value is not None:
            parts = value if key == "position" else (value,)
            try:
                whole = [operator.index(v) for v in parts if not isinstance(v, bool)] \
                    if not isinstance(parts, (str, bytes)) else []
            except TypeError:
                whole = []
            if len(whole) != (2 if key == "position" else 1) or min(whole) < 0:
                what = {"position": "a pair (top, left) of whole numbers of pixels", "strokes": "a whole number"}.get(
                    key, "a whole number of pixels")
                raise ValueError(f"{task} option {key}={value!r}: {what}, not negative")
        elif key in NUMBER_OPTIONS and value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value)):
            raise ValueError(f"{task} option {key}={value!r}: expected a finite number")
    op = TASKS[task](shape, seed, **options)
    op.name = task
    return op
