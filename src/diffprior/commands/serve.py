"""`diffprior serve`: a local web app (Gradio) to restore your own photo with a diffusion prior.

Upload a photo (and choose the square of it that the model restores, as `restore --crop` does) or draw a face
from the prior; damage it with a task (box / random / stroke inpainting, Gaussian /
motion blur, x4 super-resolution, colourisation, denoising) or paint the missing region with the brush, or
mark the upload as already damaged; restore it with one or several methods side by side, with the
measurement, the naive reconstruction, PSNR / SSIM / LPIPS when the clean photo is known and the residual
||y - A x|| always; K posterior samples give their mean and a per-pixel standard-deviation map. Every result
can be downloaded with a settings JSON that holds the equivalent `diffprior restore` command lines; with a
painted mask, the uploaded photo itself at its own size with the holes filled too.

Safety: the server binds 127.0.0.1 unless --host says otherwise; uploads over --max-upload-mb or over
--max-pixels (checked in the header, before decoding) are refused with a message, and so are decompression
bombs (painted layers sent by a request: more than twice --max-pixels); one job runs at a time (a queue); the
app reads and writes files only inside its own temporary folder, which it removes when it stops.

Needs the optional extra: pip install "diffprior[web]".
"""

from __future__ import annotations

import argparse
import errno
import json
import math
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, UnidentifiedImageError

from .. import arguments
from ..io import (center_square, fill_holes, masked_center_square, open_image, pil_to_tensor, square_box, stretch_mask,
                  tensor_to_pil)
from ..models import load_prior
from ..devices import pick_device
from ..operators import Colorize, Inpaint, measure
from ..tasks import make_operator
from ..solvers import SOLVERS, SPECS, DivergenceError, check_settings, sample, settings_for, tuned_settings, solve
from ..uncertainty import posterior_samples, std_image, why_no_spread
from .common import add_prior_arguments, check_grey_task, image_side

# The tasks the app offers (value: label); "inpaint" takes the region painted with the brush as its mask.
APP_TASKS = {
    "box-inpaint": "box inpainting",
    "random-inpaint": "random inpainting (70% of the pixels)",
    "stroke-inpaint": "free-form strokes (like hand-drawn damage)",
    "gaussian-blur": "Gaussian blur",
    "motion-blur": "motion blur",
    "sr4": "x4 super-resolution",
    "colorize": "colourisation",
    "denoise": "denoising",
    "inpaint": "painted mask (paint the missing region on the photo)",
}
DEFAULT_METHODS = ["ddnm", "dps"]
APP_MAX_SAMPLES = 16  # posterior samples per method in the app (the command line takes more)
APP_MAX_TV_STEPS = 10_000  # tv's iterations in the app (its default is 300): more would hold the one queue for hours
DISPLAY = 256  # the photo is shown enlarged (nearest neighbour) to about this many pixels for painting
OVERVIEW = 256  # the whole upload, with the square the model restores outlined, is shown this many pixels large
MIN_SIDE = 10  # the smallest square to restore, in percent of the upload's shorter side


class AppError(ValueError):
    """An error the user caused (a bad upload, a missing photo, a mask without strokes): shown as the
    app's message."""


def _install_hint() -> str:
    return 'diffprior serve needs the web extra: pip install "diffprior[web]"'


# -- the work, without any web framework ----------------------------------------------------------
class Studio:
    """The app's state and work: one prior on one device, and one folder that every file lives in."""

    def __init__(self, model: str, device: torch.device, folder: str | Path, *, config: str | None = None,
                 dtype: str = "auto", max_pixels: int = 25_000_000, max_bytes: int = 20_000_000):
        self.model, self.device, self.folder = str(model), device, Path(folder).resolve()
        self.prior = load_prior(model, device, config=config, dtype=dtype)
        self.size = image_side(self.prior, "serve")
        self.scale = max(1, DISPLAY // self.size)  # the display's enlargement of the model's pixels
        self.max_pixels, self.max_bytes = max_pixels, max_bytes
        self.default_steps = 50 if device.type == "cpu" else 200

    # files ------------------------------------------------------------------------------------------
    def job_folder(self, prefix: str) -> Path:
        jobs = self.folder / "jobs"
        jobs.mkdir(parents=True, exist_ok=True)  # again, should a cleaner of temporary files have removed it
        return Path(tempfile.mkdtemp(prefix=prefix + "-", dir=jobs))

    def inside(self, path: str | Path) -> Path:
        """`path` resolved, refused unless it lies inside the app's own folder."""
        p = Path(path).resolve()
        if not p.is_relative_to(self.folder):
            raise AppError("the app only reads files that were uploaded to it")
        return p

    # input ------------------------------------------------------------------------------------------
    def open_upload(self, path: str | Path) -> Image.Image:
        """An uploaded file as an RGB image, refused (AppError) when it is too large in bytes or pixels
        (read from the header, before any decoding), a decompression bomb, or no image at all."""
        p = self.inside(path)
        name = p.name
        if not p.is_file():
            raise AppError(f"cannot read {name}: the uploaded file is gone; upload it again")
        size = p.stat().st_size
        if size == 0:
            raise AppError(f"cannot read {name} as an image: the file is empty (0 bytes); upload the photo again")
        if size > self.max_bytes:
            raise AppError(f"{name} is {size / 1e6:.1f} MB; this app takes uploads up to "
                           f"{self.max_bytes / 1e6:g} MB")
        try:
            with Image.open(p) as im:
                w, h = im.size
        except Image.DecompressionBombError as e:
            raise AppError(f"{name} claims {claimed_pixels(e)} pixels, more than the {self.max_pixels:,} this app "
                           "decodes: make it smaller first (or start the app with a larger --max-pixels)") from None
        except UnidentifiedImageError:  # its text names the server's copy of the file
            raise AppError(f"cannot read {name} as an image: it is in no image format this app knows (PNG, JPEG, "
                           "WebP, TIFF, BMP, GIF, ...), whatever its name says; upload the photo itself") from None
        except Exception as e:
            reason = str(e).replace(str(p), name) or type(e).__name__
            raise AppError(f"cannot read {name} as an image ({reason}): is the file damaged or incomplete? "
                           "Upload it again") from None
        if w * h > self.max_pixels:
            raise AppError(f"{name} claims {w}x{h} pixels, more than the {self.max_pixels:,} this app decodes: "
                           "make it smaller first (or start the app with a larger --max-pixels)")
        try:
            im = open_image(p)  # refuses decompression bombs and unreadable files
        except ValueError as e:
            raise AppError(str(e).replace(str(p), name)) from None
        return im

    def source_from_upload(self, path: str | Path) -> dict:
        """What the app keeps of an upload: the photo at the model's size; when the upload is not larger
        than that, the upload itself (an already damaged low-resolution input is taken as it is); and when
        it has another size, the whole upload too (a painted mask's holes are filled in it as well)."""
        im = self.open_upload(path)
        return {"photo": center_square(im, self.size), "raw": im if max(im.size) <= self.size else None,
                "full": im if im.size != (self.size, self.size) else None, "name": Path(path).name,
                "size": im.size, "crop": None}

    def choose_square(self, source: dict | None, across, down, side) -> dict:
        """The upload with another square for the model to restore (`restore --crop`): `side` percent of its
        shorter side, `across` / `down` percent of the way from its left / top edge to the right / bottom one
        (50, 50, 100: the central square, the default)."""
        if source is None:
            raise AppError("upload a photo first")
        full = source.get("full")
        if full is None:
            raise AppError("this photo is already the model's square: there is no other square to choose")
        across, down = _percent(across, "across", 0), _percent(down, "down", 0)
        side = _percent(side, "side", MIN_SIDE)
        w, h = full.size
        s = max(1, round(min(w, h) * side / 100))
        crop = (int((w - s) * across / 100), int((h - s) * down / 100), s)  # floor: 50 is the central square
        if square_box(full.size, crop) == square_box(full.size):
            crop = None  # the central square, as the command line takes it without --crop
        return {**source, "photo": center_square(full, self.size, crop), "crop": crop}

    def overview(self, source: dict) -> Image.Image | None:
        """The whole upload, resized to fit OVERVIEW pixels, with the square the model restores outlined; None
        when the upload is the model's square itself."""
        full = source.get("full")
        if full is None:
            return None
        scale = OVERVIEW / max(full.size)
        im = full.resize((max(1, round(full.size[0] * scale)), max(1, round(full.size[1] * scale))), Image.LANCZOS,
                         reducing_gap=3.0)
        left, top, right, bottom = (v * scale for v in square_box(full.size, source.get("crop")))
        x0, y0 = int(left), int(top)  # at least one pixel, however small the square is shown
        ImageDraw.Draw(im).rectangle([x0, y0, max(x0, math.ceil(right) - 1), max(y0, math.ceil(bottom) - 1)],
                                     outline=(255, 0, 255), width=2)
        return im

    @torch.no_grad()
    def draw(self, seed: int) -> dict:
        """A face (or whatever the prior draws) from the prior: exact for an analytic prior, otherwise all T
        ancestral steps (one image: seconds on a CPU; the face model's few-step DDIM draws are poorer)."""
        g = torch.Generator(device=self.device).manual_seed(seed)
        if hasattr(self.prior, "sample") and not self.prior.bounded:
            x = self.prior.sample(1, torch.Generator().manual_seed(seed)).float()
        else:
            x = sample(self.prior, 1, generator=g, progress=True)
        im = tensor_to_pil(x.clamp(-1, 1))
        return {"photo": im, "raw": im, "name": f"drawn from {self.model} (seed {seed})", "size": im.size,
                "crop": None}

    def display(self, im: Image.Image) -> Image.Image:
        """The model-resolution image enlarged by whole pixels, for viewing and painting."""
        return im.resize((im.size[0] * self.scale, im.size[1] * self.scale), Image.NEAREST)

    def mask_from_layers(self, layers) -> torch.Tensor | None:
        """The painted region of the editor's layers as an inpainting mask (1 = known, 0 = missing) at the
        model's size, or None when nothing was painted. A model pixel is missing when at least a quarter of
        its area was painted; strokes too thin for any are refused (AppError)."""
        painted, touched = None, False  # per model pixel, the painted share of its area (the most of any layer)
        for layer in layers or []:
            if layer is None:
                continue
            if isinstance(layer, (str, Path)):
                layer = Image.open(self.inside(layer))
            alpha = layer.convert("RGBA").getchannel("A")
            touched = touched or alpha.getbbox() is not None  # painted at all, however thinly
            alpha = alpha.resize((self.size, self.size), Image.BOX)  # a layer of any size covers the photo
            share = np.asarray(alpha, dtype=np.float32)
            painted = share if painted is None else np.maximum(painted, share)
        if not touched:
            return None
        missing = painted >= 0.25 * 255
        if not missing.any():
            raise AppError(f"your strokes are thinner than one pixel of the {self.size}x{self.size} model and "
                           "vanish: paint thicker")
        return torch.from_numpy((~missing).astype(np.float32))

    # restore ----------------------------------------------------------------------------------------
    def restore(self, source: dict | None, mask: torch.Tensor | None, task: str, methods: list[str], *,
                steps: int, sigma_y: float, seed: int, samples: int = 1, measured: bool = False,
                progress=None) -> dict:
        """Degrade (or take as measured) the photo, restore it with each method, score and save everything
        in a new job folder. Returns the gallery, the metrics rows, the files to download and the report."""
        if source is None:
            raise AppError("upload a photo or draw a face first")
        if not isinstance(task, str) or task not in APP_TASKS:
            raise AppError(f"unknown task {task!r:.60}; choose one of {', '.join(APP_TASKS)}")
        methods = [] if methods is None else methods
        if not isinstance(methods, list) or not all(isinstance(m, str) for m in methods):
            raise AppError(f"methods must be a list of method names, got {methods!r:.60}")
        unknown = sorted(set(methods) - set(SOLVERS))
        if unknown:
            raise AppError(f"unknown method {', '.join(unknown):.60}; choose from {', '.join(SOLVERS)}")
        methods = [m for m in SOLVERS if m in methods]
        if not methods:
            raise AppError("pick at least one method")
        steps, seed = _whole(steps, "steps", 1, None), _whole(seed, "seed", 0)
        samples, measured = _whole(samples, "samples", 1, APP_MAX_SAMPLES), _flag(measured, "measured")
        given, sigma_y = sigma_y, _real(sigma_y)
        if not 0 <= sigma_y <= arguments.MAX_SIGMA_Y:  # NaN fails too
            raise AppError(f"sigma_y must be a number from 0 to {arguments.MAX_SIGMA_Y:g}, got {given!r:.60}")
        T = self.prior.schedule.T
        if steps > T and methods != ["tv"]:
            raise AppError(f"steps: at most the prior's T = {T} diffusion steps")
        if steps > max(T, APP_MAX_TV_STEPS):
            raise AppError(f"steps: at most {APP_MAX_TV_STEPS} iterations of tv in this app (its default is 300)")
        settings = {}
        for m in methods:
            settings[m] = settings_for(m, task, tuned_settings(self.prior), steps=steps)
            check_settings(m, settings[m], T)

        size, device = self.size, self.device
        if task == "inpaint":
            if mask is None:
                raise AppError("paint the missing region on the photo with the brush first (or pick another task)")
            if not mask.any():
                raise AppError("the painted region covers the whole photo: leave the pixels to keep unpainted")
            op = Inpaint(mask)
        else:
            check_grey_task(self.prior, task)
            op = make_operator(task, self.prior.shape, seed=seed)
        unfit = [f"{m}: {why}" for m in methods if (why := SPECS[m].why_not(op, sigma_y))]
        unfit += [f"{m}: {why}" for m in methods if samples > 1 and (why := why_no_spread(m))]
        if unfit:  # before any method runs, not after the first ones have
            raise AppError(f"not for {APP_TASKS[task]} here: " + "; ".join(unfit))
        op = op.to(device)
        gen = torch.Generator(device=device).manual_seed(seed)
        photo = source["photo"]
        # a painted mask on an upload of another size: its holes are filled in the whole upload too
        full = source.get("full") if task == "inpaint" else None
        crop = source.get("crop")
        known_full = None if full is None else stretch_mask(mask.cpu().numpy() > 0.5, full.size, crop)
        if measured:  # the photo is already the measurement y, as in `restore --measured`
            side = None if task in ("inpaint", "colorize") else (size // op.factor if hasattr(op, "factor") else size)
            if side is None:  # of a damaged upload, only the pixels outside the holes make y (as the CLI's)
                given = photo if known_full is None else masked_center_square(full, known_full, size, crop)
            else:
                raw = source.get("raw")
                if raw is None or raw.size != (side, side):
                    w, h = source["size"]
                    what = "the low-resolution image" if side != size else "an image"
                    raise AppError(f"an already damaged photo for {APP_TASKS[task]} must be {what} of exactly "
                                   f"{side}x{side} pixels for this {size}x{size} model; this one is {w}x{h}")
                if source.get("crop") is not None:
                    raise AppError(f"an already damaged photo for {APP_TASKS[task]} is restored whole: set the "
                                   "square back to across 50, down 50, side 100")
                given = raw
            x = None
            y = pil_to_tensor(given, self.prior.shape[0]).to(device)
            if isinstance(op, (Inpaint, Colorize)):
                y = op.A(y)  # the holes (or the colours) carry nothing
        else:
            given = photo
            x = pil_to_tensor(photo, self.prior.shape[0]).to(device)
            y = measure(op, x, sigma_y, gen)
        after_measure = gen.get_state()  # each method starts here, as a separate `diffprior restore` would

        from ..figures import displayable
        from ..metrics import image_metrics, residual
        job = self.job_folder("restore")
        files, gallery, rows = [], [], []
        results: dict[str, dict] = {}

        def scores(img: torch.Tensor) -> dict:
            out = {}
            if x is not None:
                out = {k: _finite(v[0]) for k, v in image_metrics(img, x).items()}
            out["residual"] = _finite(residual(op, img, y)[0])
            return out

        def show(img: torch.Tensor, name: str, caption: str) -> None:
            path = job / f"view_{name}.png"
            self.display(tensor_to_pil(img.clamp(-1, 1))).save(path)
            gallery.append((str(path), caption))

        input_path = job / "input.png"
        # the photo's name in the --full-size commands, not one of the downloads it would have to replace
        photo_name = "photo_" + source["name"] if source["name"] in ("input.png", "mask.png") else source["name"]
        given.save(input_path)
        files.append(input_path)
        if task == "inpaint":
            mask_path = job / "mask.png"
            Image.fromarray((mask.cpu().numpy() * 255).astype(np.uint8), "L").save(mask_path)
            files.append(mask_path)
        if x is not None:
            show(x, "photo", "photo (clean)")
        show(displayable(y, (size, size)), "measurement",
             "measurement (given)" if measured else f"measurement ({task})")
        try:
            naive = op.naive(y)
        except NotImplementedError:
            naive = None
        if naive is not None:
            results["naive"] = scores(naive)
            show(naive, "naive", "naive" + _caption(results["naive"]))
            rows.append(_row("naive", results["naive"], None))

        commands = []
        for i, method in enumerate(methods):
            if progress is not None:
                progress((i, len(methods)), desc=f"{method} ({i + 1} of {len(methods)})", unit="methods")
            gen.set_state(after_measure)
            start = time.perf_counter()
            std = None
            try:
                if samples > 1:
                    draws = posterior_samples(method, self.prior, op, y, samples, sigma_y=sigma_y, generator=gen,
                                              progress=True, **settings[method])
                    restored, std = draws.mean(0, keepdim=True), draws.std(0)
                else:
                    restored = solve(method, self.prior, op, y, sigma_y=sigma_y, generator=gen, progress=True,
                                     **settings[method])
            except (ValueError, DivergenceError) as e:  # this method cannot: say why, keep the others' results
                why = str(e) + ("; in this app, try more steps or a larger sigma_y (the command line's restore "
                                "--set sets the step size)" if isinstance(e, DivergenceError) else "")
                results[method] = {"error": why}
                rows.append([f"{method} failed: {why}"] + ["-"] * 5)
                continue
            seconds = time.perf_counter() - start
            results[method] = scores(restored) | {"seconds": round(seconds, 2)}
            out = job / f"restored_{method}.png"
            tensor_to_pil(restored.clamp(-1, 1)).save(out)
            files.append(out)
            if known_full is not None:
                full_out = job / f"restored_{method}_full.png"
                fill_holes(full, restored, known_full, crop).save(full_out)
                files.append(full_out)
            label = method + (f" mean (K={samples})" if std is not None else "")
            show(restored, method, label + _caption(results[method]))
            if std is not None:
                results[method]["mean_std"] = _finite(std.mean())
                std_path = job / f"restored_{method}_std.png"
                tensor_to_pil(std_image(std)).save(std_path)
                files.append(std_path)
                show(std_image(std), method + "_std", f"{method} std {float(std.mean()):.3f}")
            rows.append(_row(method, results[method], seconds))
            for out_name, photo in [(out.name, None)] + ([(full_out.name, photo_name)] if known_full is not None
                                                       else []):
                commands.append(self.command(task, method, steps=steps, sigma_y=sigma_y, seed=seed, samples=samples,
                                             measured=measured, out=out_name, full_size_of=photo, crop=crop))
        report = {"model": self.model, "device": str(device), "size": size, "input": source["name"], "crop": crop,
                  "task": task, "measured": measured, "sigma_y": sigma_y, "seed": seed, "steps": steps,
                  "samples": samples, "methods": methods, "settings": settings, "results": results,
                  "files": [p.name for p in files],
                  "commands": commands,
                  "note": "run the commands in a folder holding the downloaded input.png"
                          + (" and mask.png" if task == "inpaint" else "")
                          + (f" (the --full-size ones: and your photo {source['name']}"
                             + (f", saved as {photo_name})" if photo_name != source["name"] else ")")
                             if known_full is not None else "")}
        settings_path = job / "settings.json"
        settings_path.write_text(json.dumps(report, indent=2) + "\n")
        files.append(settings_path)
        return {"gallery": gallery, "rows": rows, "files": [str(p) for p in files], "report": report}

    def command(self, task: str, method: str, *, steps: int, sigma_y: float, seed: int, samples: int,
                measured: bool, out: str, full_size_of: str | None = None,
                crop: tuple[int, int, int] | None = None) -> str:
        """The `diffprior restore` command line that reproduces one method's result from the downloads; with
        `full_size_of` (the uploaded photo's name), its --full-size result from that photo (and its square
        `crop`, when it is not the central one)."""
        photo = full_size_of or "input.png"
        argv = ["diffprior", "restore", "--input", "./" + photo if photo.startswith("-") else photo]  # not an option
        argv += ["--mask", "mask.png"] if task == "inpaint" else ["--task", task]
        if full_size_of:
            argv.append("--full-size")
            if crop is not None:
                argv += ["--crop", ",".join(map(str, crop))]
        if measured:
            argv.append("--measured")
        argv += ["--method", method, "--steps", str(steps), "--sigma-y", repr(sigma_y), "--seed", str(seed)]
        if samples > 1:
            argv += ["--samples", str(samples)]
        argv += ["--model", self.model, "--device", str(self.device), "--out", out]
        return shlex.join(argv)


def claimed_pixels(e: Image.DecompressionBombError) -> str:
    """The pixel count in Pillow's refusal ("Image size (N pixels) exceeds limit ..."), with thousands marked."""
    claimed = re.search(r"\((\d+) pixels\)", str(e))
    return f"{int(claimed[1]):,}" if claimed else f"more than {2 * Image.MAX_IMAGE_PIXELS:,}"


def _whole(value, name: str, low: int, high: int | None = arguments.MAX_SEED) -> int:
    """A whole number in [low, high] (high None: no upper bound), exact for ints of any size."""
    try:
        if isinstance(value, bool):  # an int to Python: True would be 1
            raise TypeError
        v = value if isinstance(value, int) else float(value)
    except (TypeError, ValueError):
        raise AppError(f"{name} must be a whole number, got {value!r:.60}") from None
    if isinstance(v, float) and not v.is_integer() or v < low or high is not None and v > high:
        span = f"of at least {low}" if high is None else f"from {low} to {high}"
        raise AppError(f"{name} must be a whole number {span}, got {value!r:.60}")
    return int(v)


def _flag(value, name: str) -> bool:
    """A checkbox's value: true or false (a string such as "no" is not taken as true)."""
    if not isinstance(value, bool):
        raise AppError(f"{name} must be true or false, got {value!r:.60}")
    return value


def _real(value) -> float:
    """`value` as a float; NaN (which every range refuses) when it is no number, true and false included."""
    try:
        return math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        return math.nan


def _percent(value, name: str, low: float) -> float:
    """A number in [low, 100]."""
    v = _real(value)
    if not low <= v <= 100:  # NaN fails too
        raise AppError(f"{name} must be a number from {low:g} to 100 (percent), got {value!r:.60}")
    return v


def _finite(v) -> float | None:
    v = float(v)
    return round(v, 4) if math.isfinite(v) else None


def _caption(s: dict) -> str:
    """A short caption: the PSNR when the clean photo is known, else the residual (the table has all)."""
    return f": {s['psnr']:.2f} dB" if s.get("psnr") is not None else f": ||y - Ax|| {s['residual']:.2f}"


METRIC_HEADERS = ["result", "PSNR (dB)", "SSIM", "LPIPS", "||y - A x||", "seconds"]


def _row(name: str, s: dict, seconds: float | None) -> list:
    def f(v, spec):
        return "-" if v is None else format(v, spec)
    return [name, f(s.get("psnr"), ".2f"), f(s.get("ssim"), ".3f"), f(s.get("lpips"), ".3f"),
            f(s.get("residual"), ".4f"), f(seconds, ".1f")]


# -- the web page ---------------------------------------------------------------------------------
CSS = """
#photo canvas { image-rendering: pixelated; }
#results img { image-rendering: pixelated; }
"""


def build_app(studio: Studio):
    """The Gradio Blocks of the app (not launched)."""
    try:
        import gradio as gr
        from gradio.exceptions import InvalidPathError
    except ImportError as e:
        raise ImportError(_install_hint()) from e

    def guarded(fn):
        """Errors a user can cause become the app's message; anything else is reported as an internal error
        (with the traceback on the server's terminal), never a bare stack trace in the page."""
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except gr.Error:
                raise
            except (AppError, ValueError, TypeError, RuntimeError, OSError) as e:
                raise gr.Error(str(e) or type(e).__name__, print_exception=False) from None
            except Exception as e:
                traceback.print_exc()
                raise gr.Error(f"internal error: {type(e).__name__}: {e} (please report it)",
                               print_exception=False) from None
        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        return run

    def raw(component):
        """`component` (an input of values), whose value reaches the app's function as the request sent it: the
        function checks it and says what is wrong (Gradio's own checks answer an API client's bad value with
        its validation text and a traceback on the server's console, and round a seed of 1.5 to 2)."""
        component.preprocess = lambda payload: payload
        return component

    def unreadable(e: Exception) -> str:
        """The client's message when Gradio cannot read a file (or the editor's value) that a request sends: only
        an API client sends such."""
        cause = e.__cause__ or e  # what a component's preprocess raised, wrapped by Gradio
        if isinstance(cause, gr.Error):
            message = getattr(cause, "message", str(cause))
            if message.startswith("Invalid file type"):  # the upload button's file_types, checked on the name
                return "that file is not an image by its name: upload a photo (PNG, JPEG, WebP, TIFF, BMP, GIF, ...)"
            return message
        if isinstance(cause, Image.DecompressionBombError):  # Gradio decodes the editor's layers
            return (f"a painted layer claims {claimed_pixels(cause)} pixels, more than twice the "
                    f"{studio.max_pixels:,} this app decodes: send layers of the editor's canvas size")
        if isinstance(cause, (InvalidPathError, FileNotFoundError, IsADirectoryError)):
            return ("no such uploaded file: upload the file first and send the path the upload returned "
                    "(gradio_client's handle_file does both)")
        if isinstance(cause, UnidentifiedImageError):
            return "cannot read an image the request sends: send PNG or JPEG files"
        return ("malformed request: send the values that the app's page \"Use via API\" lists, each file as "
                "gradio_client's handle_file sends it")

    def read_request(read):
        """Gradio's reading of a request (`Blocks.preprocess_data`), whose refusals become the client's message,
        without a traceback on the server's console."""
        async def checked(*args, **kwargs):
            try:
                return await read(*args, **kwargs)
            except (gr.Error, ValueError, OSError) as e:  # pydantic's and Gradio's errors are ValueErrors
                raise gr.Error(unreadable(e), print_exception=False) from None
        return checked

    def editor_value(source: dict) -> dict:
        shown = studio.display(source["photo"])
        return {"background": shown, "layers": [], "composite": shown}

    def describe(source: dict) -> str:
        w, h = source["size"]
        crop = source.get("crop")
        square = "centre crop" if crop is None else "the square {},{},{} (LEFT,TOP,SIDE)".format(*crop)
        return f"**{source['name']}**, {w}x{h}, shown at the model's {studio.size}x{studio.size} ({square}, Lanczos resize)"

    def shown(source: dict) -> tuple:
        """What the page shows of a photo: the editor, the state, the caption, the whole upload with its square."""
        whole = studio.overview(source)
        return (editor_value(source), source, describe(source),
                gr.Image(whole, visible=whole is not None))

    @guarded
    def upload(path):
        if not path:
            raise AppError("no file was uploaded")
        source = studio.source_from_upload(path)
        return *shown(source), gr.Accordion(visible=source["full"] is not None), 50, 50, 100

    @guarded
    def draw(seed, progress=gr.Progress(track_tqdm=True)):
        source = studio.draw(_whole(seed, "seed", 0))
        return *shown(source), gr.Accordion(visible=False)

    @guarded
    def choose_square(source, across, down, side):
        return shown(studio.choose_square(source, across, down, side))

    @guarded
    def restore(editor, source, task, methods, steps, sigma_y, seed, samples, measured,
                progress=gr.Progress(track_tqdm=True)):
        mask = studio.mask_from_layers((editor or {}).get("layers")) if task == "inpaint" else None
        result = studio.restore(source, mask, task, methods, steps=steps, sigma_y=sigma_y, seed=seed,
                                samples=samples, measured=measured, progress=progress)
        return result["gallery"], result["rows"], result["files"], result["report"]

    size = studio.size
    with gr.Blocks(title="diffprior", analytics_enabled=False) as app:
        gr.Markdown(f"## diffprior: restore a photo with a diffusion prior\n"
                    f"Model **{studio.model}** ({size}x{size}) on **{studio.device}**. Upload a photo or draw "
                    "one from the prior, pick a damage (or paint the missing region with the brush), pick the "
                    "methods, restore.")
        source = gr.State(None)
        with gr.Row():
            with gr.Column(scale=1):
                editor = gr.ImageEditor(
                    label=f"photo at {size}x{size} (paint the missing region with the brush)", elem_id="photo",
                    type="pil", image_mode="RGBA", sources=[], transforms=[], layers=False,
                    brush=gr.Brush(default_size=max(4, 2 * studio.scale), colors=["#ff00ff"], color_mode="fixed"),
                    canvas_size=(size * studio.scale, size * studio.scale), fixed_canvas=True, height=420)
                with gr.Row():
                    upload_button = gr.UploadButton("Upload a photo", file_types=["image"], type="filepath",
                                                    elem_id="upload", variant="secondary")
                    draw_button = gr.Button("Draw a face from the prior" if "face" in studio.model
                                            else "Draw a picture from the prior", elem_id="draw")
                about = gr.Markdown("no photo yet", elem_id="about")
                with gr.Accordion("the square to restore: the model sees a square of the photo", visible=False,
                                  elem_id="square") as square:
                    whole = gr.Image(label="the whole photo, the square framed", interactive=False, visible=False,
                                     height=OVERVIEW, format="png", elem_id="whole")
                    gr.Markdown("Move the square across and down (percent of the way from the left and top edges) "
                                "and size it (percent of the photo's shorter side). A new square clears the "
                                "painted mask.")
                    with gr.Row():
                        across = raw(gr.Slider(0, 100, value=50, step=1, label="across", elem_id="across"))
                        down = raw(gr.Slider(0, 100, value=50, step=1, label="down", elem_id="down"))
                        side = raw(gr.Slider(MIN_SIDE, 100, value=100, step=1, label="side", elem_id="side"))
            with gr.Column(scale=1):
                task = raw(gr.Radio([(label, value) for value, label in APP_TASKS.items()], value="box-inpaint",
                                    label="damage", elem_id="task"))
                measured = raw(gr.Checkbox(False, label="the photo is already damaged: restore it as it is "
                                           "(x4 super-resolution takes the low-resolution image itself)",
                                           elem_id="measured"))
                methods = raw(gr.CheckboxGroup(list(SOLVERS), value=DEFAULT_METHODS, label="methods",
                                              elem_id="methods"))
                with gr.Row():
                    # the page's limits (tv may iterate past T); a request's values are checked by the app
                    steps = raw(gr.Number(studio.default_steps, label="steps", minimum=1,
                                          maximum=max(studio.prior.schedule.T, APP_MAX_TV_STEPS), elem_id="steps"))
                    sigma_y = raw(gr.Number(0.05, label="sigma_y (measurement noise)", minimum=0,
                                            maximum=arguments.MAX_SIGMA_Y, elem_id="sigma_y"))
                    seed = raw(gr.Number(0, label="seed", precision=0, minimum=0, maximum=arguments.MAX_SEED,
                                         elem_id="seed"))
                samples = raw(gr.Slider(1, APP_MAX_SAMPLES, value=1, step=1, label="K posterior samples (mean and "
                                        "per-pixel std map when K > 1)", elem_id="samples"))
                run_button = gr.Button("Restore", variant="primary", elem_id="restore")
        gallery = gr.Gallery(label="measurement, naive reconstruction and restorations", columns=7,
                             object_fit="contain", height=250, elem_id="results")
        table = gr.Dataframe(headers=METRIC_HEADERS, label="scores (PSNR / SSIM / LPIPS against the clean photo "
                             "when it is known; the residual ||y - A x|| always)", interactive=False,
                             elem_id="metrics")
        downloads = gr.File(label="downloads: restorations (PNG; with a painted mask on a photo of another size, "
                            "also the photo itself with its holes filled, *_full.png) and settings.json (with the "
                            "CLI commands)",
                            file_count="multiple", elem_id="downloads")
        report = gr.JSON(label="settings", visible=False)

        shows = [editor, source, about, whole]
        upload_button.upload(upload, upload_button, [*shows, square, across, down, side], api_name="upload")
        # drawing and restoring share one line of the queue: one job on the model at a time, for all users
        draw_button.click(draw, seed, [*shows, square], api_name="draw", concurrency_limit=1,
                          concurrency_id="model")
        gr.on([s.input for s in (across, down, side)], choose_square, [source, across, down, side], shows,
              api_name="square", trigger_mode="always_last", show_progress="hidden")
        run_button.click(restore, [editor, source, task, methods, steps, sigma_y, seed, samples, measured],
                         [gallery, table, downloads, report], api_name="restore", concurrency_limit=1,
                         concurrency_id="model")
    app.preprocess_data = read_request(app.preprocess_data)
    return app


# -- the command ----------------------------------------------------------------------------------
PARSER = dict(help="a local web app: restore your own photo, compare methods, see the uncertainty",
              description=__doc__.split("\n\n")[0])


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1",
                   help="the address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to "
                        "the network)")
    p.add_argument("--port", type=arguments.integer(1, 65535), default=7860, help="default 7860")
    add_prior_arguments(p)
    p.add_argument("--max-upload-mb", type=arguments.number(0.0, above=True), default=20.0,
                   help="refuse uploads larger than this (default 20 MB)")
    p.add_argument("--max-pixels", type=arguments.positive, default=25_000_000,
                   help="refuse images of more pixels than this, read from the file's header before decoding "
                        "(default 25 million)")


def check_address(host: str, port: int) -> None:
    """Refuse, before anything loads, a host that does not resolve or a port the app cannot listen on (in use,
    privileged, or not an address of this machine), naming the option to change."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except socket.gaierror as e:
        raise ValueError(f"--host {host}: no such address ({e.strerror})") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server does: a port in TIME_WAIT is free
        try:
            probe.bind(address)
        except OSError as e:
            hint = ("choose another --port" if e.errno == errno.EADDRINUSE else
                    "choose a --port above 1023" if e.errno == errno.EACCES else
                    "--host must be an address of this machine, e.g. 127.0.0.1, or 0.0.0.0 for all of them")
            raise ValueError(f"cannot listen on {host} port {port}: {e.strerror}; {hint}") from None


def limit_decoding(max_pixels: int) -> None:
    """Make Pillow refuse, in this whole process, any image of more than twice `max_pixels` pixels (it raises
    above twice its limit and only warns below): Gradio decodes the painted layers a request sends before the
    app sees them, and the app's own check (`Studio.open_upload`) reads the size of an upload from its header."""
    Image.MAX_IMAGE_PIXELS = max_pixels
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)


def run(args) -> int:
    check_address(args.host, args.port)
    device = pick_device(args.device)
    folder = Path(tempfile.mkdtemp(prefix="diffprior-serve-"))
    try:
        (folder / "jobs").mkdir()
        # Gradio keeps uploads and served files in GRADIO_TEMP_DIR, read when it is imported: inside the
        # app's own folder, like every file the app writes.
        os.environ["GRADIO_TEMP_DIR"] = str(folder / "gradio")
        os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
        try:
            import gradio  # noqa: F401
        except ImportError as e:
            raise ImportError(_install_hint()) from e
        max_bytes = int(args.max_upload_mb * 1e6)
        limit_decoding(args.max_pixels)
        studio = Studio(args.model, device, folder, config=args.config, dtype=args.dtype, max_pixels=args.max_pixels,
                        max_bytes=max_bytes)
        app = build_app(studio)
        app.queue(default_concurrency_limit=1, max_size=32)  # one job at a time; others wait in line
        print(f"diffprior serve: {args.model} on {device}, files in {folder}", file=sys.stderr)
        app.launch(server_name=args.host, server_port=args.port, max_file_size=max_bytes, share=False,
                   ssr_mode=False, show_error=True, css=CSS, footer_links=["api"], inbrowser=False,
                   prevent_thread_lock=True)
        try:  # serve until Ctrl-C or SIGTERM, which the command line reports (Gradio's own wait swallows them)
            while True:
                time.sleep(0.2)
        finally:
            app.close(verbose=False)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return 0
