import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffprior.io import load_mask, save_image
from diffprior.operators import (Blur, Identity, Inpaint, LinearOperator, SuperResolution, box_mask, check_linear,
                                 gaussian_kernel, measure, motion_kernel, random_mask, resize_matrix, stroke_mask)
from diffprior.prior import GaussianPrior
from diffprior.solvers import solve
from diffprior.tasks import TASKS, make_operator

SHAPE = (3, 32, 32)


def all_operators():
    ops = {task: make_operator(task, SHAPE, seed=3) for task in TASKS}
    ops = {task: op for task, op in ops.items() if op.linear}  # the non-linear ones: tests/test_nonlinear.py
    ops["sr2-box"] = SuperResolution(2, (32, 32), kernel="box")
    ops["mask-batch"] = Inpaint(torch.stack([random_mask(0.3, 32, 32), box_mask(8, 32, 32)])[:, None])
    return ops


OPS = all_operators()


@pytest.mark.parametrize("name", OPS)
def test_adjointness(name):
    op = OPS[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    y = torch.randn(op.A(x).shape, generator=g, dtype=torch.float64)
    lhs = (op.A(x) * y).sum()
    rhs = (x * op.A_adjoint(y)).sum()
    assert float(abs(lhs - rhs)) <= 1e-10 * float(lhs.abs() + rhs.abs())
    assert op.A_adjoint(y).shape == x.shape


@pytest.mark.parametrize("name", OPS)
def test_pseudo_inverse_penrose_identities(name):
    op = OPS[name]
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    y = op.A(torch.randn(2, *SHAPE, generator=g, dtype=torch.float64))
    pinv = op.A_pinv
    assert torch.allclose(pinv(op.A(pinv(y))), pinv(y), atol=1e-8)  # A+ A A+ = A+
    # A A+ and A+ A are self-adjoint
    y2 = op.A(torch.randn(2, *SHAPE, generator=g, dtype=torch.float64))
    assert torch.allclose((op.A(pinv(y)) * y2).sum(), (y * op.A(pinv(y2))).sum(), rtol=1e-8)
    x2 = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    assert torch.allclose((pinv(op.A(x)) * x2).sum(), (x * pinv(op.A(x2))).sum(), rtol=1e-8)
    # A A+ A = A, wherever no frequency was cut by the blur threshold
    if not (isinstance(op, Blur) and bool((op.K_pinv == 0).any())):
        assert torch.allclose(op.A(pinv(op.A(x))), op.A(x), atol=1e-8)


@pytest.mark.parametrize("name", OPS)
def test_autograd_and_float32(name):
    op = OPS[name]
    x = torch.randn(2, *SHAPE, requires_grad=True)
    y = op.A(x)
    assert y.dtype == torch.float32
    (g,) = torch.autograd.grad((y ** 2).sum(), x)
    # the gradient of ||A x||^2 is 2 A^T A x
    assert torch.allclose(g, 2 * op.A_adjoint(op.A(x.detach())), atol=1e-4)


def test_measurement_shapes():
    assert OPS["sr4"].A(torch.zeros(1, *SHAPE)).shape == (1, 3, 8, 8)
    assert OPS["gaussian-blur"].A(torch.zeros(1, *SHAPE)).shape == (1, *SHAPE)
    y = measure(OPS["denoise"], torch.zeros(4, *SHAPE), 0.05, torch.Generator().manual_seed(0))
    assert float(y.std()) == pytest.approx(0.05, rel=0.05)
    x = torch.zeros(1, *SHAPE)
    assert measure(OPS["denoise"], x, 0.0) is not x  # a new tensor: writing into y leaves the image alone
    for sigma_y in (-0.1, float("nan"), "0.1", torch.tensor([0.1, 0.2])):
        with pytest.raises(ValueError, match="expected a finite number >= 0"):
            measure(OPS["denoise"], x, sigma_y)
    with pytest.raises(TypeError, match="floating-point images"):  # sr4 of a uint8 image was all zeros
        measure(OPS["sr4"], torch.zeros(1, *SHAPE, dtype=torch.uint8), 0.05)
    with pytest.raises(TypeError, match="measure needs a diffprior Operator, e.g. dp.make_operator"):
        measure("box-inpaint", x, 0.05)
    with pytest.raises(ValueError, match=r"a batch of images \(B, C, H, W\), got shape \(0, 3"):
        measure(OPS["sr4"], x[:0], 0.05)
    for value in (float("nan"), float("inf")):  # solve refuses such a y: measure refuses to make one
        with pytest.raises(ValueError, match="measure needs finite images"):
            measure(OPS["sr4"], torch.full((1, *SHAPE), value), 0.05)
    with pytest.warns(UserWarning, match=r"the images reach 255: the library's images are in \[-1, 1\]"):
        measure(OPS["sr4"], torch.full((1, *SHAPE), 255.0), 0.05)


def test_box_mask_geometry():
    m = box_mask(8, 32, margin=4, generator=torch.Generator().manual_seed(0))
    holes = (m == 0).nonzero()
    assert len(holes) == 64
    top, left = holes.min(0).values.tolist()
    assert 4 <= top <= 32 - 4 - 8 and 4 <= left <= 32 - 4 - 8
    assert (m[top:top + 8, left:left + 8] == 0).all()
    assert torch.equal(box_mask(4, 16, position=(2, 3))[2:6, 3:7], torch.zeros(4, 4))
    with pytest.raises(ValueError, match="margin 4 does not fit"):
        box_mask(30, 32, margin=4)
    # the margin bounds a random place only: a box placed by the user needs to fit the image alone
    assert int((box_mask(30, 32, margin=4, position=(1, 2)) == 0).sum()) == 900
    with pytest.raises(ValueError, match="at least 1 pixel, got 0"):
        box_mask(0, 32, margin=4)
    # defaults at 256x256 are the DPS reference's: a 128x128 box, 16 px from the borders
    op = make_operator("box-inpaint", (3, 256, 256), seed=5)
    assert int((op.mask == 0).sum()) == 128 * 128


def test_stroke_masks_are_seeded_polylines_of_the_brushs_width():
    def strokes(brush, seed=0, strokes=3):
        return stroke_mask(strokes, brush, 48, 64, generator=torch.Generator().manual_seed(seed)) == 0  # holes
    assert torch.equal(strokes(4), strokes(4)) and not torch.equal(strokes(4), strokes(4, seed=1))
    thin, thick = strokes(2), strokes(8)
    assert thin.shape == (48, 64) and thin.any() and not (thin & ~thick).any()  # the same lines, wider
    assert 2.5 < thick.sum() / thin.sum() < 4.5  # area grows about as the width (round ends add a little)
    # a 1-pixel brush draws lines one pixel thick: no 2x2 block of holes on a lone segment's straight run
    one = stroke_mask(1, 1, 64, generator=torch.Generator().manual_seed(3)) == 0
    assert one.sum() < 3 * 64 and (one[:-1, :-1] & one[1:, :-1] & one[:-1, 1:] & one[1:, 1:]).sum() <= 4
    covered = [1 - float(make_operator("stroke-inpaint", (3, 64, 64), seed=s).mask.mean()) for s in range(40)]
    assert 0.08 < sum(covered) / 40 < 0.2 and min(covered) > 0.02  # about an eighth of the pixels
    assert make_operator("stroke-inpaint", (3, 64, 64), seed=2, brush=6).mask.shape[-2:] == (64, 64)
    for bad in (dict(strokes=0, brush=4), dict(strokes=2, brush=0), dict(strokes=2, brush=33)):
        with pytest.raises(ValueError):
            stroke_mask(bad["strokes"], bad["brush"], 64)


def test_random_mask_fraction_and_seed():
    a = random_mask(0.7, 32, 32, generator=torch.Generator().manual_seed(0))
    b = random_mask(0.7, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and int((a == 0).sum()) == round(0.7 * 1024)
    assert not torch.equal(a, random_mask(0.7, 32, 32, generator=torch.Generator().manual_seed(1)))


def test_inpaint_naive_fills_holes_with_observed_mean():
    op = Inpaint(box_mask(4, 8, position=(0, 0)))
    x = torch.rand(1, 3, 8, 8)
    filled = op.naive(op.A(x))
    observed = x[..., op.mask[0, 0] == 1].mean(-1)
    assert torch.allclose(filled[..., 0, 0], observed)
    assert torch.equal(filled[..., 7, 7], x[..., 7, 7])


def test_kernels():
    k = gaussian_kernel(15, 0.75)
    assert float(k.sum()) == pytest.approx(1.0) and torch.equal(k, k.T) and torch.equal(k, k.flip(0))
    m1 = motion_kernel(15, 0.5, generator=torch.Generator().manual_seed(0))
    m2 = motion_kernel(15, 0.5, generator=torch.Generator().manual_seed(0))
    m3 = motion_kernel(15, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(m1, m2) and not torch.equal(m1, m3)
    assert float(m1.sum()) == pytest.approx(1.0) and bool((m1 >= 0).all())
    rows, cols = m1.sum(1).nonzero(), m1.sum(0).nonzero()
    assert max(rows.max() - rows.min(), cols.max() - cols.min()) >= 12  # spans the support
    line = motion_kernel(9, 0.0, generator=torch.Generator().manual_seed(0))
    assert int((line > 1e-3).sum()) <= 3 * 9  # intensity 0: a straight segment


def test_blur_is_circular_convolution():
    k = torch.zeros(3, 3)
    k[1, 2] = 1.0  # a kernel at offset +1: y[n] = x[n - 1], a true convolution
    op = Blur(k, (8, 8))
    x = torch.randn(1, 1, 8, 8)
    assert torch.allclose(op.A(x), torch.roll(x, 1, dims=-1), atol=1e-6)
    gauss = make_operator("gaussian-blur", (3, 16, 16))
    flat = torch.full((1, 3, 16, 16), 0.3)
    assert torch.allclose(gauss.A(flat), flat, atol=1e-6)  # kernels sum to one


def test_bicubic_matches_pillow_inside_the_image():
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    ours = (resize_matrix(64, 4) @ torch.from_numpy(img).double() @ resize_matrix(64, 4).T).numpy()
    theirs = np.asarray(Image.fromarray(img, mode="F").resize((16, 16), Image.BICUBIC))
    assert np.allclose(ours[2:-2, 2:-2], theirs[2:-2, 2:-2], atol=1e-4)
    assert torch.allclose(resize_matrix(64, 4).sum(1), torch.ones(16, dtype=torch.float64))


def test_bad_inputs():
    with pytest.raises(ValueError, match="does not fit"):
        OPS["box-inpaint"].A(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError):
        OPS["gaussian-blur"].A(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown task"):
        make_operator("deblur-everything", SHAPE)
    for kwargs, message in [(dict(shape=(3, 64.0, 64.0)), "whole numbers"), (dict(shape=(64,)), "ending in H, W"),
                            (dict(shape=(3, 0, 64)), "sizes > 0"), (dict(seed=None), "seed=None: a whole number"),
                            (dict(shape=64), r"shape=64: whole numbers ending in H, W \(e.g. \(3, 64, 64\)\)"),
                            (dict(seed=1.5), "seed=1.5"),
                            (dict(std=float("nan")), "option std=nan"), (dict(std="1"), "option std='1'"),
                            (dict(size=3.5), "size=3.5: a whole number of pixels"), (dict(seed=2 ** 70), r"2\*\*63")]:
        with pytest.raises(ValueError, match=message):
            make_operator("gaussian-blur", **({"shape": SHAPE} | kwargs))
    with pytest.raises(TypeError, match="gaussian-blur has no option foo; its options are size, std"):
        make_operator("gaussian-blur", SHAPE, foo=0)
    for kwargs in (dict(margin=-10), dict(position=(3.5, 2)), dict(size=16.5)):  # a negative margin made no hole
        with pytest.raises(ValueError, match="of pixels, not negative"):
            make_operator("box-inpaint", SHAPE, **kwargs)
    assert int((make_operator("box-inpaint", (3, 64, 32)).mask == 0).sum()) == 16 * 16  # wide or tall: min side
    with pytest.raises(ValueError):
        SuperResolution(3, (32, 32))
    with pytest.raises(ValueError, match="observes no pixel"):
        Inpaint(torch.zeros(4, 4))
    for shape in [(4,), (1, 1, 1, 4, 4), (0, 0), (2, 4, 4, 1)]:
        with pytest.raises(ValueError, match=f"must be binary with shape .* got {re.escape(str(shape))}"):
            Inpaint(torch.ones(shape))
    mask = torch.ones(4, 4)
    op = Inpaint(mask)
    mask.zero_()  # the operator keeps the mask it was given
    assert float(op.mask.sum()) == 16


def test_mask_file(tmp_path):
    m = torch.ones(3, 16, 16)
    m[:, 4:8, 4:8] = -1
    save_image(m, tmp_path / "mask.png")
    mask = load_mask(tmp_path / "mask.png", (16, 16))
    assert int((mask == 0).sum()) == 16 and Inpaint(mask).A(torch.ones(1, 3, 16, 16)).sum() == 3 * (256 - 16)
    with pytest.raises(ValueError, match="mask"):
        load_mask(tmp_path / "mask.png", (32, 32))


def test_identity_is_identity():
    x = torch.randn(1, *SHAPE)
    assert torch.equal(Identity().A(x), x)


# -- the SVD, the least-squares step and colourisation -------------------------------------------------
from diffprior.operators import LUMINANCE, Colorize  # noqa: E402

SVD_OPS = {name: op for name, op in OPS.items() if op.has_svd}


def test_every_linear_operator_here_has_an_svd():
    assert set(SVD_OPS) == set(OPS)


@pytest.mark.parametrize("name", SVD_OPS)
def test_svd_reconstructs_the_operator(name):
    """A = U diag(s) V^T with V orthonormal, U^T and U consistent, A^T and A^+ from the same factors (float64)."""
    op = SVD_OPS[name]
    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    y = op.A(torch.randn(2, *SHAPE, generator=g, dtype=torch.float64))  # a measurement in the range of A
    c, s = op.V_T(x), op.singulars(x)
    assert c.shape == x.shape and not s.is_complex() and bool((s >= 0).all())
    assert torch.allclose(op.V(c), x, atol=1e-10)  # V V^T = I
    assert torch.allclose(c.abs().square().sum(), x.square().sum(), rtol=1e-10)  # norms preserved
    assert torch.allclose(op.V_T(op.V(c)), c, atol=1e-10)  # V^T V = I
    assert torch.allclose(op.U(s * c), op.A(x), atol=1e-10)  # A = U diag(s) V^T
    d = op.U_T(y)
    assert d.shape == x.shape and float((d * (s == 0)).abs().max()) == 0  # U^T y vanishes where s = 0
    assert torch.allclose(op.U(d), y, atol=1e-10)  # U U^T = I on the range
    assert torch.allclose(op.V(s * d), op.A_adjoint(y), atol=1e-10)  # A^T = V diag(s) U^T
    pinv = op.V(torch.where(s > 0, d / torch.where(s > 0, s, 1), 0))
    assert torch.allclose(pinv, op.A_pinv(y), atol=1e-6)  # A^+ = V diag(1/s) U^T (SR stores A^+ in float32)


def test_blur_svd_drops_the_frequencies_its_pseudo_inverse_drops():
    op = Blur(gaussian_kernel(9, 2.0), (32, 32))  # |K| spans 1e-6 .. 1: many frequencies below rcond
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    s, d = op.singulars(x), op.U_T(op.A(x))
    assert bool((s == 0).any()) and bool((s > 0).any())
    assert torch.allclose(op.V(torch.where(s > 0, d / torch.where(s > 0, s, 1), 0)), op.A_pinv(op.A(x)), atol=1e-10)
    assert float((op.U(s * op.V_T(x)) - op.A(x)).norm()) <= 1e-3 * float(x.norm())  # A, up to rcond max|K|
    assert not op.V(op.V_T(x)).is_complex()


@pytest.mark.parametrize("name", SVD_OPS)
@pytest.mark.parametrize("rho", [0.0, 0.05, 2.0])
def test_prox_closed_form_solves_the_least_squares_problem(name, rho):
    """prox(z, y, rho) = argmin ||y - A x||^2 + rho ||x - z||^2: the gradient vanishes; it matches conjugate
    gradients; rho = 0 gives A^+ y + (I - A^+ A) z."""
    op = SVD_OPS[name]
    g = torch.Generator().manual_seed(5)
    z = torch.randn(2, *SHAPE, generator=g, dtype=torch.float64)
    y = op.A(torch.randn(2, *SHAPE, generator=g, dtype=torch.float64))
    y = y + 0.1 * torch.randn(y.shape, generator=g, dtype=torch.float64)
    x = op.prox(z, y, rho)
    grad = op.A_adjoint(op.A(x) - y) + rho * (x - z)
    assert float(grad.abs().max()) < 1e-8
    if rho > 0:
        assert torch.allclose(x, op.prox_cg(z, y, rho, iters=500, rtol=1e-12), atol=1e-6)
    else:
        assert torch.allclose(x, op.A_pinv(y) + z - op.A_pinv(op.A(z)), atol=1e-6)


class _NoSVD(LinearOperator):
    """Another operator's A and adjoint only: `prox` must fall back to conjugate gradients."""

    def __init__(self, op):
        super().__init__()
        self.op = op

    def A(self, x):
        return self.op.A(x)

    def A_adjoint(self, y):
        return self.op.A_adjoint(y)


@pytest.mark.parametrize("name", ["gaussian-blur", "sr4", "random-inpaint", "colorize"])
def test_prox_falls_back_to_conjugate_gradients(name):
    op = OPS[name]
    z = torch.randn(2, *SHAPE, dtype=torch.float64)
    y = op.A(torch.randn(2, *SHAPE, dtype=torch.float64))
    generic = _NoSVD(op)
    assert not generic.has_svd
    for rho in (0.0, 0.3):
        assert torch.allclose(generic.prox(z, y, rho), op.prox(z, y, rho), atol=1e-6)
    with pytest.raises(ValueError, match="rho"):
        op.prox(z, y, -1.0)
    with pytest.raises(NotImplementedError, match="SVD"):
        generic.V_T(z)


def test_prox_in_float32():
    op = OPS["motion-blur"]
    z, y = torch.randn(2, *SHAPE), op.A(torch.randn(2, *SHAPE))
    x = op.prox(z, y, 0.1)
    assert x.dtype == torch.float32
    assert torch.allclose(x.double(), op.prox(z.double(), y.double(), 0.1), atol=1e-4)


def test_colorize():
    op = make_operator("colorize", SHAPE)
    grey = torch.rand(2, 1, 32, 32).expand(-1, 3, -1, -1)
    y = op.A(grey)
    assert y.shape == (2, 1, 32, 32) and torch.allclose(y, grey[:, :1], atol=1e-6)  # the mean of equal channels
    assert torch.allclose(op.A_pinv(y), grey, atol=1e-6) and torch.equal(op.naive(y), op.A_pinv(y))
    luma = Colorize("luminance")
    flat = torch.full((1, 3, 4, 4), 0.4, dtype=torch.float64)
    assert torch.allclose(luma.A(flat), flat[:, :1])  # the weights sum to one
    x = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    assert torch.allclose(luma.A(luma.A_pinv(luma.A(x))), luma.A(x))
    s = luma.singulars(x)
    assert s.shape == (1, 3, 1, 1) and float(s[0, 0]) == pytest.approx(float(torch.tensor(LUMINANCE).norm()))
    with pytest.raises(ValueError, match="3-channel"):
        op.A(torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="colour weights"):
        Colorize("sepia")


# -- an operator of the user's own ------------------------------------------------------------------
class EveryOtherColumn(LinearOperator):
    """A linear operator written as a user would: A and its adjoint, nothing else."""
    name = "every-other-column"

    def A(self, x):
        return x[..., ::2]

    def A_adjoint(self, y):
        x = y.new_zeros(*y.shape[:-1], 2 * y.shape[-1])
        x[..., ::2] = y
        return x


class ShiftedAdjoint(EveryOtherColumn):
    name = "shifted-adjoint"

    def A_adjoint(self, y):  # a slip: the zeros inserted on the wrong side
        x = y.new_zeros(*y.shape[:-1], 2 * y.shape[-1])
        x[..., 1::2] = y
        return x


class ClippedColumns(EveryOtherColumn):
    name = "clipped-columns"

    def A(self, x):  # not linear: clipping
        return x[..., ::2].clamp(-0.5, 0.5)


@pytest.mark.parametrize("name", OPS)
def test_every_linear_operator_here_passes_the_check_of_a_users_operator(name):
    check_linear(OPS[name], torch.zeros(2, *SHAPE))


def test_an_operator_of_the_users_own_runs_with_the_solvers_it_fits_and_a_wrong_one_is_refused():
    prior = GaussianPrior(torch.zeros(3, 8, 8, dtype=torch.float64), torch.full((192,), 0.2, dtype=torch.float64))
    x = prior.sample(1, torch.Generator().manual_seed(1))
    op = EveryOtherColumn()
    y = measure(op, x, 0.05, torch.Generator().manual_seed(2))
    # A only (through autograd); A and its adjoint; the prox by conjugate gradients
    for method, settings in (("dps", {"scale": 1.0}), ("pigdm", {}), ("diffpir", {})):
        out = solve(method, prior, op, y, sigma_y=0.05, steps=20, generator=torch.Generator().manual_seed(3),
                    **settings)
        # it restores from the measurement: far closer to it than the prior's mean (zero) is
        assert float((y - op.A(out)).norm()) < 0.3 * float(y.norm()), method
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="shifted-adjoint.A_adjoint is not the adjoint of its A"):
        solve("dps", prior, ShiftedAdjoint(), y, sigma_y=0.05, steps=5)
    with pytest.raises(ValueError, match="clipped-columns is marked linear, but A"):
        solve("dps", prior, ClippedColumns(), y, sigma_y=0.05, steps=5)
    assert torch.equal(torch.get_rng_state(), state)  # the check draws from its own generator
