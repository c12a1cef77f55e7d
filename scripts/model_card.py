#!/usr/bin/env python3
"""The numbers and figures of a trained face model's card (docs/MODEL_CARD.md):

  - single-step (Tweedie) denoising PSNR / SSIM / LPIPS at t = 100, 300, 500 on each evaluation set,
    with 95% intervals (fixed noise: seed t per image set and t);
  - the error of the one-step estimate's mean colour at the high noise levels t = 700 ... 999, where a
    sampler decides each face's colours, beside the error of guessing the data set's mean colour;
  - the training curves from the run's log.csv (training loss, validation loss beside the same loss on
    as many training images, the tracked validation Tweedie PSNR);
  - sample grids: 64 faces by 1000 ancestral DDPM steps and by 100 DDIM steps (seed 0).

Usage (from the repository root):
  python scripts/model_card.py --model src/diffprior/weights/faces64.safetensors --log RUN/log.csv \\
      --eval celeba-val=CELEBA_FOLDER:009501:010000 --eval utkface=UTK_FOLDER --out docs/model_card
Writes OUT/card.json (every number, with the command) and OUT/*.png (generated faces and plots only).
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from diffprior import io, metrics
from diffprior.data import load_faces
from diffprior.commands.evaluate import mean_ci
from diffprior.figures import plt, save_figure
from diffprior.io import atomic_write
from diffprior.models import load_prior
from diffprior.solvers.sampling import denoise, sample
from diffprior.train import PSNR_STEPS as TIMESTEPS, read_log


def tweedie_table(prior, images: torch.Tensor, batch: int) -> dict:
    """Per t: mean and 95% interval of PSNR, SSIM and LPIPS of the one-step estimate over the images."""
    out = {}
    for t in TIMESTEPS:
        g = torch.Generator().manual_seed(t)  # the same noise for every model: comparable across versions
        scores = {"psnr": [], "ssim": [], "lpips": []}
        for i in tqdm(range(0, len(images), batch), desc=f"Tweedie t={t}", leave=False):
            x0 = io.from_uint8(images[i:i + batch]).to(prior.device)
            _, x0_hat = denoise(prior, x0, t, generator=g)
            for name, values in metrics.image_metrics(x0_hat.float().cpu(), x0.cpu()).items():
                if name in scores:
                    scores[name] += values.tolist()
        out[t] = {name: mean_ci(values) for name, values in scores.items()}
    return out


COLOUR_STEPS = (999, 900, 800, 700)
GRIDS = (("ddpm", 1000), ("ddim", 100))  # sampler, steps


def colour_table(prior, images: torch.Tensor, batch: int) -> dict:
    """Per t: the RMS error (over images and RGB channels, [-1, 1] units) of the mean colour of the one-step
    estimate x0_hat(x_t), clipped to [-1, 1] as the samplers use it, against the image's own; and
    `baseline`, the RMS error of always answering the images' average colour. A calibrated denoiser at
    nearly pure noise does no worse than the baseline."""
    x0 = io.from_uint8(images).float()
    colours = x0.mean(dim=(2, 3))
    out = {"baseline": (colours - colours.mean(0)).square().mean().sqrt().item()}
    for t in COLOUR_STEPS:
        g = torch.Generator().manual_seed(t)
        estimates = [denoise(prior, x0[i:i + batch].to(prior.device), t, generator=g)[1].float().cpu()
                     for i in range(0, len(x0), batch)]
        out[t] = (torch.cat(estimates).mean(dim=(2, 3)) - colours).square().mean().sqrt().item()
    return out


def curves(log: list[dict], path: Path, prediction: str = "eps") -> Path:
    """Left: the training loss (the MSE of what the network predicts) and the epsilon MSE on validation and
    as many training faces; right: the tracked validation Tweedie PSNR."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    rows = [r for r in log if r["loss"] is not None]
    k = max(1, len(rows) // 200)  # a running mean over about 0.5% of the run
    smooth = [sum(r["loss"] for r in rows[max(0, i - k):i + 1]) / len(rows[max(0, i - k):i + 1])
              for i in range(len(rows))]
    a.plot([r["images"] / 1e3 for r in rows], smooth, lw=1,
           label=f"training loss ({'v' if prediction == 'v' else 'epsilon'} MSE, running mean)")
    ev = [r for r in log if r.get("val_loss") is not None]
    a.plot([r["images"] / 1e3 for r in ev], [r["val_loss"] for r in ev], "o-", ms=3,
           label="epsilon MSE, validation faces")
    a.plot([r["images"] / 1e3 for r in ev], [r["train_eval_loss"] for r in ev], "s--", ms=3,
           label="epsilon MSE, as many training faces")
    a.set(xlabel="images seen (thousands)", ylabel="MSE", yscale="log", title="loss")
    a.legend(fontsize=8)
    for t in TIMESTEPS:
        pts = [r for r in ev if r.get(f"val_psnr_{t}") is not None]
        b.plot([r["images"] / 1e3 for r in pts], [r[f"val_psnr_{t}"] for r in pts], "o-", ms=3, label=f"t = {t}")
    b.set(xlabel="images seen (thousands)", ylabel="PSNR (dB)", title="Tweedie PSNR, 200 validation faces")
    b.legend(fontsize=8)
    return save_figure(fig, path)


def grid(prior, sampler: str, steps: int, n: int, batch: int, path: Path, bf16: bool) -> Path:
    """n samples, batch by batch (batch i seeded with its first index), as one square grid. bf16: the
    network's convolutions and matrix products under CPU bfloat16 autocast (about 1.5x faster on CPUs
    with native bf16 instructions); the sampler's arithmetic stays float32."""
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        xs = [sample(prior, min(batch, n - i), steps=steps, sampler=sampler, progress=True,
                     generator=torch.Generator().manual_seed(i)).float().cpu() for i in range(0, n, batch)]
    return io.save_image(io.image_grid(torch.cat(xs).clamp(-1, 1), nrow=int(math.sqrt(n))), path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model to describe (a checkpoint path or name)")
    p.add_argument("--log", help="the training run's log.csv, for the curves")
    p.add_argument("--eval", action="append", default=[],
                   help="NAME=FOLDER_OR_PACK[:FIRST:LAST]: an evaluation set (repeatable)")
    p.add_argument("--out", required=True, help="folder for card.json and the figures")
    p.add_argument("--samples", type=int, default=64, help="faces per sample grid (default 64; 0: no grids)")
    p.add_argument("--grids", default="ddpm,ddim",
                   help="which grids: ddpm (1000 ancestral steps), ddim (100 steps); default: both")
    p.add_argument("--batch", type=int, default=32, help="images per network call (default 32)")
    p.add_argument("--bf16", action="store_true", help="sample the grids under CPU bfloat16 autocast")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda, ... (default: cuda when available); the noise is drawn on the CPU either way")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prior = load_prior(args.model, torch.device(args.device))
    size = prior.shape[-1]
    card = {"command": shlex.join(["python", "scripts/model_card.py", *(argv or sys.argv[1:])]),
            "model": Path(args.model).name, "training": prior.config.get("training"), "tweedie": {}, "colour": {},
            "seconds": {}, "grids_bf16": args.bf16}
    with torch.inference_mode():
        for spec in args.eval:
            name, _, source = spec.partition("=")
            source, first, last = (source.split(":") + [None, None])[:3]
            faces = load_faces(source, size, first=first or None, last=last or None)
            started = time.perf_counter()
            card["tweedie"][name] = {"images": len(faces), "first_file": faces.names[0],
                                     "last_file": faces.names[-1], **tweedie_table(prior, faces.images, args.batch)}
            card["colour"][name] = colour_table(prior, faces.images, args.batch)
            card["seconds"][f"tweedie {name}"] = round(time.perf_counter() - started, 1)
            print(name, json.dumps({t: {m: round(v["mean"], 4) for m, v in r.items()}
                                    for t, r in card["tweedie"][name].items() if t in TIMESTEPS}),
                  "mean-colour error", json.dumps({t: round(e, 3) for t, e in card["colour"][name].items()}))
        if args.log:
            curves(read_log(args.log), out / "training_curves.png", prior.prediction)
        grids = [(sampler, steps) for sampler, steps in GRIDS if sampler in args.grids.split(",")]
        for sampler, steps in grids if args.samples else ():
            started = time.perf_counter()
            grid(prior, sampler, steps, args.samples, args.batch, out / f"samples_{sampler}{steps}.png", args.bf16)
            card["seconds"][f"{sampler} {steps} x {args.samples}"] = round(time.perf_counter() - started, 1)
    atomic_write(out / "card.json", lambda tmp: Path(tmp).write_text(json.dumps(card, indent=1) + "\n"))
    print(f"wrote {out / 'card.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
