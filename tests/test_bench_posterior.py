"""The exact-posterior benchmark: its metrics, its matrix operator, and a quick run that must tell an exact
sampler from one that ignores the measurement."""

import json
import math

import pytest
import torch

from diffprior.cli import main
from diffprior.commands.bench_posterior import (MatrixOperator, make_problem, projections, run_posterior_benchmark,
                                                sliced_wasserstein)
from diffprior.solvers import sample



def test_sliced_wasserstein():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(500, 3, generator=g, dtype=torch.float64)
    dirs = projections(3, 64, g)
    assert sliced_wasserstein(a, a, dirs) == 0
    shift = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    # a translation by v moves every projection by <dir, v>
    assert sliced_wasserstein(a, a + shift, dirs) == pytest.approx(float((dirs @ shift).square().mean().sqrt()))
    assert sliced_wasserstein(a[:200], a + shift, dirs) > 0.5  # sets of different sizes
    assert sliced_wasserstein(a, a[torch.randperm(500, generator=g)], dirs) == pytest.approx(0, abs=1e-12)


def test_matrix_operator():
    g = torch.Generator().manual_seed(1)
    shape = (1, 2, 3)
    M = torch.randn(4, 6, generator=g, dtype=torch.float64)
    op = MatrixOperator(M, shape)
    x = torch.randn(5, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(5, 4, generator=g, dtype=torch.float64)
    assert torch.allclose(op.A(x), x.flatten(1) @ M.T)
    assert torch.allclose((op.A(x) * y).sum(), (x * op.A_adjoint(y)).sum())
    assert torch.allclose(op.A(op.A_pinv(op.A(x))), op.A(x))
    assert torch.allclose(op.A_pinv(y).flatten(1), y @ torch.linalg.pinv(M).T)
    s = op.singulars(x)
    assert torch.allclose(op.U(s * op.V_T(x)), op.A(x))  # A = U diag(s) V^T
    assert torch.allclose(op.V(op.V_T(x)), x)
    assert int((s > 1e-12).sum()) == 4


@pytest.mark.parametrize("kind", ["mask", "matrix"])
def test_problems_have_the_exact_posterior(kind):
    p = make_problem(kind, 3, seed=0)
    M = p["op"].A(torch.eye(3, dtype=torch.float64).reshape(3, 1, 1, 3)).reshape(3, -1).T
    # importance sampling of the prior by the likelihood gives the same posterior mean
    xs = p["prior"].sample(200_000, torch.Generator().manual_seed(1)).reshape(-1, 3)
    logw = -((xs @ M.T - p["y"].reshape(1, -1)) ** 2).sum(1) / (2 * p["sigma_y"] ** 2)
    w = torch.softmax(logw, 0)
    mean = (w[:, None] * xs).sum(0)
    spread = float(p["posterior"].covariance().trace().sqrt())
    assert float((mean - p["posterior"].mean().reshape(-1)).norm()) < 0.05 * spread
    assert p["x"].shape == (1, 1, 1, 3)


def _prior_only(prior, op, y, *, steps=100, generator=None, progress=False):
    """A "solver" that ignores the measurement: unconditional samples."""
    return sample(prior, y.shape[0], steps=steps, generator=generator)


def test_quick_run_separates_exact_from_uninformed_samplers(tmp_path):
    doc = run_posterior_benchmark(tmp_path, quick=True, dims=(2, 8), step_budgets=(20,),
                                  methods={"prior-only": _prior_only}, progress=False)
    for name in ("posterior_benchmark.md", "posterior_benchmark.json", "posterior_2d_mask.png",
                 "posterior_2d_matrix.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "posterior_benchmark.json").read_text())["config"]["quick"] is True
    table = (tmp_path / "posterior_benchmark.md").read_text()
    assert "| prior-only | 20 |" in table and "## matrix, d = 8" in table
    runs = doc["runs"]
    assert {r["method"] for r in runs} == {"exact", "prior", "prior-only"}
    ratio = {(r["kind"], r["d"], r["seed"], r["method"]): r["sw"] / r["floor"] for r in runs}
    exact = [v for k, v in ratio.items() if k[3] == "exact"]
    assert all(0.3 < v < 2.0 for v in exact) and 0.6 < sum(exact) / len(exact) < 1.4  # at the noise floor
    for r in runs:
        key = (r["kind"], r["d"], r["seed"])
        if r["method"] == "exact":
            assert abs(r["cal90"] - 0.9) < 0.05 and r["mean"] < 0.3
        else:  # ignoring y: farther from the posterior than exact draws, and far where y says much (d = 8;
            # in 2-D one noisy projection can leave the posterior close to the prior)
            assert ratio[(*key, r["method"])] > max(5.0 if r["d"] == 8 else 1.0, ratio[(*key, "exact")]), r
    uninformed = [v for k, v in ratio.items() if k[3] == "prior-only"]
    assert sum(uninformed) / len(uninformed) > 5
    summary = {(e["kind"], e["d"], e["method"]): e for e in doc["summary"]}
    for (kind, d, method), e in summary.items():
        if method != "exact":
            assert e["mean"] > 3 * summary[(kind, d, "exact")]["mean"] and math.isfinite(e["sw"])


def test_quick_run_of_solvers(tmp_path):
    doc = run_posterior_benchmark(tmp_path, quick=True, dims=(2,), seeds=(0,), methods=["dps", "repaint"],
                                  n_samples=200, figure=False, progress=False)
    assert "repaint (matrix)" in doc["skipped"] and "Inpaint" in doc["skipped"]["repaint (matrix)"]
    summary = {(e["kind"], e["method"], e["nfe"]): e for e in doc["summary"]}
    assert ("mask", "repaint", 16) in summary and ("matrix", "dps", 100) in summary
    for kind in ("mask", "matrix"):  # DPS, guided by y, beats the prior on the posterior mean
        assert summary[(kind, "dps", 100)]["mean"] < summary[(kind, "prior", 100)]["mean"]
    assert not (tmp_path / "posterior_2d_mask.png").exists()
    with pytest.raises(ValueError, match="unknown method magic; choose from"):  # was a list's repr
        run_posterior_benchmark(tmp_path, quick=True, methods=["magic"])
    before = (tmp_path / "posterior_benchmark.md").read_text()  # the command keeps it unless told
    assert main(["bench", "posterior", "--out", str(tmp_path), "--quick", "--methods", "ddnm"]) == 2
    for empty in (",", ""):  # no solver: not the baselines alone
        assert main(["bench", "posterior", "--out", str(tmp_path / "none"), "--quick", "--methods", empty]) == 2
    assert (tmp_path / "posterior_benchmark.md").read_text() == before
