"""`diffprior reproduce`: the report's experiments end to end, from clean images to OUT/REPORT.md.

    diffprior reproduce --out runs/report --data generated:16      # clean images drawn from the prior itself
    diffprior reproduce --out runs/celeba --data celeba/ --first 009501 --last 010000 --seeds 2
    diffprior reproduce --out runs/smoke --quick                   # a CPU smoke run of 2-3 minutes

Every table is written as Markdown and JSON (mean and 95% Student-t interval over the images, each image's
value first averaged over its seeds), every figure as PNG; REPORT.md sets each table beside the report's own
numbers, embeds the figures and records the command, model, commit, device, data, seeds and steps.

Table 1, Fig. 1 (single-step denoising): each clean image is noised to x_t at t = 100, 300 and 500 and
restored by one Tweedie estimate E[x0 | x_t]; PSNR, SSIM and LPIPS of the estimate and of the noisy input,
shown as x_t / sqrt(abar_t).

Fig. 2 (unconditional generation): a grid of ancestral DDPM samples with --steps steps (1000).

Table 2, Fig. 3 (SDEdit): box inpainting, random inpainting and Gaussian blur, SDEdit started at t0 = 400,
500 and 600 from its rough guess (the naive reconstruction; for inpainting the harmonic fill of the holes),
with the same share of the --steps chain, beside the naive reconstruction and total variation (TV, the
classical baseline).

Table 3, Fig. 4 (ScoreALD vs DPS): annealed Langevin with the likelihood score against diffusion posterior
sampling on the same three tasks, --steps steps each, with the naive and TV rows.

Table 4, Fig. 5 (modern solvers): every solver that applies to box and random inpainting, Gaussian and
motion blur and 4x super-resolution, at equal budgets of network evaluations (--budgets; DAPS spends them
as levels x ODE steps, RePaint through its resampling jumps, DPS and PiGDM also backpropagate through the
network), with the seconds per image; solvers that do not apply are listed with the reason.

Data: --data FOLDER (image files, centre-cropped and resized to the model's size; --first/--last select a
range of file names, --limit caps the count) or --data generated:N (N clean images drawn from the prior by
--steps ancestral steps, or 100 DDIM steps with --quick, seeded, saved under OUT/generated/; figures meant for
publication should use these, never photos of people).

--tables runs some of them only (1 with Figs. 1 and 2, 2, 3, 4), e.g. `--tables 4` to add images to
Table 4 alone; REPORT.md then holds the tables that ran.

Resume: tables 2-4 run through `diffprior eval` (a folder each under OUT, with rows.csv), table 1 keeps rows
of its own, and generated images and samples are files: rerunning the same command after an interruption
redoes only what is missing. --quick: 4 images, 1 seed, 20 steps, data from 100 DDIM steps, one budget of
20 NFE and three modern solvers: a smoke run for CPUs and tests.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import torch
from torch import Tensor

from ..version import __version__
from .common import add_prior_arguments, add_range_arguments, derive_seed, image_side, sample_folder
from .evaluate import (FORMATS, NAIVE, RowWriter, Runner, check_run, compact, diverged, evaluate, failed_cells,
                       merge_rows, paired_text, read_rows, readable, row_files, row_key, saved_image, select_images,
                       summarize, why_not, write_summary)
from ..devices import describe_device, pick_device
from ..figures import displayable, image_table
from .. import arguments
from ..io import load_image
from ..metrics import image_metrics
from ..io import folder_lock, output_folder, write_text
from ..models import load_prior
from ..prior import GaussianMixturePrior, Prior
from ..solvers import SOLVERS, SPECS, denoise, sample, settings_for, tuned_settings

# -- what the report measured ------------------------------------------------------------------------------
REPORT_SOURCE = ("the report: a DDPM prior (VP, 1000 steps) trained on FFHQ at 256x256; Table 1 (one sample), "
                 "Table 2 and Table 3, PSNR in dB / LPIPS")
REPORT = {
    "table1": {100: (31.2, 0.09), 300: (26.1, 0.20), 500: (22.0, 0.35)},  # t: (PSNR, LPIPS)
    "table2": {  # SDEdit, task: {t0: (PSNR, LPIPS)}
        "box-inpaint": {400: (20.57, 0.23), 500: (18.48, 0.25), 600: (16.33, 0.34)},
        "random-inpaint": {400: (17.43, 0.28), 500: (16.04, 0.33), 600: (14.17, 0.48)},
        "gaussian-blur": {400: (20.18, 0.23), 500: (18.78, 0.29), 600: (17.10, 0.36)},
    },
    "table3": {  # method: {task: (PSNR, LPIPS)}
        "scoreald": {"box-inpaint": (22.70, 0.18), "random-inpaint": (20.35, 0.31), "gaussian-blur": (22.00, 0.19)},
        "dps": {"box-inpaint": (31.77, 0.05), "random-inpaint": (22.00, 0.16), "gaussian-blur": (24.62, 0.11)},
    },
}
# Published FFHQ 256 numbers for the modern-solver table: (PSNR, LPIPS, NFE). Context only, not like-for-like:
# the DiffPIR scripts add noise of std 0.05 to images in [0, 1] (0.1 on our [-1, 1] scale, twice our sigma_y),
# blur with 61x61 Gaussian kernels of random std 3 to 9 (ours: one fixed kernel), on 256x256 faces.
PUBLISHED_SOURCE = ("the DiffPIR README (yuanzhi-zhu/DiffPIR): FFHQ 256, 100 validation images; NOT like-for-like: "
                    "its noise std is 0.05 on [0, 1] images (0.1 on our [-1, 1] scale) and its Gaussian kernels have a "
                    "random std of 3 to 9, so these numbers are context, not a target")
PUBLISHED = {
    ("diffpir", "gaussian-blur"): (27.36, 0.236, 100), ("diffpir", "motion-blur"): (26.57, 0.255, 100),
    ("diffpir", "sr4"): (26.64, 0.260, 100), ("dps", "gaussian-blur"): (25.46, 0.247, 1000),
    ("dps", "motion-blur"): (23.31, 0.289, 1000), ("dps", "sr4"): (25.77, 0.256, 1000),
    ("ddrm", "gaussian-blur"): (25.93, 0.298, 20), ("ddrm", "sr4"): (27.92, 0.265, 20),
}

DENOISE_TS = (100, 300, 500)
SDEDIT_T0S = (400, 500, 600)
REPORT_TASKS = ("box-inpaint", "random-inpaint", "gaussian-blur")
TABLES = (1, 2, 3, 4)  # the report's Tables 1-3 and the modern solvers' Table 4
SOLVER_TASKS = ("box-inpaint", "random-inpaint", "gaussian-blur", "motion-blur", "sr4")
QUICK_SOLVERS = ("ddrm", "diffpir", "repaint")
FIGURE_IMAGES = 2  # images per task in the restoration figures (their restorations are kept as PNG)


@dataclass
class Plan:
    """What a run does, the --quick defaults resolved."""

    out: Path
    data: str                        # a folder, or "generated"
    n: int | None                    # images: the count to generate, or a cap on the folder's
    solvers_n: int | None            # table 4 on the first solvers_n of them (None: all)
    first: str | None
    last: str | None
    seeds: int
    steps: int                       # the diffusion chain's length (Fig. 2, ScoreALD, DPS, SDEdit's share)
    budgets: list[int]               # NFE budgets of table 4
    solvers: list[str]               # table 4's solvers ([]: no table 4)
    tables: list[int]                # which of the tables 1-4 run
    batch: int
    sigma_y: float
    model: str
    config: str | None
    device: str
    dtype: str                       # the network's precision: auto, fp32 or bf16
    quick: bool
    progress: bool
    samples: int = 16                # Fig. 2 grid
    generate: tuple[str, int] = ("ddpm", 1000)  # sampler and steps of --data generated
    T: int = 1000                    # the prior's timesteps (set once it is loaded)
    tuned: dict = field(default_factory=dict)  # the prior's tuned solver settings (set once it is loaded)
    channels: int = 3                # the prior's image channels, 1 (grey) or 3 (set once it is loaded)
    command: str = ""
    started: float = field(default_factory=time.perf_counter)
    failed: list[str] = field(default_factory=list)  # eval cells with no row scored, as the run finds them


MAX_GENERATED = 1_000_000  # images reproduce draws from the prior (as `sample --n`)


def make_plan(args: argparse.Namespace) -> Plan:
    quick = args.quick
    data, n = args.data, args.n
    if data == "generated" or data.startswith("generated:"):
        count = data.partition(":")[2]
        if data != "generated" and not count.isdigit():
            raise ValueError(f"--data expects a folder or generated:N, got {data!r}")
        if count and n is not None:
            raise ValueError(f"--data {data} gives the count of images: leave out --limit (or give --data generated "
                             "--limit N)")
        data, n = "generated", int(count) if count else (n or (4 if quick else 16))
        if not 1 <= n <= MAX_GENERATED:
            raise ValueError(f"--data generated:N draws N images from the prior: N from 1 to {MAX_GENERATED:,}, "
                             f"got {n:,}")
    elif n is None and quick:
        n = 4
    if args.solvers in (None, "all"):
        solvers = list(QUICK_SOLVERS) if quick and args.solvers is None else list(SOLVERS)
    elif args.solvers == "report":
        solvers = []
    else:
        solvers = arguments.names(args.solvers)
        unknown = [s for s in solvers if s not in SOLVERS]
        if not solvers:
            raise ValueError("--solvers names no solver; give all, report (no table 4) or solver names")
        if unknown:
            raise ValueError(f"unknown solver {', '.join(unknown)}; choose from {', '.join(SOLVERS)}")
    tables = sorted(set(args.tables or TABLES))
    if not set(tables) <= set(TABLES):
        raise ValueError(f"--tables: choose from {', '.join(map(str, TABLES))}, got {', '.join(map(str, tables))}")
    if 4 not in tables:
        solvers = []
    elif not solvers and tables == [4]:
        raise ValueError("--tables 4 with --solvers report runs nothing: table 4 is the modern solvers' (give "
                         "--solvers all or solver names, or other --tables)")
    if solvers and "tv" not in solvers:
        solvers.append("tv")  # the classical baseline is always in table 4
    steps = args.steps or (20 if quick else 1000)
    budgets = args.budgets or ([20] if quick else [100, 1000])
    if n is not None and n < 1 or args.seeds < 1 or args.batch < 1 or steps < 1:
        raise ValueError("--limit, generated:N, --seeds, --batch and --steps must be at least 1")
    return Plan(out=Path(args.out), data=data, n=n, solvers_n=args.solvers_limit, first=args.first, last=args.last,
                seeds=args.seeds, steps=steps,
                budgets=budgets, solvers=solvers, tables=tables, batch=args.batch, sigma_y=args.sigma_y,
                model=args.model,
                config=args.config, device=args.device, dtype=args.dtype, quick=quick, progress=not args.no_progress,
                samples=8 if quick else 16, generate=("ddim", 100) if quick else ("ddpm", steps),
                command=canonical_command(args))


def canonical_command(args: argparse.Namespace) -> str:
    """The command line that repeats this run, every option spelled out."""
    words = ["diffprior", "reproduce", "--out", args.out, "--data", args.data]
    for flag, value in (("--limit", args.n), ("--solvers-limit", args.solvers_limit), ("--first", args.first),
                        ("--last", args.last), ("--seeds", args.seeds),
                        ("--steps", args.steps), ("--budgets", args.budgets and ",".join(map(str, args.budgets))),
                        ("--solvers", args.solvers), ("--tables", args.tables and ",".join(map(str, args.tables))),
                        ("--batch", args.batch), ("--sigma-y", args.sigma_y), ("--model", args.model),
                        ("--config", args.config), ("--device", args.device), ("--dtype", args.dtype)):
        if value is not None:
            words += [flag, str(value)]
    return shlex.join(words + ["--quick"] * args.quick)


def stage(plan: Plan, text: str) -> None:
    print(f"[{time.perf_counter() - plan.started:7.1f} s] {text}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------------
def generate_images(prior: Prior, plan: Plan) -> Path:
    """N clean images drawn from the prior into OUT/generated/ (chunks of --batch, each seeded by its index);
    images already there are kept, so an interrupted generation continues."""
    sampler, steps = plan.generate
    record = {"model": plan.model, "config": plan.config, "n": plan.n, "sampler": sampler, "steps": steps,
              "batch": plan.batch}
    sample_folder(prior, plan.out / "generated", record, plan.n, batch=plan.batch, seed=("generate",),
                  progress=plan.progress, steps=steps, sampler=sampler)
    return plan.out / "generated"


def data_folder(prior: Prior, plan: Plan, device: torch.device) -> tuple[Path, list[Path]]:
    """The image folder the experiments read, and the images they use (as `diffprior eval` selects them)."""
    folder = generate_images(prior, plan) if plan.data == "generated" else Path(plan.data)
    images, skipped = readable(select_images(folder, first=plan.first, last=plan.last), plan.n)
    for p, reason in skipped:
        print(f"skipping {p.name}: {reason}", file=sys.stderr)
    if not images:
        raise ValueError(f"no readable image selected in {folder}")
    return folder, images


# -- table 1 and figures 1, 2 ------------------------------------------------------------------------------
def denoise_batch(prior: Prior, x: Tensor, names: list[str], t: int, seed: int) -> tuple[dict, list[dict]]:
    """Noise a batch to t and take the Tweedie estimate: the images ("noisy" = x_t / sqrt(abar_t),
    "tweedie") and one row per image and method, in `diffprior eval`'s columns."""
    gen = torch.Generator(x.device).manual_seed(derive_seed("denoise", seed, t, names))
    start = time.perf_counter()
    x_t, x0 = denoise(prior, x, t, generator=gen)
    seconds = (time.perf_counter() - start) / len(names)
    images = {"noisy": x_t / prior.schedule.abar_at(t) ** 0.5, "tweedie": x0}
    rows = []
    for method, img in images.items():
        scores = {k: v.tolist() for k, v in image_metrics(img.float(), x).items()}
        rows += [{"image": name, "task": "single-step", "method": method, "settings": compact({"t": t}),
                  "seed": str(seed), **{k: _num(scores[k][i]) for k in ("psnr", "ssim", "lpips")}, "residual": "",
                  "seconds": f"{seconds if method == 'tweedie' else 0.0:.4f}", "nfe": str(int(method == "tweedie"))}
                 for i, name in enumerate(names)]
    return images, rows


def _num(v: float) -> str:
    return "" if math.isnan(v) else f"{v:.6f}"


def table1_rows(prior: Prior, plan: Plan, folder: Path, images: list[Path], device: torch.device) -> dict:
    """Table 1's rows in OUT/denoising/rows.csv (resumable, as `diffprior eval`'s), and their summary."""
    out, size = plan.out / "denoising", prior.shape[-1]
    out.mkdir(parents=True, exist_ok=True)
    identity = {"model": plan.model, "config": plan.config, "dtype": prior.precision, "size": size, "steps": None,
                "sigma_y": None, "batch": plan.batch, "data": str(folder.resolve())}
    check_run(out / "run.json", identity, {"command": plan.command, "device": str(device)}, write=True)
    chunks = [images[i:i + plan.batch] for i in range(0, len(images), plan.batch)]
    units = [(c, t, s) for c in range(len(chunks)) for t in DENOISE_TS for s in range(plan.seeds)]

    def keys(c: int, t: int, s: int) -> list[tuple]:
        return [(p.name, "single-step", m, compact({"t": t}), str(s)) for m in ("noisy", "tweedie") for p in chunks[c]]
    order = [k for u in units for k in keys(*u)]
    done = {row_key(r) for f in row_files(out) for r in read_rows(f)}
    writer = RowWriter(out / "rows.csv")
    try:
        for c, t, s in units:
            if all(k in done for k in keys(c, t, s)):
                continue
            x = torch.cat([load_image(p, size, channels=plan.channels) for p in chunks[c]]).to(device)
            _, rows = denoise_batch(prior, x, [p.name for p in chunks[c]], t, s)
            writer.write([r for r in rows if row_key(r) not in done])
    finally:
        writer.close()
    summary = summarize(merge_rows(out, order), {**identity, "seeds": plan.seeds, "images": len(images)},
                        paired=False)  # t differs
    write_summary(out, summary)
    return summary


def figure1(prior: Prior, plan: Plan, images: list[Path], device: torch.device) -> Path:
    """Rows: the first images; columns: clean, then per t the noisy x_t / sqrt(abar_t) and its Tweedie estimate
    (the first batch with seed 0, so the same noise as its rows)."""
    size = prior.shape[-1]
    chunk = images[:plan.batch]
    x = torch.cat([load_image(p, size, channels=plan.channels) for p in chunk]).to(device)
    shown = min(4, len(chunk))
    rows = [[x[i]] for i in range(shown)]
    captions = [[""] for _ in range(shown)]
    for t in DENOISE_TS:
        imgs, scores = denoise_batch(prior, x, [p.name for p in chunk], t, 0)
        for method in ("noisy", "tweedie"):
            mine = [r for r in scores if r["method"] == method]
            for i in range(shown):
                rows[i].append(imgs[method][i])
                captions[i].append(_caption(mine[i]))
    titles = ["clean"] + [f"{name}, t = {t}" for t in DENOISE_TS for name in ("x_t / sqrt(abar)", "Tweedie")]
    return image_table(rows, plan.out / "fig1_denoising.png", col_titles=titles, captions=captions,
                       row_titles=[p.stem for p in chunk[:shown]],
                       title="Fig. 1: single-step denoising (PSNR dB / LPIPS)")


def _caption(row: dict | None) -> str:
    if row is None or not row.get("psnr"):
        return ""
    return f"{float(row['psnr']):.1f} dB" + (f" / {float(row['lpips']):.2f}" if row.get("lpips") else "")


def figure2(prior: Prior, plan: Plan, device: torch.device) -> Path:
    """A grid of unconditional ancestral samples (kept when an earlier run drew the same)."""
    path, record = plan.out / "fig2_samples.png", plan.out / "fig2_samples.json"
    state = {"model": plan.model, "config": plan.config, "n": plan.samples, "sampler": "ddpm", "steps": plan.steps}
    if path.is_file() and record.is_file() and json.loads(record.read_text()) == state:
        return path
    gen = torch.Generator(device).manual_seed(derive_seed("samples"))
    x = sample(prior, plan.samples, steps=plan.steps, generator=gen, progress=plan.progress)
    image_table([list(x[i:i + 8]) for i in range(0, len(x), 8)], path, cell=1.2,
                title=f"Fig. 2: unconditional samples, {plan.steps} ancestral DDPM steps")
    write_text(record, json.dumps(state) + "\n")
    return path


# -- tables 2-4: `diffprior eval` runs ----------------------------------------------------------------------
def sdedit_cell(prior: Prior, plan: Plan, t0: int) -> dict:
    """SDEdit from t0 with its share of the --steps chain (all t0 + 1 steps at --steps T)."""
    return {"t0": t0, "steps": max(1, min(t0 + 1, round(plan.steps * (t0 + 1) / prior.schedule.T)))}


def budget_settings(method: str, nfe: int, T: int = 1000) -> dict:
    """Settings that make `method` spend about `nfe` network evaluations (at most that, where its structure
    does not allow it exactly) on a prior of T timesteps: what its module declares (`SolverSpec.budget`)."""
    return SPECS[method].budget(nfe, T)


def cell_settings(plan: Plan, method: str, task: str, settings: dict) -> str:
    """The settings of a cell as `diffprior eval` records them (the task's and the prior's tuned values merged in)."""
    return "{}" if method == NAIVE else compact(settings_for(method, task, plan.tuned, **settings))


def run_eval(plan: Plan, name: str, folder: Path, tasks: list[str], grid: dict[str, list[dict]],
             n: int | None = None) -> list[dict]:
    """One `diffprior eval` run into OUT/name (resumable) on the first n images (default all); its cells."""
    limits = [v for v in (plan.n, n) if v is not None]
    n = min(limits) if limits else None
    summary = evaluate(folder, plan.out / name, tasks=tasks, methods=list(grid), grid=grid, n=n,
                       first=plan.first, last=plan.last, seeds=plan.seeds, steps=None, batch=plan.batch,
                       model=plan.model, config=plan.config, device=plan.device, dtype=plan.dtype,
                       sigma_y=plan.sigma_y, save=FIGURE_IMAGES, progress=plan.progress,
                       summary_files=name != "solvers")  # table 4's groups: one summary over all, by table4_cells
    plan.failed += [f"{name}: {cell}" for cell in failed_cells(summary)]
    return summary["cells"]


def table4_cells(plan: Plan, folder: Path, size: int) -> tuple[list[dict], list[dict], dict]:
    """Every applicable solver x task at each budget: one `diffprior eval` run per group of tasks that share
    their solvers, all in OUT/solvers. Returns the cells, the skipped (task, method, reason) and the budget of
    each (task, method, settings)."""
    skipped, groups, budget_of = [], {}, {}
    for task in SOLVER_TASKS:
        methods = []
        for m in plan.solvers:
            reason = why_not(m, task, size, plan.sigma_y)
            if reason:
                skipped.append({"task": task, "method": m, "reason": reason})
            else:
                methods.append(m)
                for b in plan.budgets * (m != "tv"):  # TV has no network: no budget
                    budget_of.setdefault((task, m, cell_settings(plan, m, task, budget_settings(m, b, plan.T))), b)
        groups.setdefault(tuple(methods), []).append(task)
    cells = []
    for methods, tasks in groups.items():
        grid = {m: list({compact(s): s for s in (budget_settings(m, b, plan.T) for b in plan.budgets)}.values())
                for m in methods}
        cells += run_eval(plan, "solvers", folder, tasks, grid, plan.solvers_n)
    order = {t: i for i, t in enumerate(SOLVER_TASKS)}
    cells.sort(key=lambda c: order[c["task"]])
    summary = {"run": {"model": plan.model, "images": cells[0]["images"] if cells else 0, "seeds": plan.seeds,
                       "steps": None, "sigma_y": plan.sigma_y, "batch": plan.batch, "size": size, "data": str(folder)},
               "ci": "mean +- 95% Student-t interval over images; seeds averaged per image", "cells": cells}
    write_summary(plan.out / "solvers", summary)  # one summary over every group
    return cells, skipped, budget_of


# -- tables as Markdown and JSON ---------------------------------------------------------------------------
def stat(cell: dict | None, metric: str, ci: bool = True) -> str:
    """'mean ± ci' of a summary cell's metric ('-' when absent, 'diverged' when no row was scored)."""
    if cell is None or cell[metric]["mean"] is None:
        return "diverged" if cell is not None and diverged(cell) else "-"
    s, spec = cell[metric], FORMATS[metric]
    return format(s["mean"], spec) + (f" ± {s['ci95']:{spec}}" if ci and s["ci95"] is not None else "")


def _ref(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def ours(cell: dict) -> dict:
    values = {m: {k: cell[m][k] for k in ("mean", "ci95", "n")} for m in ("psnr", "ssim", "lpips", "seconds", "nfe")}
    if "psnr_vs_best" in cell:  # not in Table 1, whose rows differ in t
        values["psnr_vs_best"] = cell["psnr_vs_best"]
    if cell["psnr"]["seed_sd"] is not None:  # two or more seeds: how much they move the numbers
        values["psnr"] |= {k: cell["psnr"][k] for k in ("seed_means", "seed_sd")}
    return values


def find(cells: list[dict], task: str, method: str, settings: str | None = None) -> dict | None:
    for c in cells:
        if c["task"] == task and c["method"] == method and (settings is None or compact(c["settings"]) == settings):
            return c
    return None


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def write_table(plan: Plan, name: str, title: str, md: str, doc: dict) -> tuple[str, str]:
    """Write OUT/name.md and OUT/name.json; returns (title, the Markdown table)."""
    write_text(plan.out / f"{name}.md", f"# {title}\n\n{md}")
    doc = {"title": title, **doc}
    write_text(plan.out / f"{name}.json", json.dumps(doc, indent=2) + "\n")
    return title, md


def table1(plan: Plan, summary: dict) -> tuple[str, str]:
    rows, doc = [], []
    for t in DENOISE_TS:
        s = compact({"t": t})
        noisy, est = (find(summary["cells"], "single-step", m, s) for m in ("noisy", "tweedie"))
        psnr, lp = REPORT["table1"][t]
        rows.append([str(t), stat(noisy, "psnr"), stat(est, "psnr"), f"{psnr:.1f}", stat(est, "lpips"),
                     f"{lp:.2f}", stat(est, "ssim")])
        doc.append({"t": t, "noisy": ours(noisy), "ours": ours(est), "report": {"psnr": psnr, "lpips": lp}})
    md = markdown(["t", "noisy PSNR (ours)", "PSNR (ours)", "PSNR (report)", "LPIPS (ours)", "LPIPS (report)",
                   "SSIM (ours)"], rows)
    return write_table(plan, "table1_denoising", "Table 1: single-step denoising (Tweedie estimate)", md,
                       {"report_source": REPORT_SOURCE, "rows": doc})


def _baselines(task: str, cells: list[dict]) -> list[tuple[str, dict | None]]:
    return [("naive", find(cells, task, NAIVE)), ("TV", find(cells, task, "tv"))]


def table2(plan: Plan, prior: Prior, cells: list[dict]) -> tuple[str, str]:
    entries = []
    for task in REPORT_TASKS:
        sdedit = [cell_settings(plan, "sdedit", task, sdedit_cell(prior, plan, t0)) for t0 in SDEDIT_T0S]
        entries += [(task, label, cell, None) for label, cell in _baselines(task, cells)]
        entries += [(task, f"SDEdit t0 = {t0}", find(cells, task, "sdedit", settings), REPORT["table2"][task][t0])
                    for t0, settings in zip(SDEDIT_T0S, sdedit)]
    return _report_table(plan, "table2_sdedit", "Table 2: SDEdit from a rough guess (inpainting: the harmonic fill "
                         "of the hole), with the naive and TV baselines", entries)


def table3(plan: Plan, cells: list[dict]) -> tuple[str, str]:
    entries = []
    for task in REPORT_TASKS:
        entries += [(task, label, cell, None) for label, cell in _baselines(task, cells)]
        entries += [(task, label, find(cells, task, m, cell_settings(plan, m, task, {"steps": plan.steps})),
                     REPORT["table3"][m][task]) for label, m in (("ScoreALD", "scoreald"), ("DPS", "dps"))]
    return _report_table(plan, "table3_scoreald_dps", "Table 3: ScoreALD against DPS, with the naive and TV "
                         "baselines", entries)


def _report_table(plan: Plan, name: str, title: str,
                  entries: list[tuple[str, str, dict | None, tuple[float, float] | None]]) -> tuple[str, str]:
    """A restoration table beside the report: (task, label, our cell, the report's (PSNR, LPIPS) or None)."""
    rows, doc = [], []
    for task, label, cell, theirs in entries:
        psnr, lp = theirs or (None, None)
        rows.append([task, label, stat(cell, "psnr"), _ref(psnr, ".2f"), stat(cell, "lpips"), _ref(lp, ".2f"),
                     stat(cell, "ssim"), stat(cell, "nfe", False), stat(cell, "seconds", False)])
        doc.append({"task": task, "method": label, "settings": cell and cell["settings"],
                    "ours": cell and ours(cell), "report": theirs and {"psnr": psnr, "lpips": lp}})
    md = markdown(["task", "method", "PSNR (ours)", "PSNR (report)", "LPIPS (ours)", "LPIPS (report)", "SSIM (ours)",
                   "NFE", "s / image"], rows)
    return write_table(plan, name, title, md, {"report_source": REPORT_SOURCE, "rows": doc})


def table4(plan: Plan, cells: list[dict], skipped: list[dict], budget_of: dict) -> tuple[str, str]:
    rows, doc = [], []
    for task in SOLVER_TASKS:
        mine = [c for c in cells if c["task"] == task]
        mine.sort(key=lambda c: (c["method"] != NAIVE, c["method"] != "tv",
                                 budget_of.get((task, c["method"], compact(c["settings"])), 0), c["method"]))
        for c in mine:
            m, budget = c["method"], budget_of.get((task, c["method"], compact(c["settings"])))
            backprop = m in SPECS and SPECS[m].backprop  # naive: no solver
            pub = PUBLISHED.get((m, task))
            closest = pub and budget == min(plan.budgets, key=lambda b: abs(math.log(b / pub[2])))
            rows.append([task, m + " †" * backprop, "-" if budget is None else str(budget),
                         stat(c, "nfe", False), stat(c, "psnr"), paired_text(c.get("psnr_vs_best")),
                         stat(c, "ssim"), stat(c, "lpips"),
                         stat(c, "seconds", False), f"{pub[0]:.2f} / {pub[1]:.3f} ({pub[2]} NFE)" if closest else ""])
            doc.append({"task": task, "method": m, "budget": budget, "settings": c["settings"], "ours": ours(c),
                        "backprop": backprop, "published": closest and dict(zip(("psnr", "lpips", "nfe"), pub))})
        for s in (s for s in skipped if s["task"] == task):
            rows.append([task, s["method"], "-", "-", f"skipped: {s['reason']}", "", "", "", "", ""])
            doc.append({**s, "skipped": True})
    md = markdown(["task", "method", "budget", "NFE", "PSNR", "PSNR - best (paired)", "SSIM", "LPIPS", "s / image",
                   "published, other setup (context)"], rows)
    dagger = "† also backpropagates through the network at every step. " * any(d.get("backprop") for d in doc)
    md += (f"\n{dagger}NFE: network evaluations per image, counted. PSNR - best: the PSNR minus that of the "
           "task's best row, image by image, with the 95% interval of the difference (an interval that reaches 0 "
           f"does not rank the two). Published: {PUBLISHED_SOURCE}; PSNR / LPIPS, beside our budget closest to theirs.\n")
    return write_table(plan, "table4_solvers", "Table 4: the modern solvers at equal network-evaluation budgets",
                       md, {"published_source": PUBLISHED_SOURCE, "budgets": plan.budgets, "rows": doc})


# -- restoration figures from the images `evaluate(save=...)` kept ------------------------------------------
def restoration_figure(plan: Plan, name: str, size: int, images: list[Path], tasks: list[str],
                       columns: list[tuple[str, str, dict | None]], path: Path, title: str) -> Path:
    """Rows: task x the first images (seed 0); columns: truth, measurement, then (title, method, settings)
    cells read from OUT/name/images, each captioned with its PSNR / LPIPS from the rows."""
    out = plan.out / name
    rows_by_key = {row_key(r): r for f in row_files(out) for r in read_rows(f)}
    shown = images[:FIGURE_IMAGES]
    runner = Runner(None, [[p] for p in shown], size, plan.sigma_y, torch.device("cpu"), channels=plan.channels)
    rows, captions, row_titles = [], [], []
    for task in tasks:
        for i, p in enumerate(shown):
            row = [runner.clean(i), displayable(runner.measurement(i, task, 0), (size, size))]
            caps = ["", ""]
            for _, method, settings in columns:
                if settings is None:  # not run for this task (e.g. a solver that does not apply)
                    row.append(None), caps.append("")
                    continue
                key = cell_settings(plan, method, task, settings)
                file = saved_image(out, task, method, key, 0, p.name)
                row.append(load_image(file) if file.is_file() else None)
                caps.append(_caption(rows_by_key.get((p.name, task, method, key, "0"))))
            rows.append(row), captions.append(caps), row_titles.append(f"{task}\n{p.stem}")
    return image_table(rows, path, col_titles=["truth", "measurement", *(c[0] for c in columns)], captions=captions,
                       row_titles=row_titles, title=title)


def figure5(plan: Plan, size: int, images: list[Path], skipped: list[dict]) -> Path:
    """Every task x the first image, every solver at the largest budget (empty where it does not apply)."""
    b = max(plan.budgets)
    cols = [("naive", NAIVE, {}), ("TV", "tv", {})] + [(f"{m} ({b})", m, budget_settings(m, b, plan.T))
                                                      for m in plan.solvers if m != "tv"]
    out, rows, captions = plan.out / "solvers", [], []
    rows_by_key = {row_key(r): r for f in row_files(out) for r in read_rows(f)}
    runner = Runner(None, [images[:1]], size, plan.sigma_y, torch.device("cpu"), channels=plan.channels)
    p = images[0]
    for task in SOLVER_TASKS:
        row, caps = [runner.clean(0), displayable(runner.measurement(0, task, 0), (size, size))], ["", ""]
        for _, m, settings in cols:
            applies = m == NAIVE or not any(s["task"] == task and s["method"] == m for s in skipped)
            key = cell_settings(plan, m, task, settings)
            file = saved_image(out, task, m, key, 0, p.name)
            row.append(load_image(file) if applies and file.is_file() else None)
            caps.append(_caption(rows_by_key.get((p.name, task, m, key, "0"))) if applies else "n/a")
        rows.append(row), captions.append(caps)
    return image_table(rows, plan.out / "fig5_solvers.png", col_titles=["truth", "measurement", *(c[0] for c in cols)],
                       captions=captions, row_titles=list(SOLVER_TASKS),
                       title=f"Fig. 5: the modern solvers at {b} NFE on {p.stem} (PSNR dB / LPIPS)")


# -- REPORT.md -------------------------------------------------------------------------------------------------
def source_version() -> str:
    """The git commit of the package's checkout (marked when it has local changes), else the package version."""
    here = str(Path(__file__).resolve().parent)
    try:
        head = subprocess.run(["git", "-C", here, "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=10).stdout.strip()
        return f"{head}{' (with local changes)' if dirty else ''}, diffprior {__version__}"
    except (OSError, subprocess.SubprocessError):
        return f"diffprior {__version__} (not a git checkout)"


def differences(plan: Plan, prior: Prior, size: int) -> list[str]:
    kind = ("an analytic Gaussian mixture with an exact denoiser (a stand-in, not a face model)"
            if isinstance(prior, GaussianMixturePrior) else "a trained network")
    return [
        f"Prior: the report's is a DDPM trained on FFHQ at 256x256; ours is `{plan.model}`, {kind}, at "
        f"{size}x{size}. Numbers are comparable in kind, not in value, unless the prior and the data match.",
        "Data: the report scores its own face images (Table 1 on one sample); here every number is a mean with a "
        "95% interval over the images (seeds averaged per image).",
        f"Operators follow the DPS reference configurations scaled to {size}x{size}: a box hole of half the side, "
        "70% of the pixels dropped for random inpainting, a Gaussian blur of std 3 px and a 61 px kernel at 256 "
        f"(scaled by {size}/256), measurement noise sigma_y = {plan.sigma_y} on [-1, 1] images.",
        f"Steps: {plan.steps} (the report: 1000). LPIPS uses AlexNet features (the report does not say which "
        "network it used; DPS used VGG).",
    ]


def write_report(plan: Plan, prior: Prior, size: int, device: torch.device, folder: Path, images: list[Path],
                 sections: list[tuple[str, str, str]]) -> Path:
    if plan.data == "generated":
        sampler, steps = plan.generate
        how = "ancestral DDPM" if sampler == "ddpm" else sampler.upper()
        data = f"{len(images)} images drawn from the prior ({steps}-step {how} sampling, seeded), in `generated/`"
    else:
        data = (f"{len(images)} images from `{folder}` ({images[0].name} .. {images[-1].name}), centre-cropped and "
                f"resized to {size}x{size}")
    facts = [("date", datetime.now().astimezone().isoformat(timespec="seconds")), ("command", f"`{plan.command}`"),
             ("model", f"`{plan.model}`" + (f" (config `{plan.config}`)" if plan.config else "") + f", {size}x{size}"),
             ("code", source_version()), ("device", describe_device(device)), ("data", data),
             ("seeds", f"{plan.seeds} per image (0 .. {plan.seeds - 1})"),
             ("steps", f"{plan.steps} (Fig. 2, ScoreALD, DPS; SDEdit from t0 its share of the chain)"),
             ("NFE budgets (table 4)", ", ".join(map(str, plan.budgets)) if plan.solvers else "table 4 not run"),
             ("measurement noise", f"sigma_y = {plan.sigma_y} on [-1, 1] images"),
             ("time", f"{time.perf_counter() - plan.started:.0f} s for this invocation (a resumed run counts only "
                      "the work it did)")]
    lines = ["# Reproducing the report's experiments" + (" (--quick)" if plan.quick else ""), ""]
    lines += [f"- **{k}**: {v}" for k, v in facts]
    lines += ["", "## What differs from the report", ""] + [f"- {d}" for d in differences(plan, prior, size)]
    lines += ["", f"Report numbers: {REPORT_SOURCE}. Ours: mean ± 95% Student-t interval over images.", ""]
    for heading, table, figure in sections:
        lines += [f"## {heading}", ""] + ([table.strip(), ""] if table else [])
        lines += [f"![{heading}]({figure})", ""]
    lines += ["## Files", "",
              "Each table as `tableN_*.md` and `.json`; per-image rows in `denoising/`, `sdedit/`, `scoreald_dps/` and "
              "`solvers/` (`rows.csv`, `summary.md`, `run.json`, kept restorations under `images/`); rerunning the "
              "command resumes from them.", ""]
    path, text = plan.out / "REPORT.md", "\n".join(lines)
    # A rerun that found everything done keeps the report of the run that did the work (its date and time).
    lasting = lambda report: [line for line in report.splitlines() if not line.startswith(("- **date**", "- **time**"))]
    if path.is_file() and lasting(path.read_text()) == lasting(text):
        return path
    return write_text(path, text)


# -- the run ---------------------------------------------------------------------------------------------------
def reproduce(plan: Plan) -> Path:
    """Run every experiment (skipping work already on disk) and write OUT/REPORT.md; returns its path."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError("reproduce runs in one process; shard a table with `torchrun ... -m diffprior eval` instead")
    output_folder(plan.out, "reproduce")
    device = pick_device(plan.device)
    plan.device = str(device)
    prior = load_prior(plan.model, device, config=plan.config, dtype=plan.dtype)
    size, plan.T, plan.tuned = image_side(prior, "reproduce"), prior.schedule.T, tuned_settings(prior)
    plan.channels = prior.shape[0]
    if plan.steps > plan.T:
        raise ValueError(f"--steps {plan.steps}: at most the prior's T = {plan.T} diffusion steps")
    for m, b in ((m, b) for m in plan.solvers if m != "tv" for b in plan.budgets):
        spent = SPECS[m].evaluations(prior.schedule, **budget_settings(m, b, plan.T))
        if spent > b:  # table 4 compares solvers at equal budgets
            raise ValueError(f"--budgets {b}: {m} spends at least {spent} network evaluations; give budgets of at "
                             f"least {spent}, or leave {m} out of --solvers")
    picked = None if plan.data == "generated" else data_folder(prior, plan, device)  # before anything is written
    plan.out.mkdir(parents=True, exist_ok=True)
    stage(plan, f"data: {plan.data if plan.data != 'generated' else f'{plan.n} images from the prior'}")
    folder, images = picked or data_folder(prior, plan, device)
    if plan.data == "generated":
        plan.n = len(images)
    sections = []

    if 1 in plan.tables:
        stage(plan, "Table 1 / Fig. 1: single-step denoising")
        summary = table1_rows(prior, plan, folder, images, device)
        sections.append((*table1(plan, summary), figure1(prior, plan, images, device).name))
        stage(plan, f"Fig. 2: {plan.samples} unconditional samples, {plan.steps} ancestral steps")
        sections.append((f"Fig. 2: unconditional samples ({plan.steps} ancestral DDPM steps)", "",
                         figure2(prior, plan, device).name))

    if 2 in plan.tables:
        stage(plan, "Table 2 / Fig. 3: SDEdit")
        grid = {"sdedit": [sdedit_cell(prior, plan, t0) for t0 in SDEDIT_T0S], "tv": [{}]}
        cells = run_eval(plan, "sdedit", folder, list(REPORT_TASKS), grid)
        fig = restoration_figure(plan, "sdedit", size, images, list(REPORT_TASKS),
                                 [("naive", NAIVE, {}), ("TV", "tv", {})]
                                 + [(f"SDEdit t0={t0}", "sdedit", g) for t0, g in zip(SDEDIT_T0S, grid["sdedit"])],
                                 plan.out / "fig3_sdedit.png", "Fig. 3: SDEdit (PSNR dB / LPIPS)")
        sections.append((*table2(plan, prior, cells), fig.name))

    if 3 in plan.tables:
        stage(plan, "Table 3 / Fig. 4: ScoreALD vs DPS")
        grid = {"scoreald": [{"steps": plan.steps}], "dps": [{"steps": plan.steps}], "tv": [{}]}
        cells = run_eval(plan, "scoreald_dps", folder, list(REPORT_TASKS), grid)
        fig = restoration_figure(plan, "scoreald_dps", size, images, list(REPORT_TASKS),
                                 [("naive", NAIVE, {}), ("TV", "tv", {}),
                                  ("ScoreALD", "scoreald", {"steps": plan.steps}), ("DPS", "dps", {"steps": plan.steps})],
                                 plan.out / "fig4_scoreald_dps.png", "Fig. 4: ScoreALD vs DPS (PSNR dB / LPIPS)")
        sections.append((*table3(plan, cells), fig.name))

    if plan.solvers:
        stage(plan, f"Table 4 / Fig. 5: {', '.join(plan.solvers)} at {', '.join(map(str, plan.budgets))} NFE")
        cells, skipped, budget_of = table4_cells(plan, folder, size)
        sections.append((*table4(plan, cells, skipped, budget_of), figure5(plan, size, images, skipped).name))
    path = write_report(plan, prior, size, device, folder, images, sections)
    stage(plan, f"wrote {path}")
    return path


PARSER = dict(help="the report's experiments end to end: tables, figures and REPORT.md",
              description="\n\n".join(__doc__.split("\n\n")[:2]), epilog="\n\n".join(__doc__.split("\n\n")[2:]),
              formatter_class=argparse.RawDescriptionHelpFormatter)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=arguments.output_name,
                   help="the run's folder: REPORT.md, tables, figures, one folder per experiment")
    p.add_argument("--data", default="generated",
                   help="a folder of images, or generated:N for N images drawn from the prior (default: generated, "
                        "16 images, 4 with --quick)")
    add_range_arguments(p, "only the first N readable images of the folder")
    p.add_argument("--steps", type=arguments.positive, default=None, help="diffusion steps (default 1000; 20 with --quick)")
    p.add_argument("--budgets", type=arguments.integers(1), default=None, help="NFE budgets of table 4, comma-separated (default 100,1000; 20 "
                   "with --quick)")
    p.add_argument("--solvers", default=None, help="table 4's solvers: all, report (no table 4) or a comma-separated "
                   f"list (default all; {','.join(QUICK_SOLVERS)} with --quick)")
    p.add_argument("--tables", type=arguments.integers(1), default=None,
                   help="which tables run, comma-separated: 1 (with Figs. 1 and 2), 2, 3, 4 (default all)")
    p.add_argument("--solvers-limit", type=arguments.positive, default=None, metavar="N",
                   help="table 4 on the first N images only (default: all of them)")
    p.add_argument("--batch", type=arguments.positive, default=8, help="images per network call (default 8)")
    p.add_argument("--sigma-y", type=arguments.noise_std, default=0.05, help="measurement noise std on [-1, 1] images (0.05)")
    add_prior_arguments(p)
    p.add_argument("--quick", action="store_true", help="a reduced run for CPUs and tests (2-3 minutes on 2 CPU cores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    plan = make_plan(args)
    with folder_lock(plan.out, "a reproduce run"):
        reproduce(plan)
    if plan.failed:
        print(f"error: the report was written, but every row of {len(plan.failed)} cell(s) is empty (the solver "
              "diverged on each batch): " + "; ".join(plan.failed), file=sys.stderr)
        return 1
    return 0
