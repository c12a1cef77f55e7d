"""The exact-posterior benchmark: every solver against the true posterior of a problem where it is known.

The prior is a Gaussian mixture, whose denoiser E[x0 | x_t] is exact (`GaussianMixturePrior`), and the
measurement y = A x + sigma_y n is linear, so the posterior p(x | y) is a Gaussian mixture in closed form.
Each solver draws many samples for one y; they are scored against exact posterior draws by
  sw       the sliced 2-Wasserstein distance (random projections, the same for every method), next to its
           noise floor: the distance between two independent sets of exact draws of the same size;
  mean     the error of the sample mean, ||mean - E[x | y]|| / sqrt(tr Cov[x | y]);
  cal90    calibration: the share of exact posterior draws inside each coordinate's central 90% interval
           of the solver's samples, averaged over coordinates (0.90 when calibrated, less when too narrow);
  truth90  the share of the true x's coordinates inside those intervals.
Problems: `mask` observes a random half of the coordinates (an `Inpaint` mask); `matrix` observes d/2
random projections (a Gaussian matrix scaled to spectral norm 1, as the image operators' norms are <= 1).
Dimensions 2 (drawn as pictures) and 8 to 64 (numbers); several seeds (a new prior, operator, x and y
each) and several budgets of network evaluations (NFE).
Two reference rows frame the solvers: `exact` (exact draws: scores at the noise floor) and `prior`
(unconditional DDPM samples that ignore y).
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import Tensor

from .. import arguments
from ..io import write_text
from ..operators import Inpaint, LinearOperator
from ..prior import GaussianMixturePrior
from ..solvers import SOLVERS, SPECS, DivergenceError, sample, solve

KINDS = ("mask", "matrix")


class MatrixOperator(LinearOperator):
    """y = M x.flatten() for a dense (m, d) matrix M, on samples of any shape with d values; y is (B, m).

    The SVD M = U diag(s) V^T is computed once: A_adjoint, A_pinv and the spectral maps are exact.
    Spectral coefficients are shaped like x (d of them); those past min(m, d) have s = 0.
    """

    name = "matrix"
    has_svd = True

    def __init__(self, M: Tensor, shape: tuple[int, ...]):
        super().__init__()
        M = torch.as_tensor(M, dtype=torch.float64)
        if M.dim() != 2 or M.shape[1] != math.prod(shape):
            raise ValueError(f"M must be an (m, {math.prod(shape)}) matrix for samples of shape {shape}")
        U, s, Vh = torch.linalg.svd(M)
        d, k = M.shape[1], s.numel()
        self.shape = tuple(shape)
        self.register_buffer("M", M)
        self.register_buffer("U_mat", U[:, :k])
        self.register_buffer("V_mat", Vh.T)
        self.register_buffer("s", torch.cat([s, s.new_zeros(d - k)]))

    def _x(self, x: Tensor) -> Tensor:
        return x.reshape(x.shape[0], -1)

    def _image(self, v: Tensor) -> Tensor:
        return v.reshape(v.shape[0], *self.shape)

    def A(self, x):
        return self._x(x) @ self.M.to(x.dtype).T

    def A_adjoint(self, y):
        return self._image(y @ self.M.to(y.dtype))

    def A_pinv(self, y):
        return self.V(self.U_T(y) / torch.where(self.s > 0, self.s, 1).to(y.dtype).reshape(1, *self.shape))

    def V_T(self, x):
        return self._image(self._x(x) @ self.V_mat.to(x.dtype))

    def V(self, c):
        return self._image(self._x(c) @ self.V_mat.to(c.dtype).T)

    def U_T(self, y):
        c = y @ self.U_mat.to(y.dtype)
        return self._image(torch.cat([c, c.new_zeros(c.shape[0], self.s.numel() - c.shape[1])], 1))

    def U(self, c):
        return self._x(c)[:, :self.U_mat.shape[1]] @ self.U_mat.to(c.dtype).T

    def singulars(self, x):
        return self.s.to(x.dtype).reshape(1, *self.shape)


# -- problems -----------------------------------------------------------------------------------------
def make_problem(kind: str, d: int, seed: int, *, sigma_y: float = 0.2, components: int = 4) -> dict:
    """A Gaussian-mixture prior on samples of shape (1, 1, d), an operator, a true x ~ prior, y, and the
    exact posterior. Components: means ~ N(0, 1.5^2 I), random orientations, variances in [0.02, 0.22]."""
    if kind not in KINDS:
        raise ValueError(f"unknown problem kind {kind!r}; expected one of {KINDS}")
    g = torch.Generator().manual_seed(1_000_003 * seed + 1009 * d + KINDS.index(kind))
    f64 = dict(generator=g, dtype=torch.float64)
    K, shape = components, (1, 1, d)
    Q = torch.linalg.qr(torch.randn(K, d, d, **f64))[0]
    covs = Q @ torch.diag_embed(0.02 + 0.2 * torch.rand(K, d, **f64)) @ Q.transpose(1, 2)
    prior = GaussianMixturePrior(0.5 + torch.rand(K, **f64), 1.5 * torch.randn(K, d, **f64), covs, shape=shape)
    if kind == "mask":
        mask = torch.zeros(d)
        mask[torch.randperm(d, generator=g)[:max(1, d // 2)]] = 1
        op = Inpaint(mask.reshape(1, d))
    else:
        M = torch.randn(max(1, d // 2), d, **f64)
        op = MatrixOperator(M / torch.linalg.matrix_norm(M, ord=2), shape)  # ||A|| = 1, as the image operators
    x = prior.sample(1, g)
    y = op.A(x)
    y = y + sigma_y * torch.randn(y.shape, **f64)
    M = op.A(torch.eye(d, dtype=torch.float64).reshape(d, *shape)).reshape(d, -1).T  # (m, d)
    return dict(kind=kind, d=d, seed=seed, prior=prior, op=op, x=x, y=y, sigma_y=sigma_y,
                posterior=prior.posterior(M, y.flatten(), sigma_y))


# -- metrics ------------------------------------------------------------------------------------------
def projections(d: int, n: int = 256, generator: torch.Generator | None = None) -> Tensor:
    """n random unit directions in R^d, (n, d) float64."""
    dirs = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return dirs / dirs.norm(dim=1, keepdim=True)


def sliced_wasserstein(a: Tensor, b: Tensor, dirs: Tensor) -> float:
    """Sliced 2-Wasserstein distance between the empirical distributions of a (n, d) and b (n', d):
    sqrt(mean over directions of W2^2 of the 1-D projections), W2 in 1-D by matching quantiles."""
    pa, pb = (torch.sort(v.reshape(v.shape[0], -1).double() @ dirs.T, dim=0).values for v in (a, b))
    if pa.shape[0] != pb.shape[0]:  # compare at the quantiles of the smaller set
        n = min(pa.shape[0], pb.shape[0])
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
        pa, pb = (torch.quantile(p, q, dim=0) for p in (pa, pb))
    return float(((pa - pb) ** 2).mean().sqrt())


def score(samples: Tensor, reference: Tensor, problem: dict, dirs: Tensor) -> dict:
    """sw, mean, cal90 and truth90 of solver samples against exact posterior draws `reference`."""
    post = problem["posterior"]
    s = samples.reshape(samples.shape[0], -1).double()
    ref = reference.reshape(reference.shape[0], -1).double()
    lo, hi = torch.quantile(s, 0.05, dim=0), torch.quantile(s, 0.95, dim=0)
    truth = problem["x"].reshape(-1).double()
    return dict(sw=sliced_wasserstein(s, ref, dirs),
                mean=float((s.mean(0) - post.mean().reshape(-1)).norm() / post.covariance().trace().sqrt()),
                cal90=float(((ref >= lo) & (ref <= hi)).double().mean()),
                truth90=float(((truth >= lo) & (truth <= hi)).double().mean()))


# -- budgets --------------------------------------------------------------------------------------------
def budget_settings(name: str, solver: Callable, nfe: int, problem: dict) -> dict | None:
    """The settings that make `solver` spend about `nfe` network evaluations on `problem`: a registered
    solver's declared budget (`SolverSpec.budget`), `steps=nfe` for another function with a `steps` setting,
    None otherwise. Beyond the budget, solvers run at their defaults, except two step sizes tuned for images,
    rescaled to these small problems: DAPS's Langevin step (lr 1: a step of about sigma_y^2, the official
    box-inpainting ratio of lr to the likelihood variance, 5e-5 against 0.0071^2, which these small problems
    mix well with) and DPS's step (zeta 0.1 sqrt(T / S) for S steps, chosen on the quick problems; the
    images' 0.3-0.5 overshoot)."""
    T = problem["prior"].schedule.T
    if name in SPECS and SPECS[name].run is solver:
        settings = SPECS[name].budget(nfe, T)
    elif "steps" in inspect.signature(solver).parameters:
        settings = {"steps": nfe}
    else:
        return None
    if name == "daps":
        settings["lr"] = 1.0
    if name == "dps":
        settings.update(scale=0.1 * (nfe / T) ** 0.5, ref_size=None)
    return settings


def nfe_of(name: str, solver: Callable, settings: dict, problem: dict) -> int:
    """Network evaluations of a run with these settings: as the solver declares (`SolverSpec.nfe`), else steps."""
    if name in SPECS and SPECS[name].run is solver:
        return SPECS[name].evaluations(problem["prior"].schedule, **settings)
    return settings.get("steps", 0)


# -- the run ---------------------------------------------------------------------------------------------
def run_posterior_benchmark(out_dir: str | Path, *, quick: bool = False,
                            methods: Sequence[str] | dict[str, Callable] | None = None,
                            seeds: Sequence[int] | None = None,        # default (0, 1, 2); quick (0, 1)
                            step_budgets: Sequence[int] | None = None, # default (20, 100, 1000); quick (20, 100)
                            dims: Sequence[int] | None = None,         # default (2, 8, 16, 64); quick (2, 8)
                            kinds: Sequence[str] = KINDS,
                            n_samples: int | None = None,              # per run; default 2000, quick 300
                            sigma_y: float = 0.2,
                            figure: bool = True,
                            progress: bool = True) -> dict:
    """Run the benchmark and write posterior_benchmark.{md,json} (and posterior_2d_<kind>.png when d = 2 is
    among the dimensions) to out_dir. `methods`: names in SOLVERS (default: all of them) or a dict of
    name -> solver function with the solvers' signature. Returns the JSON document."""
    seeds = tuple(seeds or ((0, 1) if quick else (0, 1, 2)))
    budgets = tuple(step_budgets or ((20, 100) if quick else (20, 100, 1000)))
    dims = tuple(dims or ((2, 8) if quick else (2, 8, 16, 64)))
    n = n_samples or (300 if quick else 2000)
    if methods is None:
        methods = dict(SOLVERS)
    elif not isinstance(methods, dict):
        unknown = [m for m in methods if m not in SOLVERS]
        if unknown:
            raise ValueError(f"unknown method {', '.join(unknown)}; choose from {', '.join(SOLVERS)}")
        methods = {m: SOLVERS[m] for m in methods}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors: threads only add overhead
    rows, skipped, shown = [], {}, {}
    try:
        for kind in kinds:
            for d in dims:
                for seed in seeds:
                    problem = make_problem(kind, d, seed, sigma_y=sigma_y)
                    keep = budgets[-1] if d == 2 and seed == seeds[0] else None  # the samples to draw
                    new_rows, draws = _benchmark_problem(problem, methods, budgets, n, skipped, keep, progress)
                    rows += new_rows
                    if keep:
                        shown[kind] = (problem, draws)
    finally:
        torch.set_num_threads(threads)
    summary = _summarise(rows)
    doc = dict(config=dict(quick=quick, seeds=list(seeds), step_budgets=list(budgets), dims=list(dims),
                           kinds=list(kinds), n_samples=n, sigma_y=sigma_y, methods=list(methods)),
               skipped=skipped, summary=summary, runs=rows)
    text = json.dumps(doc, indent=1, default=_jsonable)
    write_text(out / "posterior_benchmark.json", text)
    write_text(out / "posterior_benchmark.md", markdown(doc))
    if figure:
        for kind, (problem, draws) in shown.items():
            plot_2d(problem, draws, out / f"posterior_2d_{kind}.png", title=f"{kind}, NFE {budgets[-1]}")
    return doc


def _benchmark_problem(problem: dict, methods: dict[str, Callable], budgets: Sequence[int], n: int,
                       skipped: dict, keep: int | None, progress: bool) -> tuple[list[dict], dict[str, Tensor]]:
    """Score the exact sampler, the prior and every method at every budget on one problem. Returns the rows
    and, at budget `keep`, the samples of each method (for the figure); records skipped methods."""
    kind, d, seed = problem["kind"], problem["d"], problem["seed"]
    g = torch.Generator().manual_seed(seed)
    dirs = projections(d, generator=g)
    post = problem["posterior"]
    reference = post.sample(n, g)
    floor = sum(sliced_wasserstein(post.sample(n, g), post.sample(n, g), dirs) for _ in range(4)) / 4
    base = dict(kind=kind, d=d, seed=seed, floor=floor)
    draws = {"exact": post.sample(n, g)}
    rows = [dict(base, method="exact", nfe=0, seconds=0.0, settings={},
                 **score(draws["exact"], reference, problem, dirs))]
    y = problem["y"].float().expand(n, *problem["y"].shape[1:])  # the solvers run in float32
    run_problem = dict(problem, op=copy.deepcopy(problem["op"]).float())
    done = set()  # (method, settings) already run: a solver without a network (TV) runs once
    for nfe in budgets:
        runs = {"prior": (None, dict(steps=nfe))}
        for name, fn in methods.items():
            settings = budget_settings(name, fn, nfe, problem)
            if settings is None:
                skipped[name] = "no `steps` setting to give it a budget"
            elif (name, repr(settings)) not in done:
                done.add((name, repr(settings)))
                runs[name] = (fn, settings)
        for name, (fn, settings) in runs.items():
            if progress:
                print(f"  {kind} d={d} seed={seed} NFE={nfe}: {name}", flush=True)
            gen = torch.Generator().manual_seed(10_000 * seed + nfe)
            row = dict(base, method=name, nfe=settings["steps"] if fn is None else nfe_of(name, fn, settings, problem),
                       settings=settings)
            start = time.perf_counter()
            try:
                if fn is None:
                    x = sample(problem["prior"], n, generator=gen, **settings)
                else:
                    x = _run(name, fn, run_problem, y, settings, gen)
            except DivergenceError:
                rows.append(dict(row, seconds=time.perf_counter() - start, diverged=True,
                                 sw=math.nan, mean=math.nan, cal90=math.nan, truth90=math.nan))
                continue
            except (TypeError, ValueError, NotImplementedError) as e:  # the method does not apply here
                skipped[f"{name} ({kind})"] = str(e).splitlines()[0][:160]
                continue
            rows.append(dict(row, seconds=time.perf_counter() - start, **score(x, reference, problem, dirs)))
            if keep is not None:  # the last budget's samples (the only run of a method without a network)
                draws[name] = x
    return rows, draws


def _run(name: str, fn: Callable, problem: dict, y: Tensor, settings: dict, generator: torch.Generator) -> Tensor:
    if name in SOLVERS and SOLVERS[name] is fn:
        return solve(name, problem["prior"], problem["op"], y, sigma_y=problem["sigma_y"], generator=generator,
                     **settings)
    if "sigma_y" in inspect.signature(fn).parameters:
        settings = dict(settings, sigma_y=problem["sigma_y"])
    return fn(problem["prior"], problem["op"], y, generator=generator, **settings)


def _jsonable(v):
    return v.tolist() if isinstance(v, Tensor) else str(v)


def _summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds per (kind, d, method, budget)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["kind"], r["d"], r["method"], r["nfe"]), []).append(r)
    summary = []
    for (kind, d, method, nfe), rs in groups.items():
        entry = dict(kind=kind, d=d, method=method, nfe=nfe, seeds=len(rs),
                     diverged=sum(bool(r.get("diverged")) for r in rs))
        for key in ("sw", "floor", "mean", "cal90", "truth90", "seconds"):
            v = torch.tensor([r[key] for r in rs], dtype=torch.float64)
            entry[key] = float(v.nanmean())
            entry[key + "_sd"] = float(v[~v.isnan()].std()) if int((~v.isnan()).sum()) > 1 else 0.0
        entry["sw_ratio"] = entry["sw"] / entry["floor"]
        summary.append(entry)
    return summary


def markdown(doc: dict) -> str:
    """The summary as one Markdown table per problem."""
    cfg = doc["config"]
    lines = ["# Exact-posterior benchmark", "",
             f"Gaussian-mixture priors (4 components) with exact denoisers; linear measurements with noise "
             f"sigma_y = {cfg['sigma_y']}; {cfg['n_samples']} samples per run; mean (sd) over seeds "
             f"{cfg['seeds']}. sw: sliced 2-Wasserstein distance to exact posterior draws (x floor: its ratio "
             f"to the distance between two exact sets); mean: error of the sample mean in units of the "
             f"posterior's spread; cal90: share of exact draws inside the samples' central 90% intervals "
             f"(0.90 = calibrated); truth90: share of the true x inside them. NFE: network evaluations.", ""]
    for kind in cfg["kinds"]:
        for d in cfg["dims"]:
            entries = [e for e in doc["summary"] if e["kind"] == kind and e["d"] == d]
            if not entries:
                continue
            lines += [f"## {kind}, d = {d}", "",
                      "| method | NFE | sw | x floor | mean | cal90 | truth90 | seconds |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|"]
            order = ["exact", "prior", *cfg["methods"]]
            for e in sorted(entries, key=lambda e: (order.index(e["method"]) if e["method"] in order else 99,
                                                    e["nfe"])):
                note = f" ({e['diverged']} diverged)" if e["diverged"] else ""
                lines.append(f"| {e['method']}{note} | {e['nfe']} | {e['sw']:.3f} ({e['sw_sd']:.3f}) | "
                             f"{e['sw_ratio']:.1f} | {e['mean']:.2f} ({e['mean_sd']:.2f}) | {e['cal90']:.2f} | "
                             f"{e['truth90']:.2f} | {e['seconds']:.2f} |")
            lines.append("")
    if doc["skipped"]:
        lines += ["## Skipped", ""] + [f"- {name}: {why}" for name, why in doc["skipped"].items()] + [""]
    return "\n".join(lines)


def plot_2d(problem: dict, draws: dict[str, Tensor], path: Path, *, title: str = "", points: int = 600) -> Path:
    """One scatter panel per method: its samples (the exact posterior's first) over prior samples, the
    true x as a star."""
    from ..figures import plt, save_figure

    g = torch.Generator().manual_seed(0)
    back = problem["prior"].sample(2000, g).reshape(-1, 2)
    cols = min(4, len(draws))
    rows = math.ceil(len(draws) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.6 * rows), squeeze=False, sharex=True, sharey=True)
    truth = problem["x"].reshape(2)
    for ax, (name, x) in zip(axes.flat, draws.items()):
        x = x.reshape(-1, 2).double()[:points]
        ax.scatter(back[:, 0], back[:, 1], s=2, c="0.85", rasterized=True)
        ax.scatter(x[:, 0], x[:, 1], s=3, c="tab:red" if name == "exact" else "tab:blue", rasterized=True)
        ax.scatter([truth[0]], [truth[1]], marker="*", s=80, c="k")
        ax.set_title(name, fontsize=9)
    for ax in list(axes.flat)[len(draws):]:
        ax.axis("off")
    lim = back.abs().max().item() * 1.05
    axes[0][0].set_xlim(-lim, lim)
    axes[0][0].set_ylim(-lim, lim)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=120)


# -- command line (`diffprior bench posterior`) ----------------------------------------------------------
PARSER = dict(help="solvers against the exact posterior of a Gaussian-mixture prior",
              description=__doc__.split("\n\n")[0])


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=arguments.output_name,
                        help="folder for posterior_benchmark.{md,json} and the figures")
    parser.add_argument("--quick", action="store_true", help="2 seeds, NFE 20 and 100, d = 2 and 8 (CI size)")
    parser.add_argument("--methods", default=None, help="comma-separated solver names (default: all)")
    parser.add_argument("--seeds", type=arguments.integers(0), default=None,
                        help="comma-separated seeds (default 0,1,2; --quick 0,1)")
    parser.add_argument("--budgets", type=arguments.integers(1, 100_000), default=None,
                        help="comma-separated NFE budgets (default 20,100,1000; --quick 20,100; at most 100000)")
    parser.add_argument("--dims", type=arguments.integers(1, 1024), default=None,
                        help="comma-separated dimensions (default 2,8,16,64; --quick 2,8; at most 1024: the exact "
                             "posterior keeps d x d matrices)")
    parser.add_argument("--samples", type=arguments.positive, default=None,
                        help="posterior samples per run (default 2000; --quick 300)")
    arguments.add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    arguments.check_outputs([out / "posterior_benchmark.md", out / "posterior_benchmark.json"],
                            overwrite=args.overwrite, images=False)
    methods = None if args.methods is None else arguments.names(args.methods)
    if methods == []:
        raise ValueError("--methods names no solver: give solver names, or leave it out for all")
    doc = run_posterior_benchmark(out, quick=args.quick, methods=methods, seeds=args.seeds,
                                  step_budgets=args.budgets, dims=args.dims, n_samples=args.samples)
    print(markdown(doc))
    return 0
