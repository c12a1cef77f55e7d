"""`diffprior demo`: sample a clean image, degrade it with each task, restore it with each method; a figure,
and the table as Markdown and JSON."""

from __future__ import annotations

import argparse
import json
import sys
import time
from functools import partial

import torch
from tqdm.auto import tqdm

from .. import arguments
from ..devices import pick_device, side_by_side
from ..io import all_or_none, output_folder, write_text
from ..models import load_prior
from ..operators import measure
from ..solvers import SOLVERS, DivergenceError, sample, settings_for, tuned_settings, solve
from ..tasks import TASKS, make_operator
from .common import (CPU_STEPS, add_model_arguments, check_grey_task, check_steps, cpu_sample_steps, cpu_steps,
                     derive_seed, fmt, generator, image_side, model_input, quality)

# what a reader of the table should know about the two baselines of the report that trail it
NOTES = {
    "sdedit": "SDEdit uses y only at its start (a rough guess from y noised to t0) and then generates freely: "
              "the larger t0 (the model may set it per task), the more realistic and the less like the measured face.",
    "scoreald": "ScoreALD (annealed Langevin) needs about 1000 noise levels; with {steps} it keeps visible noise "
                "(`--steps 1000` removes it, at 10x the time).",
}

PARSER = dict(help="sample a clean image, degrade it with each task, restore it with each method")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="diffprior-demo", type=arguments.output_name,
                   help="the folder for demo.png, demo.md and demo.json (diffprior-demo)")
    p.add_argument("--tasks", default="box-inpaint,random-inpaint,gaussian-blur,sr4",
                   help="comma-separated (box-inpaint,random-inpaint,gaussian-blur,sr4)")
    p.add_argument("--methods", default="sdedit,scoreald,dps,diffpir",
                   help="comma-separated (sdedit,scoreald,dps,diffpir: the modern solver with the best PSNR on "
                   "faces64 in Table 4 of docs/RESULTS.md)")
    p.add_argument("--steps", type=arguments.positive, default=None,
                   help="solver steps (default: each solver's own, see docs/SOLVERS.md; on a CPU, 100 where a "
                        "solver's own run takes more than 100 network evaluations)")
    p.add_argument("--sigma-y", type=arguments.noise_std, default=0.05,
                   help="measurement noise std on [-1, 1] images (0.05)")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    from ..figures import displayable, image_table
    device = pick_device(args.device)
    tasks, methods = arguments.names(args.tasks), arguments.names(args.methods)
    for given, known, what in ((tasks, TASKS, "--tasks"), (methods, SOLVERS, "--methods")):
        unknown = [v for v in given if v not in known]
        if unknown or not given:
            problem = f"unknown {', '.join(unknown)}" if unknown else "names none"
            raise ValueError(f"{what}: {problem}; choose from {', '.join(known)}")
    out = output_folder(args.out, "the demo")
    arguments.check_outputs([out / "demo.png", out / "demo.md", out / "demo.json"], inputs=[model_input(args.model)],
                  overwrite=args.overwrite, images=False)
    prior = load_prior(args.model, device, config=args.config, dtype=args.dtype)
    check_steps(prior, args.steps)
    from .evaluate import has_naive, unfit_pairs
    size = image_side(prior, "demo")
    for task in tasks:
        check_grey_task(prior, task)
    unfit = [f"{task} has no naive reconstruction to show (restore it with `diffprior restore`)"
             for task in tasks if not has_naive(task, size)] + unfit_pairs(tasks, methods, size, args.sigma_y)
    if unfit:  # before the draw and the first runs, not after them
        raise ValueError("drop from --tasks or --methods what does not apply: " + "; ".join(unfit))
    plan, capped = {}, []  # (task, method) -> the run's settings; the methods whose steps a CPU cut
    for task in tasks:
        for method in methods:
            own = settings_for(method, task, tuned_settings(prior), steps=args.steps)
            steps = cpu_steps(device, args.steps, prior, method, own, note=False)
            plan[task, method] = own if steps is None else {**own, "steps": steps}
            if steps != args.steps and method not in capped:
                capped.append(method)
    if capped:
        print(f"note: {', '.join(capped)} run {CPU_STEPS} steps on the CPU, where their own runs would take minutes "
              "(--steps sets the count)", file=sys.stderr)
    # Every random draw has its own generator, seeded by what it is for (the image; each task's measurement;
    # each method on each task), so a result does not depend on which other tasks and methods ran before it.
    if hasattr(prior, "sample") and not prior.bounded:  # an analytic prior draws exactly
        x = prior.sample(1, torch.Generator().manual_seed(args.seed)).float().to(device)
    else:
        # ancestral steps (few-step DDIM draws of faces64 are poorer), as many as `sample` takes: all T on a GPU,
        # 100 on a CPU, where they drew as many clear faces as 250 (docs/MODEL_CARD.md)
        draw_steps = cpu_sample_steps(device, None, prior, note=False) or prior.schedule.T
        print(f"drawing a clean image from {args.model} ({draw_steps} ancestral steps) ...", file=sys.stderr)
        x = sample(prior, 1, steps=draw_steps, generator=generator(device, args.seed), progress=True)
    measured = {}  # task -> (operator, y)
    for task in tasks:
        op = make_operator(task, prior.shape, seed=args.seed).to(device)
        measured[task] = op, measure(op, x, args.sigma_y, generator(device, derive_seed("measure", args.seed, task)))

    def restore(task: str, method: str):
        op, y = measured[task]
        start = time.perf_counter()
        try:
            restored = solve(method, prior, op, y, sigma_y=args.sigma_y, generator=generator(
                device, derive_seed("solve", args.seed, task, method)), progress=workers == 1, **plan[task, method])
        except DivergenceError as e:
            return None, time.perf_counter() - start, str(e)
        return restored, time.perf_counter() - start, None

    # The runs are independent: on a CPU, as many side by side as there are threads, one thread each
    cells = [(task, method) for task in tasks for method in methods]
    workers = min(torch.get_num_threads(), len(cells)) if device.type == "cpu" else 1

    def label(scores: dict) -> str:
        return f"{fmt(scores['psnr'], '.1f')} dB / {fmt(scores['lpips'], '.2f')}"
    results = {}  # (task, method) -> (image, table row, caption)
    with tqdm(total=len(cells), desc="restoring", unit="run", dynamic_ncols=True, leave=False) as bar:
        for i, (restored, seconds, failure) in side_by_side([partial(restore, *c) for c in cells], workers):
            task, method = cells[i]
            if failure:  # the other cells' results stay
                results[task, method] = (torch.zeros_like(x), {  # a grey square
                    "task": task, "method": method, "psnr": None, "ssim": None, "lpips": None,
                    "seconds": round(seconds, 2), "settings": plan[task, method], "failed": failure}, "diverged")
                bar.write(f"{task:15s} {method:9s} failed: {failure}", file=sys.stderr)
            else:
                scores = quality(restored, x)
                results[task, method] = (restored, {"task": task, "method": method, **scores, "seconds": round(
                    seconds, 2), "settings": plan[task, method]}, label(scores))
                bar.write(f"{task:15s} {method:9s} PSNR {fmt(scores['psnr'], '6.2f')}  SSIM {fmt(scores['ssim'], '.3f')}  "
                          f"LPIPS {fmt(scores['lpips'], '.3f')}  ({seconds:.1f} s)", file=sys.stderr)
            bar.update()
    rows, captions, table = [], [], []
    for task in tasks:
        op, y = measured[task]
        naive = op.naive(y)
        scores = quality(naive, x)
        done = [results[task, method] for method in methods]
        rows.append([x, displayable(y, (size, size)), naive, *(image for image, _, _ in done)])
        captions.append(["", "", label(scores), *(caption for _, _, caption in done)])
        table += [{"task": task, "method": "naive", **scores, "seconds": 0.0}, *(row for _, row, _ in done)]
    lines = ["| task | method | PSNR | SSIM | LPIPS | seconds |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['task']} | {r['method']} | {fmt(r['psnr'], '.2f')} | {fmt(r['ssim'], '.3f')} | {fmt(r['lpips'], '.3f')} | {r['seconds']} |"
              for r in table]
    failed = [f"{r['task']} / {r['method']} failed: {r['failed']}" for r in table if "failed" in r]
    if failed:
        lines += ["", *failed]
    levels = {m: plan[tasks[0], m].get("steps") or prior.schedule.T for m in methods}
    notes = [NOTES[m].format(steps=levels[m]) for m in methods
             if m in NOTES and not (m == "scoreald" and levels[m] >= prior.schedule.T)]
    if workers > 1:
        notes.append(f"seconds: each run's wall time, {workers} runs side by side on one CPU thread each.")
    if notes:
        lines += ["", *notes]
    steps = (f"{args.steps} steps" if args.steps else f"at most {CPU_STEPS} steps" if device.type == "cpu"
             else "each solver's own steps")
    settings = {"model": str(args.model), "steps": args.steps, "sigma_y": args.sigma_y, "seed": args.seed,
                "device": str(device), "side_by_side": workers, "command": "diffprior " + " ".join(sys.argv[1:])}
    doc = json.dumps({"settings": settings, "rows": table}, indent=2) + "\n"
    with all_or_none([out / "demo.png", out / "demo.md", out / "demo.json"]):  # interrupted: none of them
        figure = image_table(rows, out / "demo.png", col_titles=["truth", "measurement", "naive", *methods],
                             row_titles=tasks, captions=captions,
                             title=f"{args.model}: PSNR dB / LPIPS, {steps}, sigma_y = {args.sigma_y}")
        write_text(out / "demo.md", "\n".join(lines) + "\n")
        write_text(out / "demo.json", doc)
    print("\n".join(lines))
    print(f"wrote {figure}, {out / 'demo.md'} and {out / 'demo.json'}")
    if len(failed) == sum(r["method"] != "naive" for r in table):
        print("diffprior demo: error: every restoration failed (listed above)", file=sys.stderr)
        return 1
    return 0
