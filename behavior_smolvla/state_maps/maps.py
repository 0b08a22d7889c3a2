"""State maps: which dims of the raw state a policy sees, in which order. **The state is mapped here.**

Both are data, shipped as YAML in the ``behavior_smolvla.state_map_files`` package (``state_maps/`` in a checkout):

- a **layout** (``kind: layout``, :mod:`behavior_smolvla.state_maps.layouts`) names every dim of a robot's state
  vector with its body-part group, standard-track legality and reliability;
- a **state map** (``kind: map``) has a ``name``, the ``layout`` it applies to (or ``any``), a ``description`` citing
  its source, and an ordered list of ``entries``. An entry is a block name, or a mapping with ``block`` (optional),
  ``slice`` (``"a:b"``, ``"a:b:c"``, an int or a list of ints; relative to the block when ``block`` is given, else
  absolute), ``name`` (output name), ``reduce: sum`` (the entry becomes ONE output dim, the sum of its slice;
  e.g. a gripper width = the sum of its two finger positions) and ``velocity: {lag: k}`` (see below).

**Velocity entries** (``velocity: {lag: k}``, k >= 1 policy steps, default 1) give the policy the joints' recent
motion where the state holds positions only (e.g. the G1's 26 joint positions): each output dim is the finite
difference of what the entry would otherwise output, over ``k`` policy steps, as a velocity in state units per second
(radians -> rad/s, metres -> m/s)::

    v[t] = (s[t] - s[t - k * frame_stride]) / (k * frame_stride / fps)

with ``frame_stride`` and ``fps`` those of the input contract (``PolicyInputs``: ``bind(..., fps=, frame_stride=)``
stores them in the map, so a checkpoint's map is self-contained). The earlier state is clamped at the episode start:
the first ``k * frame_stride`` frames of an episode use the episode's first state, so the motion is 0 at the first
frame. Readers and the server pass that lagged raw state as ``apply(x, previous=...)``; all velocity entries of a
map share one lag. Output names are the position names plus ``.vel`` (``kLeftElbow.vel``), or the entry's ``name``.
The R1Pro states already hold measured joint velocities (``*_qvel`` blocks of the layouts): on R1Pro data select
those; velocity entries are for datasets without them.

A user's own YAML in the same schema works wherever a shipped name does. A :class:`StateMap` maps float arrays
``[..., D_in] -> [..., D_out]`` (numpy or torch, float32 out) with one gather, plus one segment sum when the map has
``sum`` entries, and maps normalisation statistics the same way (:meth:`StateMap.map_stats`).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from behavior_smolvla.errors import StateMapError
from behavior_smolvla.state_maps.layouts import (
    ANY_LAYOUT, Layout, check_keys, list_layouts, load_layout, read_yaml, shipped_docs, slice_indices,
)

REDUCTIONS = ("sum",)
"""The entry reductions a map may use."""
VELOCITY_SUFFIX = ".vel"
"""Appended to the position name of a velocity output dim (when its entry has no ``name``)."""

CONSTANT_STD = 1e-6
"""A state dim whose std over a dataset is below this is reported as constant (it carries no information and its
normalised value is only noise amplified by the std floor)."""

_DEFAULT_MAPS = {256: "r1pro-2025-top32", 61: "r1pro-2026-b1k25"}
_STANDARD_TRACK_MAPS = {256: "r1pro-2025-standard", 61: "r1pro-2026-full"}
# SmolVLA's state projection takes at most this many dims (lerobot SmolVLAConfig.max_state_dim default).
_SMOLVLA_MAX_STATE_DIM = 32


# ------------------------------------------------------------------------------------------------------------------
# state maps


@dataclass(frozen=True)
class OutputDim:
    """One output dim of a bound map: its ``index``, ``name``, the ``sources`` (input dims) it reads, ``reduce``
    (``None`` = a copy of its single source, ``"sum"`` = the sum of its sources), the ``group`` of its sources,
    ``standard_track`` (``None`` when the map's layout is ``any``: legality unknown), ``unreliable`` (reason or
    ``""``) and ``velocity_lag`` (0 = the value itself; k >= 1 = its velocity over k policy steps, in state units
    per second: see the module docstring)."""

    index: int
    name: str
    sources: tuple[int, ...]
    reduce: str | None
    group: str
    standard_track: bool | None
    unreliable: str = ""
    velocity_lag: int = 0

    @property
    def source_label(self) -> str:
        """``"158"`` for a copied dim; ``"193+194"`` for a reduced one; ``"d(158)/dt"`` for a velocity."""
        label = "+".join(str(s) for s in self.sources)
        return f"d({label})/dt" if self.velocity_lag else label

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, as stored in :meth:`StateMap.to_dict`'s ``dims`` list (``velocity_lag`` only for a
        velocity dim, so maps without one are saved as before)."""
        out = {
            "name": self.name,
            "sources": list(self.sources),
            "reduce": self.reduce,
            "group": self.group,
            "standard_track": self.standard_track,
            "unreliable": self.unreliable,
        }
        if self.velocity_lag:
            out["velocity_lag"] = self.velocity_lag
        return out


@dataclass(frozen=True)
class StateMap:
    """A selection (and optional ``sum`` reduction) of state dims, loaded from YAML or from :meth:`to_dict`.

    Attributes: ``name``; ``layout`` (a layout name or ``"any"``); ``description`` (with its source); ``path`` (the
    YAML file, or ``"<dict>"``); ``input_dim`` (``D_in``; ``None`` for an unbound ``any`` map); ``output_dim``
    (``D_out``; ``None`` while unbound); ``names`` (``D_out`` output names); ``source_indices`` (the input dims used,
    in output order, a reduced entry contributing all its source dims); ``dims`` (one :class:`OutputDim` each);
    ``timing`` (``(fps, frame_stride)`` of the input contract, set by :meth:`bind` for a map with velocity entries,
    else None).
    Call :meth:`bind` with the dataset's state dim (and, for velocity entries, its fps and the frame stride) before
    :meth:`apply` / :meth:`map_stats`.
    """

    name: str
    layout: str
    description: str
    path: str = field(compare=False)
    input_dim: int | None
    dims: tuple[OutputDim, ...] = ()
    entries: tuple[dict[str, Any], ...] = ()
    """The YAML entries of an unbound ``any`` map (resolved by :meth:`bind`); empty once bound."""
    timing: tuple[float, int] | None = None
    _cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    # -------------------------------------------------------------------------------------------- properties

    @property
    def is_bound(self) -> bool:
        """True once the input dim is known (always, for a map with a concrete layout)."""
        return self.input_dim is not None

    @property
    def output_dim(self) -> int | None:
        return len(self.dims) if self.is_bound else None

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dims]

    @property
    def source_indices(self) -> list[int]:
        return [s for d in self.dims for s in d.sources]

    @property
    def has_reductions(self) -> bool:
        return any(d.reduce is not None for d in self.dims)

    @property
    def has_velocity(self) -> bool:
        """True when some output dim is a velocity (the map then needs ``previous`` in :meth:`apply`). For an
        unbound ``any`` map: when some entry has ``velocity``."""
        if not self.is_bound:
            return any(isinstance(e, Mapping) and "velocity" in e for e in self.entries)
        return any(d.velocity_lag for d in self.dims)

    @property
    def velocity_lag(self) -> int:
        """The lag of the velocity dims in policy steps (shared by all of them), 0 when there are none."""
        return max((d.velocity_lag for d in self.dims), default=0)

    @property
    def lag_frames(self) -> int:
        """Dataset frames between the state and the ``previous`` state :meth:`apply` takes: ``velocity_lag *
        frame_stride`` (0 without velocity dims).

        Raises: StateMapError when the map has velocity dims but was bound without ``fps`` / ``frame_stride``.
        """
        if not self.velocity_lag:
            return 0
        return self.velocity_lag * self._require_timing("lag_frames")[1]

    @property
    def velocity_dt(self) -> float:
        """Seconds between the state and the ``previous`` state: ``lag_frames / fps`` (0.0 without velocity dims)."""
        if not self.velocity_lag:
            return 0.0
        return self.lag_frames / self._require_timing("velocity_dt")[0]

    def describe_dim(self, dim: OutputDim) -> str:
        """How an output dim is computed, in words: ``"158"``, ``"193+194 (sum)"``, or for a velocity
        ``"d(3)/dt over 3 frames"`` (``"over 1 policy step"`` while the map is untimed)."""
        label = "+".join(str(s) for s in dim.sources) + (f" ({dim.reduce})" if dim.reduce else "")
        if not dim.velocity_lag:
            return label
        if self.timing is None:
            steps = f"{dim.velocity_lag} policy step" + ("s" if dim.velocity_lag > 1 else "")
            return f"d({label})/dt over {steps}"
        frames = dim.velocity_lag * self.timing[1]
        return f"d({label})/dt over {frames} frame{'s' if frames > 1 else ''}"

    def describe_velocity(self) -> str:
        """One line on the velocity dims (empty without any): how many, the lag in policy steps, frames and
        seconds, the units and the clamp at the episode start."""
        count = sum(1 for d in self.dims if d.velocity_lag)
        if not count and not self.has_velocity:
            return ""
        lag = self.velocity_lag or next(_velocity_lag(e["velocity"], self.path) for e in self.entries
                                        if isinstance(e, Mapping) and "velocity" in e)
        if self.timing is None:
            span = f"{lag} policy step(s) (x the frame stride, at the dataset's fps)"
        else:
            span = (f"{lag} policy step(s) = {self.lag_frames} frames = {self.velocity_dt:.4g} s at "
                    f"{self.timing[0]:g} fps, frame stride {self.timing[1]}")
        return (f"velocity dims{f' ({count})' if count else ''}: finite difference over {span}, in state units per "
                "second (rad/s for radians); 0 at an episode's first frame (the earlier state is clamped to it)")

    def _require_timing(self, what: str) -> tuple[float, int]:
        if self.timing is None:
            raise StateMapError(
                f"state map {self.name!r} ({self.path}) has velocity entries: bind it with the dataset's fps and the "
                f"frame stride (bind(state_dim, fps=..., frame_stride=...)) before {what}"
            )
        return self.timing

    # ------------------------------------------------------------------------------------------------- bind

    def bind(self, state_dim: int, state_names: Sequence[str] | None = None, *, fps: float | None = None,
             frame_stride: int | None = None) -> StateMap:
        """This map checked against (and, for layout ``any``, resolved for) a dataset's ``observation.state``.

        Args:
            state_dim: the dataset's state dim ``D_in`` (``info.json`` ``features["observation.state"].shape[0]``).
            state_names: the dataset's state names, if it declares them (used as output names by ``any`` maps).
            fps: the dataset's frame rate (Hz); with ``frame_stride``, the timing of velocity entries (ignored by a
                map without any; a map already timed keeps its timing when both are None).
            frame_stride: dataset frames per policy step (``PolicyInputs.frame_stride``); a velocity entry's lag
                of k policy steps is ``k * frame_stride`` frames.
        Returns: a bound map (``self`` when nothing needs resolving).
        Raises: StateMapError when ``state_dim`` is not the layout's dim, an ``any`` map's slice does not fit, or
            ``fps`` / ``frame_stride`` is not positive (or only one of them is given).
        """
        state_dim = int(state_dim)
        timing = _timing(fps, frame_stride, self)
        if self.is_bound:
            if state_dim != self.input_dim:
                raise StateMapError(
                    f"state map {self.name!r} ({self.path}) is for layout {self.layout} with {self.input_dim} state "
                    f"dims, but the dataset's observation.state has {state_dim}: {_suggest_map(state_dim)}"
                )
            if timing is None or not self.has_velocity or timing == self.timing:
                return self
            return dataclasses.replace(self, timing=timing, _cache={})
        names = list(state_names) if state_names is not None and len(state_names) == state_dim else None
        dims = _resolve_entries(self.entries, state_dim, None, names, self.path)
        velocity = any(d.velocity_lag for d in dims)
        return StateMap(self.name, self.layout, self.description, self.path, state_dim, dims,
                        timing=timing if velocity else None)

    def _require_bound(self, what: str) -> None:
        if not self.is_bound:
            raise StateMapError(
                f"state map {self.name!r} ({self.path}) has layout any: call .bind(state_dim) before {what}"
            )

    # ------------------------------------------------------------------------------------------------ apply

    def _plan(self) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(gather index [G], segment starts [D_out] for np.add.reduceat or None, segment id [G] or None)."""
        if "plan" not in self._cache:
            gather = np.asarray(self.source_indices, dtype=np.intp)
            if self.has_reductions:
                lengths = np.asarray([len(d.sources) for d in self.dims], dtype=np.intp)
                starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.intp)
                seg_id = np.repeat(np.arange(len(self.dims), dtype=np.int64), lengths)
                self._cache["plan"] = (gather, starts, seg_id)
            else:
                self._cache["plan"] = (gather, None, None)
        return self._cache["plan"]

    def apply(self, x: Any, previous: Any = None) -> Any:
        """Map states: numpy array or torch tensor ``[..., D_in]`` -> same type ``[..., D_out]``, float32.

        One gather along the last axis (a new array; the input is never aliased or modified), then, only when the
        map has ``sum`` entries, one segment sum over the gathered columns. A torch tensor stays on its device.

        Args:
            x: raw states ``[..., D_in]`` (numpy or torch).
            previous: only for a map with velocity dims (else ignored): the raw states :attr:`lag_frames` dataset
                frames before ``x``, same shape and type, clamped at the episode start (the episode's first state
                while fewer frames have passed). Velocity dim ``j`` is ``(m(x)[j] - m(previous)[j]) /``
                :attr:`velocity_dt` in state units per second, ``m`` being the map without velocity.
        Raises: StateMapError when unbound, when the last axis is not ``input_dim``, or when a map with velocity
            dims is untimed or gets no (or a differently shaped) ``previous``.
        """
        out = self._apply_positions(x)
        if not self.has_velocity:
            return out
        dt = self.velocity_dt
        if previous is None or tuple(previous.shape) != tuple(x.shape):
            got = "none" if previous is None else f"shape {list(previous.shape)}"
            raise StateMapError(
                f"state map {self.name!r} ({self.path}) has velocity dims: apply(x, previous) needs the raw state "
                f"{self.lag_frames} frames earlier, shaped like x {list(x.shape)} (got {got})"
            )
        earlier = self._apply_positions(previous)
        index = self._velocity_index(out)
        out[..., index] = (out[..., index] - earlier[..., index]) / dt
        return out

    def _velocity_index(self, like: Any) -> Any:
        """The output indices of the velocity dims, as an int array (numpy) or tensor on ``like``'s device."""
        if "velocity" not in self._cache:
            self._cache["velocity"] = np.asarray([d.index for d in self.dims if d.velocity_lag], dtype=np.intp)
        index = self._cache["velocity"]
        if _is_torch(like):
            import torch

            key = ("torch-velocity", like.device)
            if key not in self._cache:
                self._cache[key] = torch.as_tensor(index, device=like.device)
            return self._cache[key]
        return index

    def _apply_positions(self, x: Any) -> Any:
        """:meth:`apply` with velocity dims read as the value itself (what their finite difference is taken of);
        always a new float32 array or tensor."""
        self._require_bound("apply")
        shape = tuple(x.shape)
        if not shape or shape[-1] != self.input_dim:
            raise StateMapError(
                f"state map {self.name!r} ({self.path}) expects observation.state [..., {self.input_dim}], got "
                f"shape {list(shape)}: {_suggest_map(shape[-1]) if shape else 'pass a [..., D] array'}"
            )
        gather, starts, seg_id = self._plan()
        if _is_torch(x):
            import torch

            key = ("torch", x.device)
            if key not in self._cache:
                self._cache[key] = (
                    torch.as_tensor(gather, device=x.device),
                    None if seg_id is None else torch.as_tensor(seg_id, device=x.device),
                )
            index, segments = self._cache[key]
            picked = x.index_select(-1, index)
            if picked.dtype != torch.float32:
                picked = picked.to(torch.float32)
            if segments is None:
                return picked
            out = picked.new_zeros((*picked.shape[:-1], len(self.dims)))
            return out.index_add_(picked.dim() - 1, segments, picked)
        picked = np.take(np.asarray(x), gather, axis=-1).astype(np.float32, copy=False)
        if starts is None:
            return picked
        return np.add.reduceat(picked, starts, axis=-1)

    # ------------------------------------------------------------------------------------------------ stats

    def map_stats(
        self, stats: Mapping[str, Any], raw_state: np.ndarray | None = None, previous: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Normalisation statistics of the mapped state, from those of the raw state.

        Args:
            stats: ``{key: [D_in] array}`` for keys such as ``mean``, ``std``, ``min``, ``max``, ``q01`` .. ``q99``
                (lerobot's stats layout); values of another shape (``count``) are copied unchanged.
            raw_state: float ``[N, D_in]`` raw-state samples; needed when the map has ``sum`` entries and
                ``stats`` has keys other than ``mean`` (a sum's std, min, max and quantiles are not functions of
                its sources' stats, so they are computed exactly from these samples: population std, numpy's
                linear-interpolation quantiles, in float64), and whenever the map has velocity dims.
            previous: float ``[N, D_in]``: for a map with velocity dims, the raw state :attr:`lag_frames` frames
                before each row of ``raw_state`` (clamped at its episode's start, as :meth:`apply` takes it). A
                velocity's statistics are not functions of the positions' stats: every key, the mean included, is
                computed from these samples.
        Returns: ``{key: float32 [D_out] array}`` (``count`` as given). Copied dims take their source's value;
            a ``sum`` dim's mean is the exact sum of its sources' means.
        Raises: StateMapError when unbound, when a stat has the wrong length, or when ``raw_state`` / ``previous``
            is needed and missing / of the wrong shape.
        """
        self._require_bound("map_stats")
        plain = [d.index for d in self.dims if d.reduce is None and not d.velocity_lag]
        plain_src = [d.sources[0] for d in self.dims if d.reduce is None and not d.velocity_lag]
        reduced = [d for d in self.dims if d.reduce is not None or d.velocity_lag]
        derived: dict[str, np.ndarray] = {}
        per_dim = [k for k in stats if _is_per_dim(stats[k], self.input_dim)]
        needs_raw = per_dim if self.has_velocity else [k for k in per_dim if k != "mean"]
        if reduced and needs_raw:
            derived = self._reduced_stats_from_raw(raw_state, needs_raw, previous)
        out: dict[str, np.ndarray] = {}
        for key, value in stats.items():
            arr = np.asarray(value)
            if not _is_per_dim(arr, self.input_dim):
                if key != "count" and arr.size > 1:
                    raise StateMapError(
                        f"state map {self.name!r}: stats[{key!r}] has shape {list(arr.shape)}, expected "
                        f"[{self.input_dim}]; the stats are not of this map's raw state"
                    )
                out[key] = arr.copy()
                continue
            mapped = np.empty(len(self.dims), dtype=np.float32)
            mapped[plain] = arr[plain_src]
            for j, d in enumerate(reduced):
                if key == "mean" and not self.has_velocity:
                    mapped[d.index] = np.sum(arr[list(d.sources)], dtype=np.float64)
                else:
                    mapped[d.index] = derived[key][j]
            out[key] = mapped
        return out

    def _reduced_stats_from_raw(self, raw_state: Any, keys: list[str], previous: Any = None
                                ) -> dict[str, np.ndarray]:
        """Exact ``keys`` statistics of the sum and velocity dims (in output order), float32, from samples."""
        derived = [d for d in self.dims if d.reduce is not None or d.velocity_lag]
        names = ", ".join(d.name for d in derived[:4]) + (", ..." if len(derived) > 4 else "")
        what = "velocity" if self.has_velocity else "sum"
        if raw_state is None or (self.has_velocity and previous is None):
            needed = "raw_state and previous" if self.has_velocity else "raw_state"
            raise StateMapError(
                f"state map {self.name!r} ({self.path}) has {what} entries ({names}): pass {needed} "
                f"[N, {self.input_dim}] samples to map_stats so their {', '.join(keys)} can be computed"
            )
        raw = np.asarray(raw_state)
        if raw.ndim != 2 or raw.shape[1] != self.input_dim or raw.shape[0] == 0:
            raise StateMapError(
                f"state map {self.name!r}: raw_state must be [N, {self.input_dim}] with N >= 1, got {list(raw.shape)}"
            )
        earlier = None if previous is None else np.asarray(previous)
        columns = self.apply(raw, earlier)[:, [d.index for d in derived]].astype(np.float64)
        out: dict[str, np.ndarray] = {}
        for key in keys:
            q = _quantile_of(key)
            if key in _EXACT_STATS:
                out[key] = _EXACT_STATS[key](columns)
            elif q is not None:
                out[key] = np.quantile(columns, q, axis=0)
            else:
                raise StateMapError(
                    f"state map {self.name!r}: cannot derive stat {key!r} of its sum entries from samples; "
                    "pass stats with mean/std/min/max/qNN keys only"
                )
        return {k: v.astype(np.float32) for k, v in out.items()}

    # --------------------------------------------------------------------------------------------- legality

    def standard_track_violations(self) -> list[OutputDim]:
        """Output dims that read a dim the BEHAVIOR standard track forbids (empty = legal). For a map with layout
        ``any`` legality is unknown: every dim is returned."""
        return [d for d in self.dims if d.standard_track is not True] if self.is_bound else []

    def is_standard_track_legal(self) -> bool:
        """True when every source dim is allowed on the BEHAVIOR standard track (per the layout's legality).

        A map with layout ``any`` is never certified (False): legality is defined only against an R1Pro layout.
        """
        if self.layout == ANY_LAYOUT:
            return False
        return not self.standard_track_violations()

    # ------------------------------------------------------------------------------------------ serialising

    def to_dict(self) -> dict[str, Any]:
        """A self-contained, YAML/JSON-safe description (what a checkpoint stores); :meth:`from_dict` reads it back
        without needing the layout file. Keys: ``name, layout, description, input_dim, output_dim, names,
        source_indices, standard_track_legal, dims`` (per output dim: name, sources, reduce, group, standard_track,
        unreliable, and ``velocity_lag`` for a velocity dim); an unbound ``any`` map stores its ``entries`` instead
        of ``dims``; a timed map with velocity dims adds ``timing: {fps, frame_stride}``."""
        out: dict[str, Any] = {
            "name": self.name,
            "layout": self.layout,
            "description": self.description,
            "input_dim": self.input_dim,
            "output_dim": self.output_dim,
            "names": self.names,
            "source_indices": self.source_indices,
            "standard_track_legal": self.is_standard_track_legal(),
        }
        if self.is_bound:
            out["dims"] = [d.to_dict() for d in self.dims]
        else:
            out["entries"] = [dict(e) for e in self.entries]
        if self.timing is not None:
            out["timing"] = {"fps": self.timing[0], "frame_stride": self.timing[1]}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str = "<dict>") -> StateMap:
        """A map from :meth:`to_dict` output (``dims`` form) or from a dict in the YAML schema (``entries`` form).

        Raises: StateMapError (naming ``where``) when the dict is malformed or inconsistent.
        """
        if not isinstance(data, Mapping):
            raise StateMapError(f"{where}: a state map must be a mapping, got {type(data).__name__}")
        if "dims" not in data:
            # The YAML schema, or an unbound `any` map's to_dict() (whose derived keys are recomputed on bind).
            derived = ("input_dim", "output_dim", "names", "source_indices", "standard_track_legal", "timing")
            return _parse_map({k: v for k, v in data.items() if k not in derived}, where)
        name, layout, input_dim = data.get("name"), data.get("layout"), data.get("input_dim")
        if not isinstance(name, str) or not isinstance(layout, str) or not isinstance(input_dim, int):
            raise StateMapError(f"{where}: a saved state map needs str name, str layout and int input_dim")
        timing = None
        if data.get("timing") is not None:
            try:
                timing = _timing(data["timing"]["fps"], data["timing"]["frame_stride"], None)
            except (KeyError, TypeError):
                raise StateMapError(f"{where}: 'timing' needs fps and frame_stride") from None
        dims = []
        for i, d in enumerate(data["dims"] or []):
            try:
                sources = tuple(int(s) for s in d["sources"])
                dim = OutputDim(
                    index=i,
                    name=str(d["name"]),
                    sources=sources,
                    reduce=d.get("reduce"),
                    group=str(d.get("group", "")),
                    standard_track=d.get("standard_track"),
                    unreliable=str(d.get("unreliable") or ""),
                    velocity_lag=_velocity_lag(d.get("velocity_lag") or 0, f"{where} dims[{i}]", saved=True),
                )
            except (KeyError, TypeError, ValueError):
                raise StateMapError(f"{where}: dims[{i}] needs 'name' and a list of int 'sources'") from None
            if not sources or any(not 0 <= s < input_dim for s in sources):
                raise StateMapError(f"{where}: dims[{i}] sources {list(sources)} out of range 0..{input_dim - 1}")
            if dim.reduce not in (None, *REDUCTIONS) or (dim.reduce is None and len(sources) != 1):
                raise StateMapError(f"{where}: dims[{i}] must have one source, or several with reduce: sum")
            dims.append(dim)
        _check_unique_names(dims, where)
        _check_one_lag([d.velocity_lag for d in dims], where)
        velocity = any(d.velocity_lag for d in dims)
        return cls(name, layout, " ".join(str(data.get("description", "")).split()), where, input_dim, tuple(dims),
                   timing=timing if velocity else None)


# ------------------------------------------------------------------------------------------------------------------
# parsing maps


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "index_select")


def _is_per_dim(value: Any, input_dim: int | None) -> bool:
    shape = np.shape(value)
    return len(shape) == 1 and shape[0] == input_dim


_EXACT_STATS = {
    "std": lambda a: a.std(axis=0),
    "min": lambda a: a.min(axis=0),
    "max": lambda a: a.max(axis=0),
    "mean": lambda a: a.mean(axis=0),
}


def _quantile_of(key: str) -> float | None:
    """``"q01"`` -> 0.01 (lerobot's quantile key naming, ``f"q{int(q * 100):02d}"``); None for other keys."""
    if len(key) >= 3 and key[0] == "q" and key[1:].isdigit():
        return int(key[1:]) / 100.0
    return None


def _check_unique_names(dims: Sequence[OutputDim], where: str) -> None:
    seen: dict[str, int] = {}
    for d in dims:
        if d.name in seen:
            raise StateMapError(
                f"{where}: output name {d.name!r} is used twice (dims {seen[d.name]} and {d.index}); "
                "give one entry a different 'name'"
            )
        seen[d.name] = d.index


def _check_one_lag(lags: Sequence[int], where: str) -> None:
    """All velocity dims of a map share one lag (0 = not a velocity)."""
    lags = sorted({lag for lag in lags if lag})
    if len(lags) > 1:
        raise StateMapError(
            f"{where}: velocity entries use lags {lags}; all velocity entries of a map share one lag (the reader and "
            "the server keep one earlier state): use one 'lag'"
        )


def _velocity_lag(spec: Any, where: str, saved: bool = False) -> int:
    """A velocity entry's lag in policy steps: ``velocity: {lag: k}`` (``{}`` = 1) in YAML, an int when ``saved``.

    Raises: StateMapError (naming ``where``) for anything but a mapping with an int ``lag`` >= 1.
    """
    if saved:
        lag = spec
    else:
        if not isinstance(spec, Mapping):
            raise StateMapError(f"{where}: 'velocity' must be a mapping such as {{lag: 1}} (lag in policy steps), "
                                f"got {spec!r}")
        check_keys(dict(spec), ("lag",), f"{where} velocity")
        lag = spec.get("lag", 1)
    if isinstance(lag, bool) or not isinstance(lag, int) or lag < (0 if saved else 1):
        raise StateMapError(f"{where}: velocity lag {lag!r} must be an integer >= 1 (policy steps; the finite "
                            "difference spans lag * frame_stride dataset frames)")
    return int(lag)


def _timing(fps: Any, frame_stride: Any, state_map: StateMap | None) -> tuple[float, int] | None:
    """``(fps, frame_stride)`` checked; None when both are None. Raises StateMapError for bad values."""
    if fps is None and frame_stride is None:
        return None
    where = f"state map {state_map.name!r} ({state_map.path})" if state_map is not None else "state map timing"
    if (isinstance(fps, bool) or not isinstance(fps, int | float) or not np.isfinite(fps) or fps <= 0
            or isinstance(frame_stride, bool) or not isinstance(frame_stride, int) or frame_stride < 1):
        raise StateMapError(f"{where}: velocity timing needs fps > 0 and an integer frame_stride >= 1, got "
                            f"fps={fps!r}, frame_stride={frame_stride!r}")
    return float(fps), int(frame_stride)


def _suggest_map(state_dim: int) -> str:
    if state_dim in _DEFAULT_MAPS:
        return f"use a map for that layout (e.g. --state-map {_DEFAULT_MAPS[state_dim]}) or identity"
    return "use --state-map identity or a map file written for this dataset's state"


def _resolve_entries(
    entries: Sequence[Any],
    state_dim: int,
    layout: Layout | None,
    state_names: Sequence[str] | None,
    where: str,
) -> tuple[OutputDim, ...]:
    """Expand YAML ``entries`` into output dims against a layout (or, for ``any``, a plain ``state_dim`` vector)."""
    if not entries:
        raise StateMapError(f"{where}: 'entries' is empty; list the blocks or slices the map selects")
    dims: list[OutputDim] = []
    for e, entry in enumerate(entries):
        ewhere = f"{where} entries[{e}]"
        if isinstance(entry, str):
            entry = {"block": entry}
        if not isinstance(entry, dict):
            raise StateMapError(f"{ewhere}: an entry is a block name or a mapping with "
                                "block/slice/name/reduce/velocity")
        check_keys(entry, ("block", "slice", "name", "reduce", "velocity"), ewhere)
        block, name, reduce = entry.get("block"), entry.get("name"), entry.get("reduce")
        lag = _velocity_lag(entry["velocity"], ewhere) if "velocity" in entry else 0
        suffix = VELOCITY_SUFFIX if lag and name is None else ""
        if reduce is not None and reduce not in REDUCTIONS:
            raise StateMapError(f"{ewhere}: unknown reduce {reduce!r}; use one of {', '.join(REDUCTIONS)}")
        if name is not None and (not isinstance(name, str) or not name):
            raise StateMapError(f"{ewhere}: 'name' must be a non-empty string")
        if block is not None:
            if layout is None:
                raise StateMapError(f"{ewhere}: 'block' needs a map with a concrete layout, not 'any'; use 'slice'")
            if block not in layout.blocks:
                raise StateMapError(
                    f"{ewhere}: layout {layout.name} has no block {block!r}; known: {', '.join(layout.blocks)}"
                )
            start, stop = layout.blocks[block]
            rel = slice_indices(entry["slice"], stop - start, ewhere) if "slice" in entry else range(stop - start)
            sources = [start + k for k in rel]
        elif "slice" in entry:
            sources = slice_indices(entry["slice"], state_dim, ewhere)
        else:
            raise StateMapError(f"{ewhere}: give a 'block' or a 'slice'")
        if reduce is not None:
            if name is None:
                raise StateMapError(f"{ewhere}: a reduce: {reduce} entry needs a 'name' for its output dim")
            dims.append(_output_dim(len(dims), name, tuple(sources), reduce, layout, lag))
            continue
        for k, src in enumerate(sources):
            if name is not None:
                out_name = name if len(sources) == 1 else f"{name}.{k}"
            elif layout is not None:
                out_name = layout.dims[src].name
            else:
                out_name = state_names[src] if state_names is not None else f"state.{src}"
            dims.append(_output_dim(len(dims), out_name + suffix, (src,), None, layout, lag))
    _check_unique_names(dims, where)
    _check_one_lag([d.velocity_lag for d in dims], where)
    return tuple(dims)


def _output_dim(
    index: int, name: str, sources: tuple[int, ...], reduce: str | None, layout: Layout | None, lag: int = 0
) -> OutputDim:
    # A velocity dim takes its sources' group, legality and reliability: it is computed from them alone.
    if layout is None:
        return OutputDim(index, str(name), sources, reduce, "", None, "", lag)
    src = [layout.dims[s] for s in sources]
    groups = list(dict.fromkeys(d.group for d in src))
    unreliable = "; ".join(dict.fromkeys(d.unreliable for d in src if d.unreliable))
    legal = all(d.standard_track for d in src)
    return OutputDim(index, str(name), sources, reduce, "+".join(groups), legal, unreliable, lag)


def _parse_map(doc: dict[str, Any], where: str) -> StateMap:
    check_keys(doc, ("kind", "name", "layout", "description", "entries"), where)
    if doc.get("kind", "map") != "map":
        raise StateMapError(f"{where}: kind is {doc.get('kind')!r}, not a state map (kind: map)")
    name = doc.get("name") or Path(where).stem
    layout_name = doc.get("layout")
    if not isinstance(layout_name, str):
        known = ", ".join([*list_layouts(), ANY_LAYOUT])
        raise StateMapError(f"{where}: missing 'layout'; use one of {known}")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise StateMapError(f"{where}: 'entries' must be a list of blocks or slices")
    description = " ".join(str(doc.get("description", "")).split())
    if layout_name == ANY_LAYOUT:
        for e, entry in enumerate(entries):
            if isinstance(entry, str) or (isinstance(entry, dict) and "block" in entry):
                raise StateMapError(f"{where} entries[{e}]: layout any has no blocks; use 'slice'")
            if isinstance(entry, dict) and "velocity" in entry:  # checked now, not first when bound to a dataset
                _velocity_lag(entry["velocity"], f"{where} entries[{e}]")
        velocity = [e["velocity"] for e in entries if isinstance(e, dict) and "velocity" in e]
        _check_one_lag([_velocity_lag(v, where) for v in velocity], where)
        if not entries:
            raise StateMapError(f"{where}: 'entries' is empty; list the slices the map selects")
        return StateMap(str(name), ANY_LAYOUT, description, where, None, (), tuple(dict(e) for e in entries))
    try:
        layout = load_layout(layout_name)
    except StateMapError:
        known = ", ".join([*list_layouts(), ANY_LAYOUT])
        raise StateMapError(f"{where}: unknown layout {layout_name!r}; use one of {known}") from None
    dims = _resolve_entries(entries, layout.state_dim, layout, None, where)
    return StateMap(str(name), layout_name, description, where, layout.state_dim, dims)


# ------------------------------------------------------------------------------------------------------------------
# public loaders


def _looks_like_path(value: str) -> bool:
    return value.endswith((".yaml", ".yml")) or os.sep in value or "/" in value or Path(value).is_file()


def load_state_map(name_or_path: str | os.PathLike[str] | StateMap) -> StateMap:
    """A shipped map by name (``"r1pro-2025-top32"``) or a user's YAML file (same schema); a StateMap is returned
    as is.

    Raises: StateMapError for an unknown name (listing the known ones), a missing/unreadable file, or a malformed
    map (unknown layout or block, out-of-range index, duplicate output names, ...), naming the file and the fix.
    """
    if isinstance(name_or_path, StateMap):
        return name_or_path
    # A shipped name wins over a same-named file in the working directory; anything else path-like is a file.
    is_name = isinstance(name_or_path, str) and name_or_path in shipped_docs()[1]
    if not is_name and (isinstance(name_or_path, os.PathLike) or _looks_like_path(str(name_or_path))):
        path = Path(name_or_path)
        if not path.is_file():
            raise StateMapError(f"state map file {path} does not exist; pass a YAML file or a shipped map name")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise StateMapError(f"state map file {path}: cannot read it ({exc})") from None
        return _parse_map(read_yaml(text, str(path)), str(path))
    return _load_shipped(str(name_or_path))


@functools.lru_cache(maxsize=None)
def _load_shipped(name: str) -> StateMap:
    maps = shipped_docs()[1]
    if name not in maps:
        raise StateMapError(
            f"unknown state map {name!r}: use one of {', '.join(sorted(maps))}, or the path of a YAML map file"
        )
    doc, where = maps[name]
    return _parse_map(doc, where)


def list_state_maps() -> list[StateMap]:
    """Every shipped map (unbound ``any`` maps included), sorted by name."""
    return [_load_shipped(name) for name in sorted(shipped_docs()[1])]


def default_state_map(state_dim: int) -> StateMap:
    """The map used when none is asked for, bound to ``state_dim``: 256 (R1Pro 2025) -> ``r1pro-2025-top32``;
    61 (R1Pro 2026) -> ``r1pro-2026-b1k25``; <= 32 (what SmolVLA's state projection takes) -> ``identity``.

    Raises: StateMapError for any other dim (the state would not fit SmolVLA's 32 state slots).
    """
    if state_dim in _DEFAULT_MAPS:
        return load_state_map(_DEFAULT_MAPS[state_dim])
    if 0 < state_dim <= _SMOLVLA_MAX_STATE_DIM:
        return load_state_map("identity").bind(state_dim)
    raise StateMapError(
        f"no default state map for a {state_dim}-dim observation.state (SmolVLA takes <= {_SMOLVLA_MAX_STATE_DIM}): "
        "pass --state-map with a YAML map file that selects the dims to use"
    )


def standard_track_map(state_dim: int) -> StateMap:
    """Every dim the BEHAVIOR standard track allows, for a layout's state dim: 256 -> ``r1pro-2025-standard``
    (217 dims), 61 -> ``r1pro-2026-full`` (the 2026 layout has no privileged dims).

    Raises: StateMapError for another dim (standard-track legality is defined only for the R1Pro layouts).
    """
    if state_dim in _STANDARD_TRACK_MAPS:
        return load_state_map(_STANDARD_TRACK_MAPS[state_dim])
    raise StateMapError(
        f"no standard-track map for a {state_dim}-dim observation.state: the standard track is defined for the R1Pro "
        "layouts (256 dims in 2025, 61 in 2026); drop --filter-state or pass --state-map"
    )
