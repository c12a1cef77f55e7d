"""DAPS, RED-diff and RePaint beyond the contract of every solver (test_solver_contract.py): DAPS's spread,
non-linear operators, RePaint's known pixels, and their schedules."""

import pytest
import torch

from diffprior.nonlinear import PhaseRetrieval, Saturation
from diffprior.solvers import daps, reddiff, repaint, solve
from diffprior.solvers.daps import _edm_sigmas, _nearest_timestep, _ode_x0
from diffprior.solvers.repaint import jump_schedule, repaint_nfe

N = 500  # posterior samples per check

SETTINGS = {  # small budgets: the tests run on a CPU
    "daps": dict(steps=50, ode_steps=1, langevin_steps=20, lr=1.0),   # a step of ~sigma_y^2 (see the benchmark)
    "reddiff": dict(steps=100, lr=0.5),                               # the official 100-step example
    "repaint": dict(steps=50, jump_length=5, jump_n_sample=3),
}



def test_daps_spreads_its_samples_like_the_posterior(gaussian_problem):
    """DAPS samples (unlike RED-diff's optimised points) have about the posterior's total variance."""
    p = gaussian_problem
    x = solve("daps", p["prior"], p["op"], p["y"].expand(N, -1, -1, -1), sigma_y=p["sigma_y"],
              generator=torch.Generator().manual_seed(1), **SETTINGS["daps"])
    ratio = float(torch.cov(x.flatten(1).T).trace() / p["posterior"].covariance().trace())
    assert 0.6 < ratio < 1.4


@pytest.mark.parametrize("name,op,threshold", [
    ("daps", Saturation(2.0), 0.3), ("reddiff", Saturation(2.0), 0.3),
    ("daps", PhaseRetrieval(), 0.6), ("reddiff", PhaseRetrieval(), 0.6),
])
def test_nonlinear_operators_are_fitted(gaussian_problem, name, op, threshold):
    prior, x_true = gaussian_problem["prior"], gaussian_problem["x"]
    y = op.A(x_true)
    settings = dict(SETTINGS[name])
    if name == "daps":
        settings.update(steps=30, sigma_y=0.05, lr=1.0)
    x = solve(name, prior, op, y.expand(300, *y.shape[1:]), generator=torch.Generator().manual_seed(0), **settings)
    fit = (op.A(x) - y).flatten(1).norm(dim=1).mean()
    prior_fit = (op.A(prior.sample(300, torch.Generator().manual_seed(1))) - y).flatten(1).norm(dim=1).mean()
    print(f"{name} {op.name}: residual {float(fit):.3f}, prior samples {float(prior_fit):.3f}")
    assert float(fit) < threshold * float(prior_fit)


def test_repaint_keeps_the_known_pixels(gaussian_problem):
    p = gaussian_problem
    x = repaint(p["prior"], p["op"], p["y"].expand(4, -1, -1, -1), steps=20, generator=torch.Generator().manual_seed(0))
    mask = p["op"].mask.bool().expand_as(x)
    assert torch.equal(x[mask], p["y"].expand_as(x)[mask])


def test_jump_schedule():
    path = jump_schedule(30, 10, 3)
    assert path[0] == 29 and path[-1] == -1
    assert all(b == a - 1 or b == a + 10 for a, b in zip(path, path[1:]))
    ups = [b for a, b in zip(path, path[1:]) if b > a]
    assert ups == [20, 20, 10, 10]  # jump points 10 and 0 (not 20: k < steps - j), each passed r = 3 times
    assert repaint_nfe(250, 10, 10) == 2410  # the paper's setting
    assert repaint_nfe(100, 10, 5) == 460  # the default
    assert repaint_nfe(40, 10, 1) == 40  # no resampling: a plain chain
    with pytest.raises(ValueError):
        jump_schedule(10, 0, 3)


def test_daps_levels_and_its_one_step_ode(gaussian_problem):
    prior = gaussian_problem["prior"]
    sigmas = _edm_sigmas(100.0, 0.1, 7.0, 200)
    assert sigmas[0] == pytest.approx(100.0) and sigmas[-1] > 0.1 and sigmas == sorted(sigmas, reverse=True)
    t = _nearest_timestep(prior, 1.0)
    assert abs(prior.schedule.sigma_at(t) - 1.0) < 0.01
    assert _nearest_timestep(prior, 1e-6) == 0 and _nearest_timestep(prior, 1e6) == prior.schedule.T - 1
    u = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    a = prior.schedule.abar_at(t)
    tweedie = prior.x0(a ** 0.5 * u, t)
    assert torch.allclose(_ode_x0(prior, u, t, 1, 0.01, 7.0), tweedie)
    # more ODE steps: a different, deterministic estimate
    five = _ode_x0(prior, u, t, 5, 0.01, 7.0)
    assert torch.equal(five, _ode_x0(prior, u, t, 5, 0.01, 7.0)) and not torch.allclose(five, tweedie, atol=1e-2)


def test_bad_settings_are_refused(gaussian_problem):
    p = gaussian_problem
    with pytest.raises(ValueError, match="weighting"):
        reddiff(p["prior"], p["op"], p["y"], weighting="cubic")
    with pytest.raises(ValueError):
        daps(p["prior"], p["op"], p["y"], steps=0)
    with pytest.raises(TypeError):
        solve("daps", p["prior"], p["op"], p["y"], langevin=3)
