"""`diffprior sample`: unconditional samples from the prior, as one grid image (one sample: the image itself) or
as a folder of PNG files, drawn --batch at a time."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from .. import arguments
from ..devices import pick_device
from ..io import image_grid, output_folder, save_image
from ..models import load_prior
from .common import (CPU_STEPS, add_model_arguments, check_steps, cpu_sample_steps, model_input, sample_chunks,
                     sample_folder)

PARSER = dict(help="unconditional samples from the prior, as one grid image (one sample: the image itself) or a "
                   "folder of PNG files")
MAX_GRID = 1024  # samples in one grid image; more go to a folder


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--n", type=arguments.integer(1, 1_000_000), default=16,
                   help="how many samples (16; at most a million)")
    p.add_argument("--batch", type=arguments.positive, default=64,
                   help="samples drawn at a time (64): memory grows with it, not with --n")
    p.add_argument("--nrow", type=arguments.positive, default=8, help="samples per row of the grid (8)")
    p.add_argument("--steps", type=arguments.positive, default=None,
                   help=f"sampler steps (default: all T of the prior; on a CPU {CPU_STEPS}, where all 1000 take "
                        "minutes)")
    p.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm", help="ancestral (ddpm, the default) or ddim")
    p.add_argument("--eta", type=arguments.number(0.0, 1.0), default=None,
                   help="DDIM noise, 0 (deterministic, the default) to 1; ddim only")
    p.add_argument("--out", default="samples.png", type=arguments.output_name,
                   help="the grid image to write (samples.png), or a folder (one that exists, or a name ending in /) "
                        f"for one PNG per sample, sample_00000.png ...: a folder continues what an interrupted run "
                        f"left, and more than {MAX_GRID} samples need one")
    add_model_arguments(p)


def run(args: argparse.Namespace) -> int:
    if args.eta is not None and args.sampler != "ddim":
        raise ValueError("--eta is the DDIM sampler's: add --sampler ddim")
    to_folder = arguments.names_folder(args.out)
    if to_folder and args.overwrite:
        raise ValueError("--overwrite replaces a grid image; a folder of samples is continued, never overwritten: "
                         "choose another folder")
    if not to_folder and args.n > MAX_GRID:
        raise ValueError(f"a grid of {args.n} samples is too large to look at: give --out a folder (a name ending "
                         "in /) for one PNG per sample")
    device = pick_device(args.device)
    if to_folder:
        output_folder(args.out, "sample --out FOLDER/")
    else:
        arguments.check_outputs([args.out], inputs=[model_input(args.model)], overwrite=args.overwrite)
    prior = load_prior(args.model, device, config=args.config, dtype=args.dtype)
    check_steps(prior, args.steps)
    sampler = dict(steps=cpu_sample_steps(device, args.steps, prior), sampler=args.sampler, eta=args.eta or 0.0)
    seed = ("sample", args.seed)
    if to_folder:
        record = {"model": str(args.model), "config": args.config, "dtype": prior.precision, **sampler,
                  "seed": args.seed, "batch": args.batch}
        sample_folder(prior, Path(args.out), record, args.n, batch=args.batch, seed=seed, progress=True, **sampler)
        print(f"wrote {args.n} samples to {args.out} (sample_00000.png ...)")
        return 0
    x = torch.cat([x for _, x in sample_chunks(prior, args.n, batch=args.batch, seed=seed, progress=True, **sampler)])
    save_image(x if args.n == 1 else image_grid(x, nrow=args.nrow), args.out)  # one: no border
    print(f"wrote {args.n} samples to {args.out}")
    return 0
