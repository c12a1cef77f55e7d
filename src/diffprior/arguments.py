"""What every command checks before it does any work: argument values (argparse types that name the
allowed range), the device, and the files it will write (never an input; an existing file only with
--overwrite; a folder that can be written; a suffix the writer knows)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path


from .devices import pick_device
from .io import check_writable, exact_format, image_format
from .nonlinear import MAX_RATE, MIN_RATE

MAX_SEED = 2 ** 63 - 1  # the largest seed a torch generator takes
MAX_SIGMA_Y = 10.0  # measurement noise std on [-1, 1] images: 5 times their range, where y is pure noise


def names(text: str) -> list[str]:
    """A comma-separated list of names (tasks, methods, solvers), blanks and repeats dropped, in order."""
    return list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))


def add_image_argument(p: argparse.ArgumentParser, help: str) -> None:
    """The command's input image in `args.input`, given as `COMMAND IMAGE` or `COMMAND --input IMAGE`."""
    given = p.add_mutually_exclusive_group(required=True)
    given.add_argument("input", nargs="?", default=argparse.SUPPRESS, metavar="IMAGE", help=help)
    given.add_argument("--input", dest="input", metavar="IMAGE", help="the same, as an option")


def names_folder(out: str) -> bool:
    """Whether an --out names a folder: one that exists, or a name ending in /."""
    return out.endswith(("/", os.sep)) or Path(out).is_dir()


def output_name(text: str) -> str:
    """An argparse type: the name of a file or folder to write; an empty one would mean the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty name; give the file or folder to write")
    return text


def image_output(name: str) -> Callable[[str], str]:
    """An argparse type: the image file to write; a folder (`names_folder`) means the file `name` in it."""
    def parse(text: str) -> str:
        text = output_name(text)
        return str(Path(text) / name) if names_folder(text) else text
    return parse


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in [low, high] (either bound may be None)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        _check_range(value, text, low, high)
        return value
    return parse


def integers(low: int | None = None, high: int | None = None) -> Callable[[str], list[int]]:
    """An argparse type: comma-separated whole numbers, each in [low, high], at least one of them."""
    one = integer(low, high)

    def parse(text: str) -> list[int]:
        values = [one(v.strip()) for v in text.split(",") if v.strip()]
        if not values:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
        return values
    return parse


def square(text: str) -> tuple[int, int, int]:
    """An argparse type: LEFT,TOP,SIDE of a square in an image, in pixels."""
    values = integers(0)(text)
    if len(values) != 3 or values[2] < 1:
        raise argparse.ArgumentTypeError(f"expected LEFT,TOP,SIDE (whole numbers, SIDE at least 1), got {text!r}")
    return values[0], values[1], values[2]


def number(low: float | None = None, high: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] ((low, high] with above=True)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if above and low is not None and value <= low:
            raise argparse.ArgumentTypeError(f"must be greater than {_num(low)}, got {text}")
        _check_range(value, text, None if above else low, high)
        return value
    return parse


def _num(bound) -> str:
    """A bound as typed: 0.5 and 1e-05 for floats, every digit of an int (a seed's 9223372036854775807)."""
    return f"{bound:g}" if isinstance(bound, float) else str(bound)


def _check_range(value, text: str, low, high) -> None:
    if low is not None and value < low:
        raise argparse.ArgumentTypeError(f"must be at least {_num(low)}, got {text}")
    if high is not None and value > high:
        raise argparse.ArgumentTypeError(f"must be at most {_num(high)}, got {text}")


positive = integer(1)
MAX_THREADS = 4 * (os.cpu_count() or 1)  # more is only slower (and torch crashes on huge counts)
count = integer(0)
seed = integer(0, MAX_SEED)
noise_std = number(0.0, MAX_SIGMA_Y)  # --sigma-y
photon_rate = number(MIN_RATE, MAX_RATE)  # --poisson


def device(text: str) -> str:
    """An argparse type: a device name that `pick_device` accepts (kept as text)."""
    try:
        pick_device(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f"device {text!r}: ")) from None
    return text


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=integer(1, MAX_THREADS), default=None,
                        help="CPU threads (default: OMP_NUM_THREADS when set, else the cores other processes leave "
                        "idle: more threads than idle cores is much slower)")


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--overwrite", action="store_true",
                        help="replace output files that already exist (an input is never replaced)")


def check_outputs(outputs: Iterable[str | Path], *, inputs: Iterable[str | Path | None] = (),
                  overwrite: bool = False, images: bool = True) -> None:
    """Refuse, before any work, to write where it would fail or destroy something: an output that is an
    input (also through a link), an existing file without `overwrite`, a folder, a suffix that is no
    image format (`images`), or a folder that cannot be created or written."""
    inputs = [Path(p) for p in inputs if p is not None]
    for out in map(Path, outputs):
        if out.is_dir():
            raise IsADirectoryError(f"the output {out} is a folder: give a file name")
        fmt = image_format(out) if images else None
        if fmt and not exact_format(fmt):
            print(f"note: {out.name}: the {fmt} format does not keep an image exactly (its pixels or its size "
                  "change); write a .png to keep every pixel", file=sys.stderr)
        for p in inputs:
            if out.exists() and p.exists() and os.path.samefile(out, p) or out.resolve() == p.resolve():
                raise FileExistsError(f"the output {out} is the input {p}: choose another output file "
                                      "(inputs are never overwritten)")
        if out.exists() and not overwrite:
            raise FileExistsError(f"{out} already exists: pass --overwrite to replace it, or choose another name")
        check_writable(out.parent, out)
