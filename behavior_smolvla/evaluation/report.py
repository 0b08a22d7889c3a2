"""The evaluation report: the summary table (terminal and Markdown), the run folder's default output location, the
plots of a report."""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from behavior_smolvla.evaluation.metrics import ALL_DIMS, REFERENCE_PREDICTORS


def project_commit() -> str | None:
    """``git rev-parse HEAD`` of this project's checkout, or None (not a git checkout, git missing, no commit)."""
    try:
        proc = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                              capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = proc.stdout.strip()
    return commit if proc.returncode == 0 and commit else None


def default_output_dir(checkpoints: Sequence[str | Path]) -> Path:
    """``<run>/eval/<YYYY-MM-DD_HH-MM-SS>_<step>`` of the first checkpoint (``..._ensemble<K>`` for several), or
    ``<checkpoint>/eval/...`` when the checkpoint does not sit in a run's ``checkpoints/`` folder. Never an existing
    folder (a ``-2``, ``-3``... suffix is added)."""
    from behavior_smolvla.policy.checkpoint import CHECKPOINTS_DIR, resolve_checkpoint

    first = resolve_checkpoint(checkpoints[0])
    base = first.parent.parent if first.parent.name == CHECKPOINTS_DIR else first
    tag = first.name if len(checkpoints) == 1 else f"ensemble{len(checkpoints)}"
    out = base / "eval" / f"{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}_{tag}"
    candidate, k = out, 1
    while candidate.exists():
        k += 1
        candidate = out.with_name(f"{out.name}-{k}")
    return candidate


def members_label(members: Sequence[Any]) -> str:
    """``checkpoint 000600`` or ``ensemble of 2 (000300, 000600)``: the plots' title."""
    if len(members) == 1:
        return f"checkpoint {members[0].checkpoint.name}"
    return f"ensemble of {len(members)} ({', '.join(m.checkpoint.name for m in members)})"


def write_plots(out: Path, report: Mapping[str, Any], frames: Any, primary_pred: np.ndarray,
                names: Sequence[str], groups: Mapping[str, Sequence[int]], step_s: float, label: str) -> list[Path]:
    """The report's PNGs in ``out``: MAE vs chunk step (primary and reference predictors), and per episode the first
    predicted action against the truth. ``frames``: the engine's ``EvalFrames``; ``primary_pred`` float32 [N, C, A];
    ``step_s``: seconds between two actions of a chunk."""
    from behavior_smolvla.evaluation.plots import plot_error_vs_chunk_step, plot_first_actions

    primary = report["primary"]
    curves = {p: report["predictors"][p]["mae_by_chunk_step"] for p in (primary, *REFERENCE_PREDICTORS)
              if p in report["predictors"]}
    paths = [plot_error_vs_chunk_step(out / "error_vs_chunk_step.png", curves, step_s,
                                      f"{label}: MAE vs step inside the chunk ({report['frames_evaluated']} frames)")]
    for ep in report["episodes"]:
        rows = np.flatnonzero(frames.episode_index == ep)
        if len(rows) == 0:
            continue
        paths.append(plot_first_actions(
            out / f"first_action_episode_{ep}.png", frames.timestamp[rows], frames.truth[rows, 0],
            {primary: primary_pred[rows, 0]}, groups, names,
            f"{label}, episode {ep}: first predicted action vs ground truth ({len(rows)} frames)"))
    return paths


# --- presentation ------------------------------------------------------------------------------------------------


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.1f}%" if percent else f"{value:.4g}"


PREDICTOR_LABELS = {"hold": "hold (prev. recorded)"}
"""Table labels where the key alone would mislead: ``hold`` uses an input the policy never sees."""


def summary_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The main figures as a table: one row per action group plus "all dims"; for each of first-action MAE, chunk
    MAE and percent close (first action) the primary predictor and the reference predictors side by side."""
    preds = report["predictors"]
    order = [report["primary"], *(p for p in REFERENCE_PREDICTORS if p in preds)]
    header = ["group"]
    for metric in ("first-action MAE", "chunk MAE", "% close"):
        header += [f"{metric} {PREDICTOR_LABELS.get(p, p)}" for p in order]
    rows = []
    for group in [ALL_DIMS, *report["action_groups"]]:
        row = [group]
        for metric, percent in (("first_action_mae", False), ("chunk_mae", False), ("percent_close", True)):
            for p in order:
                m = preds[p][metric]
                row.append(_fmt(m["mean"] if group == ALL_DIMS else m["per_group"][group], percent))
        rows.append(row)
    return header, rows


def summary_table(report: Mapping[str, Any]) -> Any:
    """A rich Table of :func:`summary_rows`, for the terminal."""
    from rich.table import Table

    header, rows = summary_rows(report)
    # Two-line headers ("first-action MAE" over the predictor) keep the ten columns readable in a terminal.
    header = [h.replace(" MAE ", " MAE\n").replace("% close ", "% close\n") for h in header]
    table = Table(title=f"{report['frames_evaluated']} frames of episodes {_episodes_text(report['episodes'])}; "
                        f"policy chunks: {report['inference']['label']}; "
                        f"MAE in action units, close = within {report['tolerance']:g} of each dim's range")
    for i, col in enumerate(header):
        primary = col.endswith("\n" + report["primary"])
        # The group names are the row labels: never cut (right_gripper once became "right_gripp…").
        table.add_column(col, justify="left" if i == 0 else "right", style="bold" if primary else None,
                         no_wrap=i == 0, min_width=max(len(r[0]) for r in rows) if i == 0 else None)
    for row in rows:
        table.add_row(*row)
    return table


def _episodes_text(episodes: Sequence[int]) -> str:
    from behavior_smolvla.data.meta import format_indices

    return format_indices(list(episodes))


def summary_markdown(report: Mapping[str, Any]) -> str:
    """``summary.md``: what was evaluated, the main table, ensemble figures, warnings, and the plots."""
    header, rows = summary_rows(report)
    lines = [
        "# Offline evaluation",
        "",
        f"- checkpoint(s): {', '.join(f'`{c}`' for c in report['checkpoints'])}",
        f"- dataset: `{report['dataset']['path']}`, episodes {_episodes_text(report['episodes'])}, "
        f"{report['frames_evaluated']} frames (every {report['frame_stride']} frame(s)"
        + (f", at most {report['max_frames']}" if report["max_frames"] else "") + ")",
        f"- chunk: {report['chunk_size']} actions, one every {report['chunk_stride']} frame(s); inference: "
        f"**{report['inference']['label']}** (`--noise {report['inference']['noise']} --num-samples "
        f"{report['inference']['num_samples']}`); noise seed {report['seed']}; project commit "
        f"{report['git_commit'] or 'unknown'}",
        f"- predictors: **{report['primary']}**; `state` (where the checkpoint has an action -> state reference) "
        "predicts each referenced joint's current state (zero delta) and the training mean elsewhere; `hold` repeats "
        "the previous frame's recorded action (which the policy never sees); `mean_action` is the training data's "
        "mean action",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
        *("| " + " | ".join(r) + " |" for r in rows),
        "",
    ]
    if "ensemble" in report:
        e = report["ensemble"]
        lines += [f"Ensemble of {e['size']}: mean disagreement {_fmt(e['disagreement']['mean'])} (action units); "
                  f"correlation with the ensemble's error r = {_fmt(e['disagreement_error_correlation'])}.", ""]
    for w in report["warnings"]:
        lines += [f"**Warning:** {w}", ""]
    lines += ["Plots: " + ", ".join(f"[{p}]({p})" for p in report["files"]["plots"]), ""]
    return "\n".join(lines)
