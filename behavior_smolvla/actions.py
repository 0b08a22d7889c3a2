"""The action representation the policy is trained in: absolute or delta actions, and how they are normalised.

``absolute`` (the default) trains on the dataset's action as recorded. ``delta`` trains each action dim that has a
*reference* state dim (the same joint's measured position) as ``action[t + k] - state[t]`` for every step k of the
chunk (k = 0 .. chunk_size - 1, at the policy's frame stride), and keeps dims without one absolute (the R1Pro's base
velocity command and gripper commands). This is what the 2025 BEHAVIOR winner trained in (facts in
``shared/reference/behavior_r1pro.md``): arm and torso targets sit within the tracking error of the current joint
position, so the absolute target is mostly the state itself and the model spends its capacity on copying it.

The reference is a raw-state index per action dim (``None`` = no reference), resolved once into the input contract
(:class:`~behavior_smolvla.inputs.PolicyInputs`) by :func:`resolve_action_reference`:

* an explicit YAML file (``--action-reference FILE``, see :func:`load_reference_file`);
* the R1Pro layouts for the 2025 (256-dim) and 2026 (61-dim) state with the 23-dim action: torso 3:7 <- trunk_qpos,
  left arm 7:14 <- arm_left_qpos, right arm 15:22 <- arm_right_qpos (blocks of ``state_maps/layout-r1pro-*.yaml``;
  ``behavior_r1pro.md``, "Action dims and the state dims that hold the same joints");
* otherwise, equal names in the dataset's ``action`` and state ``names`` (e.g. the G1 datasets: all 26 dims).

It indexes the *raw* state (before the state map), so any state map can be combined with delta actions.

Where the delta is applied (one place each): the reader returns the reference state of each sample as
``action.reference`` (``REFERENCE_KEY``, float32 [A], zero where there is no reference); the training batch subtracts it from the
action chunk before the pre-processor (``training.build.model_batch``); ``PolicyBundle.predict_chunk`` adds it back
after the post-processor, so evaluation and serving always see absolute actions.

``--action-norm``: ``global`` normalises each action dim with one mean/std (lerobot's way); ``per-step`` uses a
mean/std for each chunk step and dim (float32 [chunk, A]), computed by :func:`chunk_action_stats` in one streaming
pass over the training samples (mean, std, min, max; no quantiles, since SmolVLA normalises the action with
MEAN_STD only). lerobot 0.6.1's ``NormalizerProcessorStep`` broadcasts statistics against the action
tensor ``[B, chunk, A]`` and saves / restores them with their shape, so per-step statistics live in lerobot's own
processors and ``PolicyProcessorPipeline.from_pretrained`` restores them unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from behavior_smolvla.data.dataset import REFERENCE_KEY  # noqa: F401  (re-exported: the batch key)
from behavior_smolvla.errors import ConfigError, read_text_file

ACTION_MODES = ("absolute", "delta")
"""Action representations (``absolute``: as recorded; ``delta``: minus the reference state where there is one)."""
ACTION_NORMS = ("global", "per-step")
"""Action normalisations (``global``: one mean/std per dim; ``per-step``: one per chunk step and dim)."""

R1PRO_ACTION_DIM = 23
R1PRO_REFERENCE_BLOCKS = (("trunk_qpos", 3, 7), ("arm_left_qpos", 7, 14), ("arm_right_qpos", 15, 22))
"""(state layout block, action start, action stop): the R1Pro action dims that are absolute joint positions and the
state blocks holding the same joints in the same order (``behavior_r1pro.md``; both releases)."""
R1PRO_LAYOUTS = {256: "r1pro-2025", 61: "r1pro-2026"}

Reference = tuple[int | None, ...]


def default_action_norm(mode: str) -> str:
    """``per-step`` in delta mode (the 2025 winner's choice), ``global`` in absolute mode (lerobot's, unchanged)."""
    return "per-step" if mode == "delta" else "global"


# --- resolving the reference ------------------------------------------------------------------------------------


def r1pro_reference(state_dim: int, action_dim: int) -> Reference | None:
    """The R1Pro reference from the state layout of that size (None when the sizes are not an R1Pro's)."""
    from behavior_smolvla.state_maps.layouts import load_layout

    if action_dim != R1PRO_ACTION_DIM or state_dim not in R1PRO_LAYOUTS:
        return None
    layout = load_layout(R1PRO_LAYOUTS[state_dim])
    reference: list[int | None] = [None] * action_dim
    for block, a0, a1 in R1PRO_REFERENCE_BLOCKS:
        s0, s1 = layout.blocks[block]
        if s1 - s0 != a1 - a0:
            raise ConfigError(f"layout {layout.name}: block {block} has {s1 - s0} dims, the action slice {a0}:{a1} "
                              f"{a1 - a0}; the shipped layout is damaged")
        reference[a0:a1] = range(s0, s1)
    return tuple(reference)


def reference_by_names(action_names: Sequence[str] | None, state_names: Sequence[str] | None) -> Reference | None:
    """Each action dim whose name is also a state dim's name references that state dim (None when no name is shared
    or either side has no names)."""
    if not action_names or not state_names:
        return None
    where = {str(n): i for i, n in reversed(list(enumerate(state_names)))}
    reference = tuple(where.get(str(n)) for n in action_names)
    return reference if any(r is not None for r in reference) else None


def load_reference_file(path: str | Path, action_dim: int, action_names: Sequence[str] | None, state_dim: int,
                        state_names: Sequence[str] | None) -> Reference:
    """Read an explicit action -> state reference.

    The file is a YAML mapping ``action dim -> state dim`` (optionally under a top-level ``action_reference`` key);
    each side is an index or a name from the dataset's ``names``; ``null`` (or an unlisted dim) keeps the action dim
    absolute::

        action_reference:
          3: 236            # torso joint 0 <- raw state dim 236
          left_arm_0: arm_left_qpos.0   # names work where the dataset (or layout) has them

    Raises:
        ConfigError: a missing or malformed file, an unknown name, an index out of range (naming the file).
    """
    p = Path(path)
    where = f"--action-reference {p}"
    if not p.is_file():
        raise ConfigError(f"{where}: file not found; pass a YAML mapping of action dim -> state dim")
    try:
        doc = yaml.safe_load(read_text_file(p, where, ConfigError))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: invalid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if isinstance(doc, Mapping) and "action_reference" in doc:
        doc = doc["action_reference"]
    if not isinstance(doc, Mapping) or not doc:
        raise ConfigError(f"{where}: expected a non-empty mapping of action dim -> state dim (index or name)")

    def index(key: Any, names: Sequence[str] | None, size: int, side: str) -> int:
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < size:
                raise ConfigError(f"{where}: {side} index {key} out of range (the dataset has {size} {side} dims)")
            return key
        text = str(key)
        if names and text in list(map(str, names)):
            return list(map(str, names)).index(text)
        if text.isdigit():
            return index(int(text), names, size, side)
        raise ConfigError(f"{where}: unknown {side} dim {text!r}; use an index or one of the dataset's {side} names")

    reference: list[int | None] = [None] * action_dim
    for a, s in doc.items():
        ai = index(a, action_names, action_dim, "action")
        reference[ai] = None if s is None else index(s, state_names, state_dim, "state")
    return tuple(reference)


def resolve_action_reference(meta: Any, reference_file: str | None = None) -> tuple[Reference | None, str]:
    """The action -> raw-state reference of a dataset, and where it came from.

    Args:
        meta: ``DatasetMeta`` (``state_dim``, ``action_dim``, ``state_names``, ``action_names``).
        reference_file: ``--action-reference`` YAML file, or None.

    Returns:
        ``(reference, source)``: one raw-state index or None per action dim (None overall when no dim has one) and a
        short source label (``file``, ``layout r1pro-2025``, ``names``, ``none``).

    Raises:
        ConfigError: as :func:`load_reference_file`.
    """
    if reference_file:
        return load_reference_file(reference_file, meta.action_dim, meta.action_names, meta.state_dim,
                                   meta.state_names), f"file {reference_file}"
    layout = r1pro_reference(meta.state_dim, meta.action_dim)
    if layout is not None:
        return layout, f"layout {R1PRO_LAYOUTS[meta.state_dim]}"
    named = reference_by_names(meta.action_names, meta.state_names)
    if named is not None:
        return named, "equal names"
    return None, "none"


def describe_reference(reference: Reference | None, action_names: Sequence[str] | None = None,
                       state_names: Sequence[str] | None = None) -> str:
    """One line: which action dims reference which raw-state dims, runs compressed (``3:7 <- state 236:240``)."""
    if reference is None or all(r is None for r in reference):
        return "no action dim has a reference state dim"
    runs: list[tuple[int, int, int | None]] = []  # (action start, action stop, state start or None)
    for a, s in enumerate(reference):
        if runs:
            a0, a1, s0 = runs[-1]
            if a1 == a and ((s is None and s0 is None) or (s is not None and s0 is not None and s == s0 + (a - a0))):
                runs[-1] = (a0, a + 1, s0)
                continue
        runs.append((a, a + 1, s))
    parts = []
    for a0, a1, s0 in runs:
        if s0 is not None:
            parts.append(f"{a0}:{a1} <- state {s0}:{s0 + a1 - a0}")
    n = sum(r is not None for r in reference)
    return f"{n} of {len(reference)} action dims reference a raw-state dim: " + ", ".join(parts)


# --- applying it ------------------------------------------------------------------------------------------------


def reference_mask(reference: Reference) -> np.ndarray:
    """bool [A]: True where an action dim has a reference state dim."""
    return np.array([r is not None for r in reference], dtype=bool)


def reference_state(raw_state: np.ndarray, reference: Reference) -> np.ndarray:
    """The reference of each action dim: float32 [..., D] raw state -> float32 [..., A] (0 where there is none)."""
    raw_state = np.asarray(raw_state, dtype=np.float32)
    idx = np.array([0 if r is None else r for r in reference], dtype=np.int64)
    out = raw_state[..., idx]
    out[..., ~reference_mask(reference)] = 0.0
    return np.ascontiguousarray(out, dtype=np.float32)


def to_delta(action: Any, reference: Any) -> Any:
    """Delta targets: ``action`` [B, C, A] minus ``reference`` [B, A] at every chunk step (torch or numpy, same
    dtype out). Dims without a reference have a zero reference, so they pass unchanged."""
    return action - reference[..., None, :]


def to_absolute(delta: Any, reference: Any) -> Any:
    """The inverse of :func:`to_delta`: ``delta`` [B, C, A] plus ``reference`` [B, A] at every chunk step."""
    return delta + reference[..., None, :]


# --- per-step statistics ----------------------------------------------------------------------------------------


def chunk_action_stats(dataset: Any, per_step: bool, batch: int = 4096) -> dict[str, np.ndarray]:
    """Statistics of the action targets the policy is trained on, in one streaming pass over a training reader.

    Every sample of ``dataset`` (its chunk at the training stride) contributes its valid chunk steps (those not
    past the episode's end; padded steps repeat the last action and are left out); the target at step k is
    ``action[k] - reference`` (the reader's :data:`REFERENCE_KEY`; the absolute action when the reader gives none).
    Sums are kept in float64, so memory does not grow with the data.

    Args:
        dataset: a ``BehaviorDataset`` (``len``, ``action_chunks(indices)``).
        per_step: True -> float32 [chunk, A] statistics (one per chunk step and dim); False -> float32 [A].
        batch: samples per vectorised block.

    Returns:
        ``{"mean", "std", "min", "max"}`` (population std). A chunk step that no sample reaches (chunks longer than
        every episode) takes the statistics over all steps.

    Raises:
        ConfigError: the reader holds no samples.
    """
    n = len(dataset)
    if n == 0:
        raise ConfigError("no training samples to compute action statistics from; select other --episodes")
    count = s1 = s2 = lo = hi = None
    for start in range(0, n, batch):
        action, is_pad, reference = dataset.action_chunks(np.arange(start, min(n, start + batch)))
        target = action.astype(np.float64)
        if reference is not None:
            target = to_delta(target, reference.astype(np.float64))
        valid = ~is_pad
        w = valid[..., None]
        if count is None:
            c, a = target.shape[1:]
            count = np.zeros(c)
            s1, s2 = np.zeros((c, a)), np.zeros((c, a))
            lo, hi = np.full((c, a), np.inf), np.full((c, a), -np.inf)
        count += valid.sum(0)
        s1 += np.where(w, target, 0).sum(0)
        s2 += np.where(w, target * target, 0).sum(0)
        lo = np.minimum(lo, np.where(w, target, np.inf).min(0))
        hi = np.maximum(hi, np.where(w, target, -np.inf).max(0))

    def finish(cnt, t1, t2, mn, mx):
        mean = t1 / cnt
        std = np.sqrt(np.maximum(t2 / cnt - mean * mean, 0.0))
        return {"mean": mean, "std": std, "min": mn, "max": mx}

    total = finish(count.sum(), s1.sum(0), s2.sum(0), lo.min(0), hi.max(0))
    if not per_step:
        return {k: v.astype(np.float32) for k, v in total.items()}
    reached = count > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        steps = finish(np.maximum(count, 1)[:, None], s1, s2, lo, hi)
    return {k: np.where(reached[:, None], v, total[k][None, :]).astype(np.float32) for k, v in steps.items()}


def as_tensor_like(value: np.ndarray | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``value`` as a tensor on ``like``'s device and dtype."""
    return torch.as_tensor(value).to(device=like.device, dtype=like.dtype)
