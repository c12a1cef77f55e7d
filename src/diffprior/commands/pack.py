"""`diffprior pack`: preprocess an image folder into one compact file for training (see data.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .. import arguments
from ..data import PACK_FORMATS, load_folder, save_pack

PARSER = dict(help="preprocess an image folder into one compact file for training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="folder of images")
    parser.add_argument("out", help="the pack to write (.zip)")
    parser.add_argument("--size", type=arguments.integer(8, 4096), default=64, help="square image size (default 64)")
    parser.add_argument("--first", help="first file-name stem to include, e.g. 000001")
    parser.add_argument("--last", help="last file-name stem to include, e.g. 009500")
    parser.add_argument("--count", type=arguments.positive, help="at most this many files")
    parser.add_argument("--format", choices=PACK_FORMATS, default="jpeg",
                        help="npy (exact, large), webp (exact, ~half), jpeg (smallest; default)")
    parser.add_argument("--quality", type=arguments.integer(1, 100), default=None,
                        help="JPEG quality, 1 to 100 (default 95; jpeg only)")
    arguments.add_overwrite_argument(parser)


def run(args: argparse.Namespace) -> None:
    if Path(args.folder).is_file():
        raise NotADirectoryError(f"{args.folder} is a file: pack reads a folder of images")
    if not Path(args.folder).is_dir():
        raise FileNotFoundError(f"no folder at {args.folder}")
    if Path(args.out).suffix.lower() != ".zip":
        raise ValueError(f"{args.out}: a pack is a zip file; give its name the suffix .zip")
    if args.quality is not None and args.format != "jpeg":
        raise ValueError(f"--quality is JPEG's: {args.format} packs are exact")
    arguments.check_outputs([args.out], inputs=[args.folder], overwrite=args.overwrite, images=False)
    faces = load_folder(args.folder, args.size, first=args.first, last=args.last, count=args.count)
    path = save_pack(faces, args.out, format=args.format, quality=args.quality or 95)
    n = len(faces)
    print(f"{path}: {n} image{'s' * (n != 1)} of {faces.size}x{faces.size}, {path.stat().st_size / 2**20:.2f} MiB "
          f"({args.format}); {len(faces.skipped)} skipped")
