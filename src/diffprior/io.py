"""Image files <-> tensors. The only place that converts between [0, 255] and the library's [-1, 1].

Reading: PNG, JPEG, BMP, ... (anything Pillow opens) become RGB; an alpha channel is composited onto a
white background (`alpha="white"`, the default) or onto black, or dropped; greyscale is replicated to
three channels. `size` makes a square image: the central square crop, then an antialiased (Lanczos)
resize, so odd sizes and aspect ratios are handled the same, documented way.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import itertools
import numbers
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".webp", ".avif", ".tif", ".tiff", ".gif", ".ppm",
                  ".pgm", ".pnm", ".tga"}  # the files of a folder that are read as its images


HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # 16-bit, 32-bit integer or float greyscale
# what a warning about values far outside [-1, 1] tells the user (measurements, start images, references)
RANGE_HINT = "the library's images are in [-1, 1], not [0, 255] (dp.io.load_image converts an image file)"


def open_image(path: str | Path, *, alpha: str = "white") -> Image.Image:
    """Open an image file as an RGB PIL image, upright by its EXIF orientation, with clear errors for missing
    or unreadable files.

    A file whose header claims more than Pillow's `Image.MAX_IMAGE_PIXELS` pixels (a decompression bomb)
    is refused before it is decoded."""
    if not str(path).strip():  # Path("") is the current folder
        raise FileNotFoundError("an empty file name: give an image file")
    path = Path(path)
    check_alpha(alpha)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give an image file")
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as im:
            limit = Image.MAX_IMAGE_PIXELS
            if limit and im.size[0] * im.size[1] > limit:
                raise ValueError(f"it claims {im.size[0]}x{im.size[1]} pixels, more than the {limit} that "
                                 "PIL.Image.MAX_IMAGE_PIXELS allows (a decompression bomb?)")
            im.load()
            frames = getattr(im, "n_frames", 1)
            # upright as viewers show it: a camera's EXIF orientation tag turns or mirrors the stored pixels
            rgb = to_rgb(ImageOps.exif_transpose(im), alpha=alpha)
            invisible = alpha != "drop" and has_alpha(im) and im.convert("RGBA").getchannel("A").getextrema() == (0, 0)
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read {path} as an image ({e})") from e
    if frames > 1:
        warnings.warn(f"{path} is an animation of {frames} frames: only the first is read")
    if invisible:
        warnings.warn(f"{path} is transparent everywhere: it reads as a blank {alpha} image")
    return rgb


def check_alpha(alpha: str) -> None:
    if alpha not in ("white", "black", "drop"):
        raise ValueError(f"alpha must be 'white', 'black' or 'drop', got {alpha!r}")


def has_alpha(im: Image.Image) -> bool:
    """Whether `to_rgb` composites `im`: an alpha channel, or a palette with a transparent entry."""
    return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def to_rgb(im: Image.Image, *, alpha: str = "white") -> Image.Image:
    """Convert any PIL mode to RGB. alpha: 'white' or 'black' (composite onto it) or 'drop'."""
    check_alpha(alpha)
    if has_alpha(im):
        rgba = im.convert("RGBA")
        if alpha == "drop":
            return rgba.convert("RGB")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if alpha == "white" else (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in HIGH_DEPTH_MODES:
        arr = np.asarray(im, dtype=np.float64)
        if im.mode.startswith("I;16") or arr.max() > 255:
            full = 65535.0
        else:  # a float image in [0, 1] (a few values over 1 are clipped), or 8-bit values in a wider type
            full = 1.0 if im.mode == "F" and np.percentile(arr, 99) <= 1 else 255.0
        arr = arr / full * 255.0
        im = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8))
    return im.convert("RGB")


def square_box(size: tuple[int, int], crop: tuple[int, int, int] | None = None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the square of an image of `size` (W, H) that the model sees: the central
    square, or `crop` = (left, top, side), refused (ValueError) when it reaches beyond the image."""
    w, h = size
    if crop is None:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        return left, top, left + s, top + s
    left, top, s = crop
    if left + s > w or top + s > h:
        raise ValueError(f"the crop {left},{top},{s} (LEFT,TOP,SIDE) reaches beyond the {w}x{h} photo")
    return left, top, left + s, top + s


def center_square(im: Image.Image, size: int | None, crop: tuple[int, int, int] | None = None) -> Image.Image:
    """The central square crop (or the square `crop`, see `square_box`), resized (antialiased) to size x size;
    unchanged when size is None."""
    if size is None:
        return im
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1:
        raise ValueError(f"size={size!r}: the side of the square image, a whole number >= 1")
    im = im.crop(square_box(im.size, crop))
    return im if im.size[0] == size else im.resize((size, size), Image.LANCZOS)


def lost_in_rgb8(path: str | Path) -> str | None:
    """What an 8-bit RGB copy of an image file loses ("16-bit depth", "transparency", ...), or None."""
    with Image.open(path) as im:
        lost = [f"{'floating-point' if im.mode == 'F' else '16-bit'} depth"] if im.mode in HIGH_DEPTH_MODES else []
        if "A" in im.mode or "transparency" in im.info:
            lost.append("transparency")
    return " and ".join(lost) or None


def fit_note(name: str, size: tuple[int, int], side: int) -> str | None:
    """What `center_square` does to an image of `size` (W, H) on its way to side x side, when it loses part of the
    image or makes up detail: a note for the user, or None when the image is already square and large enough."""
    w, h = size
    s = min(w, h)
    if w == h and s >= side:
        return None
    what = f"{name} is {w}x{h}: " + (f"its central {s}x{s} square is used" if w != h else "it is used")
    if s < side:
        what += f", upscaled to {side}x{side}, so the result has no more detail than its {s}x{s} pixels"
    return what


def from_uint8(images: Tensor) -> Tensor:
    """uint8 values in [0, 255] -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def pil_to_tensor(im: Image.Image, channels: int = 3) -> Tensor:
    """A PIL image -> (1, 3, H, W) float32 in [-1, 1], RGB; with `channels` = 1, (1, 1, H, W), grey (ITU-R 601
    luma, Pillow's "L")."""
    if channels == 1:
        return from_uint8(torch.from_numpy(np.array(im.convert("L")))[None, None])
    return from_uint8(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)[None])


def is_grey(im: Image.Image) -> bool:
    """Whether the RGB image `im` has no colour (its three channels equal)."""
    r, g, b = (np.asarray(c) for c in im.convert("RGB").split())
    return bool((r == g).all() and (g == b).all())


def tensor_to_pil(x: Tensor) -> Image.Image:
    """A (C, H, W) or (1, C, H, W) float tensor in [-1, 1], C = 3 (RGB) or 1 (grey) -> a PIL image (values
    clipped)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        kind = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"expected a floating-point image tensor in [-1, 1], got {kind}")
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    if x.dim() != 3 or x.shape[0] not in (1, 3):
        raise ValueError(f"expected an image (C, H, W) or (1, C, H, W) with C = 3 (RGB) or 1 (grey), got shape "
                         f"{tuple(x.shape)}")
    x = x.detach().float().cpu()
    if not bool(x.isfinite().all()):
        raise ValueError("the image contains NaN or infinite values")
    largest = float(x.abs().max()) if x.numel() else 0.0
    if largest > 10:  # a little beyond [-1, 1]: an overshoot, a Gaussian's draw; this far: pixels in [0, 255]
        warnings.warn(f"the image reaches {largest:.4g}, and is clipped to [-1, 1]: {RANGE_HINT}", stacklevel=2)
    arr = ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def load_image(path: str | Path, size: int | None = None, *, alpha: str = "white", channels: int = 3) -> Tensor:
    """Read an image file as a (1, 3, H, W) tensor in [-1, 1] (`channels` = 1: (1, 1, H, W), grey); with
    `size`, centre-cropped and resized."""
    return pil_to_tensor(center_square(open_image(path, alpha=alpha), size), channels)


def image_format(path: str | Path) -> str:
    """The Pillow format that writes files with `path`'s suffix (PNG for .png, ...); ValueError if none, or if
    it cannot hold a colour image (XBM, MSP: black and white only), found now rather than after the work."""
    suffix = Path(path).suffix.lower()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(f"cannot write an image to {path}: use a suffix such as .png, .jpg or .webp"
                         + (f" ({suffix!r} is not an image format Pillow writes)" if suffix else ""))
    if not writes_colour(fmt):
        raise ValueError(f"cannot write a colour image to {path}: Pillow's {fmt} format ({suffix}) cannot hold "
                         "one; use .png, .jpg or .webp")
    return fmt


@functools.cache
def writes_colour(fmt: str) -> bool:
    """Whether Pillow writes an RGB image in format `fmt`."""
    try:
        Image.new("RGB", (16, 16)).save(BytesIO(), format=fmt)
    except Exception:  # a format's writer may raise anything for a mode it does not take
        return False
    return True


# how torch.save's writer ("unexpected pos", "write failed", "iostream error") and safetensors ("os error") say
# that writing a file failed, without an OSError
WRITE_FAILURES = ("unexpected pos", "write failed", "iostream error", "os error")


def atomic_write(path: str | Path, write) -> Path:
    """Call write(tmp) on a temporary file beside `path`, then rename it into place: readers see either
    the old file or the complete new one, never a partial write (a full disk leaves the old file as it was).
    Temporary files of earlier writes of `path` that a killed process left behind (named as this function names
    them, untouched for an hour: not another writer's, still being written) are removed first. Folders are made
    as needed; a write that fails removes those it made."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give a file name")
    made = list(itertools.takewhile(lambda p: not p.exists(), [path.parent, *path.parent.parents]))
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        return _write_into_place(path, write)
    except BaseException:
        for folder in made:  # deepest first: a failed write leaves no empty folder of its own behind
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _write_into_place(path: Path, write) -> Path:
    for stale in path.parent.glob(f".{glob.escape(path.name)}.{'?' * 8}.tmp"):
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                stale.unlink()
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a read-only folder: name the file asked for, not the temporary one
        raise type(e)(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except OSError as e:  # a full disk, an immutable file: say which file, not the temporary one
        if e.errno is not None and e.filename in (None, tmp):
            raise type(e)(e.errno, e.strerror, str(path)) from None
        raise
    except Exception as e:  # torch.save and safetensors report a failed write (a full disk) in their own errors
        if not any(sign in str(e) for sign in WRITE_FAILURES):
            raise
        free = shutil.disk_usage(path.parent).free
        raise OSError(f"cannot write {path}: the write stopped short, with {free:,} bytes free on its disk "
                      "(is it full?)") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write `data` to `path` as `atomic_write` does; a file that already holds exactly `data` is left as it is
    (rerunning a finished run rewrites nothing, so that it also works in a read-only folder)."""
    path = Path(path)
    with contextlib.suppress(OSError):
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return path
    return atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: str | Path, text: str) -> Path:
    """`write_bytes` of `text` in UTF-8."""
    return write_bytes(path, text.encode())


def saved_bytes(save) -> bytes:
    """What save(file) writes into a file object, e.g. an image's or a figure's encoding."""
    buffer = BytesIO()
    save(buffer)
    return buffer.getvalue()


def output_folder(path: str | Path, what: str) -> Path:
    """`path` as the folder that `what` (a run, a command) writes; a file in its place, or a place where it cannot
    be made or written, is refused."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file: {what} writes a folder")
    check_writable(path, path)
    return path


def nearest_existing(path: Path) -> Path:
    """`path`, or the nearest of its parents that exists (a file or a folder)."""
    while not path.exists():
        path = path.parent
    return path


def check_writable(folder: Path, out: Path) -> None:
    """Refuse, before any work, an output `out` in `folder` when the nearest existing folder (up from
    `folder`) is a file or cannot be written."""
    folder = nearest_existing(folder)  # it must let us create the rest
    if not folder.is_dir():
        raise NotADirectoryError(f"cannot write {out}: {folder} is a file, not a folder")
    try:  # a real file, not os.access: root passes access checks in folders such as /proc
        tempfile.TemporaryFile(dir=folder).close()
    except OSError:
        raise PermissionError(f"cannot write {out}: the folder {folder} is not writable") from None


@contextlib.contextmanager
def folder_lock(path: str | Path, what: str) -> Iterator[None]:
    """While the block runs, refuse (FileExistsError) other processes that take this lock on the folder `path`
    to write `what` into it, e.g. the same long run started twice. An advisory lock on the folder itself (no
    file is left behind), released when the block ends or the process dies; no check where the folder does not
    exist yet or the system has no `flock` (Windows)."""
    try:
        import fcntl
        fd = os.open(path, os.O_RDONLY)
    except (ImportError, OSError):
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FileExistsError(f"{path} is in use: another process is writing {what} into it; wait for it to "
                                  "end (or stop it), or give another folder") from None
        except OSError:
            pass  # a file system without locks
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def all_or_none(paths: Iterable[str | Path]) -> Iterator[None]:
    """Files written together: when the block ends by an exception (Ctrl-C, SIGTERM, a full disk), each file of
    `paths` that it changed is put back as it was (an earlier run's file, kept meanwhile as a hard link
    .NAME.previous beside it) or removed, so that a run leaves all of its outputs or none, never a part of them
    that would refuse (or mislead) the next run, and never loses what --overwrite was about to replace."""
    def signature(p: Path):
        return (p.stat().st_ino, p.stat().st_mtime_ns) if p.exists() else None
    before = {Path(p): signature(Path(p)) for p in paths}
    kept = {}
    for p in before:
        previous = p.with_name(f".{p.name}.previous")
        with contextlib.suppress(OSError):  # no hard links here: the old file cannot be kept
            previous.unlink(missing_ok=True)
            if p.is_file():
                os.link(p, previous)
                kept[p] = previous
    try:
        yield
    except BaseException:
        for p, old in before.items():
            if signature(p) != old:
                if p in kept:
                    os.replace(kept.pop(p), p)
                else:
                    p.unlink(missing_ok=True)
        raise
    finally:
        for previous in kept.values():
            previous.unlink(missing_ok=True)


def save_image(x: Tensor | Image.Image, path: str | Path) -> Path:
    """Write one image (C, H, W) or (1, C, H, W) in [-1, 1], C = 3 or 1 (grey), or a PIL image, to a file,
    atomically; the format follows the suffix. JPEG is written at quality 95 without chroma subsampling and
    WebP losslessly (Pillow's defaults, quality 75 and 80, blur a 64-px face visibly)."""
    im, fmt = x if isinstance(x, Image.Image) else tensor_to_pil(x), image_format(path)
    options = SAVE_OPTIONS.get(fmt, {})
    if fmt == "ICO" and max(im.size) <= 256:  # Pillow's standard sizes up to the image's, none under 16 px
        options = {"sizes": [im.size]}
    return write_bytes(path, saved_bytes(lambda f: im.save(f, format=fmt, **options)))


SAVE_OPTIONS = {"JPEG": {"quality": 95, "subsampling": 0}, "WEBP": {"lossless": True}}


@functools.cache
def exact_format(fmt: str) -> bool:
    """Whether Pillow's `fmt` (with SAVE_OPTIONS) gives back an RGB image as it was given, pixel for pixel and
    at its size: not JPEG (compressed), GIF (256 colours), ICO (at most 256x256), PDF (not read back) ..."""
    given = np.random.default_rng(0).integers(0, 256, (18, 257, 3), dtype=np.uint8)
    buffer = BytesIO()
    try:
        Image.fromarray(given).save(buffer, format=fmt, **SAVE_OPTIONS.get(fmt, {}))
        with Image.open(BytesIO(buffer.getvalue())) as back:
            return np.array_equal(np.asarray(back.convert("RGB")), given)
    except Exception:  # a format's writer or reader may raise anything
        return False


def load_mask(path: str | Path, size: tuple[int, int], photo_size: tuple[int, int] | None = None,
              crop: tuple[int, int, int] | None = None) -> Tensor:
    """Read a mask image: white (>= 50% grey) marks observed pixels, black marks missing ones.

    The mask has either the photo's size `photo_size` (W, H), and then goes through the photo's own
    central square crop (or `crop`) and resize to `size` (H, W), or already the size `size`. Any other size
    is an error, never silently resized. A mask that leaves no pixel of the model's square missing is an error
    too: there is nothing to inpaint."""
    im = drawn = open_mask(path)
    if photo_size is not None and im.size == tuple(photo_size) and im.size != (size[1], size[0]):
        if size[0] != size[1]:
            raise ValueError(f"a mask of the photo's size needs a square image size, got {size}")
        im = center_square(im, size[0], crop=crop)
    if (im.size[1], im.size[0]) != tuple(size):
        photo = f"the photo's {photo_size[0]}x{photo_size[1]} or " if photo_size else ""
        raise ValueError(f"mask {path} does not fit: it is {im.size[0]}x{im.size[1]} (WxH), expected "
                         f"{photo}the model's {size[1]}x{size[0]}")
    known = binary_mask(im)
    if known.all() and drawn is not im:  # holes drawn at the photo's size that the resize made vanish
        left, top, right, bottom = square_box(drawn.size, crop)
        missing = int((~binary_mask(drawn.crop((left, top, right, bottom)))).sum())
        if missing:
            raise ValueError(f"mask {path} marks {missing} pixels missing in the square the model sees, but none "
                             f"remains at the model's {size[1]}x{size[0]}: holes thinner than one of its pixels "
                             f"({(right - left) / size[1]:.3g} photo pixels) vanish; draw them thicker")
    if not known.any():
        where = " in the square the model sees" if photo_size else ""
        ones = (" Its pixels are only 0 and 1: a 0/1 mask saved as it is? Save known pixels as 255 (white)."
                if np.asarray(im).max() == 1 else "")
        raise ValueError(f"mask {path} marks every pixel missing{where} (white = known, black = missing): the "
                         f"restoration would see nothing of the photo.{ones}")
    if known.all():
        where = " in the square the model sees" if photo_size else ""
        raise ValueError(f"mask {path} marks no pixel missing{where} (white = known, black = missing): there is "
                         "nothing to inpaint")
    return torch.from_numpy(known.astype(np.float32))


def open_mask(path: str | Path) -> Image.Image:
    """A mask file as a greyscale image. Transparent pixels could mean either kind (an eraser's hole in an
    opaque mask, or the unpainted part of a layer with painted holes), so a mask whose transparency changes
    which pixels are known is refused rather than guessed."""
    if str(path).strip() and not Path(path).exists():
        raise FileNotFoundError(f"no mask file at {path}")
    with warnings.catch_warnings():  # transparency is checked here
        warnings.filterwarnings("ignore", message=".* is transparent everywhere")
        on_white, on_black = [open_image(path, alpha=background).convert("L") for background in ("white", "black")]
    if (binary_mask(on_white) != binary_mask(on_black)).any():
        raise ValueError(f"mask {path} has transparent pixels, which could mean known or missing: save it without "
                         "transparency, white where the image is known and black where it is missing")
    return on_white


def binary_mask(im: Image.Image) -> np.ndarray:
    """A greyscale mask image as booleans: True (observed) where it is at least 50% white."""
    return np.asarray(im, dtype=np.float32) / 255.0 >= 0.5


def photo_mask(path: str | Path, photo_size: tuple[int, int], size: int,
               crop: tuple[int, int, int] | None = None) -> np.ndarray:
    """The mask of `load_mask` at the photo's size (H, W booleans, True = observed): as drawn when it has the
    photo's size, else `stretch_mask` of a mask of the model's size."""
    im = open_mask(path)
    if im.size == tuple(photo_size):
        return binary_mask(im)
    if im.size != (size, size):
        raise ValueError(f"mask {path} does not fit: it is {im.size[0]}x{im.size[1]} (WxH), expected the "
                         f"photo's {photo_size[0]}x{photo_size[1]} or the model's {size}x{size}")
    return stretch_mask(binary_mask(im), photo_size, crop)


def stretch_mask(known: np.ndarray, photo_size: tuple[int, int], crop: tuple[int, int, int] | None = None
                 ) -> np.ndarray:
    """A mask of the model's size (H x W booleans, True = observed) stretched (nearest) over the square of a
    photo of `photo_size` (W, H) that the model sees (`square_box`); the rest of the photo counts as observed."""
    full = np.ones((photo_size[1], photo_size[0]), dtype=bool)
    left, top, right, bottom = square_box(photo_size, crop)
    full[top:bottom, left:right] = np.asarray(Image.fromarray(known).resize((right - left, bottom - top),
                                                                            Image.NEAREST))
    return full


def masked_center_square(photo: Image.Image, known: np.ndarray, size: int,
                         crop: tuple[int, int, int] | None = None) -> Image.Image:
    """`center_square` (with `crop`) of a damaged photo from its observed pixels only (`known`, H x W booleans): the
    Lanczos resize of photo * known divided by that of known, so that what the holes hold (a scratch, a
    stain) does not bleed into the observed pixels around them. Where the resized mask is under 1/4 (inside a
    hole: `load_mask` marks the pixels under 1/2 missing) the result is black."""
    def resized(values: np.ndarray) -> np.ndarray:
        return np.asarray(center_square(Image.fromarray(np.ascontiguousarray(values)), size, crop=crop))
    weight = resized(known.astype(np.float32))
    rgb = np.asarray(photo.convert("RGB"), dtype=np.float32) * known[..., None]
    channels = [resized(rgb[..., c]) for c in range(3)]
    observed = weight >= 0.25
    out = np.stack(channels, -1) / np.where(observed, weight, 1.0)[..., None] * observed[..., None]
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))


def check_fillable(known: np.ndarray, crop: tuple[int, int, int] | None = None) -> None:
    """ValueError if the mask (H x W booleans, True = observed) misses a pixel outside the square the model
    sees (the central one, or `crop`), which `fill_holes` cannot fill."""
    left, top, right, bottom = square_box((known.shape[1], known.shape[0]), crop)
    outside = ~known  # a new array
    outside[top:bottom, left:right] = False
    if outside.any():
        where = "the photo's central" if crop is None else "the cropped"
        raise ValueError(f"the mask has {int(outside.sum())} missing pixels outside {where} {right - left}x"
                         f"{bottom - top} square, the part the model restores: choose a square around the holes "
                         "(--crop) or crop the photo and its mask first")


def fill_holes(photo: Image.Image, restored: Tensor, known: np.ndarray,
               crop: tuple[int, int, int] | None = None) -> Image.Image:
    """The photo at its own size, its missing pixels (`known` False, H x W) taken from `restored`, a
    restoration of the square the model sees (the central one, or `crop`) resized up (Lanczos) to that square;
    every observed pixel stays as it was (`check_fillable` says which masks this can fill)."""
    if known.shape != (photo.size[1], photo.size[0]):
        raise ValueError(f"the mask is {known.shape[1]}x{known.shape[0]}, the photo {photo.size[0]}x{photo.size[1]}")
    check_fillable(known, crop)
    left, top, right, bottom = square_box(photo.size, crop)
    fill = tensor_to_pil(restored).convert("RGB").resize((right - left, bottom - top), Image.LANCZOS)
    out = np.array(photo.convert("RGB"))
    square = out[top:bottom, left:right]  # a view: filling it fills `out`
    holes = ~known[top:bottom, left:right]
    square[holes] = np.asarray(fill)[holes]
    return Image.fromarray(out)


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile a batch (B, C, H, W) into one (C, H', W') image, row-major, `nrow` images per row."""
    if images.dim() != 4 or images.shape[0] == 0 or nrow < 1:
        raise ValueError(f"image_grid takes a non-empty batch (B, C, H, W) and nrow >= 1, got shape "
                         f"{tuple(images.shape)} and nrow={nrow}")
    B, C, H, W = images.shape
    nrow = min(nrow, B)
    rows = -(-B // nrow)
    grid = images.new_full((C, rows * (H + padding) + padding, nrow * (W + padding) + padding), pad_value)
    for i in range(B):
        r, c = divmod(i, nrow)
        top, left = padding + r * (H + padding), padding + c * (W + padding)
        grid[:, top:top + H, left:left + W] = images[i]
    return grid


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly in a folder, sorted by name; hidden ones (.name, such as macOS's ._name
    metadata files) are not images of the set."""
    folder = Path(folder)
    if folder.is_file():
        raise NotADirectoryError(f"{folder} is a file: give a folder of images")
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}")
    return sorted(p for p in folder.iterdir()
                  if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
