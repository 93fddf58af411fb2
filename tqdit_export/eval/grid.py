"""Sample grids for eyeballing class-conditional generations: one row per class."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

SEPARATOR_GREY = 128


def save_image_grid(images, labels, path: str | Path, nrow_per_class: int | None = None, scale: int = 4,
                    num_classes: int = 10) -> Path:
    """Write a greyscale PNG grid of `images` sorted into one row per class (class 0 on top).

    See `grid_canvas` for the layout. Written atomically; returns the path.
    """
    return _save_png(grid_canvas(images, labels, nrow_per_class, scale, num_classes), path)


def save_side_by_side(panels: list[tuple[str, object, object]], path: str | Path, scale: int = 4,
                      num_classes: int = 10) -> Path:
    """Write grids next to each other, each under its title: panels = [(title, images, labels), ...]."""
    from PIL import Image, ImageDraw

    canvases = [grid_canvas(images, labels, None, scale, num_classes) for _, images, labels in panels]
    title_h, gap = 16, 12
    height = max(c.shape[0] for c in canvases) + title_h
    width = sum(c.shape[1] for c in canvases) + gap * (len(canvases) - 1)
    out = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(out)
    x = 0
    for (title, _, _), canvas in zip(panels, canvases):
        draw.text((x + 2, 2), title, fill=0)
        out.paste(Image.fromarray(canvas, mode="L"), (x, title_h))
        x += canvas.shape[1] + gap
    return _save_png(np.asarray(out), path)


def _save_png(canvas: np.ndarray, path: str | Path) -> Path:
    from PIL import Image

    from ..io import atomic_output

    path = Path(path)
    with atomic_output(path) as tmp:
        Image.fromarray(canvas, mode="L").save(tmp, format="PNG")
    return path


def grid_canvas(images, labels, nrow_per_class: int | None = None, scale: int = 4,
                num_classes: int = 10) -> np.ndarray:
    """A uint8 greyscale grid of `images` sorted into one row per class (class 0 on top).

    images: (N, 1, H, W) or (N, H, W) in [-1, 1] (mapped to 0..255, clipped); labels: (N,)
    ints in 0..num_classes-1. Each row holds up to `nrow_per_class` images of its class in
    input order (default: the largest class count); empty cells stay separator grey. Cells
    are upscaled `scale`x with nearest neighbour and parted by 1-px grey lines, so the PNG
    is (num_classes * H*scale + num_classes - 1) high and (cols * W*scale + cols - 1) wide.
    """
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    x = np.asarray(images, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise ValueError(f"expected one channel, got images of shape {x.shape}")
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"images must be (N, 1, H, W) or (N, H, W), got {np.shape(images)}")
    if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers of shape ({len(x)},), got {y.dtype} {y.shape}")
    if len(y) and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must be in 0..{num_classes - 1}, got range {y.min()}..{y.max()}")
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    counts = np.bincount(y, minlength=num_classes) if len(y) else np.zeros(num_classes, int)
    cols = int(nrow_per_class) if nrow_per_class is not None else max(int(counts.max()), 1)
    if cols < 1:
        raise ValueError(f"nrow_per_class must be >= 1, got {nrow_per_class}")

    h, w = x.shape[1] * scale, x.shape[2] * scale
    grey = np.round((np.clip(np.nan_to_num(x, nan=-1.0), -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    canvas = np.full((num_classes * (h + 1) - 1, cols * (w + 1) - 1), SEPARATOR_GREY, dtype=np.uint8)
    for c in range(num_classes):
        for j, i in enumerate(np.flatnonzero(y == c)[:cols]):
            cell = np.kron(grey[i], np.ones((scale, scale), dtype=np.uint8))
            canvas[c * (h + 1) : c * (h + 1) + h, j * (w + 1) : j * (w + 1) + w] = cell
    return canvas
