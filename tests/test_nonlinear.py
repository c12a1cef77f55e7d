"""Non-linear operators and Poisson noise: shapes, autograd, determinism, invariances, noise moments."""

import math

import pytest
import torch

from diffprior.nonlinear import HighDynamicRange, PhaseRetrieval, Saturation, measure_poisson
from diffprior.tasks import NONLINEAR_TASKS, make_operator
from diffprior.operators import Identity

OPS = {"phase-retrieval": PhaseRetrieval(), "phase-retrieval-signed": PhaseRetrieval(unit_range=False),
       "hdr": HighDynamicRange(), "saturation": Saturation()}


def _x(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 2 - 1


@pytest.mark.parametrize("name", OPS)
def test_shapes_batches_and_determinism(name):
    op = OPS[name]
    x = _x(3, 3, 16, 16)
    y = op.A(x)
    expected = (3, 3, 24, 24) if name.startswith("phase") else x.shape
    assert y.shape == expected and y.dtype == x.dtype
    assert torch.equal(op.A(x), y)  # calling twice changes nothing
    assert torch.allclose(op.A(x[1:2]), y[1:2], atol=1e-12)  # each sample measured on its own
    assert op.A(x.float()).dtype == torch.float32
    assert list(op.buffers()) == [] and list(op.parameters()) == []


@pytest.mark.parametrize("name", ["phase-retrieval", "saturation"])
def test_autograd_matches_finite_differences(name):
    x = _x(1, 1, 4, 4, seed=1).requires_grad_(True)
    assert torch.autograd.gradcheck(OPS[name].A, (x,))


def test_gradients_are_finite_where_the_spectrum_vanishes():
    x = -torch.ones(2, 1, 8, 8, dtype=torch.float64, requires_grad=True)  # black: a zero spectrum
    (grad,) = torch.autograd.grad(PhaseRetrieval().A(x).sum(), x)
    assert bool(grad.isfinite().all())


def test_phase_retrieval_padding_follows_the_reference_convention():
    assert PhaseRetrieval(2.0).padding(256, 256) == (64, 64)  # DPS / DAPS: 256 -> 384
    assert PhaseRetrieval(2.0).padding(64, 32) == (16, 8)
    assert PhaseRetrieval(0.0).A(_x(1, 1, 8, 8)).shape == (1, 1, 8, 8)


def test_phase_retrieval_invariances():
    op, signed = PhaseRetrieval(), PhaseRetrieval(unit_range=False)
    x = _x(2, 3, 12, 12, seed=2)
    y = op.A(x)
    # Parseval: the orthonormal DFT keeps the energy of the padded image in [0, 1]
    assert torch.allclose(y.flatten(1).norm(dim=1), ((x + 1) / 2).flatten(1).norm(dim=1))
    # the twin image: a 180-degree rotation has the same Fourier magnitude
    assert torch.allclose(op.A(x.flip(-2, -1)), y, atol=1e-10)
    # measuring x itself, the sign is lost too; measuring (x + 1) / 2 >= 0 keeps it
    assert torch.allclose(signed.A(-x), signed.A(x), atol=1e-10)
    assert not torch.allclose(op.A(-x), y, atol=1e-3)
    # the zero frequency sits at the centre: the sum of the padded image over sqrt(#pixels)
    H = 12 + 2 * op.padding(12, 12)[0]
    assert torch.allclose(y[..., H // 2, H // 2], ((x + 1) / 2).sum((-2, -1)) / H)


def test_saturation_and_hdr():
    x = _x(2, 3, 8, 8, seed=3)
    sat = Saturation(2.0)
    assert torch.allclose(sat.A(torch.tensor([-1.0, 0.0, 1.0])), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(sat.naive(sat.A(x)), x, atol=1e-6)
    hdr = HighDynamicRange(2.0)
    y = hdr.A(x)
    assert float(y.abs().max()) <= 1
    kept = x.abs() < 0.5
    assert torch.allclose(hdr.naive(y)[kept], x[kept])
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(hdr.A(x).sum(), x)
    assert torch.equal(grad, torch.where(x.abs() < 0.5, 2.0, 0.0).double())
    with pytest.raises(ValueError):
        Saturation(0.0)
    with pytest.raises(ValueError):
        HighDynamicRange(-1.0)


@pytest.mark.parametrize("task", NONLINEAR_TASKS)
def test_named_tasks(task):
    op = NONLINEAR_TASKS[task]((3, 16, 16), 0)
    assert op.A(_x(1, 3, 16, 16)).dim() == 4
    assert not op.linear


def test_poisson_noise_mean_and_variance():
    rate = 40.0
    x = torch.linspace(-1, 1, 9, dtype=torch.float64).reshape(1, 1, 1, 9).expand(20_000, 1, 1, 9)
    for op in (Identity(), Saturation(1.5)):
        y = measure_poisson(op, x, rate, torch.Generator().manual_seed(0))
        ax = op.A(x[:1])[0]
        assert y.shape == x.shape and y.dtype == x.dtype
        assert torch.allclose(y.mean(0), ax, atol=4 * math.sqrt(2 * 2 / rate / 20_000))
        assert torch.allclose(y.var(0), 2 * (ax + 1) / rate, rtol=0.05, atol=1e-9)
        counts = (y + 1) * rate / 2  # integers
        assert torch.allclose(counts, counts.round(), atol=1e-9)


def test_poisson_noise_is_reproducible_and_checked():
    x = _x(4, 1, 8, 8)
    a, b = (measure_poisson(Identity(), x, 10.0, torch.Generator().manual_seed(1)) for _ in range(2))
    assert torch.equal(a, b)
    assert not torch.equal(a, measure_poisson(Identity(), x, 10.0, torch.Generator().manual_seed(2)))
    with pytest.raises(ValueError):
        measure_poisson(Identity(), x, 0.0)
    # rates float32 cannot hold, or torch.poisson cannot count, gave NaN or black images without a word
    for rate in (1e-300, 1e20, math.inf, math.nan, True, "10"):
        with pytest.raises(ValueError, match="photon rate"):
            measure_poisson(Identity(), x, rate)
    y = measure_poisson(Identity(), x, 1e12, torch.Generator().manual_seed(0))
    assert (y - x).abs().max() < 1e-4  # the largest rate: nearly no noise, not garbage
    # and what `measure` refuses, it refuses too
    with pytest.raises(TypeError, match="torch.Generator"):
        measure_poisson(Identity(), x, 10.0, generator=0)
    with pytest.raises(TypeError, match="Operator"):
        measure_poisson("gaussian-blur", x, 10.0)
    with pytest.raises(TypeError, match="floating-point"):
        measure_poisson(Identity(), x.long(), 10.0)
    with pytest.raises(ValueError, match="NaN"):
        measure_poisson(Identity(), x * math.nan, 10.0)


def test_operator_options_out_of_range_are_refused_at_construction():
    """Found by probing: each was accepted and failed later (a 300 GB allocation, a TypeError), or silently
    meant something else ('no' as True); 10**7 strokes drew for minutes after the mask was already full."""
    from diffprior.operators import SuperResolution
    for make in (lambda: PhaseRetrieval(math.nan), lambda: PhaseRetrieval(math.inf), lambda: PhaseRetrieval(True),
                 lambda: PhaseRetrieval(1e4), lambda: PhaseRetrieval(unit_range="no"),
                 lambda: HighDynamicRange(math.inf), lambda: Saturation(math.nan), lambda: Saturation(-1.0),
                 lambda: SuperResolution(2.5, (70, 70)), lambda: SuperResolution(True, (64, 64))):
        with pytest.raises(ValueError):
            make()
    assert PhaseRetrieval(0).padding(64, 64) == (0, 0) and PhaseRetrieval(16).padding(8, 8) == (16, 16)
    with pytest.raises(ValueError, match="observes no pixel"):
        make_operator("stroke-inpaint", (3, 64, 64), strokes=10**7)
