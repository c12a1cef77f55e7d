"""`diffprior metrics`: PSNR, SSIM and LPIPS between two image files."""

from __future__ import annotations

import argparse
import json
import sys

from ..io import open_image, pil_to_tensor
from .common import fmt, quality

PARSER = dict(help="PSNR, SSIM and LPIPS between two image files")
LARGE = 2_000_000  # pixels from which the time and memory of a full-size score are noted


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ref", help="the reference image")
    p.add_argument("img", help="the image to score against it")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")


def run(args: argparse.Namespace) -> int:
    ref_im, img_im = open_image(args.ref), open_image(args.img)
    (w1, h1), (w2, h2) = ref_im.size, img_im.size
    if w1 * h2 != w2 * h1:
        raise ValueError(f"{args.ref} is {w1}x{h1} but {args.img} is {w2}x{h2}: images of different aspect "
                         "ratios cannot be compared pixel by pixel; crop them to the same shape first")
    if (w1, h1) != (w2, h2):  # the larger one is resized to the smaller, whichever order they come in
        from PIL import Image
        small = min((w1, h1), (w2, h2))
        print(f"note: comparing at {small[0]}x{small[1]}: the larger image is resized (Lanczos) to the smaller's size",
              file=sys.stderr)
        ref_im, img_im = ref_im.resize(small, Image.LANCZOS), img_im.resize(small, Image.LANCZOS)
    w, h = img_im.size
    if w * h > LARGE:
        print(f"note: scoring {w}x{h} images at full size ({w * h / 1e6:.1f} megapixels): LPIPS on a CPU needs about "
              "0.35 GB and a few seconds per megapixel", file=sys.stderr)
    scores = quality(pil_to_tensor(img_im), pil_to_tensor(ref_im))
    if args.json:  # JSON has no infinity: PSNR null, as `quality` documents, and "identical" says why
        print(json.dumps({**scores, "identical": scores["psnr"] is None}))
        return 0
    undefined = {"psnr": "inf (identical images)", "ssim": "- (needs at least 11x11 pixels)",
                 "lpips": "- (needs at least 31x31 pixels)"}
    print("  ".join(f"{k} {undefined.get(k, '-') if v is None else fmt(v)}" for k, v in scores.items()))
    return 0
