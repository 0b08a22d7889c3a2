"""Offline evaluation of trained checkpoints on held-out episodes: error metrics with baselines beside them, plots.

What is measured, at each evaluated frame of each held-out episode (all numbers in the action's own units: radians
for joint positions, m/s and rad/s for the base velocity command, the gripper command's units; computed from the
UNnormalised prediction):

* the mean absolute error (MAE) of the first predicted action and of the whole chunk (padded steps, those past the
  episode's end, excluded), per action dim, per action group and averaged over dims;
* the MAE as a function of the step inside the chunk (0 .. chunk_size - 1);
* "percent close": the fraction of predictions within ``tolerance * (max - min)`` of the truth, per dim (max / min
  from the checkpoint's action statistics, i.e. the training data), for the first action and for the whole chunk;
* the same metrics for two reference predictors that need no learning: ``hold`` (every step of the chunk repeats the
  action recorded at the frame just before, the last command a controller would keep sending; the episode's first
  frame uses its own action) and ``mean_action`` (the training data's mean action, from the checkpoint's stats);
* with several checkpoints: each member's metrics, the ensemble mean's metrics, the per-frame disagreement (std
  across members of the first predicted action, averaged over dims) and its Pearson correlation with the ensemble's
  per-frame first-action error (averaged over dims).

Action groups: the R1Pro's 23-dim action is split as base 0:3, torso 3:7, left_arm 7:14, left_gripper 14:15,
right_arm 15:22, right_gripper 22:23 (``shared/reference/behavior_r1pro.md``, the BEHAVIOR challenge docs); for any
other action each dim is its own group, named from the dataset's action names.

A chunk predicted by a policy trained with ``frame_stride`` s holds one action every s frames, so its ground truth is
read at the same stride, whatever frames are evaluated (``frame_stride`` here only chooses the evaluated frames).
"""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from behavior_smolvla.errors import CheckpointError, ConfigError, DatasetError, StateMapError
from behavior_smolvla.r1pro import ACTION_DIM, ACTION_GROUPS, ACTION_NAMES

EVAL_BATCH_SIZE = 16
"""Frames per model call. Each batch ``b`` draws its flow-matching noise from seed ``seed + b``, so a run is exactly
repeatable for the same frames, batch size and seed."""

ALL_DIMS = "all dims"
REFERENCE_PREDICTORS = ("hold", "mean_action")


# --- action layout ---------------------------------------------------------------------------------------------


def action_layout(action_dim: int, action_names: Sequence[str] | None = None) -> tuple[list[str], dict[str, list[int]]]:
    """Per-dim names and the groups metrics are reported for.

    Args:
        action_dim: A, the action's dimension.
        action_names: the dataset's action names (``info.json``), or None.

    Returns:
        ``(names, groups)``: A unique dim names, and group name -> list of dims. A 23-dim action is the R1Pro's
        (:data:`behavior_smolvla.r1pro.ACTION_GROUPS`); any other action has one group per dim, named like the dim.
    """
    names = list(action_names) if action_names is not None and len(action_names) == action_dim else None
    if names is not None and len(set(names)) != len(names):
        names = None  # duplicated names cannot key per-dim metrics
    if action_dim == ACTION_DIM:
        names = names or list(ACTION_NAMES)
        return names, {g: list(range(a, b)) for g, a, b in ACTION_GROUPS}
    names = names or [f"action.{i}" for i in range(action_dim)]
    return names, {name: [i] for i, name in enumerate(names)}


# --- metrics -----------------------------------------------------------------------------------------------------


def _per_dim_summary(values: np.ndarray, names: Sequence[str], groups: Mapping[str, Sequence[int]]) -> dict[str, Any]:
    return {
        "mean": _num(np.mean(values)),
        "per_group": {g: _num(np.mean(values[list(d)])) for g, d in groups.items()},
        "per_dim": {n: _num(v) for n, v in zip(names, values, strict=True)},
    }


def chunk_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    is_pad: np.ndarray,
    value_range: np.ndarray,
    tolerance: float,
    names: Sequence[str],
    groups: Mapping[str, Sequence[int]],
) -> dict[str, Any]:
    """Error metrics of predicted action chunks against the recorded ones.

    Args:
        pred: float [N, C, A] predicted chunks (action units).
        truth: float [N, C, A] recorded chunks (padded steps hold anything: they are excluded).
        is_pad: bool [N, C], True where a chunk step lies past the episode's end.
        value_range: float [A], max - min of each action dim (same units); a dim counts as "close" where
            ``|pred - truth| <= tolerance * value_range``.
        tolerance: fraction of the range, e.g. 0.05.
        names: A dim names; groups: group name -> dims.

    Returns:
        JSON-ready dict: ``first_action_mae`` and ``chunk_mae`` (each ``{"mean", "per_group", "per_dim"}``: mean over
        dims / over the group's dims / per dim), ``percent_close`` (first action) and ``percent_close_chunk`` (same
        shape, fractions in [0, 1]), ``mae_by_chunk_step`` (``{"all dims": [C], <group>: [C]}``, the MAE at each
        chunk step over the frames where that step is valid; None where none is), ``frames`` (N).

    Raises:
        ValueError: shapes that do not agree (a programming error, not a user error).
    """
    pred = np.asarray(pred, dtype=np.float64)
    truth = np.asarray(truth, dtype=np.float64)
    valid = ~np.asarray(is_pad, dtype=bool)
    if pred.shape != truth.shape or pred.ndim != 3 or valid.shape != pred.shape[:2]:
        raise ValueError(f"pred {pred.shape}, truth {truth.shape}, is_pad {valid.shape}: expected [N, C, A] x2, [N, C]")
    err = np.abs(pred - truth)
    close = err <= tolerance * np.asarray(value_range, dtype=np.float64)
    first_valid = valid[:, 0]
    w = valid[..., None].astype(np.float64)
    n_valid = max(float(valid.sum()), 1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        by_step = (err * w).sum(0) / valid.sum(0)[:, None]  # [C, A]; NaN where a step is never valid
    curves = {ALL_DIMS: by_step.mean(1)}
    curves.update({g: by_step[:, list(d)].mean(1) for g, d in groups.items()})
    return {
        "frames": int(len(pred)),
        "first_action_mae": _per_dim_summary(err[first_valid, 0].mean(0), names, groups),
        "chunk_mae": _per_dim_summary((err * w).sum((0, 1)) / n_valid, names, groups),
        "percent_close": _per_dim_summary(close[first_valid, 0].mean(0), names, groups),
        "percent_close_chunk": _per_dim_summary((close * w).sum((0, 1)) / n_valid, names, groups),
        "mae_by_chunk_step": {g: [_num(v) for v in c] for g, c in curves.items()},
    }


def hold_chunks(previous_action: np.ndarray, chunk_size: int) -> np.ndarray:
    """The ``hold`` reference: float [N, A] last recorded actions -> float [N, chunk_size, A] (each step repeats it)."""
    previous_action = np.asarray(previous_action)
    return np.repeat(previous_action[:, None, :], chunk_size, axis=1)


def mean_action_chunks(mean_action: np.ndarray, frames: int, chunk_size: int) -> np.ndarray:
    """The ``mean_action`` reference: float [A] -> float [frames, chunk_size, A]."""
    mean_action = np.asarray(mean_action, dtype=np.float64).reshape(1, 1, -1)
    return np.broadcast_to(mean_action, (frames, chunk_size, mean_action.shape[-1])).copy()


def ensemble_disagreement(member_preds: np.ndarray) -> np.ndarray:
    """Per-frame disagreement of an ensemble: float [K, N, C, A] -> float [N], the std across the K members of the
    first predicted action (population std), averaged over the A dims (action units)."""
    return np.asarray(member_preds, dtype=np.float64)[:, :, 0, :].std(axis=0).mean(axis=1)


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation of two [N] arrays; None when it is undefined (N < 2 or a constant array)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return _num(np.corrcoef(x, y)[0, 1])


def _num(value: Any) -> float | None:
    """A JSON-safe float (None for NaN / inf: JSON has no NaN)."""
    v = float(value)
    return v if math.isfinite(v) else None


# --- policy plumbing -------------------------------------------------------------------------------------------


def action_stats(bundle: Any) -> dict[str, np.ndarray]:
    """The action statistics a policy was trained with (its post-processor's unnormaliser): the training data's.

    Args:
        bundle: ``policy.PolicyBundle`` (or anything with a lerobot ``postprocessor`` pipeline).

    Returns:
        ``{"mean", "min", "max", ...}``: float32 [A] each.

    Raises:
        CheckpointError: the post-processor holds no action mean/min/max.
    """
    for step in getattr(bundle.postprocessor, "steps", []):
        stats = getattr(step, "stats", None)
        if isinstance(stats, Mapping) and "action" in stats:
            out = {k: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in stats["action"].items()}
            missing = [k for k in ("mean", "min", "max") if k not in out]
            if not missing:
                return out
            raise CheckpointError(f"policy_postprocessor: action statistics lack {missing}; retrain with this "
                                  "project's smolvla-train, which stores mean, std, min and max")
    raise CheckpointError("policy_postprocessor: no action statistics found (no unnormaliser step); the checkpoint "
                          "was not written by smolvla-train")


def checkpoint_policy_from_bundle(bundle: Any, dataset: Any) -> Any:
    """Wrap an in-memory policy (e.g. the one being trained) as a :class:`~behavior_smolvla.policy.trained.CheckpointPolicy`
    without writing or reading a checkpoint.

    Args:
        bundle: ``policy.PolicyBundle`` (``policy``, ``preprocessor``, ``postprocessor``); pass the unwrapped module
            under DDP.
        dataset: the ``BehaviorDataset`` the policy reads: its cameras (in policy order), state map and image size
            are the policy's.

    Returns:
        A ``CheckpointPolicy`` whose ``checkpoint`` is None and ``train_config`` is empty.
    """
    from behavior_smolvla.policy.trained import CheckpointPolicy
    from behavior_smolvla.policy.smolvla import policy_camera_keys

    cfg = bundle.policy.config
    return CheckpointPolicy(
        checkpoint=None,
        bundle=bundle,
        train_config={},
        state_map=dataset.state_map,
        cameras=list(dataset.cameras),
        camera_map=policy_camera_keys(list(dataset.cameras)),
        image_size=dataset.image_size,
        chunk_size=int(cfg.chunk_size),
        n_action_steps=int(cfg.n_action_steps),
        action_dim=int(cfg.action_feature.shape[0]),
        tasks=list(dataset.tasks),
        task_map={str(k): v for k, v in dataset.meta.tasks.items()},
        device=next(bundle.policy.parameters()).device,
    )


def _collate(samples: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Stack the given keys of dataset samples: tensors -> [B, ...]; ``task`` -> list[str]."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        out[key] = values if isinstance(values[0], str) else torch.stack(values)
    return out


def _observation_keys(cameras: Sequence[str]) -> list[str]:
    return [*cameras, "observation.state", "task"]


def spread_evenly(candidates: np.ndarray, max_frames: int | None) -> np.ndarray:
    """At most ``max_frames`` of ``candidates`` (sorted [N]), evenly spaced and including the first and last."""
    candidates = np.asarray(candidates)
    if max_frames is None or len(candidates) <= max_frames:
        return candidates
    picks = np.unique(np.round(np.linspace(0, len(candidates) - 1, max_frames)).astype(np.int64))
    return candidates[picks]


# --- offline evaluation of checkpoints -------------------------------------------------------------------------


@dataclass
class EvalFrames:
    """The evaluated frames and their ground truth.

    Attributes:
        indices: int64 [N], sample indices in the (stride-1) evaluation dataset.
        episode_index, frame_index: int64 [N].
        timestamp: float32 [N], seconds since the episode's start.
        truth: float32 [N, C, A], the recorded chunk at the policy's training stride.
        is_pad: bool [N, C].
        previous_action: float32 [N, A], the action recorded at the frame before (own action at an episode's start).
    """

    indices: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    timestamp: np.ndarray
    truth: np.ndarray
    is_pad: np.ndarray
    previous_action: np.ndarray


def select_eval_frames(dataset: Any, chunk_size: int, chunk_stride: int, frame_stride: int,
                       max_frames: int | None) -> EvalFrames:
    """Pick the evaluated frames of a stride-1 ``BehaviorDataset`` whose chunks hold ``(chunk_size - 1) *
    chunk_stride + 1`` actions, and read their ground truth.

    Every ``frame_stride``-th frame of each episode (from its first frame) is a candidate; ``max_frames`` caps them,
    evenly spread over all candidates.
    """
    table = dataset.frame_table
    n = len(table)
    if n == 0:
        raise DatasetError("the selected episodes hold no frames; pick other --episodes")
    starts = np.r_[True, table["episode_index"][1:] != table["episode_index"][:-1]]
    episode_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    position = np.arange(n) - episode_start
    indices = spread_evenly(np.flatnonzero(position % frame_stride == 0), max_frames)
    truth, pad, prev, ts = [], [], [], []
    for i in indices:
        sample = dataset.numeric_sample(int(i))
        truth.append(sample["action"].numpy()[::chunk_stride])
        pad.append(sample["action_is_pad"].numpy()[::chunk_stride])
        ts.append(float(sample["timestamp"]))
        before = int(i) - 1 if position[i] > 0 else int(i)
        prev.append(dataset.numeric_sample(before)["action"].numpy()[0] if before != i else truth[-1][0])
    truth_arr = np.stack(truth).astype(np.float32)
    if truth_arr.shape[1] != chunk_size:
        raise ValueError(f"dataset chunk gives {truth_arr.shape[1]} steps at stride {chunk_stride}, not {chunk_size}")
    return EvalFrames(
        indices=indices.astype(np.int64),
        episode_index=table["episode_index"][indices].astype(np.int64),
        frame_index=table["frame_index"][indices].astype(np.int64),
        timestamp=np.asarray(ts, dtype=np.float32),
        truth=truth_arr,
        is_pad=np.stack(pad).astype(bool),
        previous_action=np.stack(prev).astype(np.float32),
    )


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


def _check_compatible(checkpoint: Path, train_config: Mapping[str, Any], meta: Any, dataset_path: Path) -> None:
    """Raise the project's error when a dataset cannot feed a checkpoint (state layout, action dim, cameras), from
    the checkpoint's ``train_config.yaml`` alone (before any weights are loaded)."""
    data = train_config.get("dataset", {})
    state_map = train_config.get("state_map", {})
    want_state = state_map.get("input_dim") or data.get("state_dim")
    if want_state is not None and meta.state_dim != int(want_state):
        raise StateMapError(
            f"--dataset-path {dataset_path}: observation.state has {meta.state_dim} dims but checkpoint {checkpoint} "
            f"was trained with state map {state_map.get('name')!r} over a {want_state}-dim state "
            f"({state_map.get('layout')}); evaluate on a dataset with the training data's state layout")
    if data.get("action_dim") is not None and meta.action_dim != int(data["action_dim"]):
        raise DatasetError(
            f"--dataset-path {dataset_path}: action has {meta.action_dim} dims but checkpoint {checkpoint} predicts "
            f"{data['action_dim']}; evaluate on a dataset of the same robot")
    missing = [c for c in data.get("cameras", []) if c not in meta.camera_keys]
    if missing:
        raise DatasetError(
            f"--dataset-path {dataset_path}: camera(s) {missing} that checkpoint {checkpoint} reads are not in the "
            f"dataset (it has {', '.join(meta.camera_keys) or 'none'}); evaluate on a dataset with the training "
            "cameras")


def _predict_frames(members: Sequence[Any], views: Sequence[tuple[Any, list[int]]], indices: np.ndarray, seed: int,
                    batch_size: int, bar: Any) -> np.ndarray:
    """float32 [K, N, C, A] unnormalised chunks of every member at the dataset samples ``indices`` [N]; batch ``b``
    uses noise seed ``seed + b`` for every member. ``views``: (dataset, member ids reading it)."""
    n = len(indices)
    preds = np.empty((len(members), n, members[0].chunk_size, members[0].action_dim), dtype=np.float32)
    with bar:
        task = bar.add_task("frames", total=n)
        for b, start in enumerate(range(0, n, batch_size)):
            idx = indices[start:start + batch_size]
            for ds, member_ids in views:
                batch = _collate([ds.load_sample(int(i)) for i in idx], _observation_keys(ds.cameras))
                for k in member_ids:
                    preds[k, start:start + len(idx)] = members[k].predict_chunk(batch, noise_seed=seed + b)
            bar.advance(task, len(idx))
    for ds, _ in views:
        ds.close()
    return preds


def _ensemble_summary(member_preds: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Disagreement statistics of K member predictions [K, N, C, A] and their correlation with the ensemble mean's
    per-frame first-action error (averaged over dims) against ``truth`` [N, C, A]."""
    disagreement = ensemble_disagreement(member_preds)
    error = np.abs(member_preds.astype(np.float64).mean(0)[:, 0] - truth[:, 0]).mean(axis=1)
    return {
        "size": len(member_preds),
        "disagreement": {"mean": _num(disagreement.mean()), "median": _num(np.median(disagreement)),
                         "max": _num(disagreement.max())},
        "disagreement_error_correlation": pearson(disagreement, error),
        "definition": "disagreement: std across members of the first predicted action, averaged over dims; "
                      "correlation: Pearson r with the ensemble mean's first-action error averaged over dims",
    }


def evaluate_checkpoints(
    checkpoints: Sequence[str | Path],
    dataset_path: str | Path,
    episodes: str | Sequence[int] | None,
    *,
    output_dir: str | Path | None,
    frame_stride: int | None = None,
    max_frames: int | None = None,
    tolerance: float = 0.05,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    console: Any = None,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[str, Any]:
    """Evaluate one checkpoint (or an ensemble of several) on held-out episodes; write the report and plots.

    The state map, cameras, image size, chunk size, training frame stride and action statistics come from each
    checkpoint. At every evaluated frame the full chunk is predicted (batches of ``batch_size`` frames; batch ``b``
    uses noise seed ``seed + b``, the same for every member).

    Args:
        checkpoints: checkpoint paths (a run folder, ``checkpoints/<step>`` or its ``pretrained_model``); several
            make an ensemble (same chunk size, action dim and training frame stride).
        dataset_path: LeRobot dataset folder with the same state layout, action and cameras as the training data.
        episodes: episode spec (``"0-3,7"``) or list; None = every episode.
        output_dir: where to write ``report.json``, ``summary.md``, ``predictions.npz`` and the PNG plots; None =
            :func:`default_output_dir`.
        frame_stride: evaluate every n-th frame of each episode; None = the (first) checkpoint's training stride.
        max_frames: cap on evaluated frames, spread evenly over all candidates; None = no cap.
        tolerance: "percent close" threshold as a fraction of each action dim's range (max - min).
        seed: base seed of the flow-matching noise.
        device: ``auto`` | ``cpu`` | ``cuda[:N]`` | ``mps``.
        progress: show a rich progress bar over frames.
        console: rich Console for the progress bar and warnings (default: stderr).

    Returns:
        The report (also written as ``report.json``): see the module docstring; keys ``predictors`` (``policy`` or
        ``ensemble``, ``hold``, ``mean_action``: each :func:`chunk_metrics`), ``primary``, ``members`` and
        ``ensemble`` (several checkpoints), ``checkpoints``, ``dataset``, ``episodes``, ``git_commit``, ``warnings``,
        ``files`` (paths relative to ``output_dir``), ``output_dir``.

    Raises:
        CheckpointError: a checkpoint is missing or not this project's (names the missing file).
        StateMapError / DatasetError: the dataset's state layout, action or cameras do not fit a checkpoint; bad
            episodes.
        ConfigError: a bad flag value, or ensemble members that disagree on chunk size / action dim / stride.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from behavior_smolvla.policy.checkpoint import load_train_config, resolve_checkpoint
    from behavior_smolvla.data.dataset import BehaviorDataset
    from behavior_smolvla.data.meta import DatasetMeta, format_indices, parse_episode_spec
    from behavior_smolvla.policy.trained import load_checkpoint

    console = console or Console(stderr=True)
    if not checkpoints:
        raise ConfigError("no --checkpoint given: pass at least one checkpoint folder")
    if not 0 < tolerance <= 1:
        raise ConfigError(f"--tolerance {tolerance}: must be a fraction of the action range in (0, 1], e.g. 0.05")
    if frame_stride is not None and frame_stride < 1:
        raise ConfigError(f"--frame-stride {frame_stride}: must be >= 1")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"--max-frames {max_frames}: must be >= 1")
    if output_dir is not None:
        from behavior_smolvla.config import check_output_dir

        check_output_dir(output_dir)  # before the model runs, not after

    # Cheap checks first (each checkpoint's folder and train config against the dataset), before loading weights.
    resolved = [resolve_checkpoint(c) for c in checkpoints]
    configs = [load_train_config(c) for c in resolved]
    dataset_path = Path(dataset_path)
    meta = DatasetMeta.load(dataset_path)
    for c, cfg in zip(resolved, configs, strict=True):
        _check_compatible(c, cfg, meta, dataset_path)
    selected = parse_episode_spec(episodes, list(meta.episodes))
    members = [load_checkpoint(c, device=device) for c in resolved]
    strides = [int(m.train_config["dataset"].get("frame_stride", 1)) for m in members]
    first = members[0]
    for m, s in zip(members[1:], strides[1:], strict=True):
        if (m.chunk_size, m.action_dim, s) != (first.chunk_size, first.action_dim, strides[0]):
            raise ConfigError(
                f"--checkpoint {m.checkpoint}: chunk size {m.chunk_size}, action dim {m.action_dim}, frame stride {s} "
                f"differ from {first.checkpoint} ({first.chunk_size}, {first.action_dim}, {strides[0]}); an ensemble "
                "needs members that predict the same chunks")
    chunk, chunk_stride = first.chunk_size, strides[0]
    frame_stride = frame_stride or chunk_stride

    warnings: list[str] = []
    member_overlap = []
    for m in members:
        overlap = sorted(set(selected) & set(m.train_episodes))
        member_overlap.append(overlap)
        if overlap:
            msg = (f"episodes {format_indices(overlap)} were used to train {m.checkpoint}; their metrics are not "
                   "held-out performance")
            warnings.append(msg)
            console.print(f"[bold yellow]warning:[/] {msg}", highlight=False, soft_wrap=True)

    # One dataset per distinct input view (cameras, image size, state map); members sharing a view share decoding.
    views: dict[str, tuple[Any, list[int]]] = {}
    for k, m in enumerate(members):
        key = json.dumps([m.cameras, m.image_size, m.state_map.to_dict()], sort_keys=True, default=str)
        if key not in views:
            ds = BehaviorDataset(meta, episodes=selected, cameras=m.cameras, chunk_size=(chunk - 1) * chunk_stride + 1,
                                 image_size=m.image_size, frame_stride=1, state_map=m.state_map)
            views[key] = (ds, [])
        views[key][1].append(k)
    view_list = list(views.values())
    frames = select_eval_frames(view_list[0][0], chunk, chunk_stride, frame_stride, max_frames)
    n = len(frames.indices)

    bar = Progress(TextColumn("[bold]evaluating frames"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, disable=not progress, transient=False)
    preds = _predict_frames(members, view_list, frames.indices, seed, batch_size, bar)

    stats = action_stats(first.bundle)
    value_range = stats["max"] - stats["min"]
    names, groups = action_layout(first.action_dim, meta.action_names)

    def metrics_of(p: np.ndarray) -> dict[str, Any]:
        return chunk_metrics(p, frames.truth, frames.is_pad, value_range, tolerance, names, groups)

    predictors: dict[str, dict[str, Any]] = {}
    report: dict[str, Any] = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "git_commit": project_commit(),
        "checkpoints": [str(m.checkpoint) for m in members],
        "dataset": {"path": str(dataset_path.resolve()), "version": meta.version, "fps": meta.fps},
        "episodes": selected,
        "frames_evaluated": n,
        "frames_per_episode": {str(e): int((frames.episode_index == e).sum()) for e in selected},
        "frame_stride": frame_stride,
        "max_frames": max_frames,
        "chunk_size": chunk,
        "chunk_stride": chunk_stride,
        "tolerance": tolerance,
        "seed": seed,
        "batch_size": batch_size,
        "action_names": names,
        "action_groups": groups,
        "action_stats": {"source": str(first.checkpoint), "mean": stats["mean"].tolist(),
                         "min": stats["min"].tolist(), "max": stats["max"].tolist(), "range": value_range.tolist()},
    }
    if len(members) == 1:
        primary = "policy"
        predictors["policy"] = metrics_of(preds[0])
        primary_pred = preds[0]
    else:
        primary = "ensemble"
        primary_pred = preds.mean(axis=0)
        predictors["ensemble"] = metrics_of(primary_pred)
        report["members"] = [
            {"checkpoint": str(m.checkpoint), "overlapping_train_episodes": ov, "metrics": metrics_of(preds[k])}
            for k, (m, ov) in enumerate(zip(members, member_overlap, strict=True))
        ]
        report["ensemble"] = _ensemble_summary(preds, frames.truth)
    predictors["hold"] = metrics_of(hold_chunks(frames.previous_action, chunk))
    predictors["mean_action"] = metrics_of(mean_action_chunks(stats["mean"], n, chunk))
    report["primary"] = primary
    report["predictors"] = predictors
    report["overlapping_train_episodes"] = sorted({e for ov in member_overlap for e in ov})
    report["warnings"] = warnings

    out = Path(output_dir) if output_dir is not None else default_output_dir(checkpoints)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--output-dir {out}: cannot create it ({exc.strerror or exc}); pass a writable folder "
                          "with --output-dir") from None
    step_s = chunk_stride / meta.fps
    plots = _write_plots(out, report, frames, primary_pred, names, groups, step_s, _label(members))
    np.savez_compressed(
        out / "predictions.npz", episode_index=frames.episode_index, frame_index=frames.frame_index,
        timestamp=frames.timestamp, truth=frames.truth, is_pad=frames.is_pad, previous_action=frames.previous_action,
        predictions=preds, **({"disagreement": ensemble_disagreement(preds)} if len(members) > 1 else {}))
    report["files"] = {"report": "report.json", "summary": "summary.md", "predictions": "predictions.npz",
                       "plots": [p.name for p in plots]}
    report["output_dir"] = str(out.resolve())
    (out / "report.json").write_text(json.dumps(report, indent=2))
    (out / "summary.md").write_text(summary_markdown(report))
    return report


def _label(members: Sequence[Any]) -> str:
    if len(members) == 1:
        return f"checkpoint {members[0].checkpoint.name}"
    return f"ensemble of {len(members)} ({', '.join(m.checkpoint.name for m in members)})"


def _write_plots(out: Path, report: Mapping[str, Any], frames: EvalFrames, primary_pred: np.ndarray,
                 names: Sequence[str], groups: Mapping[str, Sequence[int]], step_s: float, label: str) -> list[Path]:
    from behavior_smolvla.evaluation.plots import plot_error_vs_chunk_step, plot_first_actions

    primary = report["primary"]
    curves = {p: report["predictors"][p]["mae_by_chunk_step"] for p in (primary, *REFERENCE_PREDICTORS)}
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


def summary_rows(report: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The main figures as a table: one row per action group plus "all dims"; for each of first-action MAE, chunk
    MAE and percent close (first action) the primary predictor, ``hold`` and ``mean_action`` side by side."""
    preds = report["predictors"]
    order = [report["primary"], *REFERENCE_PREDICTORS]
    header = ["group"]
    for metric in ("first-action MAE", "chunk MAE", "% close"):
        header += [f"{metric} {p}" for p in order]
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
                        f"MAE in action units, close = within {report['tolerance']:g} of each dim's range")
    for i, col in enumerate(header):
        primary = col.endswith("\n" + report["primary"])
        table.add_column(col, justify="left" if i == 0 else "right", style="bold" if primary else None)
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
        f"- chunk: {report['chunk_size']} actions, one every {report['chunk_stride']} frame(s); noise seed "
        f"{report['seed']}; project commit {report['git_commit'] or 'unknown'}",
        f"- predictors: **{report['primary']}**; `hold` repeats the previous frame's recorded action; "
        "`mean_action` is the training data's mean action",
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


# --- validation during training ------------------------------------------------------------------------------------


def validate(
    policy: Any,
    dataset: Any,
    *,
    max_frames: int | None = 64,
    seed: int = 0,
    output_dir: str | Path | None = None,
    tolerance: float = 0.05,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[str, Any]:
    """Validation loss and offline metrics of a policy on held-out samples, comparable from one call to the next.

    The global RNG states (CPU and the policy's CUDA device) are left exactly as they were (``torch.random.fork_rng``),
    so validating does not change the training run. The policy is put in eval mode and returned to its previous mode.

    Args:
        policy: a ``CheckpointPolicy`` (``inference.load_checkpoint``) or the in-training ``policy.PolicyBundle``
            (wrapped with :func:`checkpoint_policy_from_bundle`, nothing is reloaded from disk).
        dataset: ``BehaviorDataset`` of the held-out episodes built exactly like the training dataset (cameras in
            policy order, chunk size, image size, frame stride, state map).
        max_frames: samples used, spread evenly over the dataset (None = all).
        seed: batch ``b`` uses seed ``seed + b`` for the loss's noise and time and for the prediction noise.
        output_dir: when given, the plots (error vs chunk step; first action vs truth per episode) are written there.
        tolerance: "percent close" threshold as a fraction of each action dim's range.
        batch_size: samples per forward pass.

    Returns:
        Flat dict of floats: ``val_loss`` (SmolVLA's flow-matching training loss, mean over samples, each averaged
        over its valid chunk steps and action dims, normalised units), ``first_action_mae``, ``chunk_mae`` (action
        units, mean over dims), ``percent_close`` (first action, [0, 1]), ``percent_close_chunk``,
        ``mean_action_first_action_mae`` (the reference), ``first_action_mae/<group>`` per action group, ``frames``;
        plus ``plots``: ``{name: Path}`` (empty without ``output_dir``).

    Raises:
        ConfigError: the dataset's chunk size differs from the policy's.
    """
    from behavior_smolvla.policy.trained import CheckpointPolicy
    from behavior_smolvla.policy.smolvla import to_policy_batch

    cp = policy if isinstance(policy, CheckpointPolicy) else checkpoint_policy_from_bundle(policy, dataset)
    if dataset.chunk_size != cp.chunk_size:
        raise ConfigError(f"validation dataset chunk size {dataset.chunk_size} differs from the policy's "
                          f"{cp.chunk_size}; build it with the training chunk size")
    model = cp.bundle.policy
    indices = spread_evenly(np.arange(len(dataset)), max_frames)
    n = len(indices)
    keys = [*_observation_keys(dataset.cameras), "action", "action_is_pad"]
    losses, truth, pad, preds, episode, ts = [], [], [], [], [], []
    device = torch.device(cp.device)
    fork_devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    was_training = model.training
    try:
        with torch.random.fork_rng(devices=fork_devices):
            model.eval()
            for b, start in enumerate(range(0, n, batch_size)):
                samples = [dataset.load_sample(int(i)) for i in indices[start:start + batch_size]]
                batch = _collate(samples, keys)
                torch.manual_seed(seed + b)  # the loss's noise and time are drawn by SmolVLA from the forked RNG
                with torch.no_grad():
                    per_sample, _ = model.forward(cp.bundle.preprocessor(to_policy_batch(batch, cp.camera_map)),
                                                  reduction="none")
                losses.append(per_sample.detach().float().cpu().numpy())
                observation = {k: batch[k] for k in _observation_keys(dataset.cameras)}
                preds.append(cp.predict_chunk(observation, noise_seed=seed + b))
                truth.append(batch["action"].numpy())
                pad.append(batch["action_is_pad"].numpy())
                episode += [int(s["episode_index"]) for s in samples]
                ts += [float(s["timestamp"]) for s in samples]
    finally:
        model.train(was_training)

    stats = action_stats(cp.bundle)
    value_range = stats["max"] - stats["min"]
    names, groups = action_layout(cp.action_dim, dataset.action_names)
    pred_arr, truth_arr, pad_arr = np.concatenate(preds), np.concatenate(truth), np.concatenate(pad)
    m = chunk_metrics(pred_arr, truth_arr, pad_arr, value_range, tolerance, names, groups)
    ref = chunk_metrics(mean_action_chunks(stats["mean"], n, cp.chunk_size), truth_arr, pad_arr, value_range,
                        tolerance, names, groups)
    result: dict[str, Any] = {
        "val_loss": float(np.concatenate(losses).mean()),
        "first_action_mae": m["first_action_mae"]["mean"],
        "chunk_mae": m["chunk_mae"]["mean"],
        "percent_close": m["percent_close"]["mean"],
        "percent_close_chunk": m["percent_close_chunk"]["mean"],
        "mean_action_first_action_mae": ref["first_action_mae"]["mean"],
        **{f"first_action_mae/{g}": v for g, v in m["first_action_mae"]["per_group"].items()},
        "frames": n,
        "plots": {},
    }
    if output_dir is not None:
        from behavior_smolvla.evaluation.plots import plot_error_vs_chunk_step, plot_first_actions

        out = Path(output_dir)
        episode_arr, ts_arr = np.asarray(episode), np.asarray(ts, dtype=np.float32)
        step_s = dataset.frame_stride / dataset.meta.fps
        result["plots"]["error_vs_chunk_step"] = plot_error_vs_chunk_step(
            out / "error_vs_chunk_step.png",
            {"policy": m["mae_by_chunk_step"], "mean_action": ref["mae_by_chunk_step"]}, step_s,
            f"validation: MAE vs step inside the chunk ({n} samples)")
        for ep in sorted(set(episode)):
            rows = np.flatnonzero(episode_arr == ep)
            result["plots"][f"first_action_episode_{ep}"] = plot_first_actions(
                out / f"first_action_episode_{ep}.png", ts_arr[rows], truth_arr[rows, 0], {"policy": pred_arr[rows, 0]},
                groups, names, f"validation, episode {ep}: first predicted action vs ground truth")
    return result
