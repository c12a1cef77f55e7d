"""Training data: folders of face photographs -> one uint8 tensor of square images, and a packed file.

Every image goes through `diffprior.io`: read as RGB, the central square cropped, then an antialiased
(Lanczos) resize to size x size (CelebA's 89x109 -> its central 89x89 -> 64x64). Unreadable files are
reported and skipped. A selection picks files by name range (`first`..`last`, compared as file-name
stems in sorted order, e.g. CelebA 000001..009500) and/or the first `count` of them.

A pack is one zip file (stored, not deflated) holding `faces.json` (size, count, file names, where the
images came from) and the images, in one of three forms:
  npy   the raw uint8 array (N, S, S, 3): exact and fastest to read, 12 KiB an image at 64x64
  webp  a lossless WebP atlas of all images: exact, about half the raw size on faces
  jpeg  a JPEG atlas (4:4:4, `quality` 95 by default): about a quarter of the raw size, ~42 dB PSNR
The npy form is the cache that training writes beside its output; webp and jpeg travel compactly.
"""

from __future__ import annotations

import json
import math
import os
import warnings
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from tqdm.auto import tqdm

from . import io

PACK_FORMATS = ("npy", "webp", "jpeg")
_ATLAS_LIMIT = 16383  # WebP's largest side in pixels (JPEG allows 65535)


@dataclass
class FaceSet:
    images: Tensor                                        # (N, 3, S, S) uint8
    names: list[str]                                      # the file name of each image
    source: str                                           # the folder's name (never a full path)
    selection: dict = field(default_factory=dict)         # {"first": ..., "last": ..., "count": ...} as asked
    skipped: list[str] = field(default_factory=list)      # "name: reason" for each unreadable file

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def describe(self) -> dict:
        """What a model card needs to know about these images."""
        return {"source": self.source, "selection": self.selection, "count": len(self),
                "first_file": self.names[0] if self.names else None,
                "last_file": self.names[-1] if self.names else None, "size": self.size,
                "preprocessing": "RGB, central square crop, antialiased (Lanczos) resize", "skipped": len(self.skipped)}


# -- reading folders ----------------------------------------------------------------------------------
def name_range(first: str | None, last: str | None) -> Callable[[str], bool]:
    """Whether a file-name stem lies in [first, last] (inclusive, compared as text; None leaves that end open).
    A first that comes after the last selects nothing: a ValueError that says so."""
    if first is not None and last is not None and first > last:
        raise ValueError(f"first {first!r} comes after last {last!r} (names compare as text), so nothing is selected")
    return lambda stem: (first is None or stem >= first) and (last is None or stem <= last)


def select_files(folder: str | Path, *, first: str | None = None, last: str | None = None,
                 count: int | None = None) -> list[Path]:
    """The image files of `folder` whose stems lie in [first, last] (inclusive), sorted, at most `count`."""
    selected = name_range(first, last)
    files = [p for p in io.list_images(folder) if selected(p.stem)]
    if count is not None:
        if count < 1:
            raise ValueError(f"count must be positive, got {count}")
        files = files[:count]
    return files


def load_folder(folder: str | Path, size: int, *, first: str | None = None, last: str | None = None,
                count: int | None = None, workers: int | None = None) -> FaceSet:
    """Read the selected images of a folder as (size, size) RGB: the central square, resized (antialiased);
    unreadable files are skipped with a warning, and upscaled ones named in one."""
    files = select_files(folder, first=first, last=last, count=count)
    if not files:
        chosen = ", ".join(f"{k} {v}" for k, v in (("first", first), ("last", last)) if v is not None)
        raise ValueError(f"no image files in {folder}" + (f" for the selection {chosen}" if chosen else "")
                         + " (images directly in it; subfolders are not read)")

    small = []  # images whose central square is upscaled: names and sizes, for one warning

    def read(path: Path) -> np.ndarray | str:
        try:
            image = io.open_image(path)
            if min(image.size) < size:
                small.append(f"{path.name} {image.size[0]}x{image.size[1]}")
            return np.asarray(io.center_square(image, size), dtype=np.uint8)
        except (ValueError, OSError) as e:
            return f"{path.name}: {e}"

    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:  # Pillow releases the GIL while decoding and resizing
        results = list(tqdm(pool.map(read, files), total=len(files), desc=f"reading {Path(folder).name}",
                            unit="image", disable=len(files) < 500, leave=False))
    arrays = [r for r in results if not isinstance(r, str)]
    names = [f.name for f, r in zip(files, results) if not isinstance(r, str)]
    skipped = [r for r in results if isinstance(r, str)]
    if skipped:
        warnings.warn(f"skipped {len(skipped)} unreadable file(s) in {Path(folder).name}: "
                      + "; ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else ""), stacklevel=2)
    if not arrays:
        raise ValueError(f"none of the {len(files)} selected files in {folder} could be read")
    if small:
        warnings.warn(f"{len(small)} of the {len(arrays)} images in {Path(folder).name} are under {size} px on their "
                      f"shorter side: their central square is upscaled, blurred ({', '.join(sorted(small)[:3])}"
                      f"{' ...' if len(small) > 3 else ''})", stacklevel=2)
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    selection = {k: v for k, v in (("first", first), ("last", last), ("count", count)) if v is not None}
    return FaceSet(images, names, Path(folder).resolve().name, selection, skipped)


def subset(faces: FaceSet, *, first: str | None = None, last: str | None = None,
           count: int | None = None) -> FaceSet:
    """The images of `faces` selected as `select_files` selects files (by name stem, then count)."""
    if first is None and last is None and count is None:
        return faces
    selected = name_range(first, last)
    keep = [i for i, name in enumerate(faces.names) if selected(Path(name).stem)]
    keep = keep[:count] if count is not None else keep
    if not keep:
        raise ValueError(f"no images of {faces.source} for the selection first={first}, last={last}, count={count}")
    selection = {**faces.selection, **{k: v for k, v in (("first", first), ("last", last), ("count", count))
                                       if v is not None}}
    return FaceSet(faces.images[keep], [faces.names[i] for i in keep], faces.source, selection, faces.skipped)


# -- packs --------------------------------------------------------------------------------------------
def save_pack(faces: FaceSet, path: str | Path, *, format: str = "npy", quality: int = 95) -> Path:
    """Write a pack (see the module docstring); written atomically. Returns its path."""
    if format not in PACK_FORMATS:
        raise ValueError(f"unknown pack format {format!r}; choose from {', '.join(PACK_FORMATS)}")
    path = Path(path)
    hwc = faces.images.permute(0, 2, 3, 1).numpy()
    meta = {"format": format, "size": faces.size, "count": len(faces), "names": faces.names,
            "source": faces.source, "selection": faces.selection, "skipped": faces.skipped}
    buf = BytesIO()
    if format == "npy":
        np.save(buf, hwc)
        member = "images.npy"
    else:
        cols = math.ceil(math.sqrt(len(faces)))
        rows = math.ceil(len(faces) / cols)
        if max(rows, cols) * faces.size > _ATLAS_LIMIT:
            raise ValueError(f"{len(faces)} images of {faces.size}px do not fit one {format} atlas; use format='npy'")
        atlas = np.zeros((rows * cols, *hwc.shape[1:]), dtype=np.uint8)
        atlas[:len(faces)] = hwc
        S = faces.size
        atlas = atlas.reshape(rows, cols, S, S, 3).transpose(0, 2, 1, 3, 4).reshape(rows * S, cols * S, 3)
        meta["columns"] = cols
        if format == "webp":
            Image.fromarray(atlas).save(buf, format="WEBP", lossless=True, quality=0, method=1)
            member = "atlas.webp"
        else:
            meta["quality"] = quality
            Image.fromarray(atlas).save(buf, format="JPEG", quality=quality, subsampling=0)
            member = "atlas.jpg"
    meta["member"] = member
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder: give the pack's file name, e.g. {path / 'faces.zip'}")

    def write(tmp: str) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as z:
            z.writestr("faces.json", json.dumps(meta, indent=1))
            z.writestr(member, buf.getvalue())
    return io.atomic_write(path, write)


def load_pack(path: str | Path) -> FaceSet:
    """Read a pack written by `save_pack`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no pack file at {path}")
    try:
        with zipfile.ZipFile(path) as z:
            meta = json.loads(z.read("faces.json"))
            missing = [k for k in ("format", "member", "count", "size", "names", "source") if k not in meta]
            if missing:
                raise KeyError(f"faces.json has no {', '.join(missing)}")
            if meta["format"] not in PACK_FORMATS or (meta["format"] != "npy" and "columns" not in meta):
                raise KeyError(f"faces.json: unknown format {meta['format']!r} or no columns")
            data = z.read(meta["member"])
        n, S = int(meta["count"]), int(meta["size"])
        if meta["format"] == "npy":
            hwc = np.load(BytesIO(data))  # a pickled array is refused (allow_pickle=False)
        else:
            with Image.open(BytesIO(data)) as im:
                atlas = np.asarray(im.convert("RGB"))
            cols = int(meta["columns"])
            rows = atlas.shape[0] // S
            hwc = atlas.reshape(rows, S, cols, S, 3).transpose(0, 2, 1, 3, 4).reshape(rows * cols, S, S, 3)[:n]
        if hwc.shape != (n, S, S, 3) or hwc.dtype != np.uint8:
            raise ValueError(f"images of shape {hwc.shape} and type {hwc.dtype}, expected {(n, S, S, 3)} uint8")
    except (zipfile.BadZipFile, KeyError, TypeError, ValueError, OSError, EOFError, json.JSONDecodeError) as e:
        raise ValueError(f"{path} is not a diffprior face pack, or is damaged ({e})") from e
    images = torch.from_numpy(np.ascontiguousarray(hwc)).permute(0, 3, 1, 2).contiguous()
    return FaceSet(images, list(meta["names"]), meta["source"], meta.get("selection", {}), meta.get("skipped", []))


def load_faces(source: str | Path | FaceSet, size: int, *, first: str | None = None, last: str | None = None,
               count: int | None = None, cache: str | Path | None = None) -> FaceSet:
    """Images from a FaceSet, a pack file or a folder, selected by name range and count.
    A folder's images are cached as an npy pack at `cache`, and read back from there while the folder's
    selected file names are unchanged and none of the files is newer than the cache; a damaged cache is
    rebuilt."""
    if not isinstance(source, FaceSet) and not Path(source).exists():
        raise FileNotFoundError(f"no pack file or image folder at {source}")
    if isinstance(source, FaceSet) or Path(source).is_file():
        faces = subset(source if isinstance(source, FaceSet) else load_pack(source), first=first, last=last,
                       count=count)
    else:
        files = select_files(source, first=first, last=last, count=count)
        names = [p.name for p in files]
        faces = None
        if cache is not None and Path(cache).is_file():
            cached_at = Path(cache).stat().st_mtime_ns
            try:
                cached = None if any(p.stat().st_mtime_ns >= cached_at for p in files) else load_pack(cache)
            except ValueError:  # damaged: read the folder again
                cached = None
            seen = sorted(cached.names + [s.split(": ", 1)[0] for s in cached.skipped]) if cached else None
            if cached and cached.size == size and cached.source == Path(source).resolve().name and seen == names:
                faces = cached
        if faces is None:
            faces = load_folder(source, size, first=first, last=last, count=count)
            if cache is not None:
                save_pack(faces, cache)
    if faces.size != size:
        where = source.source if isinstance(source, FaceSet) else source
        raise ValueError(f"{where} holds {faces.size}x{faces.size} images, but size {size} was asked for (--size): "
                         f"pack the images at size {size}, or give their folder")
    return faces
