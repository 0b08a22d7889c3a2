"""The metrics of offline evaluation and validation: errors in action units beside reference predictors.

What is measured, at each evaluated frame of each held-out episode (all numbers in the action's own units: radians
for joint positions, m/s and rad/s for the base velocity command, the gripper command's units; computed from the
UNnormalised prediction):

* the mean absolute error (MAE) of the first predicted action and of the whole chunk (padded steps, those past the
  episode's end, excluded), per action dim, per action group and averaged over dims;
* the MAE as a function of the step inside the chunk (0 .. chunk_size - 1);
* "percent close": the fraction of predictions within ``tolerance * max(max - min, RANGE_FLOOR)`` of the truth, per
  dim (max / min from the checkpoint's absolute action statistics, i.e. the training data), for the first action and
  for the whole chunk;
* the same metrics for reference predictors that need no learning: ``state`` (the zero-delta predictor, which the
  policy could match from its inputs: each action dim with a reference state dim predicts that joint's current raw
  state at every chunk step, the others the training mean; only where the checkpoint's contract has a reference),
  ``hold`` (every step of the chunk repeats the action RECORDED at the frame just before, the last command a
  controller would keep sending; the policy never sees it, so it is not a baseline the policy could match from its
  inputs; the episode's first frame uses its own action) and ``mean_action`` (the training data's mean action, from
  the checkpoint's stats);
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

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from behavior_smolvla.errors import CheckpointError
from behavior_smolvla.r1pro import ACTION_DIM, ACTION_GROUPS, ACTION_NAMES

ALL_DIMS = "all dims"
REFERENCE_PREDICTORS = ("state", "hold", "mean_action")
"""The no-learning predictors reported beside the policy (``state`` only where the contract has an action -> state
reference)."""
RANGE_FLOOR = 1e-3
"""Floor (in each dim's units) on the range that "percent close" takes a fraction of: the normalisation std floor
(``data.stats.MIN_STD``). A dim that is constant in the training data (range 0) is then judged by its error (within
``tolerance * 1e-3``) instead of never being close."""


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
            ``|pred - truth| <= tolerance * max(value_range, RANGE_FLOOR)``.
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
    close = err <= tolerance * np.maximum(np.asarray(value_range, dtype=np.float64), RANGE_FLOOR)
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


def state_chunks(reference_state: np.ndarray, has_reference: np.ndarray, mean_action: np.ndarray,
                 chunk_size: int) -> np.ndarray:
    """The ``state`` reference (the zero-delta predictor): float [N, A] raw reference state at each frame, bool [A]
    which dims have a reference, float [A] training mean -> float [N, chunk_size, A]: the current state of the
    referenced dims, the mean elsewhere, at every step."""
    reference_state = np.asarray(reference_state, dtype=np.float64)
    one = np.where(np.asarray(has_reference, dtype=bool)[None, :], reference_state,
                   np.asarray(mean_action, dtype=np.float64)[None, :])
    return np.repeat(one[:, None, :], chunk_size, axis=1)


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


def action_stats(bundle: Any) -> dict[str, np.ndarray]:
    """The absolute action statistics of a policy's training data: ``bundle.action_stats`` (saved with every
    checkpoint, whatever the action mode), else its post-processor's unnormaliser (older, absolute checkpoints).

    Args:
        bundle: ``policy.PolicyBundle`` (or anything with a lerobot ``postprocessor`` pipeline).

    Returns:
        ``{"mean", "min", "max", ...}``: float32 [A] each.

    Raises:
        CheckpointError: the post-processor holds no action mean/min/max.
    """
    saved = getattr(bundle, "action_stats", None)
    if saved is not None:
        return {k: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in saved.items()}
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
