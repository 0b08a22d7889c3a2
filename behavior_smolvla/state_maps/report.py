"""The report behind ``smolvla-filter-state``: a state map described dim by dim and, given a dataset, the mapped
state's statistics over its episodes (read with the training reader, no video decoding)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from behavior_smolvla.data.dataset import BehaviorDataset
from behavior_smolvla.data.meta import ACTION_KEY, STATE_KEY, DatasetMeta
from behavior_smolvla.errors import StateMapError
from behavior_smolvla.state_maps.maps import CONSTANT_STD, StateMap, default_state_map, load_state_map



@dataclass
class StateMapReport:
    """A bound map described dim by dim, optionally with the mapped state's statistics over dataset episodes.

    Attributes: ``state_map`` (bound; timed for the dataset's fps and ``frame_stride`` when it has velocity dims);
    ``dataset`` (folder, or None); ``episodes`` (selected episode indices);
    ``frames`` (rows the stats cover); ``stats_source`` (where the dataset reader took the stats from);
    ``stats`` (``{mean, std, min, max: float32 [D_out]}``, or None without a dataset); ``constant`` (output indices
    whose std < :data:`CONSTANT_STD`).
    """

    state_map: StateMap
    dataset: str | None = None
    episodes: list[int] = field(default_factory=list)
    frames: int = 0
    stats_source: str | None = None
    stats: dict[str, np.ndarray] | None = None
    constant: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the map's :meth:`StateMap.to_dict` plus ``standard_track_violations`` (output names),
        ``unreliable`` (output names), ``velocity`` (for a map with velocity dims: their names, ``lag_steps``,
        ``lag_frames``, ``dt_s`` and ``units``; frames and seconds once timed) and, with a dataset, ``dataset``,
        ``episodes``, ``frames``, ``stats_source``, ``stats`` (lists per key) and ``constant`` (output names)."""
        m = self.state_map
        out = m.to_dict()
        out["standard_track_violations"] = [d.name for d in m.standard_track_violations()]
        out["unreliable"] = [d.name for d in m.dims if d.unreliable]
        if m.has_velocity and m.is_bound:
            out["velocity"] = {
                "dims": [d.name for d in m.dims if d.velocity_lag],
                "lag_steps": m.velocity_lag,
                "lag_frames": m.lag_frames if m.timing else None,
                "dt_s": m.velocity_dt if m.timing else None,
                "units": "state units per second (rad/s for joint positions in radians)",
            }
        if self.dataset is not None and self.stats is not None:
            out["dataset"] = self.dataset
            out["episodes"] = list(self.episodes)
            out["frames"] = self.frames
            out["stats_source"] = self.stats_source
            out["stats"] = {k: [float(v) for v in self.stats[k]] for k in ("mean", "std", "min", "max")}
            out["constant"] = [m.dims[i].name for i in self.constant]
        return out


def state_map_report(
    state_map: str | os.PathLike[str] | StateMap | None = None,
    dataset: str | os.PathLike[str] | None = None,
    episodes: str | Sequence[int] | None = None,
    state_key: str = STATE_KEY,
    action_key: str = ACTION_KEY,
    frame_stride: int = 1,
) -> StateMapReport:
    """Describe a state map and, given a dataset, the mapped state's per-dim mean/std/min/max over its episodes.

    Args:
        state_map: a shipped name, a YAML file or a StateMap; None = :func:`default_state_map` of the dataset.
        dataset: a LeRobot dataset folder (read with :class:`behavior_smolvla.data.dataset.BehaviorDataset`, no video
            decoding); the map is bound to (and checked against) its state dim.
        episodes: episode spec for the stats (``"0-39,45"``); None = all.
        state_key, action_key: the dataset features read as the state and the action (``--state-key``,
            ``--action-key``; ``observation.state`` and ``action`` by default).
        frame_stride: dataset frames per policy step (``--frame-stride``, as in training): a velocity entry's lag
            of k policy steps spans ``k * frame_stride`` frames of the dataset's fps. Ignored without velocity.
    Returns: a :class:`StateMapReport`.
    Raises: StateMapError (unknown or malformed map, state dim mismatch, neither map nor dataset given);
        DatasetError (unreadable dataset, unknown episodes).
    """
    if dataset is None:
        if state_map is None:
            raise StateMapError("pass a state map (--map NAME|FILE, see --list) or a dataset (--dataset PATH)")
        if episodes is not None:
            raise StateMapError("--episodes selects dataset episodes for the stats: also pass --dataset PATH")
        return StateMapReport(load_state_map(state_map))
    meta = DatasetMeta.load(dataset, state_key=state_key, action_key=action_key)
    chosen = default_state_map(meta.state_dim) if state_map is None else load_state_map(state_map)
    bound = chosen.bind(meta.state_dim, meta.state_names, fps=float(meta.fps), frame_stride=int(frame_stride))
    ds = BehaviorDataset(meta, episodes=episodes, cameras=[], chunk_size=1, state_map=bound)
    stats = {k: np.asarray(ds.stats["observation.state"][k], dtype=np.float32) for k in ("mean", "std", "min", "max")}
    return StateMapReport(
        state_map=bound,
        dataset=str(dataset),
        episodes=list(ds.episodes),
        frames=len(ds),
        stats_source=getattr(ds, "stats_source", None),
        stats=stats,
        constant=[int(i) for i in np.flatnonzero(stats["std"] < CONSTANT_STD)],
    )
