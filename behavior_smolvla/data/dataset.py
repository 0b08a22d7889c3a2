"""The random-access reader: ``BehaviorDataset`` turns selected episodes of a LeRobot dataset into samples (camera
frames, the state through a bound state map, an action chunk with its padding mask, the task).

The numeric columns of the selected episodes (state, action, timestamps, frame and task indices) are read once,
with pyarrow, into the numeric cache (:mod:`behavior_smolvla.data.cache`) and memory-mapped from there, so samples
cost no parquet access, memory does not grow with the number of frames, and the dataset pickles to DataLoader
workers as metadata plus file names. ``in_memory=True`` keeps them in this process's memory instead. Frames are
decoded by :mod:`behavior_smolvla.data.video` with decoders opened lazily in the process that reads.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from behavior_smolvla.data.cache import (
    DroppedFrames, NumericCache, columnwise_data_stats, describe_dropped, open_npy, stat_files, stats_key,
)
from behavior_smolvla.data.meta import (
    ACTION_KEY, STATE_KEY, DatasetMeta, column_type_problem, format_indices, parse_episode_spec,
)
from behavior_smolvla.data.stats import aggregate_stats, data_stats, stats_usable, stream_stats
from behavior_smolvla.data.video import DecoderCache, ImageSize, VideoFile, output_size
from behavior_smolvla.errors import CacheError, ConfigError, DatasetError, StateMapError, VideoError

REFERENCE_KEY = "action.reference"
"""Sample key of the reference state of each action dim (the same name as ``behavior_smolvla.actions``')."""

# -- column decoding --------------------------------------------------------------------------------------------


def _check_column_type(table: pa.Table, name: str, path: Path, declared: Any) -> None:
    """DatasetError naming ``path`` and the column when it does not hold numbers (``declared``: info.json's dtype)."""
    problem = column_type_problem(name, table.schema.field(name).type, declared)
    if problem:
        raise DatasetError(f"{path}: {problem}; fix the file or the feature's dtype in meta/info.json")


def _vector_column(table: pa.Table, name: str, dim: int, path: Path, declared: Any = None) -> np.ndarray:
    """float32 ``[rows, dim]`` from a ``fixed_size_list``, ``list`` or (dim 1) scalar column of numbers.

    Raises:
        DatasetError: values that are not numbers (``declared``: info.json's dtype, for the message), rows whose
            length differs from ``dim`` (the declared shape), or nulls.
    """
    _check_column_type(table, name, path, declared)
    column = table.column(name)
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if array.null_count:
        raise DatasetError(f"column {name!r} of {path} has {array.null_count} null rows; fix or re-export the file")
    kind = array.type
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.list_value_length(array).to_numpy(zero_copy_only=False)
        bad = np.flatnonzero(lengths != dim)
        if len(bad):
            row = int(bad[0])
            relation = "shorter" if lengths[row] < dim else "longer"
            raise DatasetError(
                f"column {name!r} of {path} has rows of length {int(lengths[row])} (row {row}), {relation} than its "
                f"declared shape [{dim}] in meta/info.json; fix the file or the feature's shape")
        values = array.flatten().to_numpy(zero_copy_only=False)
        return np.ascontiguousarray(values.reshape(len(array), dim), dtype=np.float32)
    if dim == 1 and (pa.types.is_floating(kind) or pa.types.is_integer(kind)):
        return array.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1)
    raise DatasetError(f"column {name!r} of {path} has type {kind}, not a vector of {dim} numbers")


def _extra_column(table: pa.Table, name: str) -> np.ndarray:
    """An extra column as numpy: ``[rows, k]`` for equal-length lists, an object array of arrays for ragged ones,
    ``[rows]`` for scalars. Floating values become float32."""
    array = table.column(name).combine_chunks()
    kind = array.type
    if pa.types.is_fixed_size_list(kind) or pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = pc.list_value_length(array).fill_null(0).to_numpy(zero_copy_only=False)
        values = array.flatten().to_numpy(zero_copy_only=False)
        if pa.types.is_floating(kind.value_type):
            values = values.astype(np.float32)
        if len(lengths) and (lengths == lengths[0]).all():
            return values.reshape(len(array), int(lengths[0]))
        ragged = np.empty(len(array), dtype=object)
        ragged[:] = np.split(values, np.cumsum(lengths)[:-1])
        return ragged
    values = array.to_numpy(zero_copy_only=False)
    return values.astype(np.float32) if values.dtype.kind == "f" else values


class EpisodeRows(NamedTuple):
    """One episode's rows as :func:`read_episode_rows` returns them (n: its kept frames)."""

    state: np.ndarray
    """float32 ``[n, D]``: the raw state."""
    action: np.ndarray
    """float32 ``[n, A]``."""
    timestamp: np.ndarray
    """float32 ``[n]``: seconds in the episode."""
    frame_index: np.ndarray
    """int64 ``[n]``."""
    task_index: np.ndarray
    """int64 ``[n]``."""
    extras: dict[str, np.ndarray]
    """Extra column -> values ``[n, ...]``."""
    dropped: DroppedFrames | None
    """The frames left out by ``drop_nonfinite`` (None: the whole episode is kept)."""


def _nonfinite_detail(meta: DatasetMeta, state: np.ndarray, action: np.ndarray) -> str:
    """``"observation.state dim 3 is nan"``: the first non-finite value of one row, by the dataset's feature name."""
    for key, values in ((meta.state_key, state), (meta.action_key, action)):
        bad = np.flatnonzero(~np.isfinite(values))
        if len(bad):
            return f"{key} dim {int(bad[0])} is {values[bad[0]]}"
    return "no value is non-finite"


def read_episode_rows(meta: DatasetMeta, path: Path, eps: Sequence[int], extra_columns: Sequence[str] = (),
                      drop_nonfinite: bool = False) -> dict[int, EpisodeRows]:
    """The rows of episodes ``eps`` from their data file ``path``, read once and checked against the metadata.

    Every state and action value is checked to be finite (NaN or inf would train until the loss itself turned NaN).
    With ``drop_nonfinite`` an episode holding such a frame is cut before it (:class:`DroppedFrames` says where).

    Returns:
        episode -> :class:`EpisodeRows` (state float32 [n, D], action float32 [n, A], timestamp float32 [n],
        frame_index int64 [n], task_index int64 [n], extras, dropped) with ``n`` the episode's length, or its kept
        frames.

    Raises:
        DatasetError: a missing or unreadable file, missing columns, columns that do not hold numbers, fewer rows
            than the metadata says, rows of another episode, unknown task indices, a non-finite state or action
            value (without ``drop_nonfinite``; naming the episode, the frame and the value).
    """
    if not path.is_file():
        raise DatasetError(f"data file {path} (episode {eps[0]}) does not exist; re-download the data/ "
                           "folder or select other episodes")
    reverse_tasks = {text: index for index, text in meta.tasks.items()}
    try:  # one open per file: the schema and the columns come from the same handle
        handle = pq.ParquetFile(path)
        schema_names = handle.schema_arrow.names
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read {path} ({' '.join(str(exc).split())}); re-download it") from None
    for key in (meta.state_key, meta.action_key, *extra_columns):
        if key not in schema_names:
            raise DatasetError(
                f"column {key!r} missing from {path}; its columns are: {', '.join(schema_names)}")
    optional = [c for c in ("timestamp", "frame_index", "episode_index", "task_index") if c in schema_names]
    try:
        table = handle.read(columns=list(dict.fromkeys([meta.state_key, meta.action_key, *optional,
                                                        *extra_columns])))
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read {path} ({' '.join(str(exc).split())}); re-download it") from None
    finally:
        handle.close()
    features = meta.features
    state = _vector_column(table, meta.state_key, meta.state_dim, path, features[meta.state_key].get("dtype"))
    action = _vector_column(table, meta.action_key, meta.action_dim, path, features[meta.action_key].get("dtype"))
    for c in optional:
        _check_column_type(table, c, path, (features.get(c) or {}).get("dtype"))
    columns = {c: table.column(c).to_numpy() for c in optional}
    extras = {c: _extra_column(table, c) for c in extra_columns}
    finite = np.isfinite(state).all(axis=1) & np.isfinite(action).all(axis=1)
    relative = str(path.relative_to(meta.root)) if path.is_relative_to(meta.root) else str(path)
    loaded: dict[int, EpisodeRows] = {}
    for ep in eps:
        info = meta.episodes[ep]
        lo, hi = info.row_start, info.row_stop
        if hi > table.num_rows:
            raise DatasetError(f"episode {ep} should be rows {lo}-{hi - 1} of {path} (meta length "
                               f"{info.length}) but the file has {table.num_rows} rows; the metadata and "
                               "data disagree")
        if "episode_index" in columns:
            found = np.unique(columns["episode_index"][lo:hi])
            if len(found) != 1 or int(found[0]) != ep:
                raise DatasetError(f"rows {lo}-{hi - 1} of {path} hold episode(s) {format_indices(found)}, "
                                   f"not episode {ep} as the metadata says; the metadata and data disagree")
        if "task_index" in columns:
            task_index = columns["task_index"][lo:hi].astype(np.int64)
            unknown = set(np.unique(task_index).tolist()) - set(meta.tasks)
            if unknown:
                raise DatasetError(f"{path} uses task_index {sorted(unknown)} that the task table does not "
                                   f"define (it has {format_indices(list(meta.tasks))})")
        elif info.tasks and info.tasks[0] in reverse_tasks:
            task_index = np.full(hi - lo, reverse_tasks[info.tasks[0]], dtype=np.int64)
        else:
            raise DatasetError(f"{path} has no task_index column and episode {ep}'s task is not in the "
                               "task table")
        timestamp = (columns["timestamp"][lo:hi].astype(np.float32) if "timestamp" in columns
                     else (np.arange(hi - lo) / meta.fps).astype(np.float32))
        frame_index = (columns["frame_index"][lo:hi].astype(np.int64) if "frame_index" in columns
                       else np.arange(hi - lo, dtype=np.int64))
        dropped = None
        keep = hi - lo
        if not finite[lo:hi].all():
            keep = int(np.argmin(finite[lo:hi]))
            dropped = DroppedFrames(episode=int(ep), frame=int(frame_index[keep]), frames=hi - lo - keep,
                                    detail=_nonfinite_detail(meta, state[lo + keep], action[lo + keep]),
                                    file=relative)
            if not drop_nonfinite:
                raise DatasetError(dropped.refusal())
        loaded[ep] = EpisodeRows(state[lo:lo + keep], action[lo:lo + keep], timestamp[:keep], frame_index[:keep],
                                 task_index[:keep], {c: extras[c][lo:lo + keep] for c in extra_columns}, dropped)
    return loaded


def _velocity_lag_frames(state_map: Any, meta: DatasetMeta) -> int:
    """Frames between a row and the earlier row a velocity state map reads (0 without velocity dims).

    Raises:
        StateMapError: the map's velocities were timed for another frame rate than this dataset's (they would be
            scaled wrong and span another time), or not timed at all.
    """
    if state_map is None or not getattr(state_map, "has_velocity", False):
        return 0
    lag = int(state_map.lag_frames)  # raises when the map was bound without fps / frame_stride
    if abs(state_map.timing[0] - float(meta.fps)) > 1e-6:
        raise StateMapError(f"state map {state_map.name!r} has velocity dims timed for {state_map.timing[0]:g} fps but "
                            f"{meta.root} is recorded at {meta.fps:g} fps; use a dataset at the training frame rate")
    return lag


class _MappedFile:
    """A memory-mapped array's file name, standing in for the array while a dataset is pickled."""

    def __init__(self, path: str):
        self.path = str(path)


# -- the dataset ------------------------------------------------------------------------------------------------


FRAME_TABLE_DTYPE = np.dtype([("episode_index", np.int64), ("frame_index", np.int64), ("row", np.int64)])


class BehaviorDataset(torch.utils.data.Dataset):
    """Random-access samples of a LeRobot dataset: camera frames, state, an action chunk and the task.

    Sample ``i`` (``len()`` = number of sampled frames: every ``sample_stride``-th frame of each selected episode,
    starting at its first frame; ``sample_stride`` defaults to ``frame_stride``) is a dict:

    * each camera key -> float32 ``[3, H, W]`` in [0, 1] (``(H, W)`` from ``image_size``);
    * ``observation.state`` float32 ``[D]`` (mapped when a state map is given; a map with velocity dims also reads
      the raw state ``state_map.lag_frames`` frames earlier in the episode, clamped at its first frame, whatever
      this reader's ``frame_stride``);
    * ``action`` float32 ``[chunk_size, A]`` and ``action_is_pad`` bool ``[chunk_size]``: for the sample at row ``i``
      of an episode ``[start, end)``, rows ``min(i + d * frame_stride, end - 1)`` and pad where
      ``i + d * frame_stride >= end``, d = 0..chunk_size-1. With ``frame_stride`` 1 this is exactly lerobot's
      ``delta_timestamps`` chunk; with a stride the chunk is at the strided rate (e.g. 10 Hz actions from 30 Hz data,
      as the BEHAVIOR baselines train when they downsample), so one chunk spans ``chunk_size * frame_stride`` frames;
    * ``task`` str; ``episode_index``, ``frame_index``, ``index`` (the sample's position here) int64 scalars;
      ``timestamp`` float32 scalar (seconds in the episode); each of ``extra_columns`` as a tensor.

    Args:
        root: the dataset folder (its ``observation.state`` and ``action`` features are read), or a
            :class:`DatasetMeta` loaded with the state and action keys to read (``DatasetMeta.load(root, state_key=...,
            action_key=...)``). Samples carry them as ``observation.state`` and ``action`` whatever their names.
        episodes: episode spec (see :func:`parse_episode_spec`); None = all.
        cameras: camera keys, in the order wanted; None = the colour cameras (:attr:`DatasetMeta.rgb_camera_keys`);
            ``[]`` = no frames (numeric samples only).
        chunk_size: actions per sample (>= 1).
        image_size: :data:`~behavior_smolvla.data.video.ImageSize` of the frames (resized at decode time).
        frame_stride: take every n-th frame (>= 1); 3 turns 30 Hz data into 10 Hz samples.
        sample_stride: frames between consecutive samples (chunk starts) of an episode, >= 1; None = ``frame_stride``.
            ``1`` with ``frame_stride`` 3 starts a 10 Hz chunk at every 30 Hz frame: three times the distinct
            training samples (each one still exactly a 10 Hz observation and chunk), as lerobot samples every frame.
        state_map: None (the raw state), or a :class:`~behavior_smolvla.state_maps.maps.StateMap` already bound to
            this dataset's state (``StateMap.bind``; :class:`~behavior_smolvla.inputs.PolicyInputs` does it), and
            timed for its fps when it has velocity dims. The stats of velocity dims are computed from the selected
            episodes' rows (every frame, with its clamped earlier frame).
        extra_columns: further parquet columns to return by name (e.g. ``observation.task_info``); fixed-length
            ones as ``[k]`` tensors, ragged ones per row; floating values as float32.
        max_open_videos: video files kept open per process (LRU).
        decoder_threads: FFmpeg threads per decoder (0 = FFmpeg's choice).
        recompute_stats: ignore the statistics stored with the dataset and recompute them from the selected
            episodes' rows (:func:`~behavior_smolvla.data.stats.stream_stats`).
        action_reference: one raw-state index (or None) per action dim (``behavior_smolvla.actions``); when given,
            samples also hold ``action.reference`` float32 ``[A]``: the RAW state (before the state map) of those
            dims at the sample's frame, 0 for dims without one.
        cache_dir: folder of the numeric cache (:mod:`behavior_smolvla.data.cache`; ``--cache-dir``); None = the
            default (``$SMOLVLA_CACHE_DIR``, else ``behavior_smolvla/`` beside the Hugging Face cache). The state,
            action, timestamps and indices of the selected episodes are memory-mapped from there (built on first
            use, reused while the data files are unchanged), so memory does not grow with the number of frames and
            a pickled dataset (what a DataLoader worker receives) holds metadata and file names only: about 1 KB
            per episode, independent of its length.
        in_memory: read the numeric columns into this process's memory instead (no cache; for a few episodes,
            e.g. offline evaluation). ``extra_columns`` imply it.
        drop_nonfinite: leave out each episode's frames from its first one holding a NaN or infinite state or action
            value (``--drop-nonfinite``; said in one line on stderr, listed in :attr:`dropped`), instead of refusing
            the data. Cutting the episode there keeps every action chunk and velocity pair made of kept frames (a
            chunk is padded at the new end, ``action_is_pad``); normalisation statistics then come from the kept
            rows, not the ones stored with the dataset.
        verify_cache: check the content checksum of every numeric cache file of the entry (``--verify-data``), not
            only of those modified since they were built (:mod:`behavior_smolvla.data.cache`).

    Attributes:
        meta, episodes (selected, sorted), cameras, state_map (bound, or None), stats, state_names, action_names,
        dropped (:class:`~behavior_smolvla.data.cache.DroppedFrames` per episode cut by ``drop_nonfinite``),
        frame_table (structured ``[len]``: ``episode_index, frame_index, row``; ``row`` indexes the internal arrays),
        tasks (sorted distinct task strings of the selected episodes), chunk_size, frame_stride, sample_stride,
        image_size.
        ``stats``: ``{"observation.state": {...}, "action": {...}}`` with mean, std, min, max (and q01, q99 / other
        quantiles where available) as float32 arrays, over the selected episodes, state stats mapped. Source, in
        order of preference: per-episode stats stored with the dataset (aggregated, see :func:`aggregate_stats`);
        ``meta/stats.json`` when every episode is selected; else computed exactly from the parquet data.
        ``stats_source`` says which.

    Raises:
        DatasetError: unknown episodes or cameras, missing or malformed parquet files, columns that do not match
            info.json, rows that do not belong to the episode the metadata says, non-finite state or action values
            (without ``drop_nonfinite``), or no frame left after dropping them.
        CacheError: a damaged numeric cache entry that cannot be replaced (naming the folder to delete).
        VideoError: a missing video file of a selected episode and camera (at construction); a truncated or
            undecodable one when a sample reads it.
        ConfigError: a non-positive ``chunk_size``, ``frame_stride`` or ``sample_stride``; an unwritable ``cache_dir``.
        StateMapError: a state map that is not bound to this dataset's state size, or whose velocity dims are
            untimed or timed for another fps.
    """

    def __init__(
        self,
        root: str | os.PathLike | DatasetMeta,
        episodes: str | Sequence[int] | None = None,
        cameras: Sequence[str] | str | None = None,
        chunk_size: int = 50,
        image_size: ImageSize = None,
        frame_stride: int = 1,
        state_map: Any = None,
        sample_stride: int | None = None,
        extra_columns: Sequence[str] = (),
        max_open_videos: int = 32,
        decoder_threads: int = 0,
        recompute_stats: bool = False,
        action_reference: Sequence[int | None] | None = None,
        cache_dir: str | os.PathLike | None = None,
        in_memory: bool = False,
        drop_nonfinite: bool = False,
        verify_cache: bool = False,
    ) -> None:
        self.meta = root if isinstance(root, DatasetMeta) else DatasetMeta.load(root)
        meta = self.meta
        if meta.state_key is None or meta.action_key is None:
            raise DatasetError(f"{meta.root}: no state or action feature selected; load it with "
                               "DatasetMeta.load(root, state_key=..., action_key=...)")
        if state_map is not None and getattr(state_map, "input_dim", None) != meta.state_dim:
            raise StateMapError(f"state map {getattr(state_map, 'name', state_map)!r} is bound to a "
                                f"{getattr(state_map, 'input_dim', None)}-dim state but {meta.state_key!r} of "
                                f"{meta.root} has {meta.state_dim} dims; bind it with state_map.bind({meta.state_dim})")
        self._lag_frames = _velocity_lag_frames(state_map, meta)
        if int(chunk_size) < 1:
            raise ConfigError(f"chunk_size={chunk_size}: must be >= 1 action")
        if int(frame_stride) < 1:
            raise ConfigError(f"frame_stride={frame_stride}: must be >= 1 (1 = every frame, 3 = 30 Hz -> 10 Hz)")
        self.chunk_size = int(chunk_size)
        self.frame_stride = int(frame_stride)
        if sample_stride is not None and int(sample_stride) < 1:
            raise ConfigError(f"sample_stride={sample_stride}: must be >= 1 (1 = a sample at every frame)")
        self.sample_stride = self.frame_stride if sample_stride is None else int(sample_stride)
        self.image_size = image_size
        output_size(2, 2, image_size)  # validates the size before any decoding
        self.episodes = parse_episode_spec(episodes, list(meta.episodes))
        if isinstance(cameras, str):
            cameras = [c.strip() for c in cameras.split(",") if c.strip()]
        self.cameras = list(meta.rgb_camera_keys if cameras is None else cameras)
        for key in self.cameras:
            meta.check_camera(key)
        self.extra_columns = list(extra_columns)
        wanted = [(ep, key, meta.episodes[ep].videos[key][0]) for ep in self.episodes for key in self.cameras]
        for (ep, key, path), stat in zip(wanted, stat_files([p for _, _, p in wanted]), strict=True):
            if stat is None:
                raise VideoError(f"video file {path} (camera {key}, episode {ep}) does not exist; "
                                 "re-download the videos/ folder or select other episodes/cameras")

        self._cache: NumericCache | None = None
        self.recompute_stats = bool(recompute_stats)
        self.drop_nonfinite = bool(drop_nonfinite)
        raw_state = (self._load_rows() if in_memory or self.extra_columns
                     else self._open_cache(cache_dir, verify_cache))
        if self.dropped:
            if not self.drop_nonfinite:  # an entry built by an earlier run with --drop-nonfinite
                raise DatasetError(self.dropped[0].refusal())
            if not len(raw_state):
                raise DatasetError(f"--drop-nonfinite: every frame of the selected episodes of {meta.root} holds or "
                                   f"follows a non-finite value (first: {self.dropped[0].refusal().split(';')[0]}); "
                                   "fix the data or select other episodes")
            print(describe_dropped(self.dropped), file=sys.stderr, flush=True)
        self.action_reference = self._reference_rows(raw_state, action_reference)
        self.stats, self.stats_source = self._cached_stats(raw_state)
        self.state_map = state_map
        if self.state_map is None:
            self._state = raw_state
            self.state_names = meta.state_names
        else:
            # A map with velocity dims reads, for every row, the raw state lag_frames earlier in its episode
            # (clamped at the episode start); the velocities' statistics come from those pairs (map_stats).
            previous = None
            if self._lag_frames:
                previous = np.asarray(raw_state[self._previous_rows(np.arange(len(raw_state), dtype=np.int64))])
            self.stats[STATE_KEY] = {
                k: np.asarray(v, dtype=np.float32)
                for k, v in self.state_map.map_stats(self.stats[STATE_KEY], raw_state=raw_state,
                                                     previous=previous).items()}
            # Cached data keeps the raw state on disk and maps each row as it is read (a gather of ~200 values
            # costs microseconds): a second, mapped copy would double the cache's size on disk.
            self._state = (raw_state if self._cache is not None
                           else np.ascontiguousarray(self.state_map.apply(raw_state, previous), dtype=np.float32))
            self.state_names = list(self.state_map.names) if self.state_map.names is not None else None
        self.action_names = meta.action_names

        if self._cache is not None:
            self.frame_table = self._cache.frame_table(self.sample_stride, self.episodes, FRAME_TABLE_DTYPE)
        else:
            self.frame_table = self._frame_table_in_memory()
        used = self._cache.task_indices if self._cache is not None else np.unique(self._task_index)
        self.tasks = sorted({meta.tasks[int(t)] for t in used})
        self._decoders = DecoderCache(max_open=max_open_videos, threads=decoder_threads)

    def _frame_table_in_memory(self) -> np.ndarray:
        table = np.empty(0, dtype=FRAME_TABLE_DTYPE)
        parts = []
        for ep in self.episodes:
            begin, end = self._bounds[ep]
            rows = np.arange(begin, end, self.sample_stride, dtype=np.int64)
            part = np.empty(len(rows), dtype=FRAME_TABLE_DTYPE)
            part["episode_index"] = ep
            part["frame_index"] = self._frame_index[rows]
            part["row"] = rows
            parts.append(part)
        return np.concatenate(parts) if parts else table

    # -- loading ------------------------------------------------------------------------------------------------

    def _load_rows(self) -> np.ndarray:
        """Read the selected episodes' rows into memory; sets the internal arrays and returns the raw float32 state."""
        meta = self.meta
        by_file: dict[Path, list[int]] = {}
        for ep in self.episodes:
            by_file.setdefault(meta.episodes[ep].data_path, []).append(ep)
        state_parts, action_parts, ts_parts, fi_parts, task_parts = [], [], [], [], []
        extra_parts: dict[str, list[np.ndarray]] = {c: [] for c in self.extra_columns}
        self._bounds: dict[int, tuple[int, int]] = {}
        loaded: dict[int, EpisodeRows] = {}
        for path, eps in by_file.items():
            loaded.update(read_episode_rows(meta, path, eps, self.extra_columns, self.drop_nonfinite))
        self.dropped = [loaded[ep].dropped for ep in self.episodes if loaded[ep].dropped is not None]
        cursor = 0
        for ep in self.episodes:
            st, ac, ts, fi, ti, ex, _ = loaded[ep]
            state_parts.append(st)
            action_parts.append(ac)
            ts_parts.append(ts)
            fi_parts.append(fi)
            task_parts.append(ti)
            for c in self.extra_columns:
                extra_parts[c].append(ex[c])
            self._bounds[ep] = (cursor, cursor + len(st))
            cursor += len(st)
        self._action = np.ascontiguousarray(np.concatenate(action_parts), dtype=np.float32)
        self._timestamp = np.concatenate(ts_parts)
        self._frame_index = np.concatenate(fi_parts)
        self._task_index = np.concatenate(task_parts)
        self._extras = {c: np.concatenate(extra_parts[c]) for c in self.extra_columns}
        return np.ascontiguousarray(np.concatenate(state_parts), dtype=np.float32)

    def _open_cache(self, cache_dir: str | os.PathLike | None, verify: bool) -> np.ndarray:
        """Memory-map the selected episodes' rows from the numeric cache (built on first use, checked on every
        open: :meth:`NumericCache.open_or_build`); sets the internal arrays and returns the raw float32 state (a
        read-only memory map)."""
        meta, drop = self.meta, self.drop_nonfinite

        def read(path: Path, eps: list[int]) -> dict[int, tuple[tuple[np.ndarray, ...], DroppedFrames | None]]:
            return {ep: (rows[:5], rows.dropped) for ep, rows in read_episode_rows(meta, path, eps, (), drop).items()}

        self._cache = NumericCache.open_or_build(meta, self.episodes, read, cache_dir, verify=verify)
        self.dropped = list(self._cache.dropped)
        arrays = self._cache.arrays
        self._bounds = dict(self._cache.bounds)
        self._action = arrays["action"]
        self._timestamp = arrays["timestamp"]
        self._frame_index = arrays["frame_index"]
        self._task_index = arrays["task_index"]
        self._extras = {}
        return arrays["state"]

    # Memory maps travel to DataLoader workers as file names and are mapped again there, so the pickled reader is
    # O(episodes) (metadata and bounds), not O(frames).
    _MAPPED = ("_state", "_action", "_timestamp", "_frame_index", "_task_index", "frame_table")

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for name in self._MAPPED:
            value = state.get(name)
            if isinstance(value, np.memmap) and value.filename is not None:
                state[name] = _MappedFile(value.filename)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        for name in self._MAPPED:
            if isinstance(state.get(name), _MappedFile):
                state[name] = open_npy(Path(state[name].path))
        self.__dict__.update(state)

    @property
    def episode_lengths(self) -> dict[int, int]:
        """Frames of each selected episode held here (the metadata's length, less frames ``drop_nonfinite`` left
        out)."""
        return {ep: stop - start for ep, (start, stop) in self._bounds.items()}

    def _task_text(self, row: int) -> str:
        """The instruction of internal row ``row``; a task index outside the task table can only come from a
        numeric cache file damaged after its entry was checked (the reader checks the parquet's)."""
        index = int(self._task_index[row])
        task = self.meta.tasks.get(index)
        if task is None:
            where = self._cache.path if self._cache is not None else self.meta.root
            raise CacheError(f"row {row} of the numeric cache entry {where} holds task index {index}, which "
                             f"{self.meta.root} does not define: the entry is damaged; delete the folder {where} "
                             "and run again")
        return task

    @property
    def numeric_in_memory(self) -> bool:
        """True when the numeric columns live in this process's memory (``cache_dir=False`` or extra columns);
        False when they are memory-mapped from the numeric cache."""
        return self._cache is None

    def _cached_stats(self, raw_state: np.ndarray) -> tuple[dict[str, dict[str, np.ndarray]], str]:
        """:meth:`_compute_stats`, kept in the numeric cache entry: it parses the stored per-episode statistics
        (or passes over the data), which dominated startup at 10,000 episodes."""
        if self._cache is None or self.recompute_stats:
            return self._compute_stats(raw_state)
        key = stats_key(self.meta, self.episodes)
        found = self._cache.load_stats(key, {STATE_KEY: self.meta.state_dim, ACTION_KEY: self.meta.action_dim})
        if found is not None:
            return found
        stats, source = self._compute_stats(raw_state)
        self._cache.save_stats(key, stats, source)
        return stats, source

    def _compute_stats(self, raw_state: np.ndarray) -> tuple[dict[str, dict[str, np.ndarray]], str]:
        meta = self.meta
        if self.dropped:  # the stored statistics and a parquet pass would include the dropped frames
            return ({STATE_KEY: columnwise_data_stats(raw_state, data_stats),
                     ACTION_KEY: columnwise_data_stats(self._action, data_stats)}, "computed from the kept frames")
        if self.recompute_stats:  # stored statistics distrusted (smolvla-train --recompute-stats)
            return stream_stats(meta, self.episodes), "recomputed from data"
        dims = {STATE_KEY: meta.state_dim, ACTION_KEY: meta.action_dim}
        stored = meta.episode_stats(self.episodes)
        if all(ep in stored and all(f in stored[ep] and stats_usable(stored[ep][f], dims[f]) for f in dims)
               for ep in self.episodes):
            stats = {}
            for feature in dims:
                per = [stored[ep][feature] for ep in self.episodes]
                counts = [int(np.asarray(s["count"]).reshape(-1)[0]) if "count" in s else meta.episodes[ep].length
                          for s, ep in zip(per, self.episodes, strict=True)]
                stats[feature] = aggregate_stats(per, counts)
            return stats, "episode stats"
        whole = meta.global_stats() if set(self.episodes) == set(meta.episodes) else None
        if whole is not None and all(stats_usable(whole[f], dims[f]) for f in dims):
            return ({f: {k: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in whole[f].items() if k != "count"}
                     for f in dims}, "meta/stats.json")
        return ({STATE_KEY: columnwise_data_stats(raw_state, data_stats),
                 ACTION_KEY: columnwise_data_stats(self._action, data_stats)}, "computed from data")

    # -- samples ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.frame_table)

    def task_indices(self, indices: np.ndarray | Sequence[int]) -> np.ndarray:
        """int64 ``[n]``: the ``task_index`` of samples ``indices`` (positions in ``[0, len)``)."""
        rows = np.asarray(self.frame_table["row"])[np.asarray(indices, dtype=np.int64)]
        return np.asarray(self._task_index[rows], dtype=np.int64)

    def video_source(self, index: int, camera: str) -> tuple[Path, float]:
        """``(mp4 path, seconds from the file's start)`` of sample ``index``'s frame for ``camera``."""
        entry = self.frame_table[index]
        path, offset = self.meta.episodes[int(entry["episode_index"])].videos[camera]
        return path, offset + float(self._timestamp[entry["row"]])

    def video_times(self, indices: np.ndarray | Sequence[int], camera: str) -> tuple[Path, np.ndarray]:
        """Where the frames of several samples of ONE episode lie: :meth:`video_source` for many samples at once.

        Args:
            indices: int sample positions in ``[0, len)``, all of one episode (a training span's).
            camera: a camera key of :attr:`cameras`.

        Returns:
            ``(mp4 path, float64 [n] seconds from the file's start)``.

        Raises:
            ValueError: the samples belong to more than one episode (their frames may lie in different files).
        """
        entries = self.frame_table[np.asarray(indices, dtype=np.int64)]
        episodes = np.unique(entries["episode_index"])
        if len(episodes) != 1:
            raise ValueError(f"video_times: samples of {len(episodes)} episodes ({episodes[:4].tolist()}...) given; "
                             "pass the samples of one episode")
        path, offset = self.meta.episodes[int(episodes[0])].videos[camera]
        return path, offset + np.asarray(self._timestamp[entries["row"]], dtype=np.float64)

    def numeric_sample(self, index: int) -> dict[str, Any]:
        """Sample ``index`` without camera frames (state, action chunk, pad mask, task, indices, extras)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for a dataset of {len(self)} samples")
        index = int(index) % len(self)
        entry = self.frame_table[index]
        row = int(entry["row"])
        start, stop = self._bounds[int(entry["episode_index"])]
        wanted = row + np.arange(self.chunk_size, dtype=np.int64) * self.frame_stride
        sample = {
            STATE_KEY: torch.from_numpy(self._state_row(row, start)),
            ACTION_KEY: torch.from_numpy(np.asarray(self._action[np.minimum(wanted, stop - 1)])),
            "action_is_pad": torch.from_numpy(wanted >= stop),
            "task": self._task_text(row),
            "episode_index": torch.tensor(int(entry["episode_index"]), dtype=torch.int64),
            "frame_index": torch.tensor(int(entry["frame_index"]), dtype=torch.int64),
            "timestamp": torch.tensor(self._timestamp[row], dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self._reference_idx is not None:
            sample[REFERENCE_KEY] = torch.from_numpy(self._reference_at(np.array([row]))[0])
        for column, values in self._extras.items():
            sample[column] = torch.as_tensor(np.asarray(values[row]))
        return sample

    def action_chunks(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """The action chunks of many samples at once, as :meth:`numeric_sample` gives them one by one.

        Args:
            indices: int [N] sample positions in ``[0, len)``.

        Returns:
            ``(action float32 [N, chunk, A], action_is_pad bool [N, chunk], action.reference float32 [N, A] or
            None when the reader was built without ``action_reference``)``.
        """
        entries = self.frame_table[np.asarray(indices, dtype=np.int64)]
        rows = np.asarray(entries["row"], dtype=np.int64)
        # Episode ends by episode index, looked up once per distinct episode rather than per sample.
        episodes, inverse = np.unique(np.asarray(entries["episode_index"]), return_inverse=True)
        stop = np.array([self._bounds[int(e)][1] for e in episodes], dtype=np.int64)[inverse][:, None]
        wanted = rows[:, None] + np.arange(self.chunk_size, dtype=np.int64)[None, :] * self.frame_stride
        action = np.asarray(self._action[np.minimum(wanted, stop - 1).reshape(-1)]).reshape(
            len(rows), self.chunk_size, -1)
        return action, wanted >= stop, self._reference_at(rows)

    def _reference_rows(self, raw_state: np.ndarray, reference: Sequence[int | None] | None) -> tuple | None:
        """Validate the action -> raw-state reference; in memory, keep the referenced raw dims (float32 [rows, A],
        0 where none) before the state map replaces the state. Cached data keeps the raw state memory-mapped and
        reads the referenced dims per row (:meth:`_reference_at`)."""
        self._reference = self._reference_idx = self._reference_none = None
        if reference is None:
            return None
        reference = tuple(None if r is None else int(r) for r in reference)
        if len(reference) != self.meta.action_dim or any(r is not None and not 0 <= r < self.meta.state_dim
                                                         for r in reference):
            raise ConfigError(f"action reference {list(reference)} does not fit {self.meta.root}: it needs one entry "
                              f"per action dim ({self.meta.action_dim}), each a state index below "
                              f"{self.meta.state_dim} or None")
        self._reference_idx = np.array([0 if r is None else r for r in reference], dtype=np.int64)
        self._reference_none = np.array([r is None for r in reference], dtype=bool)
        if self._cache is None:
            self._reference = self._gather_reference(raw_state)
        return reference

    def _gather_reference(self, raw_rows: np.ndarray) -> np.ndarray:
        values = np.asarray(raw_rows)[:, self._reference_idx].astype(np.float32)
        values[:, self._reference_none] = 0.0
        return np.ascontiguousarray(values)

    def _reference_at(self, rows: np.ndarray) -> np.ndarray | None:
        """float32 ``[N, A]``: the raw reference state at internal ``rows`` (None without a reference)."""
        if self._reference_idx is None:
            return None
        if self._reference is not None:
            return self._reference[rows]
        return self._gather_reference(self._state[np.asarray(rows, dtype=np.int64)])  # cached: the raw state

    def _previous_rows(self, rows: np.ndarray) -> np.ndarray:
        """int64 ``[N]``: for internal ``rows``, the row ``lag_frames`` frames earlier in the same episode, clamped at
        the episode's first row (a velocity state map's ``previous``; ``rows`` itself when the map has none)."""
        rows = np.asarray(rows, dtype=np.int64)
        if not self._lag_frames:
            return rows
        # Episodes are contiguous row ranges in episode order; the start of a row's episode is found by bisection.
        starts = np.array(sorted(start for start, _ in self._bounds.values()), dtype=np.int64)
        first = starts[np.searchsorted(starts, rows, side="right") - 1]
        return np.maximum(first, rows - self._lag_frames)

    def _state_row(self, row: int, episode_start: int) -> np.ndarray:
        """float32 ``[D]``: the (mapped) state of internal row ``row`` (of the episode starting at internal row
        ``episode_start``), a fresh array."""
        if self._cache is not None and self.state_map is not None:
            # a [1, D_in] block takes the same code path as mapping the whole array at once: identical values
            previous = None
            if self._lag_frames:
                earlier = max(episode_start, row - self._lag_frames)
                previous = np.asarray(self._state[earlier:earlier + 1])
            return np.ascontiguousarray(self.state_map.apply(np.asarray(self._state[row:row + 1]), previous)[0])
        return np.array(self._state[row])

    def load_sample(self, index: int, decoders: DecoderCache | MutableMapping[Path, VideoFile] | None = None
                    ) -> dict[str, Any]:
        """Sample ``index`` (see the class docstring), decoding frames with ``decoders``.

        Args:
            index: sample position in ``[0, len)``.
            decoders: where the open :class:`VideoFile` objects live: a :class:`DecoderCache`, a plain dict
                ``{path: VideoFile}`` (filled on first use), or None for this dataset's own per-process cache.
                A caller that reads several spans of one file at once (the training sampler) gives each span its
                own cache so that each decoder moves forward only.

        Raises:
            IndexError: ``index`` out of range.
            VideoError: as :meth:`VideoFile.read_frames`.
        """
        sample = self.numeric_sample(index)
        if decoders is None:
            decoders = self._decoders
        for camera in self.cameras:
            path, seconds = self.video_source(int(sample["index"]), camera)
            if isinstance(decoders, DecoderCache):
                video = decoders.get(path, self.image_size)
            else:
                video = decoders.get(path)
                if video is None:
                    video = decoders[path] = VideoFile(path, self.image_size)
            frame = video.read_timestamps([seconds])[0]
            sample[camera] = torch.from_numpy(frame).permute(2, 0, 1).to(torch.float32).div_(255.0)
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.load_sample(index)

    def close(self) -> None:
        """Close the video files this process opened."""
        self._decoders.close()
