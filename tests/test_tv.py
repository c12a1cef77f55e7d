"""Total-variation least squares by Chambolle-Pock: the operators it is built from, convergence to the
optimum (against an exact dual solver for denoising), and the reconstructions it gives."""

import pytest
import torch

from diffprior.metrics import psnr
from diffprior.operators import Identity, measure
from diffprior.tasks import make_operator
from diffprior.solvers import SOLVERS, settings_for, solve
from diffprior.solvers.tv import grad, grad_adjoint, harmonic_fill, objective, operator_norm, tv, tv_norm



def piecewise_constant(n: int = 32, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Images in [-0.9, 0.9] made of a few flat rectangles and discs on a flat background."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, n), torch.linspace(0, 1, n), indexing="ij")
    images = []
    for _ in range(batch):
        img = (torch.rand(3, 1, 1, generator=g) * 2 - 1).expand(3, n, n).clone()
        for k in range(5):
            colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
            a, b, c, d = torch.rand(4, generator=g).tolist()
            if k % 2:
                inside = (yy >= 0.7 * a) & (yy < 0.7 * a + 0.15 + 0.3 * c) & (xx >= 0.7 * b) & (xx < 0.7 * b + 0.15 + 0.3 * d)
            else:
                inside = (yy - a) ** 2 + (xx - b) ** 2 < (0.08 + 0.2 * c) ** 2
            img = torch.where(inside, colour, img)
        images.append(img)
    return torch.stack(images) * 0.9


def problem(task: str, sigma_y: float = 0.05, n: int = 32, batch: int = 2):
    x = piecewise_constant(n, batch)
    op = make_operator(task, x.shape[1:], seed=0)
    return x, op, measure(op, x, sigma_y, torch.Generator().manual_seed(1))


def test_grad_adjoint_and_norm():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 7, 9, generator=g, dtype=torch.float64)
    q = torch.randn(2, 3, 2, 7, 9, generator=g, dtype=torch.float64)
    q[:, :, 0, -1, :] = 0  # grad's range: no difference across the far border
    q[:, :, 1, :, -1] = 0
    assert torch.allclose((grad(x) * q).sum(), (x * grad_adjoint(q)).sum())
    v = torch.randn(1, 1, 16, 16, generator=g, dtype=torch.float64)
    for _ in range(300):  # power iteration: ||grad||^2 approaches 8 from below
        v = grad_adjoint(grad(v))
        v = v / v.norm()
    assert 7.5 < float(grad_adjoint(grad(v)).norm()) <= 8 + 1e-9
    flat = torch.ones(1, 3, 8, 8)
    assert float(tv_norm(flat)) == 0
    step = torch.zeros(1, 1, 4, 4)
    step[..., 2:] = 1  # one vertical edge of height 4 and jump 1
    assert float(tv_norm(step)) == pytest.approx(4)


def test_harmonic_fill_gives_back_a_linear_ramp():
    """A linear ramp is harmonic, so the fill of a box hole away from the border restores it exactly."""
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    ramp = (0.03 * yy - 0.02 * xx + 0.1).expand(2, 3, 32, 32)
    op = make_operator("box-inpaint", (3, 32, 32), seed=0)
    assert torch.allclose(harmonic_fill(op.A(ramp), op.mask, tol=1e-7), ramp, atol=1e-5)


@pytest.mark.parametrize("task", ["box-inpaint", "random-inpaint"])
def test_harmonic_fill_has_the_least_dirichlet_energy_of_the_images_that_keep_the_observed_pixels(task):
    """It keeps the observed pixels, its discrete Laplacian vanishes on every missing pixel, and any change
    of the missing pixels raises the Dirichlet energy ||grad x||^2."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 24, generator=g, dtype=torch.float64) * 2 - 1
    op = make_operator(task, (3, 24, 24), seed=1)
    filled = harmonic_fill(op.A(x), op.mask, tol=1e-10)
    observed = op.mask.bool().expand_as(x)
    assert torch.equal(filled[observed], x[observed])
    assert float(grad_adjoint(grad(filled))[~observed].abs().max()) < 1e-8
    energy = float(grad(filled).square().sum())
    for _ in range(3):
        change = torch.randn(x.shape, generator=g, dtype=torch.float64) * 0.01 * ~observed
        assert float(grad(filled + change).square().sum()) > energy


def test_harmonic_fill_of_an_image_does_not_depend_on_its_batch():
    """Each channel stops at its own convergence: a batch gives the fills its images give alone (so a result
    does not change with how evaluation batches or splits the images)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 3, 32, 32, generator=g) * 2 - 1
    x[1] = x[1] * 0.01  # converges in fewer iterations than its batch mates
    op = make_operator("box-inpaint", (3, 32, 32), seed=0)
    together = harmonic_fill(op.A(x), op.mask)
    for i in range(3):
        assert torch.equal(harmonic_fill(op.A(x[i:i + 1]), op.mask), together[i:i + 1])


def test_operator_norm_by_power_iteration():
    like = torch.zeros(1, 3, 16, 16)
    assert operator_norm(Identity(), like) == pytest.approx(1, rel=1e-5)
    assert operator_norm(make_operator("box-inpaint", (3, 16, 16)), like) == pytest.approx(1, rel=1e-5)
    sr = make_operator("sr4", (3, 16, 16))
    exact = float(torch.linalg.matrix_norm(sr.Rh.double(), 2) * torch.linalg.matrix_norm(sr.Rw.double(), 2))
    assert exact * 0.99 < operator_norm(sr, like) <= exact * (1 + 1e-6)  # from below, as power iteration does


@pytest.mark.parametrize("task", ["gaussian-blur", "random-inpaint"])
def test_objective_converges_to_a_long_run(task):
    x, op, y = problem(task, n=16, batch=1)
    weight = 0.025
    best = float(objective(op, tv(None, op, y, weight=weight, steps=2000), y, weight).sum())
    gaps = [float(objective(op, tv(None, op, y, weight=weight, steps=k), y, weight).sum()) - best
            for k in (10, 30, 100, 300)]
    assert all(later < earlier for earlier, later in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-3 * best
    assert gaps[0] > -1e-6 * best  # the long run is (nearly) optimal: nothing beats it


def dual_tv_denoise(y: torch.Tensor, weight: float, iterations: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact reference: FISTA on the dual of min_x 0.5 ||x - y||^2 + weight TV(x) (Beck & Teboulle 2009),
    min over |q_ij| <= weight of 0.5 ||y - grad^T q||^2, with x = y - grad^T q. Returns (x, q)."""
    q = torch.zeros_like(grad(y))
    z, t = q, 1.0
    for _ in range(iterations):
        q_new = z + grad(y - grad_adjoint(z)) / 8
        q_new = q_new / (q_new.square().sum(2, keepdim=True).sqrt() / weight).clamp_min(1)
        t_new = (1 + (1 + 4 * t * t) ** 0.5) / 2
        z, q, t = q_new + (t - 1) / t_new * (q_new - q), q_new, t_new
    return y - grad_adjoint(q), q


def test_denoising_matches_the_exact_dual_solution():
    x, op, y = problem("denoise", n=16)
    y = y.double()
    weight = 0.05
    x_dual, q = dual_tv_denoise(y, weight, 5000)
    primal = objective(op, x_dual, y, weight)
    dual = 0.5 * y.flatten(1).square().sum(1) - 0.5 * (y - grad_adjoint(q)).flatten(1).square().sum(1)
    assert float((primal - dual).max()) < 1e-6 * float(primal.min())  # the reference is optimal: zero gap
    x_pd = tv(None, op, y, weight=weight, steps=3000, bounded=False)
    assert float((x_pd - x_dual).abs().max()) < 2e-3
    assert float((objective(op, x_pd, y, weight) - primal).max()) < 1e-5 * float(primal.min())


def test_denoising_a_piecewise_constant_image_gains_many_db():
    x, op, y = problem("denoise")
    noisy = float(psnr(y, x).mean())
    for vectorial in (False, True):
        assert float(psnr(tv(None, op, y, sigma_y=0.05, vectorial=vectorial), x).mean()) > noisy + 6


@pytest.mark.parametrize("task, margin", [("box-inpaint", 0.2), ("random-inpaint", 5.0), ("gaussian-blur", 3.0),
                                          ("sr4", 0.5)])
def test_tv_beats_the_naive_reconstruction(task, margin):
    x, op, y = problem(task)
    naive = float(psnr(op.naive(y).clamp(-1, 1), x).mean())
    restored = solve("tv", None, op, y, sigma_y=0.05, **settings_for("tv", task))
    assert restored.shape == x.shape and float(restored.abs().max()) <= 1
    assert float(psnr(restored, x).mean()) > naive + margin


def test_tv_runs_through_solve_like_every_solver():
    assert SOLVERS["tv"] is tv
    assert settings_for("tv", "sr4") == {"weight_scale": 0.25}
    x, op, y = problem("gaussian-blur", n=16)
    a = solve("tv", None, op, y, sigma_y=0.05, steps=20, generator=torch.Generator().manual_seed(0))
    b = solve("tv", None, op, y, sigma_y=0.05, steps=20, generator=torch.Generator().manual_seed(1), progress=False)
    assert torch.equal(a, b)  # deterministic: the generator is not used
    with pytest.raises(ValueError, match="linear"):
        tv(None, make_operator("saturation", (3, 16, 16)), y)
    with pytest.raises(ValueError, match="weight"):
        tv(None, op, y, weight=-1.0)
    with pytest.raises(ValueError, match="images"):
        tv(None, Identity(), torch.zeros(2, 16))
