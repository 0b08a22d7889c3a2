"""LeRobot v3.0 / v2.1 datasets (BEHAVIOR releases included): metadata, episode selection, samples, statistics.

Two on-disk generations are read from their ``meta/info.json`` templates:

* v3.0: ``meta/episodes/*/*.parquet`` (one row per episode), ``meta/tasks.parquet``; several episodes share one
  data parquet and one mp4 per camera. The frame of episode ``e`` at parquet ``timestamp`` ``t`` lies at
  ``from_timestamp(e, camera) + t`` seconds in that camera's file.
* v2.1 (and v2.0): ``meta/episodes.jsonl``, ``meta/tasks.jsonl``; one parquet and one mp4 per episode, paths from
  templates with ``episode_chunk = episode_index // chunks_size``. Episode indices come from ``episodes.jsonl`` and
  need not be contiguous (the BEHAVIOR 2025 release numbers them ``task_id * 10000 + instance * 10 + k``).

The numeric columns of the selected episodes are read once, with pyarrow, into contiguous numpy arrays (float32
state/action), so samples cost no parquet access and the dataset pickles cheaply to DataLoader workers. Frames are
decoded by :mod:`behavior_smolvla.data.video` with decoders opened lazily in the process that reads.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from behavior_smolvla.errors import ConfigError, DatasetError, VideoError
from behavior_smolvla.data.video import DecoderCache, ImageSize, VideoFile, output_size

STATE_KEY = "observation.state"
ACTION_KEY = "action"
STAT_FEATURES = (STATE_KEY, ACTION_KEY)
BASIC_STATS = ("mean", "std", "min", "max")
QUANTILES = {"q01": 0.01, "q99": 0.99}
"""Quantiles computed when statistics come from the data (lerobot's QUANTILES normalisation uses q01/q99)."""

_QUANTILE_KEY = re.compile(r"^q\d\d$")


# -- episode selection ------------------------------------------------------------------------------------------


def format_indices(indices: Sequence[int], limit: int = 12) -> str:
    """``"0-7, 10, 12-13"``: sorted indices as runs, abridged after ``limit`` runs (for error messages)."""
    values = sorted(set(int(i) for i in indices))
    runs: list[str] = []
    start = prev = None
    for value in values + [None]:
        if start is not None and (value is None or value != prev + 1):
            runs.append(str(start) if start == prev else f"{start}-{prev}")
            start = None
        if value is not None and start is None:
            start = value
        prev = value
    if len(runs) > limit:
        runs = runs[: limit // 2] + ["..."] + runs[-(limit // 2):]
    return ", ".join(runs) if runs else "none"


def parse_episode_spec(spec: str | Sequence[int] | None, available: Sequence[int]) -> list[int]:
    """Episode indices selected by ``spec``, sorted and without duplicates.

    Args:
        spec: ``None`` (all ``available``), a sequence of ints, or a string of comma-separated indices and inclusive
            ranges such as ``"0-39,45"``. A range selects the available episodes inside it, so ranges work on
            non-contiguous indices (BEHAVIOR 2025), but both of its ends must exist.
        available: the dataset's episode indices.

    Returns:
        list[int].

    Raises:
        DatasetError: a malformed spec, or an index (or range end) not in ``available``; the message lists what
            exists (abridged).
    """
    have = sorted(set(int(i) for i in available))
    if spec is None:
        return have
    have_set = set(have)
    wanted: set[int] = set()
    missing: list[int] = []
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() == "all":
            return have
        for part in text.split(","):
            part = part.strip()
            match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
            if not match:
                raise DatasetError(
                    f"episode spec {spec!r}: cannot read {part!r}; use indices and ranges like '0-39,45'")
            lo = int(match.group(1))
            hi = int(match.group(2)) if match.group(2) is not None else lo
            if hi < lo:
                raise DatasetError(f"episode spec {spec!r}: range {part!r} is reversed; write it as '{hi}-{lo}'")
            missing += [end for end in sorted({lo, hi}) if end not in have_set]
            wanted.update(e for e in have if lo <= e <= hi)
    else:
        for value in spec:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise DatasetError(f"episode list {list(spec)!r}: {value!r} is not an episode index")
            if int(value) in have_set:
                wanted.add(int(value))
            else:
                missing.append(int(value))
    if missing:
        raise DatasetError(
            f"episode(s) {format_indices(missing)} not in the dataset; it has {len(have)} episodes: "
            f"{format_indices(have)}")
    if not wanted:
        raise DatasetError(f"episode spec {spec!r} selects no episode; the dataset has: {format_indices(have)}")
    return sorted(wanted)


# -- metadata ---------------------------------------------------------------------------------------------------


@dataclass
class EpisodeInfo:
    """Where one episode lives.

    Attributes:
        episode_index: the episode's index (as in the files, not necessarily contiguous).
        length: number of frames (rows).
        tasks: task strings of the episode.
        data_path: the parquet file holding its rows.
        row_start, row_stop: its rows inside ``data_path`` (half-open).
        videos: camera key -> ``(mp4 path, from_timestamp_s)``: the episode's frame at parquet timestamp ``t`` is at
            ``from_timestamp_s + t`` seconds in that file (0 for v2.1's one-file-per-episode layout).
    """

    episode_index: int
    length: int
    tasks: list[str]
    data_path: Path
    row_start: int
    row_stop: int
    videos: dict[str, tuple[Path, float]] = field(default_factory=dict)


def _flat_names(names: Any, dim: int | None) -> list[str] | None:
    """Per-dimension names from info.json ``names``: a list, a nested ``[[...]]`` list or ``{"motors": [...]}``.

    Names that do not give one string per dimension are dropped (None): they are labels, not data.
    """
    if isinstance(names, Mapping):
        lists = [v for v in names.values() if isinstance(v, list)]
        names = lists[0] if len(lists) == 1 else None
    while isinstance(names, list) and len(names) == 1 and isinstance(names[0], list):
        names = names[0]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    if dim is not None and len(names) != dim:
        return None
    return list(names)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or re-download it") from None


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"{path} not found: a LeRobot v2.1 dataset needs it; re-download the meta/ folder")
    rows = []
    with path.open() as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DatasetError(f"{path} line {lineno} is not valid JSON ({exc.msg}); fix or re-download it") \
                        from None
    return rows


def _read_parquet(path: Path, columns: Sequence[str] | None = None, what: str = "parquet file") -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist; re-download it or check the dataset's info.json templates")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read {path} ({' '.join(str(exc).split())}); re-download it") from None


def _parquet_columns(path: Path, what: str = "parquet file") -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist; re-download it or check the dataset's info.json templates")
    try:
        return pq.read_schema(path).names
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read {path} ({' '.join(str(exc).split())}); re-download it") from None


def _format_template(template: str, info_path: Path, key: str, **fields: Any) -> str:
    try:
        return template.format(**fields)
    except (KeyError, IndexError, ValueError) as exc:
        raise DatasetError(f"{info_path}: template {key}={template!r} cannot be filled ({exc}); "
                           f"available fields: {', '.join(sorted(fields))}") from None


def is_rgb_camera(key: str, feature: Mapping[str, Any]) -> bool:
    """True for a colour camera; False for depth maps and segmentation videos (``info["video.is_depth_map"]``, or
    a key part starting with ``depth`` / ``seg`` as in BEHAVIOR's ``observation.images.depth.head``,
    ``observation.images.seg_instance_id.head`` and ``observation.depth_linear.*``)."""
    info = feature.get("info") or {}
    if info.get("video.is_depth_map"):
        return False
    return not any(part.startswith(("depth", "seg")) for part in key.split("."))


@dataclass
class DatasetMeta:
    """A LeRobot dataset's metadata (no frame data).

    Attributes:
        root: the dataset folder.
        version: ``"v3.0"`` or ``"v2.1"`` (v2.0 files are read as v2.1; ``info["codebase_version"]`` keeps the
            original).
        fps: frames per second of the data (Hz).
        features: ``info.json["features"]``.
        camera_keys: video features in info.json order (depth and segmentation videos included).
        state_dim, action_dim: declared shapes of ``observation.state`` and ``action``.
        state_names, action_names: one name per dimension, or None (BEHAVIOR releases declare none).
        episodes: episode index -> :class:`EpisodeInfo`, sorted by index.
        tasks: task index -> task string.
        total_frames: sum of the episodes' lengths.
        info: the parsed ``meta/info.json``.
    """

    root: Path
    version: str
    fps: float
    features: dict[str, dict]
    camera_keys: list[str]
    state_dim: int
    action_dim: int
    state_names: list[str] | None
    action_names: list[str] | None
    episodes: dict[int, EpisodeInfo]
    tasks: dict[int, str]
    total_frames: int
    info: dict[str, Any]

    @property
    def rgb_camera_keys(self) -> list[str]:
        """Colour cameras (see :func:`is_rgb_camera`), in info.json order: the default camera selection."""
        return [k for k in self.camera_keys if is_rgb_camera(k, self.features[k])]

    @classmethod
    def load(cls, root: str | os.PathLike) -> DatasetMeta:
        """Read ``meta/`` of a dataset folder.

        Raises:
            DatasetError: missing folder / info.json / episodes or tasks metadata, an unsupported codebase_version,
                missing ``observation.state`` or ``action`` features, or templates that cannot be filled.
        """
        root = Path(root)
        if not root.is_dir():
            raise DatasetError(f"dataset folder {root} does not exist; pass the folder that holds meta/info.json")
        info_path = root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(f"{info_path} not found: {root} is not a LeRobot dataset folder "
                               "(expected meta/info.json, data/, videos/)")
        info = _read_json(info_path)
        version = str(info.get("codebase_version", ""))
        features = info.get("features")
        if not isinstance(features, dict):
            raise DatasetError(f"{info_path} has no 'features' mapping; re-download meta/info.json")
        for key in STAT_FEATURES:
            if key not in features or not features[key].get("shape"):
                raise DatasetError(f"{info_path} declares no {key!r} feature (features: {', '.join(features)}); "
                                   "this toolkit trains on observation.state -> action")
        if "fps" not in info:
            raise DatasetError(f"{info_path} has no 'fps'")
        if "data_path" not in info:
            raise DatasetError(f"{info_path} has no 'data_path' template")
        camera_keys = [k for k, f in features.items() if f.get("dtype") == "video"]
        if camera_keys and not info.get("video_path"):
            raise DatasetError(f"{info_path} has video features but no 'video_path' template")
        if version.startswith("v3"):
            norm_version, episodes, tasks = "v3.0", *_load_v30(root, info, info_path, camera_keys)
        elif version.startswith("v2"):
            norm_version, episodes, tasks = "v2.1", *_load_v21(root, info, info_path, camera_keys)
        else:
            raise DatasetError(f"{info_path}: codebase_version {version!r} is not supported (v2.0, v2.1, v3.0); "
                               "convert it with lerobot's dataset converters")
        state_dim = int(features[STATE_KEY]["shape"][0])
        action_dim = int(features[ACTION_KEY]["shape"][0])
        return cls(
            root=root,
            version=norm_version,
            fps=float(info["fps"]),
            features=features,
            camera_keys=camera_keys,
            state_dim=state_dim,
            action_dim=action_dim,
            state_names=_flat_names(features[STATE_KEY].get("names"), state_dim),
            action_names=_flat_names(features[ACTION_KEY].get("names"), action_dim),
            episodes=dict(sorted(episodes.items())),
            tasks=tasks,
            total_frames=sum(e.length for e in episodes.values()),
            info=info,
        )

    def episode(self, episode_index: int) -> EpisodeInfo:
        """The :class:`EpisodeInfo` of an episode; DatasetError (listing what exists) for an unknown one."""
        try:
            return self.episodes[int(episode_index)]
        except KeyError:
            raise DatasetError(f"episode {episode_index} not in {self.root}; it has {len(self.episodes)} episodes: "
                               f"{format_indices(list(self.episodes))}") from None

    def check_camera(self, key: str) -> None:
        """DatasetError naming ``key`` and the dataset's video keys when ``key`` is not one of them."""
        if key not in self.camera_keys:
            raise DatasetError(f"camera {key!r} not in {self.root}; its video keys are: "
                               f"{', '.join(self.camera_keys) or 'none'}")

    def video_path(self, episode_index: int, key: str) -> Path:
        """The mp4 holding camera ``key`` of an episode (see :attr:`EpisodeInfo.videos` for the time offset)."""
        self.check_camera(key)
        return self.episode(episode_index).videos[key][0]

    # -- stored statistics --------------------------------------------------------------------------------------

    def episode_stats(self, episodes: Sequence[int], features: Sequence[str] = STAT_FEATURES
                      ) -> dict[int, dict[str, dict[str, np.ndarray]]]:
        """Per-episode statistics stored with the dataset (v3.0 ``stats/<feature>/<stat>`` columns of
        meta/episodes; v2.1 ``meta/episodes_stats.jsonl``), for the requested episodes that have them.

        Returns:
            episode -> feature -> stat -> float64 array (``count`` included when stored).
        """
        wanted = set(int(e) for e in episodes)
        out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
        if self.version == "v3.0":
            for path in sorted((self.root / "meta" / "episodes").glob("*/*.parquet")):
                names = _parquet_columns(path, "episodes metadata")
                cols = [n for n in names if n.startswith("stats/") and n.split("/")[1] in features]
                if not cols:
                    continue
                table = _read_parquet(path, ["episode_index", *cols], "episodes metadata")
                data = table.to_pydict()
                for row, ep in enumerate(data["episode_index"]):
                    if ep not in wanted:
                        continue
                    per = out.setdefault(int(ep), {})
                    for col in cols:
                        _, feature, stat = col.split("/", 2)
                        if data[col][row] is not None:
                            per.setdefault(feature, {})[stat] = np.asarray(data[col][row], dtype=np.float64)
        else:
            path = self.root / "meta" / "episodes_stats.jsonl"
            if path.is_file():
                head = re.compile(r'"episode_index"\s*:\s*(\d+)')
                with path.open() as fh:
                    for line in fh:
                        # Skip unselected episodes before parsing: BEHAVIOR lines carry per-camera image stats.
                        match = head.search(line[:200])
                        if match and int(match.group(1)) not in wanted:
                            continue
                        if not line.strip():
                            continue
                        row = json.loads(line)
                        ep = int(row["episode_index"])
                        if ep not in wanted:
                            continue
                        stats = row.get("stats", {})
                        out[ep] = {f: {k: np.asarray(v, dtype=np.float64) for k, v in stats[f].items()}
                                   for f in features if f in stats}
        return out

    def global_stats(self, features: Sequence[str] = STAT_FEATURES) -> dict[str, dict[str, np.ndarray]] | None:
        """``meta/stats.json`` (whole-dataset statistics) for ``features``, or None when absent."""
        path = self.root / "meta" / "stats.json"
        if not path.is_file():
            return None
        stats = _read_json(path)
        if not all(f in stats for f in features):
            return None
        return {f: {k: np.asarray(v, dtype=np.float64) for k, v in stats[f].items()} for f in features}


def _load_v30(root: Path, info: dict, info_path: Path, camera_keys: list[str]
              ) -> tuple[dict[int, EpisodeInfo], dict[int, str]]:
    ep_dir = root / "meta" / "episodes"
    files = sorted(ep_dir.glob("*/*.parquet"))
    if not files:
        raise DatasetError(f"{ep_dir} holds no chunk-*/file-*.parquet: the v3.0 episode metadata is missing; "
                           "re-download the meta/ folder")
    tables = []
    for path in files:
        cols = [n for n in _parquet_columns(path, "episodes metadata") if not n.startswith("stats/")]
        tables.append(_read_parquet(path, cols, "episodes metadata"))
    try:
        rows = pa.concat_tables(tables, promote_options="default").to_pydict()
    except pa.ArrowException as exc:
        raise DatasetError(f"{ep_dir}: the episode metadata files disagree on their columns ({exc})") from None
    for key in ("episode_index", "length", "data/chunk_index", "data/file_index"):
        if key not in rows:
            raise DatasetError(f"{ep_dir}: column {key!r} missing from the episode metadata; "
                               "the dataset was not written by lerobot v3.0")
    n = len(rows["episode_index"])
    data_paths = [
        root / _format_template(info["data_path"], info_path, "data_path",
                                chunk_index=rows["data/chunk_index"][i], file_index=rows["data/file_index"][i])
        for i in range(n)
    ]
    # Rows inside a shared data file: episodes are stored back to back in global-index order.
    from_index = rows.get("dataset_from_index")
    order = sorted(range(n), key=lambda i: (str(data_paths[i]),
                                             from_index[i] if from_index else rows["episode_index"][i]))
    row_start = [0] * n
    cursor: dict[Path, int] = {}
    for i in order:
        row_start[i] = cursor.get(data_paths[i], 0)
        cursor[data_paths[i]] = row_start[i] + int(rows["length"][i])
    episodes = {}
    for i in range(n):
        videos = {}
        for key in camera_keys:
            chunk, file = rows.get(f"videos/{key}/chunk_index"), rows.get(f"videos/{key}/file_index")
            if chunk is None or file is None:
                raise DatasetError(f"{ep_dir}: no videos/{key}/chunk_index / file_index columns for camera {key!r}")
            video = root / _format_template(info["video_path"], info_path, "video_path", video_key=key,
                                            chunk_index=chunk[i], file_index=file[i])
            offsets = rows.get(f"videos/{key}/from_timestamp")
            videos[key] = (video, float(offsets[i]) if offsets and offsets[i] is not None else 0.0)
        ep = int(rows["episode_index"][i])
        episodes[ep] = EpisodeInfo(
            episode_index=ep, length=int(rows["length"][i]), tasks=list(rows.get("tasks", [[]] * n)[i] or []),
            data_path=data_paths[i], row_start=row_start[i], row_stop=row_start[i] + int(rows["length"][i]),
            videos=videos)
    tasks_path = root / "meta" / "tasks.parquet"
    table = _read_parquet(tasks_path, None, "task table")
    names = table.schema.names
    text_col = "task" if "task" in names else "__index_level_0__" if "__index_level_0__" in names else None
    if text_col is None or "task_index" not in names:
        raise DatasetError(f"{tasks_path} needs a 'task_index' column and the task strings as its index "
                           f"(columns found: {', '.join(names)})")
    data = table.to_pydict()
    tasks = {int(i): str(t) for i, t in zip(data["task_index"], data[text_col], strict=True)}
    return episodes, tasks


def _load_v21(root: Path, info: dict, info_path: Path, camera_keys: list[str]
              ) -> tuple[dict[int, EpisodeInfo], dict[int, str]]:
    chunks_size = int(info.get("chunks_size") or 1000)
    episodes = {}
    for row in _read_jsonl(root / "meta" / "episodes.jsonl"):
        ep = int(row["episode_index"])
        fields = {"episode_index": ep, "episode_chunk": ep // chunks_size}
        length = int(row["length"])
        videos = {
            key: (root / _format_template(info["video_path"], info_path, "video_path", video_key=key, **fields), 0.0)
            for key in camera_keys
        }
        episodes[ep] = EpisodeInfo(
            episode_index=ep, length=length, tasks=list(row.get("tasks") or []),
            data_path=root / _format_template(info["data_path"], info_path, "data_path", **fields),
            row_start=0, row_stop=length, videos=videos)
    if not episodes:
        raise DatasetError(f"{root / 'meta' / 'episodes.jsonl'} lists no episode")
    tasks = {}
    for row in _read_jsonl(root / "meta" / "tasks.jsonl"):
        if "task_index" not in row or "task" not in row:
            raise DatasetError(f"{root / 'meta' / 'tasks.jsonl'}: every line needs 'task_index' and 'task'")
        tasks[int(row["task_index"])] = str(row["task"])
    return episodes, tasks


# -- column decoding --------------------------------------------------------------------------------------------


def _vector_column(table: pa.Table, name: str, dim: int, path: Path) -> np.ndarray:
    """float32 ``[rows, dim]`` from a ``fixed_size_list``, ``list`` or (dim 1) scalar column.

    Raises:
        DatasetError: rows whose length differs from ``dim`` (the declared shape), or nulls.
    """
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


# -- statistics -------------------------------------------------------------------------------------------------


def aggregate_stats(per_episode: Sequence[Mapping[str, np.ndarray]], counts: Sequence[int]) -> dict[str, np.ndarray]:
    """Combine per-episode statistics of one feature.

    ``mean`` is count-weighted, ``std`` the pooled standard deviation (within- plus between-episode variance, exact),
    ``min``/``max`` the extremes. Quantiles (``qNN`` present in every episode) are count-weighted averages of the
    episodes' quantiles: an approximation (exact quantiles need the data), the same one lerobot's
    ``aggregate_stats`` makes.

    Args:
        per_episode: one ``{stat: array [D]}`` per episode with at least mean, std, min, max.
        counts: frames per episode.

    Returns:
        ``{stat: float32 [D]}``.
    """
    weights = np.asarray(counts, dtype=np.float64)[:, None]
    total = weights.sum()
    means = np.stack([np.asarray(s["mean"], np.float64).reshape(-1) for s in per_episode])
    stds = np.stack([np.asarray(s["std"], np.float64).reshape(-1) for s in per_episode])
    mean = (means * weights).sum(0) / total
    var = ((stds ** 2 + (means - mean) ** 2) * weights).sum(0) / total
    out = {
        "mean": mean,
        "std": np.sqrt(var),
        "min": np.min(np.stack([np.asarray(s["min"]).reshape(-1) for s in per_episode]), 0),
        "max": np.max(np.stack([np.asarray(s["max"]).reshape(-1) for s in per_episode]), 0),
    }
    quantile_keys = set.intersection(*({k for k in s if _QUANTILE_KEY.match(k)} for s in per_episode))
    for key in sorted(quantile_keys):
        values = np.stack([np.asarray(s[key], np.float64).reshape(-1) for s in per_episode])
        out[key] = (values * weights).sum(0) / total
    return {k: v.astype(np.float32) for k, v in out.items()}


def data_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """Exact statistics of ``values`` ``[N, D]``: mean, std (population), min, max, q01, q99; float32 ``[D]``."""
    values64 = values.astype(np.float64)
    out = {
        "mean": values64.mean(0),
        "std": values64.std(0),
        "min": values64.min(0),
        "max": values64.max(0),
    }
    for key, q in QUANTILES.items():
        out[key] = np.quantile(values64, q, axis=0)
    return {k: v.astype(np.float32) for k, v in out.items()}


def _stats_usable(stats: Mapping[str, Any], dim: int) -> bool:
    return all(k in stats and np.asarray(stats[k]).size == dim for k in BASIC_STATS)


# -- the dataset ------------------------------------------------------------------------------------------------


FRAME_TABLE_DTYPE = np.dtype([("episode_index", np.int64), ("frame_index", np.int64), ("row", np.int64)])


def _bind_state_map(state_map: Any, state_dim: int, state_names: list[str] | None) -> Any:
    if state_map is None:
        return None
    if isinstance(state_map, str | os.PathLike):
        from behavior_smolvla.state_maps.maps import load_state_map  # lazy: keeps the reader importable on its own

        state_map = load_state_map(str(state_map))
    return state_map.bind(state_dim, state_names)


class BehaviorDataset(torch.utils.data.Dataset):
    """Random-access samples of a LeRobot dataset: camera frames, state, an action chunk and the task.

    Sample ``i`` (``len()`` = number of sampled frames: every ``frame_stride``-th frame of each selected episode,
    starting at its first frame) is a dict:

    * each camera key -> float32 ``[3, H, W]`` in [0, 1] (``(H, W)`` from ``image_size``);
    * ``observation.state`` float32 ``[D]`` (mapped when a state map is given);
    * ``action`` float32 ``[chunk_size, A]`` and ``action_is_pad`` bool ``[chunk_size]``: for the sample at row ``i``
      of an episode ``[start, end)``, rows ``min(i + d * frame_stride, end - 1)`` and pad where
      ``i + d * frame_stride >= end``, d = 0..chunk_size-1. With ``frame_stride`` 1 this is exactly lerobot's
      ``delta_timestamps`` chunk; with a stride the chunk is at the strided rate (e.g. 10 Hz actions from 30 Hz data,
      as the BEHAVIOR baselines train when they downsample), so one chunk spans ``chunk_size * frame_stride`` frames;
    * ``task`` str; ``episode_index``, ``frame_index``, ``index`` (the sample's position here) int64 scalars;
      ``timestamp`` float32 scalar (seconds in the episode); each of ``extra_columns`` as a tensor.

    Args:
        root: the dataset folder, or an already loaded :class:`DatasetMeta`.
        episodes: episode spec (see :func:`parse_episode_spec`); None = all.
        cameras: camera keys, in the order wanted; None = the colour cameras (:attr:`DatasetMeta.rgb_camera_keys`);
            ``[]`` = no frames (numeric samples only).
        chunk_size: actions per sample (>= 1).
        image_size: :data:`~behavior_smolvla.data.video.ImageSize` of the frames (resized at decode time).
        frame_stride: take every n-th frame (>= 1); 3 turns 30 Hz data into 10 Hz samples.
        state_map: None, a state-map object with ``bind/apply/map_stats/names``, or a state-map name / YAML path
            (loaded with :func:`behavior_smolvla.state_maps.maps.load_state_map`).
        extra_columns: further parquet columns to return by name (e.g. ``observation.task_info``); fixed-length
            ones as ``[k]`` tensors, ragged ones per row; floating values as float32.
        max_open_videos: video files kept open per process (LRU).
        decoder_threads: FFmpeg threads per decoder (0 = FFmpeg's choice).

    Attributes:
        meta, episodes (selected, sorted), cameras, state_map (bound, or None), stats, state_names, action_names,
        frame_table (structured ``[len]``: ``episode_index, frame_index, row``; ``row`` indexes the internal arrays),
        tasks (sorted distinct task strings of the selected episodes), chunk_size, frame_stride, image_size.
        ``stats``: ``{"observation.state": {...}, "action": {...}}`` with mean, std, min, max (and q01, q99 / other
        quantiles where available) as float32 arrays, over the selected episodes, state stats mapped. Source, in
        order of preference: per-episode stats stored with the dataset (aggregated, see :func:`aggregate_stats`);
        ``meta/stats.json`` when every episode is selected; else computed exactly from the parquet data.
        ``stats_source`` says which.

    Raises:
        DatasetError: unknown episodes or cameras, missing or malformed parquet files, columns that do not match
            info.json, rows that do not belong to the episode the metadata says.
        VideoError: a missing video file of a selected episode and camera (at construction); a truncated or
            undecodable one when a sample reads it.
        ConfigError: a non-positive ``chunk_size`` or ``frame_stride``.
        StateMapError: a state map that is unknown or does not fit the dataset's state.
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
        extra_columns: Sequence[str] = (),
        max_open_videos: int = 32,
        decoder_threads: int = 0,
    ) -> None:
        self.meta = root if isinstance(root, DatasetMeta) else DatasetMeta.load(root)
        meta = self.meta
        if int(chunk_size) < 1:
            raise ConfigError(f"chunk_size={chunk_size}: must be >= 1 action")
        if int(frame_stride) < 1:
            raise ConfigError(f"frame_stride={frame_stride}: must be >= 1 (1 = every frame, 3 = 30 Hz -> 10 Hz)")
        self.chunk_size = int(chunk_size)
        self.frame_stride = int(frame_stride)
        self.image_size = image_size
        output_size(2, 2, image_size)  # validates the size before any decoding
        self.episodes = parse_episode_spec(episodes, list(meta.episodes))
        if isinstance(cameras, str):
            cameras = [c.strip() for c in cameras.split(",") if c.strip()]
        self.cameras = list(meta.rgb_camera_keys if cameras is None else cameras)
        for key in self.cameras:
            meta.check_camera(key)
        self.extra_columns = list(extra_columns)
        for ep in self.episodes:
            for key in self.cameras:
                path, _ = meta.episodes[ep].videos[key]
                if not path.is_file():
                    raise VideoError(f"video file {path} (camera {key}, episode {ep}) does not exist; "
                                     "re-download the videos/ folder or select other episodes/cameras")

        raw_state = self._load_rows()
        self.stats, self.stats_source = self._compute_stats(raw_state)
        self.state_map = _bind_state_map(state_map, meta.state_dim, meta.state_names)
        if self.state_map is None:
            self._state = raw_state
            self.state_names = meta.state_names
        else:
            self.stats[STATE_KEY] = {
                k: np.asarray(v, dtype=np.float32)
                for k, v in self.state_map.map_stats(self.stats[STATE_KEY], raw_state=raw_state).items()}
            self._state = np.ascontiguousarray(self.state_map.apply(raw_state), dtype=np.float32)
            self.state_names = list(self.state_map.names) if self.state_map.names is not None else None
        self.action_names = meta.action_names

        table = np.empty(0, dtype=FRAME_TABLE_DTYPE)
        parts = []
        for ep in self.episodes:
            begin, end = self._bounds[ep]
            rows = np.arange(begin, end, self.frame_stride, dtype=np.int64)
            part = np.empty(len(rows), dtype=FRAME_TABLE_DTYPE)
            part["episode_index"] = ep
            part["frame_index"] = self._frame_index[rows]
            part["row"] = rows
            parts.append(part)
        self.frame_table = np.concatenate(parts) if parts else table
        self._row_stop = np.empty(len(self._frame_index), dtype=np.int64)
        for begin, end in self._bounds.values():
            self._row_stop[begin:end] = end
        used = np.unique(self._task_index)
        self.tasks = sorted({meta.tasks[int(t)] for t in used})
        self._decoders = DecoderCache(max_open=max_open_videos, threads=decoder_threads)

    # -- loading ------------------------------------------------------------------------------------------------

    def _load_rows(self) -> np.ndarray:
        """Read the selected episodes' rows; sets the internal arrays and returns the raw float32 state."""
        meta = self.meta
        by_file: dict[Path, list[int]] = {}
        for ep in self.episodes:
            by_file.setdefault(meta.episodes[ep].data_path, []).append(ep)
        state_parts, action_parts, ts_parts, fi_parts, task_parts = [], [], [], [], []
        extra_parts: dict[str, list[np.ndarray]] = {c: [] for c in self.extra_columns}
        self._bounds: dict[int, tuple[int, int]] = {}
        loaded: dict[int, tuple] = {}
        reverse_tasks = {text: index for index, text in meta.tasks.items()}
        for path, eps in by_file.items():
            if not path.is_file():
                raise DatasetError(f"data file {path} (episode {eps[0]}) does not exist; re-download the data/ "
                                   "folder or select other episodes")
            schema_names = _parquet_columns(path, "data file")
            for key in (STATE_KEY, ACTION_KEY, *self.extra_columns):
                if key not in schema_names:
                    raise DatasetError(
                        f"column {key!r} missing from {path}; its columns are: {', '.join(schema_names)}")
            optional = [c for c in ("timestamp", "frame_index", "episode_index", "task_index") if c in schema_names]
            table = _read_parquet(path, [STATE_KEY, ACTION_KEY, *optional, *self.extra_columns], "data file")
            state = _vector_column(table, STATE_KEY, meta.state_dim, path)
            action = _vector_column(table, ACTION_KEY, meta.action_dim, path)
            columns = {c: table.column(c).to_numpy() for c in optional}
            extras = {c: _extra_column(table, c) for c in self.extra_columns}
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
                loaded[ep] = (state[lo:hi], action[lo:hi], timestamp, frame_index, task_index,
                              {c: extras[c][lo:hi] for c in self.extra_columns})
        cursor = 0
        for ep in self.episodes:
            st, ac, ts, fi, ti, ex = loaded[ep]
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

    def _compute_stats(self, raw_state: np.ndarray) -> tuple[dict[str, dict[str, np.ndarray]], str]:
        meta = self.meta
        dims = {STATE_KEY: meta.state_dim, ACTION_KEY: meta.action_dim}
        stored = meta.episode_stats(self.episodes)
        if all(ep in stored and all(f in stored[ep] and _stats_usable(stored[ep][f], dims[f]) for f in dims)
               for ep in self.episodes):
            stats = {}
            for feature in dims:
                per = [stored[ep][feature] for ep in self.episodes]
                counts = [int(np.asarray(s["count"]).reshape(-1)[0]) if "count" in s else meta.episodes[ep].length
                          for s, ep in zip(per, self.episodes, strict=True)]
                stats[feature] = aggregate_stats(per, counts)
            return stats, "episode stats"
        whole = meta.global_stats() if set(self.episodes) == set(meta.episodes) else None
        if whole is not None and all(_stats_usable(whole[f], dims[f]) for f in dims):
            return ({f: {k: np.asarray(v, dtype=np.float32).reshape(-1) for k, v in whole[f].items() if k != "count"}
                     for f in dims}, "meta/stats.json")
        return {STATE_KEY: data_stats(raw_state), ACTION_KEY: data_stats(self._action)}, "computed from data"

    # -- samples ------------------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.frame_table)

    def video_source(self, index: int, camera: str) -> tuple[Path, float]:
        """``(mp4 path, seconds from the file's start)`` of sample ``index``'s frame for ``camera``."""
        entry = self.frame_table[index]
        path, offset = self.meta.episodes[int(entry["episode_index"])].videos[camera]
        return path, offset + float(self._timestamp[entry["row"]])

    def numeric_sample(self, index: int) -> dict[str, Any]:
        """Sample ``index`` without camera frames (state, action chunk, pad mask, task, indices, extras)."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"sample {index} out of range for a dataset of {len(self)} samples")
        index = int(index) % len(self)
        entry = self.frame_table[index]
        row = int(entry["row"])
        stop = int(self._row_stop[row])
        wanted = row + np.arange(self.chunk_size, dtype=np.int64) * self.frame_stride
        sample = {
            STATE_KEY: torch.from_numpy(self._state[row].copy()),
            ACTION_KEY: torch.from_numpy(self._action[np.minimum(wanted, stop - 1)]),
            "action_is_pad": torch.from_numpy(wanted >= stop),
            "task": self.meta.tasks[int(self._task_index[row])],
            "episode_index": torch.tensor(int(entry["episode_index"]), dtype=torch.int64),
            "frame_index": torch.tensor(int(entry["frame_index"]), dtype=torch.int64),
            "timestamp": torch.tensor(self._timestamp[row], dtype=torch.float32),
            "index": torch.tensor(index, dtype=torch.int64),
        }
        for column, values in self._extras.items():
            sample[column] = torch.as_tensor(np.asarray(values[row]))
        return sample

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
