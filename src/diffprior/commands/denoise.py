"""`diffprior denoise`: noise an image to timestep t, then the single-step (Tweedie) estimate."""

from __future__ import annotations

import argparse
import json
import sys


from .. import arguments
from ..devices import pick_device
from ..io import center_square, fit_note, open_image, pil_to_tensor, save_image
from ..models import load_prior
from ..solvers import denoise
from .common import add_model_arguments, fmt, generator, image_side, model_input, quality

PARSER = dict(help="single-step denoising: noise an image to timestep t, then the Tweedie estimate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    arguments.add_image_argument(p, "the clean image (centre-cropped and resized to the model's size)")
    p.add_argument("--t", type=arguments.count, default=300, help="the timestep, 0 to T - 1 (default 300)")
    p.add_argument("--out", type=arguments.image_output("denoised.png"), default="denoised.png",
                   help="the one-step estimate of the clean image (denoised.png; a folder: denoised.png in it)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    device = pick_device(args.device)
    arguments.check_outputs([args.out], inputs=[args.input, model_input(args.model)], overwrite=args.overwrite)
    photo = open_image(args.input)
    prior = load_prior(args.model, device, config=args.config, dtype=args.dtype)
    size, T = image_side(prior, "denoise"), prior.schedule.T
    if not 0 <= args.t < T:
        raise ValueError(f"--t {args.t}: a timestep in [0, {T - 1}] (the prior has T = {T})")
    x = pil_to_tensor(center_square(photo, size), prior.shape[0]).to(device)
    note = fit_note(str(args.input), photo.size, size)
    if note:
        print(f"note: {note}", file=sys.stderr)
    noisy, x0_hat = denoise(prior, x, args.t, generator=generator(device, args.seed))
    a = prior.schedule.abar_at(args.t)
    noisy_view = noisy / a ** 0.5  # x_t rescaled to the data's range for viewing and scoring
    save_image(x0_hat, args.out)
    report = {"t": args.t, "noisy": quality(noisy_view, x), "denoised": quality(x0_hat, x)}
    if args.json:
        print(json.dumps(report))
    else:
        for k in ("noisy", "denoised"):
            print(f"{k:9s} " + "  ".join(f"{m} {fmt(v)}" for m, v in report[k].items()))
        print(f"wrote {args.out}")
    return 0
