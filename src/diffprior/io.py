"""Image files <-> tensors. The only place that converts between [0, 255] and the library's [-1, 1].

Reading: PNG, JPEG, BMP, ... (anything Pillow opens) become RGB; an alpha channel is composited onto a
white background (`alpha="white"`, the default) or onto black, or dropped; greyscale is replicated to
three channels. `size` makes a square image: the central square crop, then an antialiased (Lanczos)
resize, so odd sizes and aspect ratios are handled the same, documented way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm"}


def open_image(path: str | Path, *, alpha: str = "white") -> Image.Image:
    """Open an image file as an RGB PIL image, with clear errors for missing or unreadable files."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    try:
        with Image.open(path) as im:
            im.load()
            return to_rgb(im, alpha=alpha)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"cannot read {path} as an image ({e})") from e


def to_rgb(im: Image.Image, *, alpha: str = "white") -> Image.Image:
    """Convert any PIL mode to RGB. alpha: 'white' or 'black' (composite onto it) or 'drop'."""
    if alpha not in ("white", "black", "drop"):
        raise ValueError(f"alpha must be 'white', 'black' or 'drop', got {alpha!r}")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        if alpha == "drop":
            return rgba.convert("RGB")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255) if alpha == "white" else (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        arr = arr / (65535.0 if arr.max() > 255 else 255.0) * 255.0
        im = Image.fromarray(arr.round().clip(0, 255).astype(np.uint8))
    return im.convert("RGB")


def center_square(im: Image.Image, size: int | None) -> Image.Image:
    """The central square crop, resized (antialiased) to size x size; unchanged when size is None."""
    if size is None:
        return im
    w, h = im.size
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    im = im.crop((left, top, left + s, top + s))
    return im if s == size else im.resize((size, size), Image.LANCZOS)


def from_uint8(images: Tensor) -> Tensor:
    """uint8 values in [0, 255] -> float32 in [-1, 1]."""
    return images.float() / 127.5 - 1.0


def pil_to_tensor(im: Image.Image) -> Tensor:
    """An RGB PIL image -> (1, 3, H, W) float32 in [-1, 1]."""
    return from_uint8(torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1)[None])


def tensor_to_pil(x: Tensor) -> Image.Image:
    """A (3, H, W) or (1, 3, H, W) tensor in [-1, 1] -> an RGB PIL image (values clipped)."""
    if x.dim() == 4:
        if x.shape[0] != 1:
            raise ValueError(f"expected one image, got a batch of {x.shape[0]}")
        x = x[0]
    arr = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy())


def load_image(path: str | Path, size: int | None = None, *, alpha: str = "white") -> Tensor:
    """Read an image file as a (1, 3, H, W) tensor in [-1, 1]; with `size`, centre-cropped and resized."""
    return pil_to_tensor(center_square(open_image(path, alpha=alpha), size))


def save_image(x: Tensor, path: str | Path) -> Path:
    """Write one image (3, H, W) or (1, 3, H, W) in [-1, 1] to a file; the format follows the suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensor_to_pil(x).save(path)
    return path


def load_mask(path: str | Path, size: tuple[int, int]) -> Tensor:
    """Read a mask image: white (>= 50% grey) marks observed pixels, black marks missing ones.

    The mask must already have the image's size (H, W): a mask that does not fit is an error, never
    silently resized."""
    im = open_image(path).convert("L")
    if (im.size[1], im.size[0]) != tuple(size):
        raise ValueError(f"mask {path} does not fit: it is {im.size[0]}x{im.size[1]} (WxH) but the image is "
                         f"{size[1]}x{size[0]}")
    arr = np.asarray(im, dtype=np.float32) / 255.0
    return torch.from_numpy((arr >= 0.5).astype(np.float32))


def image_grid(images: Tensor, nrow: int = 8, padding: int = 2, pad_value: float = 1.0) -> Tensor:
    """Tile a batch (B, C, H, W) into one (C, H', W') image, row-major, `nrow` images per row."""
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
    """The image files directly in a folder, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder at {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
