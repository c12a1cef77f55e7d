"""Figures: labelled image grids written as PNG (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import Tensor  # noqa: E402

from .io import saved_bytes, write_bytes  # noqa: E402


def displayable(y: Tensor, size: tuple[int, int]) -> Tensor:
    """A measurement shown as an image of `size`: grey for one channel, nearest-neighbour upsampling when
    it is smaller."""
    if y.dim() == 4 and y.shape[1] == 1:
        y = y.expand(-1, 3, -1, -1)
    if y.dim() == 4 and y.shape[1] == 3 and tuple(y.shape[-2:]) != tuple(size):
        return F.interpolate(y, size=size, mode="nearest")
    return y


def image_table(rows: list[list[Tensor | None]], path: str | Path, *, col_titles: list[str] | None = None,
                row_titles: list[str] | None = None, captions: list[list[str]] | None = None,
                cell: float = 1.6, title: str | None = None) -> Path:
    """Save a table of images (each (C, H, W) or (1, C, H, W) in [-1, 1], C = 3 or 1 (grey); None leaves a cell
    empty), with column titles, row titles and a caption under each image (e.g. its PSNR)."""
    n_rows, n_cols = len(rows), max(len(r) for r in rows)
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(cell * n_cols, cell * n_rows + 0.4 * bool(title)),
                             squeeze=False)
    for i, row in enumerate(rows):
        for j in range(n_cols):
            ax = axes[i][j]
            ax.set_xticks([]), ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            img = row[j] if j < len(row) else None
            if img is not None:
                img = img[0] if img.dim() == 4 else img
                img = img.expand(3, -1, -1) if img.shape[0] == 1 else img  # grey, not a colour map
                ax.imshow(((img.detach().float().cpu().clamp(-1, 1) + 1) / 2).permute(1, 2, 0).numpy(),
                          interpolation="nearest")
            if captions and j < len(captions[i]) and captions[i][j]:
                ax.set_xlabel(captions[i][j], fontsize=7)
            if i == 0 and col_titles and j < len(col_titles):
                ax.set_title(col_titles[j], fontsize=8)
            if j == 0 and row_titles:
                ax.set_ylabel(row_titles[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Write a matplotlib figure to `path` atomically (folders made as needed; the format follows the
    suffix) and close it."""
    fig.tight_layout()
    path = Path(path)
    try:
        fmt = path.suffix[1:].lower() or "png"
        return write_bytes(path, saved_bytes(lambda f: fig.savefig(f, dpi=dpi, format=fmt)))
    finally:
        plt.close(fig)
