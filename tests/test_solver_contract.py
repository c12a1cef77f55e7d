"""The contract every registered solver keeps, checked for each of them: it is registered with facts that
fit its function, it is deterministic under a seed, it refuses unknown settings and operators it does not
accept, its declared network evaluations are the ones it makes, and it moves towards the exact posterior of
a linear-Gaussian problem (the `gaussian_problem` fixture: 4x4 pixels, half observed, noise 0.1)."""

import contextlib
import sys
import types

import pytest
import torch

import diffprior.solvers
from diffprior.nonlinear import PhaseRetrieval, Saturation
from diffprior.operators import Identity, Inpaint, LinearOperator, measure
from diffprior.prior import GaussianPrior
from diffprior.schedule import Schedule
from diffprior.models import load_prior
from diffprior.solvers import (SOLVERS, SPECS, DivergenceError, check_measurement, check_settings, settings_for, solve,
                               solver_settings, tuned_settings)
from diffprior.tasks import INPAINTING_TASKS, TASKS, make_operator

N = 1000  # posterior samples per check

# name: (settings that keep the run small, the largest posterior-mean error allowed as a fraction of the prior
# mean's; None: the solver ignores the prior, so there is no posterior to match)
CONTRACT = {
    "sdedit": (dict(t0=100), 0.6),
    "scoreald": (dict(steps=300, step_size=1.0), 0.6),
    "dps": (dict(steps=100, scale=0.032, ref_size=None), 0.6),  # zeta = 0.32 per step
    "daps": (dict(steps=50, ode_steps=1, langevin_steps=20, lr=1.0), 0.3),  # a step of ~sigma_y^2
    "reddiff": (dict(steps=100, lr=0.5), 0.3),  # the official 100-step example
    "repaint": (dict(steps=50, jump_length=5, jump_n_sample=3), 0.3),
    "ddrm": ({}, 0.4),
    "ddnm": ({}, 0.25),
    "pigdm": ({}, 0.25),
    "diffpir": ({}, 0.35),
    "tv": (dict(steps=50), None),
}

# an operator each kind of solver refuses
REFUSED = {"linear": Saturation(), "adjoint": Saturation(), "svd": Saturation(), "inpaint": Identity()}
# what each solver names as missing from a linear operator of a user's own that has only A (None: it runs on A alone)
LACKS_WITH_ONLY_A = {"sdedit": "naive", "scoreald": "A_adjoint", "dps": None, "daps": None, "reddiff": None,
                     "repaint": "Inpaint", "ddrm": "SVD", "ddnm": "A_pinv", "pigdm": "A_adjoint",
                     "diffpir": "A_adjoint", "tv": "A_adjoint"}


@contextlib.contextmanager
def counting(prior):
    """Count network evaluations: calls of `prior.predict` or `prior.x0` from outside the prior (the calls
    they make of each other are part of the same evaluation). Yields [count]."""
    count, depth = [0], [0]

    def wrap(fn):
        def counted(*args, **kwargs):
            count[0] += depth[0] == 0
            depth[0] += 1
            try:
                return fn(*args, **kwargs)
            finally:
                depth[0] -= 1
        return counted

    for name in ("predict", "x0"):
        setattr(prior, name, wrap(getattr(prior, name)))
    try:
        yield count
    finally:
        for name in ("predict", "x0"):
            delattr(prior, name)


def test_every_solver_has_a_contract():
    assert set(CONTRACT) == set(SPECS) == set(SOLVERS)


@pytest.mark.parametrize("name", SPECS)
def test_registered_with_facts_that_fit(name):
    spec = SPECS[name]
    assert spec.name == name and SOLVERS[name] is spec.run and getattr(diffprior.solvers, name) is spec.run
    assert sys.modules[spec.run.__module__].SPEC is spec and spec.run.__doc__
    for task, settings in spec.task_settings.items():
        assert (task in TASKS or task in INPAINTING_TASKS) and set(settings) <= set(spec.settings), task
    schedule = Schedule.linear(1000)
    for nfe in (20, 100, 1000):
        settings = spec.budget(nfe, 1000)
        check_settings(name, settings, 1000)
        used = spec.evaluations(schedule, **settings)
        assert (used == 0) if name == "tv" else (nfe // 2 < used <= nfe), (nfe, settings, used)


@pytest.mark.parametrize("name", SPECS)
def test_every_default_fits_a_prior_of_fewer_timesteps(gaussian_problem, name):
    """A prior trained with T = 300 (or 50): each solver's defaults apply (SDEdit's t0 is half the chain)."""
    p = gaussian_problem
    for T in (300, 50):
        prior = GaussianPrior(p["prior"].mean(), p["prior"].covariance(), schedule=Schedule.linear(T))
        x = solve(name, prior, p["op"], p["y"], sigma_y=p["sigma_y"], generator=torch.Generator().manual_seed(0))
        assert x.shape == p["x"].shape and bool(x.isfinite().all())


def test_sdedits_default_start_is_half_the_chain():
    for T, evaluations in ((1000, 501), (300, 151)):
        assert SPECS["sdedit"].evaluations(Schedule.linear(T), **solver_settings("sdedit")) == evaluations
        assert SPECS["sdedit"].budget(1000, T) == {"steps": evaluations}


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("name", SPECS)
def test_deterministic_under_a_seed(gaussian_problem, name):
    p = gaussian_problem
    settings = {"steps": 10} if "steps" in SPECS[name].settings else {}  # and the defaults
    y = p["y"].expand(3, -1, -1, -1)
    runs = [solve(name, p["prior"], p["op"], y_, sigma_y=p["sigma_y"], generator=torch.Generator().manual_seed(seed),
                  **settings) for y_, seed in ((y.clone().requires_grad_(), 7), (y, 7), (y, 8))]
    assert torch.equal(runs[0], runs[1]) and not runs[0].requires_grad  # a y that requires grad is data all the same
    assert torch.equal(runs[0], runs[2]) != SPECS[name].random  # TV draws nothing, the others do


@pytest.mark.parametrize("name", SPECS)
def test_unknown_settings_are_refused(gaussian_problem, name):
    p = gaussian_problem
    with pytest.raises(TypeError, match="no setting"):
        solve(name, p["prior"], p["op"], p["y"], no_such_setting=1)


@pytest.mark.parametrize("name", SPECS)
def test_bad_measurements_noise_levels_and_values_are_refused_before_it_runs(gaussian_problem, name):
    p = gaussian_problem
    prior, op, y = p["prior"], p["op"], p["y"]
    run = lambda y=y, **kw: solve(name, prior, op, y, **({"sigma_y": p["sigma_y"]} | kw))
    for bad, error, message in [
        (y[0], ValueError, r"has shape \(1, 4, 4\), but inpaint makes a batch \(B, 1, 4, 4\).*\(y\[None\]\)"),
        (y[..., :2, :2], ValueError, "from a batch of 1 of the prior's"),
        (y.expand(1, 3, 4, 4), ValueError, "has shape"),  # channels the prior does not have
        (y[:0], ValueError, "holds no images"),
        (y.to(torch.uint8), TypeError, "floating-point tensor"),
        (y.half(), TypeError, "give it in float32"),
        (y.numpy(), TypeError, "floating-point tensor"),
    ]:
        with pytest.raises(error, match=message):
            run(bad)
    with pytest.raises(TypeError, match="the operator must be a diffprior Operator.*got NoneType"):
        solve(name, prior, None, y, sigma_y=p["sigma_y"])
    if SPECS[name].needs_prior:  # TV alone runs without one
        with pytest.raises(TypeError, match=r"the prior must be a diffprior Prior.*got str \(load it with"):
            solve(name, "faces64", op, y, sigma_y=p["sigma_y"])
    else:
        assert solve(name, None, op, y, sigma_y=p["sigma_y"]).shape == y.shape
    two_masks = Inpaint(torch.stack([op.mask[0], 1 - op.mask[0]]))  # a batch of 2 masks for 1 measurement
    with pytest.raises(ValueError, match=r"inpaint makes \(2, 1, 4, 4\) from a batch of 1"):
        solve(name, prior, two_masks, y, sigma_y=p["sigma_y"])
    if SPECS[name].random:
        with pytest.raises(TypeError, match="generator must be a torch.Generator"):
            run(generator=42)
    if SPECS[name].takes_init:  # one start image per measurement
        with pytest.raises(ValueError, match=r"init must have shape \(2, 1, 4, 4\)"):
            run(y.expand(2, -1, -1, -1), init=torch.zeros(1, 1, 4, 4))
        with pytest.raises(TypeError, match=r"init must be a floating-point tensor .*got ndarray"):
            run(init=torch.zeros(1, 1, 4, 4).numpy())  # it said "got float32", the array's dtype
    else:
        with pytest.raises(TypeError, match=rf"{name} takes no init: .* sdedit, reddiff take one"):
            run(init=torch.zeros(1, 1, 4, 4))
    for sigma_y in (-0.1, float("nan"), "0.1", True):
        with pytest.raises(ValueError, match="sigma_y=.*expected a finite number >= 0"):
            run(sigma_y=sigma_y)
    if "steps" in SPECS[name].settings:  # a whole number given as a float runs as the int would
        seeded = lambda steps: run(y.expand(2, -1, -1, -1), steps=steps, generator=torch.Generator().manual_seed(0))
        assert torch.equal(seeded(10.0), seeded(10))


@pytest.mark.parametrize("method, key, value, message", [
    ("ddrm", "eta", 1.01, "a share, at most 1"),  # sqrt(1 - eta^2) would turn the result complex
    ("ddnm", "eta", 2, "a share, at most 1"),
    ("diffpir", "zeta", 1.5, "a share, at most 1"),
    ("daps", "lr_min_ratio", 5, "a share, at most 1"),
    ("daps", "rho", 0, "greater than 0"),
    ("dps", "start", 1000, r"a timestep in \[0, 999\]"),
    ("dps", "start", 100.5, "whole number"),
    ("dps", "start", "500", "expected a finite number"),
    ("sdedit", "t0", -1, "must not be negative"),
    ("dps", "scale", None, "takes a value"),  # --set scale=null: no automatic choice to fall back on
    ("dps", "clip", None, "takes a value"),
    ("ddrm", "eta", None, "takes a value"),
    ("dps", "loss", "../evil", "expected one of 'norm', 'squared'"),  # names: checked before any work
    ("diffpir", "skip", 3, "expected one of 'quad', 'uniform'"),
    ("reddiff", "weighting", "Linear", "expected one of 'linear', 'sqrt', 'const'"),
    ("daps", "ode_steps", 0, "at least 1"),
    ("repaint", "jump_length", 0, "at least 1"),
    ("repaint", "jump_n_sample", 0, "at least 1"),
])
def test_values_out_of_their_range_are_refused(method, key, value, message):
    with pytest.raises(ValueError, match=f"{method} setting {key}=.*{message}"):
        check_settings(method, {key: value}, 1000)


def test_every_named_setting_lists_its_names():
    """check_settings refuses a name the solver does not know from its Literal[...] annotation."""
    named = {(m, k): spec.choices(k) for m, spec in SPECS.items() for k, v in spec.settings.items() if isinstance(v, str)}
    assert named and all(v in names for (m, k), names in named.items() for v in [SPECS[m].settings[k]])
    for (method, key), names in named.items():
        assert check_settings(method, {key: names[-1]}, 1000) == {key: names[-1]}


def test_numpy_scalars_are_plain_numbers():
    import numpy as np
    checked = check_settings("dps", {"steps": np.int64(5), "scale": np.float32(0.25)}, 1000)
    assert checked == {"steps": 5, "scale": 0.25} and type(checked["scale"]) is float


@pytest.mark.parametrize("name", ["tv", "dps"])
def test_a_measurement_of_0_to_255_pixels_is_warned_about(gaussian_problem, name):
    p = gaussian_problem
    with pytest.warns(UserWarning, match=r"the measurement reaches 2\d\d.*but inpaint makes at most about 1 from "
                                         r"images in \[-1, 1\].*not \[0, 255\]"):
        with contextlib.suppress(DivergenceError):  # TV's result lies as far out as its measurement
            solve(name, p["prior"], p["op"], (p["y"] + 1) * 127.5, sigma_y=p["sigma_y"])


def test_a_measurement_on_another_device_than_the_prior_is_refused(gaussian_problem):
    p = gaussian_problem
    elsewhere = types.SimpleNamespace(device=torch.device("meta"), shape=p["prior"].shape)
    with pytest.raises(ValueError, match="the measurement is on cpu but the prior on meta"):
        check_measurement(elsewhere, p["op"], p["y"])


def test_a_refused_measurement_leaves_the_operator_where_it_was(gaussian_problem):
    """solve moves the operator to y's device (in place: a Module) only once y is known to be usable there."""
    p = gaussian_problem
    for y in (p["y"].to("meta"), p["y"].to("meta").float()):
        with pytest.raises(ValueError, match="the measurement is on the meta device: it holds no values"):
            solve("dps", p["prior"], p["op"], y, sigma_y=p["sigma_y"], steps=2)
    assert all(b.device.type == "cpu" for b in p["op"].buffers())
    solve("dps", p["prior"], p["op"], p["y"], sigma_y=p["sigma_y"], steps=2)  # still usable
    with pytest.raises(ValueError, match="on the meta device: it holds no values"):
        check_measurement(None, p["op"], p["y"].to("meta"))


def test_null_is_taken_where_it_means_something():
    assert check_settings("dps", {"start": None, "ref_size": None, "steps": None}, 1000)["ref_size"] is None
    assert check_settings("reddiff", {"lr": None}, 1000) == {"lr": None}


@pytest.mark.parametrize("name", SPECS)
def test_operators_it_does_not_accept_are_refused(gaussian_problem, name):
    p, spec = gaussian_problem, SPECS[name]
    wrong = REFUSED.get(spec.operators)
    if wrong is None and spec.why_not(PhaseRetrieval(), 0.1):  # SDEdit: no naive reconstruction
        wrong = PhaseRetrieval()
    if wrong is None:
        assert spec.why_not(PhaseRetrieval(), 0.1) is None and spec.why_not(p["op"], 0.1) is None  # any operator
        return
    assert spec.why_not(p["op"], 0.1) is None and spec.why_not(wrong, 0.1) is not None
    with pytest.raises(TypeError, match="does not apply"):
        solve(name, p["prior"], wrong, p["y"])


def test_daps_refuses_noiseless_measurements_before_it_runs(gaussian_problem):
    """Its likelihood is Gaussian in sigma_y: 0 is refused by the spec, so eval and the app refuse it up front."""
    p = gaussian_problem
    assert SPECS["daps"].why_not(p["op"], 0.0).startswith("DAPS models Gaussian measurement noise")
    with pytest.raises(TypeError, match="daps does not apply at sigma_y = 0: .*it needs sigma_y > 0"):
        solve("daps", p["prior"], p["op"], p["y"], sigma_y=0.0)  # the noise level, not the task, is at fault
    with pytest.raises(ValueError, match="daps needs 0 < sigma_min <= sigma_max, got sigma_min=10, sigma_max=0.001"):
        solve("daps", p["prior"], p["op"], p["y"], sigma_y=0.1, sigma_min=10, sigma_max=0.001)


@pytest.mark.parametrize("name", SPECS)
def test_an_operator_with_only_A_is_refused_naming_what_it_lacks(gaussian_problem, name):
    p = gaussian_problem

    class OnlyA(LinearOperator):
        name = "only-A"

        def A(self, x):
            return p["op"].A(x)

    lacks = LACKS_WITH_ONLY_A[name]
    if lacks is None:
        assert SPECS[name].why_not(OnlyA(), 0.1) is None
        return
    with pytest.raises(TypeError, match=f"{name} does not apply to only-A: .*{lacks}"):
        solve(name, p["prior"], OnlyA(), p["y"], sigma_y=0.0 if name == "ddnm" else 0.1)


@pytest.mark.parametrize("name", SPECS)
def test_exact_gaussian_posterior_and_declared_evaluations(gaussian_problem, name):
    p = gaussian_problem
    prior, op, y, posterior = p["prior"], p["op"], p["y"], p["posterior"]
    settings, limit = CONTRACT[name]
    with counting(prior) as count:
        x = solve(name, prior, op, y.expand(N, -1, -1, -1), sigma_y=p["sigma_y"],
                  generator=torch.Generator().manual_seed(0), **settings)
    assert count[0] == SPECS[name].evaluations(prior.schedule, **settings)
    assert x.shape == (N, 1, 4, 4)
    if limit is None:
        return
    target = posterior.mean().flatten()
    error = float((x.flatten(1).mean(0) - target).norm())
    prior_error = float((prior.mean().flatten() - target).norm())
    print(f"{name}: posterior-mean error {error:.3f} (prior mean: {prior_error:.3f})")
    assert error < limit * prior_error
    if name != "sdedit":  # the likelihood-guided solvers fit y better than prior samples do
        fit = (op.A(x) - y).flatten(1).norm(dim=1).mean()
        prior_fit = (op.A(prior.sample(N, torch.Generator().manual_seed(9))) - y).flatten(1).norm(dim=1).mean()
        assert float(fit) < 0.5 * float(prior_fit)


def test_settings_layer_task_defaults_then_the_priors_tuned_values_then_the_users():
    tuned = {"dps": {"gaussian-blur": {"scale": 3.0}}}
    assert settings_for("dps", "gaussian-blur") == {"scale": 0.3}  # the reference's value
    assert settings_for("dps", "gaussian-blur", tuned) == {"scale": 3.0}
    assert settings_for("dps", "gaussian-blur", tuned, scale=1.0, steps=None) == {"scale": 1.0}
    assert settings_for("dps", "box-inpaint", tuned) == {"scale": 0.5}  # not tuned: the task default stays
    warm = {"dps": {"box-inpaint": {"scale": 2.0, "start": 500}}}
    assert settings_for("dps", "box-inpaint", warm, steps=100, start=None) == {"scale": 2.0, "start": None,
                                                                             "steps": 100}  # None overrides too
    for task in INPAINTING_TASKS:  # a user's own mask ("inpaint") gets the official inpainting settings too
        assert settings_for("dps", task) == {"scale": 0.5} and settings_for("diffpir", task) == {"zeta": 1.0}


def test_faces64_ships_valid_tuned_settings_and_other_priors_none(gaussian_problem):
    prior = load_prior("faces64")
    tuned = tuned_settings(prior)
    assert set(tuned["dps"]) >= {"box-inpaint", "random-inpaint", "gaussian-blur"}
    # a user's own mask (restore --mask, the app's brush) is restored with tuned settings, not the reference's
    assert tuned["dps"]["inpaint"] == tuned["dps"]["stroke-inpaint"] == tuned["dps"]["box-inpaint"]
    assert settings_for("dps", "inpaint", tuned)["scale"] > settings_for("dps", "inpaint")["scale"]
    for method, by_task in tuned.items():
        for task, settings in by_task.items():
            check_settings(method, settings_for(method, task, tuned, steps=100), prior.schedule.T)
    assert tuned_settings(gaussian_problem["prior"]) == {}


def test_solve_with_a_task_runs_the_command_lines_settings_under_the_given_ones():
    prior = load_prior("faces64")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    op = make_operator("box-inpaint", x.shape[1:], seed=0)
    y = measure(op, x, sigma_y=0.05, generator=torch.Generator().manual_seed(0))

    def run(**settings):
        return solve("dps", prior, op, y, sigma_y=0.05, steps=3, generator=torch.Generator().manual_seed(1), **settings)

    tuned = tuned_settings(prior)["dps"]["box-inpaint"]  # a warm start at 500 and scale 2
    assert torch.equal(run(task="box-inpaint"), run(**tuned))
    assert not torch.equal(run(task="box-inpaint"), run())  # the solver's own defaults: scale 0.5 from noise
    assert torch.equal(run(task="box-inpaint", start=None), run(scale=tuned["scale"]))  # the given ones win
    with pytest.raises(ValueError, match="unknown task 'box'; choose from box-inpaint"):
        run(task="box")


@pytest.mark.parametrize("given, message", [
    ("abc", "must be an object"),
    ({"dps": "abc"}, "dps must map each task to its settings"),
    ({"dps": {"box-inpaint": ["x"]}}, "dps must map each task"),
    ({"dps": {"box-inpaint": {"scale": "abc"}}}, "dps on box-inpaint: dps setting scale='abc': expected a finite"),
    ({"dps": {"box-inpaint": {"speed": 1}}}, "dps on box-inpaint: dps has no setting speed"),
])
def test_a_checkpoints_bad_tuned_settings_are_refused_naming_them(given, message):
    """A checkpoint's solver_settings are checked where they are read, not left to fail inside a solver."""
    prior = types.SimpleNamespace(config={"solver_settings": given}, schedule=Schedule.linear())
    with pytest.raises(ValueError, match=r"the model's solver_settings \(in its checkpoint's .json\).*" + message):
        tuned_settings(prior)
    future = types.SimpleNamespace(config={"solver_settings": {"newsolver": {"x": {"y": 1}}}})
    assert tuned_settings(future) == {}  # a solver of a later version: left out
