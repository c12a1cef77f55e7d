"""`diffprior restore`: degrade an image with a task's operator (or take an already degraded one), restore
it, and score the naive reconstruction and the restoration."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from PIL import Image

from .. import arguments
from ..devices import pick_device
from ..io import (all_or_none, center_square, check_fillable, fill_holes, fit_note, is_grey, load_mask,
                  lost_in_rgb8, masked_center_square, open_image, photo_mask, pil_to_tensor, save_image, square_box)
from ..models import load_prior
from ..nonlinear import measure_poisson, poisson_sigma_y
from ..operators import Colorize, Inpaint, measure
from ..solvers import SOLVERS, check_settings, settings_for, tuned_settings, solve
from ..tasks import TASKS, make_operator
from ..uncertainty import (MAX_SAMPLES, SAMPLE_BATCH, calibration, calibration_figure, check_samples, posterior_samples,
                           std_image)
from .common import (add_model_arguments, add_noise_arguments, check_grey_task, check_steps, check_task_options,
                     cpu_steps, fmt, generator, image_side, model_input, naive_or_none, parse_settings,
                     parse_task_options, quality, task_title)

PARSER = dict(help="degrade an image with a task's operator, then restore it",
              description="Degrade a clean image (or take an already degraded one with --measured) and restore it; "
                          "writes the result, a side-by-side figure, and the metrics of the naive reconstruction "
                          "and of the restoration.")


def add_arguments(p: argparse.ArgumentParser) -> None:
    arguments.add_image_argument(p, "the image (any size: centre-cropped and resized to the model's)")
    p.add_argument("--task", choices=[*TASKS, "inpaint"], help="the degradation (inpaint needs --mask)")
    p.add_argument("--method", choices=list(SOLVERS), default="dps", help="the solver (dps)")
    p.add_argument("--out", type=arguments.image_output("restored.png"), default="restored.png",
                   help="the restored image (restored.png; a folder: restored.png in it); the figure and, with "
                   "--samples, the std map and calibration figure are written beside it")
    p.add_argument("--steps", type=arguments.positive, default=None,
                   help="solver steps (default: the solver's own, 1000 for DPS, ScoreALD and RED-diff, fewer for "
                        "the others, see docs/SOLVERS.md; on a CPU, 100 where the solver's own run takes more than "
                        "100 network evaluations)")
    add_noise_arguments(p, "the measurement")
    p.add_argument("--mask", default=None, help="an inpainting mask image: white = known, black = missing; the "
                   "photo's size (cropped and resized with it) or the model's")
    p.add_argument("--crop", type=arguments.square, metavar="LEFT,TOP,SIDE", help="the square of the photo to "
                   "restore, in its pixels (default: its central square); a mask of the photo's size is cut with "
                   "it, and --full-size fills the holes in the whole photo")
    p.add_argument("--full-size", action="store_true", help="with --mask: write the photo at its own size with its "
                   "holes filled from the restoration (resized up from the model's size; every other pixel as it "
                   "was), instead of the model-size restoration")
    p.add_argument("--measured", action="store_true", help="the input is already the degraded measurement: for sr4 "
                   "the low-resolution image (the model's size / 4), for inpaint (--mask) and colorize a photo of "
                   "any size, for the other tasks (not phase-retrieval) an image of the model's size")
    p.add_argument("--samples", type=arguments.integer(1, MAX_SAMPLES), default=1, metavar="K",
                   help=f"draw K posterior samples (at most {MAX_SAMPLES}; {SAMPLE_BATCH} per solver call): write "
                        "their mean, a per-pixel std map and a calibration figure (error against predicted std)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other solver settings, e.g. scale=0.3")
    p.add_argument("--task-option", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="the degradation's own options, e.g. std=1.5 (gaussian-blur), size=16 or position=8,24 "
                        "(box-inpaint), fraction=0.9 (random-inpaint); the README's task table lists each task's")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    add_model_arguments(p)


# What `restore --measured` takes as its input: the low-resolution image for super-resolution; a photo of
# any size for a drawn mask or a grey photo (centre-cropped and resized like a clean input, the mask with
# it); the model's own size for every other task, whose operator (blur kernel, seeded mask, noise level) is
# defined at that resolution.
MEASURED_ANY_SIZE = ("inpaint", "colorize")


def measured_size(task: str, op, size: int) -> int | None:
    """The side a --measured input of `task` must have, or None for any size."""
    if task in MEASURED_ANY_SIZE:
        return None
    return size // op.factor if hasattr(op, "factor") else size


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    if args.mask is not None and args.task not in (None, "inpaint"):
        raise ValueError("--mask defines an inpainting task: leave out --task or use --task inpaint")
    task = "inpaint" if args.mask is not None else args.task
    if task is None:
        raise ValueError("say which degradation with --task (one of: " + ", ".join(TASKS) + ") or give --mask")
    if task == "inpaint" and args.mask is None:
        raise ValueError("--task inpaint needs --mask MASK.png (white = known pixels, black = holes)")
    if args.poisson is not None and args.measured:
        raise ValueError("--poisson draws photon noise on a clean input; a --measured input has its own noise: "
                         "give its level with --sigma-y")
    if args.full_size and task != "inpaint":
        raise ValueError("--full-size fills the holes of a --mask in the photo at its own size; other tasks restore "
                         "the model's size only")
    user_settings = parse_settings(args.set, args.method)
    out, inputs = Path(args.out), [args.input, args.mask, model_input(args.model)]
    arguments.check_outputs([out], inputs=inputs, overwrite=args.overwrite)  # before naming the files beside it
    beside = {name: out.with_name(f"{out.stem}_{name}.png") for name in ("figure", "std", "calibration")}
    outputs = {"restored": out, "figure": beside["figure"]}
    if args.samples > 1:
        check_samples(args.method, args.samples)
        outputs["std"] = beside["std"]
        if not args.measured:
            outputs["calibration"] = beside["calibration"]
    arguments.check_outputs([p for p in outputs.values() if p != out], inputs=inputs, overwrite=args.overwrite)
    # an earlier run's std map or calibration figure that this run does not write would sit beside the new
    # result as if it were this run's: --overwrite replaces the whole result, so those go once it is saved
    stale = [p for name, p in beside.items() if name not in outputs and p.is_file()] if args.overwrite else []
    whole = open_image(args.input)
    lost = lost_in_rgb8(args.input) if args.full_size else None
    if lost:  # the observed pixels are kept as the 8-bit RGB photo the model reads, not as the file holds them
        on_white = " (transparent pixels on white)" if "transparency" in lost else ""
        print(f"note: {args.input} has {lost}; the full-size result is 8-bit RGB{on_white}", file=sys.stderr)
    photo = whole if args.crop is None else whole.crop(square_box(whole.size, args.crop))  # what the model sees

    prior = load_prior(args.model, device, config=args.config, dtype=args.dtype)
    size, channels = image_side(prior, "restore"), prior.shape[0]
    check_grey_task(prior, task)
    if channels == 1 and not is_grey(photo):
        print(f"note: the prior models grey images: {args.input} is read as grey", file=sys.stderr)
    gen = generator(device, args.seed)
    # the mask at the whole photo's size, for what uses it: a damaged photo's measurement, the full-size result
    known = photo_mask(args.mask, whole.size, size, args.crop) if task == "inpaint" and (
        args.measured or args.full_size) else None
    if args.full_size:  # first: holes outside the square are the reason the square may have none
        check_fillable(known, args.crop)
    options = parse_task_options(args.task_option, [task])
    check_task_options(options, prior.shape)
    options = options.get(task, {})
    op = (Inpaint(load_mask(args.mask, (size, size), whole.size, args.crop)) if task == "inpaint"
          else make_operator(task, prior.shape, seed=args.seed, **options)).to(device)
    check_steps(prior, args.steps, args.method)
    settings = settings_for(args.method, task, tuned_settings(prior), steps=args.steps, **user_settings)
    check_settings(args.method, settings, prior.schedule.T)
    steps = cpu_steps(device, args.steps, prior, args.method, settings)
    settings = {**settings, "steps": steps} if steps is not None else settings

    input_name = str(args.input) + (" cropped" if args.crop else "")
    sigma_y = 0.05 if args.sigma_y is None else args.sigma_y
    x = None
    if args.measured:  # the input is already degraded: it is y
        side = measured_size(task, op, size)
        made = tuple(op.A(torch.zeros(1, *prior.shape, device=device)).shape)
        if side is not None and made[-2:] != (side, side):
            raise ValueError(f"--measured: a {task} measurement is no image (it has shape {made}), so it cannot "
                             "be given as one")
        if side is not None and photo.size != (side, side):
            raise ValueError(f"--measured --task {task} takes {'the low-resolution' if side != size else 'an'} "
                             f"image of {side}x{side} pixels for this {size}x{size} model; {input_name} is "
                             f"{photo.size[0]}x{photo.size[1]}")
        # a damaged photo's holes hold anything (a scratch, a stain): only its observed pixels make y
        square = (center_square(photo, side or size) if known is None
                  else masked_center_square(whole, known, size, args.crop))
        y = pil_to_tensor(square, channels).to(device)
        note = fit_note(input_name, photo.size, side or size)
        if isinstance(op, (Inpaint, Colorize)):
            y = op.A(y)  # the holes (or the colours) carry nothing
        if task == "colorize" and not is_grey(photo):
            print(f"note: {args.input} has colours; --measured colorize takes its grey version as the measurement "
                  "(without --measured the colours would be kept to score the result)", file=sys.stderr)
    else:
        x = pil_to_tensor(center_square(photo, size), channels).to(device)
        note = fit_note(input_name, photo.size, size)
        y = measure(op, x, sigma_y, gen) if args.poisson is None else measure_poisson(op, x, args.poisson, gen)
        if task == "colorize" and is_grey(photo):
            print(f"note: {args.input} is grey, so its colours are unknown and the scores compare the colourised "
                  "result with the grey photo; --measured takes it as the grey measurement it is", file=sys.stderr)
    if note:
        print(f"note: {note}", file=sys.stderr)
    if args.poisson is not None and args.sigma_y is None:  # the solvers assume Gaussian noise: this one's average
        sigma_y = poisson_sigma_y(y, args.poisson)
    naive = naive_or_none(op, y)
    start = time.perf_counter()
    std = None
    if args.samples > 1:  # K posterior samples: their mean is the restoration
        samples = posterior_samples(args.method, prior, op, y, args.samples, sigma_y=sigma_y, generator=gen,
                                    progress=not args.json, **settings)
        restored, std = samples.mean(0, keepdim=True), samples.std(0)
    else:
        restored = solve(args.method, prior, op, y, sigma_y=sigma_y, generator=gen, progress=not args.json,
                         **settings)
    seconds = time.perf_counter() - start

    from ..figures import displayable, image_table
    from ..metrics import residual
    report = {"input": str(args.input), "measured": args.measured, "task": task, "task_options": options,
              "method": args.method,
              "mask": args.mask and str(args.mask), "crop": args.crop and list(args.crop), "full_size": args.full_size,
              "model": str(args.model), "settings": settings,
              "sigma_y": sigma_y, "poisson_rate": args.poisson, "seed": args.seed, "seconds": round(seconds, 3),
              "written_size": list(whole.size) if args.full_size else [size, size]}  # W, H
    for name, img in (("naive", naive), ("restored", restored)):
        if img is not None:
            report[name] = quality(img, x) if x is not None else {}
            report[name]["residual"] = round(float(residual(op, img, y)[0]), 4)
    cal = None
    if std is not None:
        report["uncertainty"] = {"samples": args.samples, "mean_std": round(float(std.mean()), 4)}
        if x is not None:
            cal = calibration(restored[0], std, x[0])
            report["uncertainty"]["coverage90"] = round(cal["coverage90"], 4)

    def score(k: str) -> str:
        return f"{fmt(report[k].get('psnr'), '.2f')} dB" if x is not None and k in report else ""
    described = task_title(task, options) + (f", Poisson noise at {args.poisson:g} photons" if args.poisson else "")
    panels = [(x, "input", ""), (displayable(y, (size, size)), "measurement", ""), (naive, "naive", score("naive")),
              (restored, args.method + (" (mean)" if std is not None else ""), score("restored"))]
    panels = [p for p in panels if p[0] is not None]  # no input given (--measured), no naive reconstruction
    cols, titles, captions = (list(c) for c in zip(*panels))
    if std is not None:
        cols, titles, captions = cols + [std_image(std)], titles + ["posterior std"], captions + [
            f"mean {report['uncertainty']['mean_std']:.3f}"]

    with all_or_none(outputs.values()):  # an interrupted run leaves none of its files
        def at_size(img, photo):  # --full-size: into the photo's holes (the std map's known pixels: 0, black)
            return fill_holes(photo, img, known, args.crop) if args.full_size else img
        written = [save_image(at_size(restored, whole), out)]
        if std is not None:
            written.append(save_image(at_size(std_image(std), Image.new("RGB", whole.size)), outputs["std"]))
        if cal is not None:
            written.append(calibration_figure(cal, outputs["calibration"],
                                              title=f"{described} / {args.method}, {args.samples} samples"))
        written.append(image_table([cols], outputs["figure"], col_titles=titles, captions=[captions], cell=2.0))
    for p in stale:  # once the new result is complete (see `stale` above)
        p.unlink()
    if args.json:
        print(json.dumps({**report, "files": [str(p) for p in written]}))
    else:
        written_at = f", holes filled in the photo's {whole.size[0]}x{whole.size[1]}" if args.full_size else ""
        print(f"{described} / {args.method} on {args.input} ({size}x{size}{written_at}, {seconds:.1f} s)")
        for k in ("naive", "restored"):
            if k in report:
                print(f"  {k:9s} " + "  ".join(f"{m} {fmt(v)}" for m, v in report[k].items()))
        if std is not None:
            print("  posterior " + "  ".join(f"{m} {v}" for m, v in report["uncertainty"].items()))
        print("wrote " + ", ".join(str(p) for p in written))
    return 0
