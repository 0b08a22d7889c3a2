"""A LeRobot dataset's metadata (v3.0 and v2.1, BEHAVIOR 2025 and 2026 included): features, episodes, tasks, where
each episode's rows and videos live, the stored statistics; and episode selection.

Two on-disk generations are read from their ``meta/info.json`` templates:

* v3.0: ``meta/episodes/*/*.parquet`` (one row per episode), ``meta/tasks.parquet``; several episodes share one
  data parquet and one mp4 per camera. The frame of episode ``e`` at parquet ``timestamp`` ``t`` lies at
  ``from_timestamp(e, camera) + t`` seconds in that camera's file.
* v2.1 (and v2.0): ``meta/episodes.jsonl``, ``meta/tasks.jsonl``; one parquet and one mp4 per episode, paths from
  templates with ``episode_chunk = episode_index // chunks_size``. Episode indices come from ``episodes.jsonl`` and
  need not be contiguous (the BEHAVIOR 2025 release numbers them ``task_id * 10000 + instance * 10 + k``).

The state and action are whichever features the caller names (``observation.state`` and ``action`` by default;
``--state-key`` / ``--action-key`` pick others, e.g. ``state`` / ``actions``); downstream they always travel under the
policy's names ``observation.state`` and ``action``.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from behavior_smolvla.errors import DatasetError, read_text_file

STATE_KEY = "observation.state"
"""The policy's name for the state, and the default dataset feature read as the state (``--state-key``)."""
ACTION_KEY = "action"
"""The policy's name for the action, and the default dataset feature read as the action (``--action-key``)."""
BOOKKEEPING_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
"""LeRobot's per-frame bookkeeping columns: never state or action candidates."""

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


def parse_episode_spec(spec: str | Sequence[int] | None, available: Sequence[int], what: str = "episode"
                       ) -> list[int]:
    """Episode indices selected by ``spec``, sorted and without duplicates.

    Args:
        spec: ``None`` (all ``available``), a sequence of ints, or a string of comma-separated indices and inclusive
            ranges such as ``"0-39,45"``. A range selects the available episodes inside it, so ranges work on
            non-contiguous indices (BEHAVIOR 2025), but both of its ends must exist.
        available: the dataset's episode indices.
        what: the kind of index, in error messages (``"task"`` for ``--tasks``).

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
                    f"{what} spec {spec!r}: cannot read {part!r}; use indices and ranges like '0-39,45'")
            lo = int(match.group(1))
            hi = int(match.group(2)) if match.group(2) is not None else lo
            if hi < lo:
                raise DatasetError(f"{what} spec {spec!r}: range {part!r} is reversed; write it as '{hi}-{lo}'")
            missing += [end for end in sorted({lo, hi}) if end not in have_set]
            wanted.update(e for e in have if lo <= e <= hi)
    else:
        for value in spec:
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise DatasetError(f"{what} list {list(spec)!r}: {value!r} is not an {what} index")
            if int(value) in have_set:
                wanted.add(int(value))
            else:
                missing.append(int(value))
    if missing:
        raise DatasetError(
            f"{what}(s) {format_indices(missing)} not in the dataset; it has {len(have)} {what}s: "
            f"{format_indices(have)}")
    if not wanted:
        raise DatasetError(f"{what} spec {spec!r} selects no {what}; the dataset has: {format_indices(have)}")
    return sorted(wanted)


def select_tasks(meta: DatasetMeta, spec: str | Sequence[int]) -> list[int]:
    """Episodes (sorted) of the tasks selected by ``spec`` (task indices and ranges, e.g. ``"0-49"`` or ``"6"``;
    the grammar of :func:`parse_episode_spec`). An episode belongs to a task when one of its task strings is that
    task's (BEHAVIOR 2025 episodes ``task_id * 10000 + ...`` each carry their task's string).

    Raises:
        DatasetError: a malformed spec, unknown task indices (listing the dataset's), or tasks without episodes.
    """
    chosen = set(parse_episode_spec(spec, list(meta.tasks), what="task"))
    strings = {meta.tasks[t] for t in chosen}
    episodes = [ep for ep, info in meta.episodes.items() if strings.intersection(info.tasks)]
    if not episodes:
        raise DatasetError(f"task spec {spec!r}: no episode of {meta.root} belongs to task(s) "
                           f"{format_indices(sorted(chosen))}; smolvla-inspect lists the tasks and their episodes")
    return sorted(episodes)


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
    text = read_text_file(path, str(path), DatasetError)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise DatasetError(
            f"{path} is not valid JSON ({exc.msg} at line {exc.lineno}); fix or re-download it") from None


def _read_jsonl(path: Path, required: Sequence[str] = ()) -> list[dict]:
    """The JSON object of every non-empty line, each holding the ``required`` keys.

    Raises:
        DatasetError: a missing or undecodable file, a line that is not a JSON object or lacks a required key.
    """
    if not path.is_file():
        raise DatasetError(f"{path} not found: a LeRobot v2.1 dataset needs it; re-download the meta/ folder")
    rows = []
    for lineno, line in enumerate(read_text_file(path, str(path), DatasetError).splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path} line {lineno} is not valid JSON ({exc.msg}); fix or re-download it") \
                    from None
            missing = [k for k in required if not isinstance(row, dict) or k not in row]
            if missing:
                raise DatasetError(f"{path} line {lineno} has no {missing[0]!r}; every line needs "
                                   f"{', '.join(map(repr, required))}; fix or re-download it")
            rows.append(row)
    return rows


def _whole_number(value: Any) -> int | None:
    """``value`` as an int when it is a whole number (an int, or a float/str holding one), else None."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def column_type_problem(name: str, kind: pa.DataType, declared: Any) -> str | None:
    """Why a parquet column of arrow type ``kind`` cannot hold the numbers of feature ``name`` (``declared``: its
    dtype in ``meta/info.json``), or None: numbers (float, int, bool), or lists of them, are accepted.

    A column declared ``float32`` but stored as strings would otherwise fail deep inside numpy's conversion.
    """
    value = kind
    while pa.types.is_fixed_size_list(value) or pa.types.is_list(value) or pa.types.is_large_list(value):
        value = value.value_type
    if pa.types.is_floating(value) or pa.types.is_integer(value) or pa.types.is_boolean(value):
        return None
    return (f"column {name!r} is stored as {kind}, but meta/info.json declares "
            f"{declared if isinstance(declared, str) else 'numbers'}")


def read_parquet(path: Path, columns: Sequence[str] | None = None, what: str = "parquet file") -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{what} {path} does not exist; re-download it or check the dataset's info.json templates")
    try:
        return pq.read_table(path, columns=list(columns) if columns is not None else None)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot read {path} ({' '.join(str(exc).split())}); re-download it") from None


def parquet_columns(path: Path, what: str = "parquet file") -> list[str]:
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


def vector_features(features: Mapping[str, Any]) -> dict[str, int]:
    """The float vector features of an ``info.json`` ``features`` mapping: name -> size, in order.

    A candidate state or action has dtype float32 or float64 and a 1-d shape ``[D]``; LeRobot's bookkeeping columns
    (``timestamp``, ``frame_index``, ...) never qualify.
    """
    out = {}
    for key, feature in features.items():
        shape = feature.get("shape") if isinstance(feature, Mapping) else None
        if (key not in BOOKKEEPING_COLUMNS and feature.get("dtype") in ("float32", "float64")
                and isinstance(shape, list | tuple) and len(shape) == 1 and isinstance(shape[0], int)
                and shape[0] >= 1):
            out[key] = int(shape[0])
    return out


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
        state_key, action_key: the dataset features read as the policy's ``observation.state`` and ``action``
            (None when loaded with ``require_state_action=False`` and the dataset lacks them).
        state_dim, action_dim: their declared sizes (None likewise).
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
    state_key: str | None
    action_key: str | None
    state_dim: int | None
    action_dim: int | None
    state_names: list[str] | None
    action_names: list[str] | None
    episodes: dict[int, EpisodeInfo]
    tasks: dict[int, str]
    total_frames: int
    info: dict[str, Any]

    def __getstate__(self) -> dict[str, Any]:
        # Episodes travel as plain columns (paths as strings): a DataLoader worker unpickles 10,000 episodes and
        # their 40,000 paths ~2.5x faster than as EpisodeInfo objects holding pickled Paths.
        state = self.__dict__.copy()
        state["episodes"] = [(e.episode_index, e.length, e.tasks, str(e.data_path), e.row_start, e.row_stop,
                              [(k, str(p), o) for k, (p, o) in e.videos.items()]) for e in self.episodes.values()]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        rows = state["episodes"]
        state["episodes"] = {
            ep: EpisodeInfo(ep, length, tasks, Path(data), start, stop, {k: (Path(p), o) for k, p, o in videos})
            for ep, length, tasks, data, start, stop, videos in rows}
        self.__dict__.update(state)

    @property
    def rgb_camera_keys(self) -> list[str]:
        """Colour cameras (see :func:`is_rgb_camera`), in info.json order: the default camera selection."""
        return [k for k in self.camera_keys if is_rgb_camera(k, self.features[k])]

    @property
    def vector_features(self) -> dict[str, int]:
        """Float vector features (``float32``/``float64`` with a 1-d shape, bookkeeping columns excluded): the
        candidates for ``--state-key`` and ``--action-key``, name -> size, in info.json order."""
        return vector_features(self.features)

    @classmethod
    def load(cls, root: str | os.PathLike, state_key: str = STATE_KEY, action_key: str = ACTION_KEY,
             require_state_action: bool = True) -> DatasetMeta:
        """Read ``meta/`` of a dataset folder.

        Args:
            root: the dataset folder (holding ``meta/info.json``).
            state_key, action_key: the features to read as the state and the action (``--state-key``,
                ``--action-key``); each must be a float vector feature.
            require_state_action: False reads a dataset whose state or action feature is missing (``smolvla-inspect``
                describes any dataset); those fields are then None.

        Raises:
            DatasetError: missing folder / info.json / episodes or tasks metadata, an unsupported codebase_version,
                a missing or non-vector state or action feature (naming the vector features that exist and the flag
                that picks one), or templates that cannot be filled.
        """
        root = Path(root)
        if not root.is_dir():
            what = "is a file, not a folder" if root.exists() else "does not exist"
            raise DatasetError(f"dataset folder {root} {what}; pass the folder that holds meta/info.json")
        info_path = root / "meta" / "info.json"
        if not info_path.is_file():
            raise DatasetError(f"{info_path} not found: {root} is not a LeRobot dataset folder "
                               "(expected meta/info.json, data/, videos/)")
        info = _read_json(info_path)
        version = str(info.get("codebase_version", ""))
        if not isinstance(info, dict):
            raise DatasetError(f"{info_path} is not a JSON object; re-download meta/info.json")
        features = info.get("features")
        if not isinstance(features, dict) or not all(isinstance(f, dict) for f in features.values()):
            raise DatasetError(f"{info_path} has no 'features' mapping of feature name -> description; re-download "
                               "meta/info.json")
        keys: dict[str, str | None] = {"state": state_key, "action": action_key}
        candidates = vector_features(features)
        for role, key in list(keys.items()):
            if key in candidates:
                continue
            if not require_state_action:
                keys[role] = None
                continue
            what = "is not a float vector feature" if key in features else "is not a feature"
            listed = ", ".join(f"{k} [{n}]" for k, n in candidates.items()) or "none"
            raise DatasetError(f"{info_path}: {key!r} {what} of this dataset (its float vector features: {listed}); "
                               f"pick the {role} with --{role}-key NAME")
        fps = info.get("fps")
        if isinstance(fps, bool) or not isinstance(fps, int | float) or not (math.isfinite(fps) and fps > 0):
            raise DatasetError(f"{info_path}: 'fps' is {fps!r}, not a frame rate above 0; fix meta/info.json")
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
        state_key, action_key = keys["state"], keys["action"]
        state_dim = candidates[state_key] if state_key else None
        action_dim = candidates[action_key] if action_key else None
        return cls(
            root=root,
            version=norm_version,
            fps=float(info["fps"]),
            features=features,
            camera_keys=camera_keys,
            state_key=state_key,
            action_key=action_key,
            state_dim=state_dim,
            action_dim=action_dim,
            state_names=_flat_names(features[state_key].get("names"), state_dim) if state_key else None,
            action_names=_flat_names(features[action_key].get("names"), action_dim) if action_key else None,
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

    def _stat_sources(self) -> dict[str, str]:
        """Dataset feature -> the policy's name, for the state and the action."""
        return {k: v for k, v in ((self.state_key, STATE_KEY), (self.action_key, ACTION_KEY)) if k}

    def episode_stats(self, episodes: Sequence[int]) -> dict[int, dict[str, dict[str, np.ndarray]]]:
        """Per-episode statistics of the state and action stored with the dataset (v3.0 ``stats/<feature>/<stat>``
        columns of meta/episodes; v2.1 ``meta/episodes_stats.jsonl``), for the requested episodes that have them.

        Returns:
            episode -> ``observation.state`` / ``action`` (the policy's names, whatever the dataset calls them) ->
            stat -> float64 array (``count`` included when stored).
        """
        sources = self._stat_sources()
        features = list(sources)
        wanted = set(int(e) for e in episodes)
        out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
        if self.version == "v3.0":
            for path in sorted((self.root / "meta" / "episodes").glob("*/*.parquet")):
                names = parquet_columns(path, "episodes metadata")
                cols = [n for n in names if n.startswith("stats/") and n.split("/")[1] in features]
                if not cols:
                    continue
                table = read_parquet(path, ["episode_index", *cols], "episodes metadata")
                data = table.to_pydict()
                for row, ep in enumerate(data["episode_index"]):
                    if ep not in wanted:
                        continue
                    per = out.setdefault(int(ep), {})
                    for col in cols:
                        _, feature, stat = col.split("/", 2)
                        if data[col][row] is not None:
                            per.setdefault(sources[feature], {})[stat] = np.asarray(data[col][row], dtype=np.float64)
        else:
            path = self.root / "meta" / "episodes_stats.jsonl"
            fast = _episode_stats_jsonl_arrow(path, sources, wanted) if path.is_file() else None
            if fast is not None:
                return fast
            if path.is_file():
                head = re.compile(r'"episode_index"\s*:\s*(\d+)')
                lineno = 0
                try:
                    with path.open(encoding="utf-8") as fh:
                        for lineno, line in enumerate(fh, 1):
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
                            out[ep] = {sources[f]: {k: np.asarray(v, dtype=np.float64) for k, v in stats[f].items()}
                                       for f in features if f in stats}
                except UnicodeDecodeError:
                    raise DatasetError(f"{path}: not a UTF-8 text file (after line {lineno}); fix or re-download it, "
                                       "or train with --recompute-stats") from None
                except (ValueError, KeyError, TypeError, AttributeError) as exc:  # JSON syntax, or another layout
                    raise DatasetError(f"{path} line {lineno}: not an episode's statistics ({type(exc).__name__}: "
                                       f"{' '.join(str(exc).split())[:120]}); fix or re-download it, or train with "
                                       "--recompute-stats") from None
        return out

    def global_stats(self) -> dict[str, dict[str, np.ndarray]] | None:
        """``meta/stats.json`` (whole-dataset statistics) of the state and action under the policy's names, or None
        when absent."""
        path = self.root / "meta" / "stats.json"
        if not path.is_file():
            return None
        stats = _read_json(path)
        sources = self._stat_sources()
        if not all(f in stats for f in sources):
            return None
        return {name: {k: np.asarray(v, dtype=np.float64) for k, v in stats[f].items()} for f, name in sources.items()}


STORED_STAT_KEYS = ("min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99")
"""Per-episode statistics read from ``episodes_stats.jsonl`` by the fast path (lerobot's, with its quantiles)."""


def _episode_stats_jsonl_arrow(path: Path, sources: Mapping[str, str], wanted: set[int]
                               ) -> dict[int, dict[str, dict[str, np.ndarray]]] | None:
    """``episodes_stats.jsonl`` parsed by pyarrow's multithreaded JSON reader with an explicit schema holding only
    the state and action statistics: BEHAVIOR lines also carry per-camera image stats and other features (~25 KB a
    line, 10,000 lines in the 2025 release), which are skipped without being built. Same result as the line-by-line
    parser; None when the file does not fit the schema (the caller then falls back to that parser)."""
    import pyarrow.json as pj

    vector = pa.list_(pa.float64())
    stat_type = pa.struct([(k, pa.list_(pa.int64()) if k == "count" else vector) for k in STORED_STAT_KEYS])
    schema = pa.schema([("episode_index", pa.int64()),
                        ("stats", pa.struct([(feature, stat_type) for feature in sources]))])
    try:
        table = pj.read_json(path, parse_options=pj.ParseOptions(explicit_schema=schema,
                                                                 unexpected_field_behavior="ignore"))
    except (pa.ArrowException, OSError):
        return None
    episodes = table.column("episode_index").to_numpy(zero_copy_only=False)
    stats = table.column("stats").combine_chunks()
    if stats.null_count or pa.compute.any(pa.compute.is_null(table.column("episode_index"))).as_py():
        return None
    out: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    rows = [i for i, ep in enumerate(episodes.tolist()) if ep in wanted]
    for i in rows:  # an episode without the features still gets its (empty) entry, as the line parser gives
        out.setdefault(int(episodes[i]), {})
    for feature, name in sources.items():
        column = stats.field(feature)
        present = column.is_valid().to_numpy(zero_copy_only=False)
        for key in STORED_STAT_KEYS:
            values = column.field(key)
            valid = present & values.is_valid().to_numpy(zero_copy_only=False)
            offsets = values.offsets.to_numpy(zero_copy_only=False)
            flat = values.values.to_numpy(zero_copy_only=False).astype(np.float64)
            for i in rows:
                if valid[i]:
                    out[int(episodes[i])].setdefault(name, {})[key] = flat[offsets[i]:offsets[i + 1]].copy()
    return out


def _load_v30(root: Path, info: dict, info_path: Path, camera_keys: list[str]
              ) -> tuple[dict[int, EpisodeInfo], dict[int, str]]:
    ep_dir = root / "meta" / "episodes"
    files = sorted(ep_dir.glob("*/*.parquet"))
    if not files:
        raise DatasetError(f"{ep_dir} holds no chunk-*/file-*.parquet: the v3.0 episode metadata is missing; "
                           "re-download the meta/ folder")
    tables = []
    for path in files:
        cols = [n for n in parquet_columns(path, "episodes metadata") if not n.startswith("stats/")]
        tables.append(read_parquet(path, cols, "episodes metadata"))
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
    table = read_parquet(tasks_path, None, "task table")
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
    episodes_path = root / "meta" / "episodes.jsonl"
    for lineno, row in enumerate(_read_jsonl(episodes_path, ("episode_index", "length")), 1):
        ep, length = _whole_number(row["episode_index"]), _whole_number(row["length"])
        if ep is None or length is None or ep < 0 or length < 0:
            raise DatasetError(f"{episodes_path}: episode {lineno} has episode_index {row['episode_index']!r} and "
                               f"length {row['length']!r}, not whole numbers >= 0; fix or re-download it")
        fields = {"episode_index": ep, "episode_chunk": ep // chunks_size}
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
    tasks_path = root / "meta" / "tasks.jsonl"
    for row in _read_jsonl(tasks_path, ("task_index", "task")):
        index = _whole_number(row["task_index"])
        if index is None:
            raise DatasetError(f"{tasks_path}: task_index {row['task_index']!r} is not a whole number; fix or "
                               "re-download it")
        tasks[index] = str(row["task"])
    return episodes, tasks

