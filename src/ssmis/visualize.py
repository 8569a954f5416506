"""PNG pictures: a segmentation overlay on the slice that shows the most foreground, and metric curves."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["best_slice", "save_overlay", "save_curves", "save_curve_panels", "mean_band"]


def best_slice(label: np.ndarray, pred: np.ndarray | None = None) -> int:
    """Index along the last axis of the ``[H, W, D]`` slice with the most label
    (or, failing that, prediction) voxels."""
    for vol in (label, pred):
        if vol is not None and np.any(vol > 0):
            return int(np.argmax((vol > 0).reshape(-1, vol.shape[-1]).sum(0)))
    return label.shape[-1] // 2


def save_overlay(
    image: np.ndarray, label: np.ndarray | None, pred: np.ndarray, path: str | os.PathLike, title: str = ""
) -> Path:
    """Write a PNG of ``image`` with the prediction filled and the ground truth outlined.

    Args:
        image, label, pred: ``[H, W]`` slices or ``[H, W, D]`` volumes (then the best slice is drawn).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .utils.atomic import atomic_replace

    image, pred = np.asarray(image, float), np.asarray(pred)
    label = None if label is None else np.asarray(label)
    if image.ndim == 3:
        k = best_slice(label if label is not None else pred, pred)
        image, pred = image[..., k], pred[..., k]
        label = None if label is None else label[..., k]
        title = f"{title} (slice {k})".strip()
    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    ax.imshow(image.T, cmap="gray", origin="lower")
    masked = np.ma.masked_where(pred.T == 0, pred.T)
    ax.imshow(masked, cmap="autumn", alpha=0.45, origin="lower", interpolation="nearest")
    if label is not None and np.any(label > 0):
        ax.contour(label.T, levels=np.arange(0.5, label.max() + 0.5), colors="cyan", linewidths=1.0, origin="lower")
    ax.set_title(title + "\nfill: prediction, cyan: ground truth", fontsize=9)
    ax.axis("off")
    fig.tight_layout()
    out = atomic_replace(lambda tmp: fig.savefig(tmp, format="png"), path)
    plt.close(fig)
    return out


def save_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    xlabel: str = "iteration",
    ylabel: str = "validation Dice",
    title: str = "",
) -> Path:
    """Write a PNG line plot, one line per ``name -> (x, y)``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4), dpi=100)
    # the default cycle repeats after 10 colours; beyond that, 20 colours and a second line style keep lines apart
    colours = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors
    for i, (name, (x, y)) in enumerate(curves.items()):
        style = "-" if i < len(colours) else "--"
        ax.plot(x, y, marker="o", markersize=3, label=name, color=colours[i % len(colours)], linestyle=style)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the plot: never over a curve
    fig.tight_layout()
    return _save_png(fig, path)


def _save_png(fig: Any, path: str | os.PathLike) -> Path:
    """Write ``fig`` to ``path`` as a PNG cropped to its contents (replaced atomically), and close it."""
    import matplotlib.pyplot as plt

    from .utils.atomic import atomic_replace

    out = atomic_replace(lambda tmp: fig.savefig(tmp, format="png", bbox_inches="tight"), path)
    plt.close(fig)
    return out


def mean_band(runs: Sequence[tuple[Sequence[float], Sequence[float]]]
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(x, mean, low, high)`` over the runs ``(x, y)`` (one per seed), at the x values every run has."""
    common = sorted(set.intersection(*(set(float(v) for v in x) for x, _ in runs))) if runs else []
    if not common:
        empty = np.zeros(0)
        return empty, empty, empty, empty
    ys = np.array([[dict(zip((float(v) for v in x), y))[c] for c in common] for x, y in runs], dtype=float)
    return np.array(common), ys.mean(0), ys.min(0), ys.max(0)


def save_curve_panels(
    panels: Mapping[str, Mapping[str, Sequence[tuple[Sequence[float], Sequence[float]]]]],
    path: str | os.PathLike,
    xlabel: str = "iteration",
    ylabel: str = "validation Dice",
    title: str = "",
    dashed: Sequence[str] = (),
    colours: Mapping[str, Any] | None = None,
) -> Path:
    """Write a PNG with one panel per ``panel name -> {line name -> runs}``: each line is the mean over its runs
    ``(x, y)`` (the seeds), with their range shaded. A line keeps its colour in every panel: ``colours[name]``
    (any matplotlib colour) where given, else the next of the ``tab10`` colours left over; lines named in
    ``dashed`` (a reference such as an upper bound, or a method's second line) are dashed. One legend, below the
    panels; the number of seeds is the caller's to say (a table beside the figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(name for lines in panels.values() for name in lines))
    colour = dict(colours or {})
    taken = {matplotlib.colors.to_rgb(c) for c in colour.values()}
    spare = [c for c in plt.get_cmap("tab10").colors if c not in taken] or list(plt.get_cmap("tab10").colors)
    for i, name in enumerate(n for n in names if n not in colour):
        colour[name] = spare[i % len(spare)]
    fig, axes = plt.subplots(1, max(1, len(panels)), figsize=(5.2 * max(1, len(panels)), 4), dpi=100,
                             sharey=True, squeeze=False)
    for ax, (panel, lines) in zip(axes[0], panels.items()):
        for name, runs in lines.items():
            x, mean, low, high = mean_band(runs)
            if not len(x):
                continue
            ax.plot(x, mean, marker="o", markersize=3, color=colour[name], label=name,
                    linestyle="--" if name in dashed else "-")
            if len(runs) > 1:
                ax.fill_between(x, low, high, color=colour[name], alpha=0.15, linewidth=0)
        ax.set_title(panel)
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(ylabel)
    handles: dict[str, Any] = {}
    for ax in axes[0]:  # one legend entry per line, whichever panel drew it
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    if handles:
        fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(3, len(handles)),
                   fontsize=9, bbox_to_anchor=(0.5, -0.02))
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.08 + 0.05 * ((len(handles) - 1) // 3), 1, 1))
    return _save_png(fig, path)
