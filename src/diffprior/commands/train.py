"""`diffprior train`: train the compact UNet on a folder of images (denoising score matching; see train.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import arguments, io
from ..networks.small import CONFIGS, network_config
from ..train import train

PARSER = dict(help="train the compact UNet on a folder of images (denoising score matching)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    a = parser.add_argument
    a("--data", required=True, help="folder of training images, or a pack file (see `diffprior pack`)")
    a("--out", required=True, type=arguments.output_name,
      help="output folder: state.pt, model.safetensors/.json, log.csv, samples/")
    a("--size", type=arguments.integer(8, 4096), default=64, help="square image size (default 64)")
    a("--config", default="default", choices=sorted(CONFIGS), help="network configuration (default: default)")
    a("--dropout", type=arguments.number(0.0, 0.99), help="override the configuration's dropout")
    a("--min-snr", type=arguments.number(0.0, above=True), help="min-SNR-gamma loss weighting with this gamma (e.g. 5; default: none)")
    a("--prediction", choices=("eps", "v"),
      help="the network predicts the noise eps, or v (Salimans & Ho 2022: well conditioned at high noise); "
           "default: as the resumed run, else as --init, else eps")
    a("--v-shift", type=arguments.number(0.0, above=True),
      help="read v at SNR / S (S < 1: v is eps at low noise, -x_0 at high noise; default: as the resumed "
           "run, else as --init, else 1)")
    a("--t-density", help="relative density of the training timesteps, 't:weight,...' from t = 0, e.g. "
                            "'0:1,600:0.25' draws t >= 600 a quarter as often (default: uniform)")
    a("--bf16", action=argparse.BooleanOptionalAction, help="bfloat16 autocast (default: on CUDA only)")
    a("--steps", type=arguments.positive, default=10_000, help="total optimiser steps (default 10000)")
    a("--batch", type=arguments.positive, default=256, help="images per step (default 256)")
    a("--lr", type=arguments.number(0.0, above=True), default=2e-4, help="learning rate (default 2e-4)")
    a("--warmup", type=arguments.count, default=500, help="learning-rate warm-up steps (default 500)")
    a("--lr-end", type=arguments.number(0.0), default=None,
      help="cosine-decay the learning rate to this value at --steps (default: constant)")
    a("--decay-from", type=arguments.count, default=0,
      help="step where the cosine decay starts, e.g. the step a resumed run is at (default 0)")
    a("--ema", type=arguments.number(0.0, 1.0), default=0.9995, help="EMA decay, in [0, 1) (default 0.9995)")
    a("--first", help="first file-name stem of the data folder to use, e.g. 000001")
    a("--last", help="last file-name stem to use, e.g. 009500")
    a("--count", type=arguments.positive, help="use at most this many files")
    a("--val", help="held-out images (folder or pack) for the validation loss")
    a("--val-first", help="first file-name stem of the validation folder, e.g. 009501")
    a("--val-last", help="last file-name stem of the validation folder")
    a("--val-count", type=arguments.positive, default=500, help="at most this many validation images (default 500)")
    a("--eval-every", type=arguments.positive, default=1000, help="steps between validation losses (default 1000)")
    a("--checkpoint-every", type=arguments.positive, default=1000, help="steps between checkpoints (default 1000)")
    a("--sample-every", type=arguments.count, default=0, help="steps between sample grids, also drawn at the end (default 0: none)")
    a("--sample-steps", type=arguments.positive, default=100, help="sampler steps for the grids (default 100)")
    a("--sampler", choices=("ddpm", "ddim"), default="ddpm", help="sampler for the grids (default ddpm)")
    a("--max-minutes", type=arguments.number(0.0, above=True), help="stop cleanly this many minutes after the start, with a checkpoint (then the final "
      "validation, when --val is given, which may take a minute or two on a CPU)")
    a("--resume", action="store_true", help="continue from OUT/state.pt")
    a("--init", help="start from this model's weights (e.g. faces64, or a checkpoint path) with a fresh optimiser")
    a("--widen", type=arguments.integer(1, 8), default=1,
      help="with --init: train its network made K times as wide, started as the same function (Net2Net; "
           "about K^2 times the compute per image; default 1)")
    a("--device", type=arguments.device, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    a("--compile", action="store_true", help="torch.compile the training forward pass")
    a("--channels-last", action="store_true", help="channels-last memory format on CUDA")
    a("--seed", type=arguments.seed, default=0, help="random seed (default 0)")
    arguments.add_threads_argument(parser)


def run(args: argparse.Namespace) -> Path:
    network: str | dict = args.config
    if args.dropout is not None:
        network = {**network_config(args.config), "dropout": args.dropout}
    with io.folder_lock(args.out, "a training run"):
        path = train(args.data, args.out, size=args.size, steps=args.steps, batch=args.batch, lr=args.lr,
                     warmup=args.warmup, lr_end=args.lr_end, decay_from=args.decay_from, ema=args.ema,
                     network=network, min_snr=args.min_snr, prediction=args.prediction, v_shift=args.v_shift,
                     t_density=args.t_density,
                     bf16=args.bf16, first=args.first, last=args.last,
                     count=args.count, val=args.val, val_first=args.val_first, val_last=args.val_last,
                     val_count=args.val_count, eval_every=args.eval_every, checkpoint_every=args.checkpoint_every,
                     sample_every=args.sample_every, sample_steps=args.sample_steps, sampler=args.sampler,
                     max_minutes=args.max_minutes, resume=args.resume, init=args.init, widen=args.widen,
                     device=args.device, compile=args.compile,
                     channels_last=args.channels_last, seed=args.seed)
    print(f"model written to {path}")
    return path
