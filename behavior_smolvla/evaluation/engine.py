"""One evaluation engine for offline evaluation (``smolvla-eval``) and validation during training.

Both read the held-out episodes through the policy's own input contract (``PolicyInputs.eval_dataset``: every frame,
chunks long enough for the policy's stride), pick the evaluated frames with :func:`select_eval_frames`, predict whole
action chunks with :func:`predict_frames` (fixed noise seeds, the global RNG left untouched) and score them with
``evaluation.metrics`` beside the reference predictors. ``evaluate_checkpoints`` adds checkpoints, ensembles and the
written report; ``validate`` adds SmolVLA's validation loss on the same frames.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from behavior_smolvla.actions import reference_mask, to_delta
from behavior_smolvla.data.dataset import REFERENCE_KEY, BehaviorDataset
from behavior_smolvla.errors import ConfigError, DatasetError, PolicyOutputError
from behavior_smolvla.evaluation.metrics import (
    _num, action_layout, action_stats, chunk_metrics, ensemble_disagreement, hold_chunks, mean_action_chunks, pearson,
    state_chunks,
)
from behavior_smolvla.evaluation.report import (
    default_output_dir, members_label, project_commit, summary_markdown, write_plots,
)
from behavior_smolvla.policy.inference import Inference
from behavior_smolvla.policy.smolvla import PolicyBundle, to_policy_batch

EVAL_BATCH_SIZE = 16
"""Frames per model call. Each batch ``b`` draws its flow-matching noise from seed ``seed + b`` (all K draws of
the inference strategy from that one seed), so a run is exactly repeatable for the same frames, batch size, seed and
strategy."""


def _collate(samples: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """Stack the given keys of dataset samples: tensors -> [B, ...]; ``task`` -> list[str]."""
    out: dict[str, Any] = {}
    for key in keys:
        values = [s[key] for s in samples]
        out[key] = values if isinstance(values[0], str) else torch.stack(values)
    return out


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
        reference_state: float32 [N, A], the raw state of each action dim's reference joint at the frame (0 where
            none), or None when the reader gives none (a contract without an action -> state reference).
    """

    indices: np.ndarray
    episode_index: np.ndarray
    frame_index: np.ndarray
    timestamp: np.ndarray
    truth: np.ndarray
    is_pad: np.ndarray
    previous_action: np.ndarray
    reference_state: np.ndarray | None = None


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
    truth, pad, prev, ts, ref = [], [], [], [], []
    for i in indices:
        sample = dataset.numeric_sample(int(i))
        if REFERENCE_KEY in sample:
            ref.append(sample[REFERENCE_KEY].numpy())
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
        reference_state=np.stack(ref).astype(np.float32) if ref else None,
    )


def predict_frames(members: Sequence[PolicyBundle], views: Sequence[tuple[BehaviorDataset, list[int]]],
                   frames: EvalFrames, *, seed: int, inference: Inference = Inference(),
                   batch_size: int = EVAL_BATCH_SIZE, with_loss: bool = False,
                   bar: Any = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Predict the action chunk of every member at every evaluated frame (and, for validation, the loss).

    The policies are put in eval mode and given back in the mode they were in; the global RNG states (CPU and the
    policies' CUDA devices) are left exactly as they were (``torch.random.fork_rng``), so evaluating in the middle of
    a training run does not change it. Batch ``b`` uses noise seed ``seed + b`` for every member.

    Args:
        members: the policies (an ensemble when several).
        views: ``(eval dataset, member ids reading it)``: members with the same input view share the decoding.
        frames: from :func:`select_eval_frames` (``indices`` index every view's dataset alike).
        seed: base seed of the flow-matching noise (and of the loss's noise and time).
        inference: how each chunk is drawn (zero noise, one draw, mean of K draws; ``PolicyBundle.predict_chunk``).
        batch_size: frames per model call.
        with_loss: also compute SmolVLA's training loss of member 0 on the recorded chunks (``frames.truth``,
            ``frames.is_pad``), per frame, in normalised units.
        bar: a rich Progress to advance over frames, or None.

    Returns:
        ``(predictions float32 [K, N, C, A] in action units, losses float32 [N] or None)``.
    """
    n = len(frames.indices)
    first = members[0]
    preds = np.empty((len(members), n, first.chunk_size, first.action_dim), dtype=np.float32)
    losses = np.empty(n, dtype=np.float32) if with_loss else None
    devices = sorted({m.device.index if m.device.index is not None else torch.cuda.current_device()
                      for m in members if m.device.type == "cuda"})
    modes = [m.policy.training for m in members]
    task = bar.add_task("frames", total=n) if bar is not None else None
    try:
        with torch.random.fork_rng(devices=devices):
            for m in members:
                m.policy.eval()
            for b, start in enumerate(range(0, n, batch_size)):
                idx = frames.indices[start:start + batch_size]
                for ds, member_ids in views:
                    samples = [ds.load_sample(int(i)) for i in idx]
                    keys = [*ds.cameras, "observation.state", "task"]
                    observation = _collate(samples, keys + ([REFERENCE_KEY] if REFERENCE_KEY in samples[0] else []))
                    if with_loss and 0 in member_ids:
                        truth = torch.from_numpy(frames.truth[start:start + len(idx)])
                        if first.inputs.delta_reference is not None:  # the loss is on the trained (delta) targets
                            truth = to_delta(truth, observation[REFERENCE_KEY])
                        batch = {**observation, "action": truth,
                                 "action_is_pad": torch.from_numpy(frames.is_pad[start:start + len(idx)])}
                        torch.manual_seed(seed + b)  # SmolVLA draws the loss's noise and time from the forked RNG
                        with torch.no_grad():
                            per_sample, _ = first.policy.forward(
                                first.preprocessor(to_policy_batch(batch, first.inputs.camera_map)), reduction="none")
                        losses[start:start + len(idx)] = per_sample.detach().float().cpu().numpy()
                    for k in member_ids:
                        preds[k, start:start + len(idx)] = members[k].predict_chunk(observation, inference,
                                                                                    noise_seed=seed + b)
                if bar is not None:
                    bar.advance(task, len(idx))
    finally:
        for m, mode in zip(members, modes, strict=True):
            m.policy.train(mode)
    return preds, losses


def check_finite_predictions(predictions: np.ndarray, checkpoints: Sequence[Path | None]) -> None:
    """Refuse to score predictions that hold NaN or infinite values: their metrics would be NaN, or, averaged with
    finite ones, a number that is no score (a damaged or diverged checkpoint is not a policy with an error).

    Args:
        predictions: float32 [K, N, C, A], member k's chunks (:func:`predict_frames`).
        checkpoints: member k's checkpoint folder, for the message.

    Raises:
        PolicyOutputError: naming the first member with non-finite values, their share and the frames they touch.
    """
    for k, member in enumerate(predictions):
        bad = ~np.isfinite(member)
        if bad.any():
            frames = int(bad.reshape(len(member), -1).any(axis=1).sum())
            raise PolicyOutputError(
                f"--checkpoint {checkpoints[k]}: {bad.mean():.1%} of its predicted action values are NaN or infinite "
                f"({frames} of {len(member)} frames); no score is reported for a damaged or diverged policy: "
                "evaluate an earlier checkpoint of the run")


def score(predictions: np.ndarray, frames: EvalFrames, stats: Mapping[str, np.ndarray], tolerance: float,
          names: Sequence[str], groups: Mapping[str, Sequence[int]],
          action_reference: Sequence[int | None] | None = None) -> dict[str, dict[str, Any]]:
    """:func:`~behavior_smolvla.evaluation.metrics.chunk_metrics` of a prediction [N, C, A] and of the reference
    predictors ``state`` (when ``action_reference`` has a reference dim and ``frames`` hold the reference state),
    ``hold`` and ``mean_action`` (``stats``: the policy's absolute action statistics: mean, min, max [A])."""
    value_range = stats["max"] - stats["min"]
    chunk = predictions.shape[1]

    def metrics_of(p: np.ndarray) -> dict[str, Any]:
        return chunk_metrics(p, frames.truth, frames.is_pad, value_range, tolerance, names, groups)

    out = {"policy": metrics_of(predictions)}
    if (action_reference is not None and any(r is not None for r in action_reference)
            and frames.reference_state is not None):
        out["state"] = metrics_of(state_chunks(frames.reference_state, reference_mask(tuple(action_reference)),
                                               stats["mean"], chunk))
    out["hold"] = metrics_of(hold_chunks(frames.previous_action, chunk))
    out["mean_action"] = metrics_of(mean_action_chunks(stats["mean"], len(frames.indices), chunk))
    return out


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
    inference: Inference = Inference(),
    device: str = "auto",
    progress: bool = True,
    console: Any = None,
    batch_size: int = EVAL_BATCH_SIZE,
    state_key: str | None = None,
    action_key: str | None = None,
    vlm_model: str | None = None,
    plots: bool = True,
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
        inference: how each chunk is drawn: the mean of K draws (the default, :class:`Inference`), one draw or
            zero initial noise (``--noise``, ``--num-samples``); saved as the report's ``inference``.
        device: ``auto`` | ``cpu`` | ``cuda[:N]`` | ``mps``.
        progress: show a rich progress bar over frames.
        console: rich Console for the progress bar and warnings (default: stderr).
        state_key, action_key: dataset features read as the state and the action; None = the (first) checkpoint's
            (its input contract), for a dataset whose features are named otherwise than the training data's.
        vlm_model: the checkpoints' VLM backbone at another place (a local copy); None = the saved one.
        plots: write the PNG plots (False: the report's ``files.plots`` is empty; for benchmarks scoring many runs).

    Returns:
        The report (also written as ``report.json``): see the module docstring; keys ``predictors`` (``policy`` or
        ``ensemble``, ``state`` (where the contract has a reference), ``hold``, ``mean_action``: each
        :func:`chunk_metrics`), ``primary``, ``inference`` (:meth:`Inference.to_dict`), ``members`` and
        ``ensemble`` (several checkpoints), ``checkpoints``, ``dataset``, ``episodes``, ``git_commit``, ``warnings``,
        ``files`` (paths relative to ``output_dir``), ``output_dir``.

    Raises:
        CheckpointError: a checkpoint is missing or not this project's (names the missing file).
        StateMapError / DatasetError: the dataset's state layout, action or cameras do not fit a checkpoint; bad
            episodes.
        ConfigError: a bad flag value, or ensemble members that disagree on chunk size / action dim / stride.
        PolicyOutputError: a member predicted NaN or infinite actions (:func:`check_finite_predictions`); nothing
            is written.
    """
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    from behavior_smolvla.data.meta import format_indices, parse_episode_spec
    from behavior_smolvla.inputs import PolicyInputs
    from behavior_smolvla.policy.checkpoint import PRETRAINED_DIR, load_train_config, resolve_checkpoint
    from behavior_smolvla.policy.smolvla import load_policy_bundle

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

    # Cheap checks first (each checkpoint's input contract against the dataset), before loading any weights.
    resolved = [resolve_checkpoint(c) for c in checkpoints]
    contracts = [PolicyInputs.from_train_config(load_train_config(c), str(c / PRETRAINED_DIR)) for c in resolved]
    meta = contracts[0].load_meta(dataset_path, state_key=state_key, action_key=action_key)
    for contract in contracts[1:]:
        contract.check_dataset(meta)
    selected = parse_episode_spec(episodes, list(meta.episodes))
    members = [load_policy_bundle(c, device=device, vlm_model=vlm_model) for c in resolved]
    first = members[0]
    for m in members[1:]:
        a, b = m.inputs, first.inputs
        if (a.chunk_size, a.action_dim, a.frame_stride) != (b.chunk_size, b.action_dim, b.frame_stride):
            raise ConfigError(
                f"--checkpoint {m.checkpoint}: chunk size {a.chunk_size}, action dim {a.action_dim}, frame stride "
                f"{a.frame_stride} differ from {first.checkpoint} ({b.chunk_size}, {b.action_dim}, {b.frame_stride}); "
                "an ensemble needs members that predict the same chunks")
    chunk, chunk_stride = first.chunk_size, first.inputs.frame_stride
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

    # One reader per distinct input view (cameras, image size, state map); members sharing a view share decoding.
    views: dict[str, tuple[BehaviorDataset, list[int]]] = {}
    for k, m in enumerate(members):
        key = json.dumps([list(m.inputs.cameras), m.inputs.image_size, m.inputs.state_map.to_dict(),
                          m.inputs.action_reference], sort_keys=True)
        if key not in views:
            views[key] = (m.inputs.eval_dataset(meta, selected), [])
        views[key][1].append(k)
    view_list = list(views.values())
    frames = select_eval_frames(view_list[0][0], chunk, chunk_stride, frame_stride, max_frames)
    n = len(frames.indices)

    bar = Progress(TextColumn("[bold]evaluating frames"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, disable=not progress, transient=False)
    with bar:
        preds, _ = predict_frames(members, view_list, frames, seed=seed, inference=inference, batch_size=batch_size,
                                  bar=bar)
    for ds, _ in view_list:
        ds.close()
    check_finite_predictions(preds, [m.checkpoint for m in members])

    stats = action_stats(first)
    value_range = stats["max"] - stats["min"]
    names, groups = action_layout(first.action_dim, meta.action_names)

    report: dict[str, Any] = {
        "created": datetime.now().isoformat(timespec="seconds"),
        "git_commit": project_commit(),
        "checkpoints": [str(m.checkpoint) for m in members],
        "dataset": {"path": str(Path(dataset_path).resolve()), "version": meta.version, "fps": meta.fps,
                    "state_key": meta.state_key, "action_key": meta.action_key},
        "episodes": selected,
        "frames_evaluated": n,
        "frames_per_episode": {str(e): int((frames.episode_index == e).sum()) for e in selected},
        "frame_stride": frame_stride,
        "max_frames": max_frames,
        "chunk_size": chunk,
        "chunk_stride": chunk_stride,
        "tolerance": tolerance,
        "seed": seed,
        "inference": inference.to_dict(),
        "batch_size": batch_size,
        "action_names": names,
        "action_groups": groups,
        "action_stats": {"source": str(first.checkpoint), "mean": stats["mean"].tolist(),
                         "min": stats["min"].tolist(), "max": stats["max"].tolist(), "range": value_range.tolist()},
    }
    primary = "policy" if len(members) == 1 else "ensemble"
    primary_pred = preds[0] if len(members) == 1 else preds.mean(axis=0)
    scores = score(primary_pred, frames, stats, tolerance, names, groups, first.inputs.action_reference)
    predictors = {primary: scores.pop("policy"), **scores}
    if len(members) > 1:
        report["members"] = [
            {"checkpoint": str(m.checkpoint), "overlapping_train_episodes": ov,
             "metrics": chunk_metrics(preds[k], frames.truth, frames.is_pad, value_range, tolerance, names, groups)}
            for k, (m, ov) in enumerate(zip(members, member_overlap, strict=True))
        ]
        report["ensemble"] = _ensemble_summary(preds, frames.truth)
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
    # Plots cost ~8 s of matplotlib per report: a benchmark scoring many reports turns them off.
    plots = (write_plots(out, report, frames, primary_pred, names, groups, step_s, members_label(members))
             if plots else [])
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


# --- validation during training ------------------------------------------------------------------------------------


def validate(
    bundle: PolicyBundle,
    dataset: BehaviorDataset,
    *,
    max_frames: int | None = 64,
    seed: int = 0,
    inference: Inference = Inference(),
    output_dir: str | Path | None = None,
    tolerance: float = 0.05,
    batch_size: int = EVAL_BATCH_SIZE,
) -> dict[str, Any]:
    """Validation loss and offline metrics of a policy on held-out frames, comparable from one call to the next.

    The same engine as ``smolvla-eval`` (frames every ``frame_stride`` frames of each episode, spread evenly up to
    ``max_frames``; see :func:`predict_frames` for the RNG and mode guarantees).

    Args:
        bundle: the policy (the one being trained, or one loaded with ``load_policy_bundle``).
        dataset: the held-out episodes' evaluation reader, ``bundle.inputs.eval_dataset(meta, episodes)``.
        max_frames: frames used, spread evenly (None = all).
        seed: batch ``b`` uses seed ``seed + b`` for the loss's noise and time and for the prediction noise.
        inference: how each chunk is drawn (``--eval-noise``, ``--eval-num-samples``); the loss does not depend on it.
        output_dir: when given, the plots (error vs chunk step; first action vs truth per episode) are written there.
        tolerance: "percent close" threshold as a fraction of each action dim's range.
        batch_size: frames per forward pass.

    Returns:
        Flat dict of floats: ``val_loss`` (SmolVLA's flow-matching training loss, mean over frames, each averaged
        over its valid chunk steps and action dims, normalised units), ``first_action_mae``, ``chunk_mae`` (action
        units, mean over dims), ``percent_close`` (first action, [0, 1]), ``percent_close_chunk``,
        ``mean_action_first_action_mae``, ``mean_action_chunk_mae`` and ``state_first_action_mae`` (the
        references; the latter where the contract has an action -> state reference), ``first_action_mae/<group>``
        per action group, ``frames``; plus ``plots``: ``{name: Path}`` (empty without ``output_dir``).

    Raises:
        ConfigError: the dataset is not the policy's evaluation view (other chunk length).
    """
    inputs = bundle.inputs
    if dataset.chunk_size != (inputs.chunk_size - 1) * inputs.frame_stride + 1 or dataset.frame_stride != 1:
        raise ConfigError("validation needs the policy's evaluation reader: build it with "
                          "bundle.inputs.eval_dataset(meta, episodes)")
    frames = select_eval_frames(dataset, inputs.chunk_size, inputs.frame_stride, inputs.frame_stride, max_frames)
    preds, losses = predict_frames([bundle], [(dataset, [0])], frames, seed=seed, inference=inference,
                                   batch_size=batch_size, with_loss=True)
    names, groups = action_layout(bundle.action_dim, dataset.action_names)
    scores = score(preds[0], frames, action_stats(bundle), tolerance, names, groups, inputs.action_reference)
    m, ref = scores["policy"], scores["mean_action"]
    result: dict[str, Any] = {
        "val_loss": float(losses.mean()),
        "first_action_mae": m["first_action_mae"]["mean"],
        "chunk_mae": m["chunk_mae"]["mean"],
        "percent_close": m["percent_close"]["mean"],
        "percent_close_chunk": m["percent_close_chunk"]["mean"],
        "mean_action_first_action_mae": ref["first_action_mae"]["mean"],
        "mean_action_chunk_mae": ref["chunk_mae"]["mean"],
        **({"state_first_action_mae": scores["state"]["first_action_mae"]["mean"]} if "state" in scores else {}),
        **{f"first_action_mae/{g}": v for g, v in m["first_action_mae"]["per_group"].items()},
        "frames": len(frames.indices),
        "plots": {},
    }
    if output_dir is not None:
        from behavior_smolvla.evaluation.plots import plot_error_vs_chunk_step, plot_first_actions

        out = Path(output_dir)
        n = len(frames.indices)
        result["plots"]["error_vs_chunk_step"] = plot_error_vs_chunk_step(
            out / "error_vs_chunk_step.png",
            {"policy": m["mae_by_chunk_step"], "mean_action": ref["mae_by_chunk_step"]}, inputs.step_s,
            f"validation: MAE vs step inside the chunk ({n} samples)")
        for ep in sorted(set(frames.episode_index.tolist())):
            rows = np.flatnonzero(frames.episode_index == ep)
            result["plots"][f"first_action_episode_{ep}"] = plot_first_actions(
                out / f"first_action_episode_{ep}.png", frames.timestamp[rows], frames.truth[rows, 0],
                {"policy": preds[0][rows, 0]}, groups, names,
                f"validation, episode {ep}: first predicted action vs ground truth")
    return result
