"""Evaluation plots (matplotlib, Agg backend: no display needed, safe in DataLoader workers and on clusters).

Figures are built with matplotlib's object API (``Figure`` + ``FigureCanvasAgg``), never ``pyplot``, so nothing here
touches global plotting state or needs a GUI backend.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Line styles per predictor, so that every plot reads the same way: the policy solid, references dashed/dotted.
_STYLES = {
    "ground truth": {"color": "black", "linestyle": "-", "linewidth": 1.6},
    "state": {"linestyle": "-.", "linewidth": 1.2},
    "hold": {"linestyle": "--", "linewidth": 1.2},
    "mean_action": {"linestyle": ":", "linewidth": 1.4},
}
_DPI = 100


def _grid(n_panels: int, max_cols: int = 3) -> tuple[int, int]:
    cols = min(max_cols, n_panels)
    return math.ceil(n_panels / cols), cols


def _save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=_DPI)
    return path


def plot_first_actions(
    path: str | Path,
    time_s: np.ndarray,
    ground_truth: np.ndarray,
    predictions: Mapping[str, np.ndarray],
    groups: Mapping[str, Sequence[int]],
    dim_names: Sequence[str],
    title: str,
) -> Path:
    """One episode: the predicted first action vs the ground truth over time, one panel per action group.

    Args:
        path: the PNG to write (parent folders are created).
        time_s: float [N], seconds since the episode's start of each evaluated frame (sorted).
        ground_truth: float [N, A], the recorded action at each frame (the action's own units).
        predictions: label -> float [N, A] first predicted actions (e.g. ``{"policy": ...}``).
        groups: group name -> action dims it holds (R1Pro: base, torso, left_arm, ...).
        dim_names: A names, used in the legends.
        title: figure title (checkpoint, episode).

    Returns:
        ``path``.
    """
    rows, cols = _grid(len(groups))
    fig = Figure(figsize=(5.2 * cols, 2.8 * rows), layout="constrained")
    fig.suptitle(title)
    marker = "o" if len(time_s) < 40 else None  # sparse frames (a capped evaluation) are easier to read as points
    for panel, (group, dims) in enumerate(groups.items()):
        ax = fig.add_subplot(rows, cols, panel + 1)
        colours = [f"C{i % 10}" for i in range(len(dims))]
        for dim, colour in zip(dims, colours, strict=True):
            ax.plot(time_s, ground_truth[:, dim], color=colour, linewidth=1.6, marker=marker, markersize=3,
                    label=f"{dim_names[dim]} (truth)")
            for label, pred in predictions.items():
                ax.plot(time_s, pred[:, dim], color=colour, linestyle="--", linewidth=1.2, marker=marker,
                        markersize=3, markerfacecolor="none", label=f"{dim_names[dim]} ({label})")
        ax.set_title(f"{group}: solid = ground truth, dashed = {', '.join(predictions)}", fontsize=9)
        ax.set_xlabel("time in episode (s)")
        ax.grid(alpha=0.3)
        if len(dims) <= 4:
            ax.legend(fontsize=6, loc="best")
    return _save(fig, path)


def plot_error_vs_chunk_step(
    path: str | Path,
    curves: Mapping[str, Mapping[str, Sequence[float | None]]],
    step_s: float,
    title: str,
) -> Path:
    """Mean absolute error as a function of the step inside the predicted chunk, one panel per action group.

    Args:
        path: the PNG to write.
        curves: predictor label -> group name (``"all dims"`` first, then the action groups) -> C values (MAE in the
            group's units at chunk steps 0..C-1; ``None`` where no frame had a valid step).
        step_s: seconds between two chunk steps (frame stride / fps), for the x axis.
        title: figure title.

    Returns:
        ``path``.
    """
    labels = list(curves)
    group_names = list(curves[labels[0]])
    rows, cols = _grid(len(group_names))
    fig = Figure(figsize=(5.2 * cols, 2.8 * rows), layout="constrained")
    fig.suptitle(title)
    for panel, group in enumerate(group_names):
        ax = fig.add_subplot(rows, cols, panel + 1)
        for i, label in enumerate(labels):
            values = np.array([np.nan if v is None else v for v in curves[label][group]], dtype=np.float64)
            steps = np.arange(len(values))
            style = dict(_STYLES.get(label, {"linestyle": "-", "linewidth": 1.8}))
            style.setdefault("color", f"C{i % 10}")
            ax.plot(steps, values, label=label, **style)
        ax.set_title(group, fontsize=9)
        ax.set_xlabel(f"chunk step ({step_s * 1000:.0f} ms each)")
        ax.set_ylabel("MAE (action units)")
        ax.grid(alpha=0.3)
        if panel == 0:
            ax.legend(fontsize=7, loc="best")
    return _save(fig, path)
