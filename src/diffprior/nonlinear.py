"""Non-linear forward models and Poisson (shot) noise, on images x of shape (B, C, H, W) in [-1, 1].

Non-linear operators only have `A`: the solvers that handle them (DPS, DAPS, RED-diff) differentiate it by
autograd. As for the linear ones, nothing changes when an operator is called, every sample of a batch is
measured independently, and any randomness would be drawn once, at construction, from a seed.

  PhaseRetrieval     y = |F pad((x + 1) / 2)|, the Fourier magnitude of the zero-padded image
  HighDynamicRange   y = clip(scale x, -1, 1), an over-exposed photograph (the DAPS / RED-diff "hdr" task)
  Saturation         y = tanh(gain x) / tanh(gain), a smooth, invertible sensor saturation
  measure_poisson    photon-counting noise instead of the additive Gaussian noise of `operators.measure`
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor

from .operators import Operator, noiseless
from .schedule import check_generator


def positive(value: float, what: str) -> float:
    """value as a float, or a ValueError naming `what` when it is not a finite number > 0."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < math.inf:
        raise ValueError(f"{what} must be a finite number > 0, got {value!r}")
    return float(value)


MAX_OVERSAMPLE = 16.0  # a frame 5x the image's side (2.0: 1.5x); beyond, the padding only costs memory


class PhaseRetrieval(Operator):
    """Fourier phase retrieval: y = |F pad(u)|, u = (x + 1) / 2 the image mapped to [0, 1].

    Padding: int(oversample / 8 * H) zero rows above and below the image, and likewise for columns: the
    convention of the DPS and DAPS reference code, where oversample 2.0 adds 64 pixels on each side of a
    256x256 image (a 1.5x larger frame, not 2x). F is the orthonormal 2-D DFT of each channel (Parseval:
    ||y|| = ||pad(u)||), with the zero frequency shifted to the centre as the references show it.

    `unit_range=True` (the default, as DAPS) measures u in [0, 1]: a non-negative image, which removes the
    global sign ambiguity of x -> -x; `unit_range=False` measures x itself, as the DPS code does. What the
    magnitude cannot tell apart remains: the 180-degree rotation of the image (the "twin image") and,
    with `unit_range=False`, its negative. y has another shape than x: (B, C, H + 2 pad_h, W + 2 pad_w).
    """

    name = "phase-retrieval"

    def __init__(self, oversample: float = 2.0, *, unit_range: bool = True):
        super().__init__()
        if isinstance(oversample, bool) or not isinstance(oversample, numbers.Real) \
                or not 0 <= oversample <= MAX_OVERSAMPLE:
            raise ValueError(f"oversample must be a number in [0, {MAX_OVERSAMPLE:g}], got {oversample!r}")
        if not isinstance(unit_range, bool):
            raise ValueError(f"unit_range must be True or False, got {unit_range!r}")
        self.oversample, self.unit_range = float(oversample), unit_range

    def padding(self, height: int, width: int) -> tuple[int, int]:
        """Zero pixels added on each side, (rows, columns)."""
        return int(self.oversample / 8 * height), int(self.oversample / 8 * width)

    def A(self, x):
        u = (x + 1) / 2 if self.unit_range else x
        ph, pw = self.padding(*x.shape[-2:])
        u = F.pad(u if u.dtype == torch.float64 else u.float(), (pw, pw, ph, ph))
        spectrum = torch.fft.fftshift(torch.fft.fft2(u, norm="ortho"), dim=(-2, -1))
        return spectrum.abs().to(x.dtype)


class HighDynamicRange(Operator):
    """An over-exposed photograph: y = clip(scale x, -1, 1) (the "hdr" task of DAPS and RED-diff, scale 2).

    Pixels with |x| >= 1 / scale saturate: y holds no information on them, and A has a zero gradient there,
    so only the prior can fill them in. `naive` undoes the exposure, y / scale (RED-diff's pseudo-inverse).
    """

    name = "hdr"

    def __init__(self, scale: float = 2.0):
        super().__init__()
        self.scale = positive(scale, "the exposure scale")

    def A(self, x):
        return (self.scale * x).clamp(-1, 1)

    def naive(self, y):
        return y / self.scale


class Saturation(Operator):
    """A smooth sensor saturation: y = tanh(gain x) / tanh(gain), which maps [-1, 1] onto itself.

    Mid-tones are amplified by about gain / tanh(gain) and highlights compressed. A is invertible and its
    gradient never vanishes, so unlike `HighDynamicRange` it loses no pixel; the noise is what makes the
    problem hard, as it is amplified by the inverse in the highlights. `naive` is that inverse,
    artanh(tanh(gain) y) / gain, with y clamped into the range of A.
    """

    name = "saturation"

    def __init__(self, gain: float = 2.0):
        super().__init__()
        self.gain = positive(gain, "the saturation gain")

    def A(self, x):
        return torch.tanh(self.gain * x) / math.tanh(self.gain)

    def naive(self, y):
        limit = 1 - 1e-6
        return torch.atanh((y * math.tanh(self.gain)).clamp(-limit, limit)) / self.gain


# ---------------------------------------------------------------------------------------------------
MIN_RATE, MAX_RATE = 1e-6, 1e12  # float32 keeps counts / rate; torch.poisson draws exact counts (int64)


def measure_poisson(op: Operator, x: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Photon-counting measurement: counts ~ Poisson(rate (A(x) + 1) / 2), y = 2 counts / rate - 1.

    `rate` is the expected number of photons at full brightness (A(x) = 1); A(x) = -1 is black. y has the
    units of A(x): E[y] = A(x) and Var[y] = 2 (A(x) + 1) / rate, so the noise grows with the brightness
    (A(x) below -1 is clamped to black, the only place where E[y] differs). The DPS code's Poisson noise
    of rate r draws Poisson(255 r u) for u in [0, 1]: that is rate = 255 r here (without its final clip).
    Solvers that assume Gaussian noise can be given sigma_y = sqrt(2 (mean(A(x)) + 1) / rate) or so.
    """
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not MIN_RATE <= rate <= MAX_RATE:
        raise ValueError(f"the photon rate must be a number in [{MIN_RATE:g}, {MAX_RATE:g}], got {rate!r} (at "
                         f"{MAX_RATE:g} photons the noise is about 1e-6 of the range: for less, use measure with a "
                         "small sigma_y)")
    check_generator(generator)
    rate = float(rate)
    mean = (rate * (noiseless(op, x).detach() + 1) / 2).clamp_min(0)
    draw = mean.double() if mean.dtype == torch.float64 else mean.float()
    if generator is not None and generator.device != draw.device:
        counts = torch.poisson(draw.to(generator.device), generator=generator).to(draw.device)
    else:
        counts = torch.poisson(draw, generator=generator)
    return (2 * counts / rate - 1).to(x.dtype)


def poisson_sigma_y(y: Tensor, rate: float) -> float:
    """The sigma_y a Gaussian-noise solver is given for `measure_poisson`'s y: the noise's std averaged over y,
    sqrt(2 (mean(A(x)) + 1) / rate), with mean(y) for mean(A(x)) (the same in expectation)."""
    return math.sqrt(2 * max(float(y.double().mean()) + 1, 0.0) / rate)
