"""`diffprior sample`: unconditional samples from the prior, as one grid image (one sample: the image itself)."""

from __future__ import annotations

import argparse

from .. import arguments
from ..devices import pick_device
from ..io import image_grid, save_image
from ..models import load_prior
from ..solvers import sample
from .common import CPU_STEPS, add_model_arguments, check_steps, cpu_sample_steps, generator, model_input

PARSER = dict(help="unconditional samples from the prior, as one grid image (one sample: the image itself)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=arguments.positive, default=16, help="how many samples (16)")
    p.add_argument("--nrow", type=arguments.positive, default=8, help="samples per row of the grid (8)")
    p.add_argument("--steps", type=arguments.positive, default=None,
                   help=f"sampler steps (default: all T of the prior; on a CPU {CPU_STEPS}, where all 1000 take "
                        "minutes)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="ancestral (ddpm, the default) or ddim")
    p.add_argument("--eta", type=arguments.number(0.0, 1.0), default=None,
                   help="DDIM noise, 0 (deterministic, the default) to 1; ddim only")
    p.add_argument("--out", default="samples.png", help="the image to write (samples.png)")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.eta is not None and args.sampler != "ddim":
        raise ValueError("--eta is the DDIM sampler's: add --sampler ddim")
    device = pick_device(args.device)
    arguments.check_outputs([args.out], inputs=[model_input(args.model)], overwrite=args.overwrite)
    prior = load_prior(args.model, device, config=args.config, dtype=args.dtype)
    check_steps(prior, args.steps)
    x = sample(prior, args.n, steps=cpu_sample_steps(device, args.steps, prior), sampler=args.sampler, eta=args.eta or 0.0,
               generator=generator(device, args.seed), progress=True)
    save_image(x if args.n == 1 else image_grid(x, nrow=args.nrow), args.out)  # one: no border
    print(f"wrote {args.n} samples to {args.out}")
    return 0
