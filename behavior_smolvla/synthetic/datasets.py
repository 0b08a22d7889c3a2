"""Writers of small BEHAVIOR-shaped LeRobot datasets with learnable content, for tests, the demo and benchmarks.

Two layouts, as the challenge releases store them (facts: ``../shared/reference/behavior_r1pro.md`` and the
BEHAVIOR-1K dataset scripts that wrote the 2025 release):

* :func:`write_behavior_2025`: LeRobot v2.1 customised like ``behavior-1k/2025-challenge-demos``: one parquet and
  one HEVC mp4 per episode and camera under ``task-{episode_chunk:04d}`` folders (``chunks_size`` 10000, so the
  chunk is the task id), episode indices ``task_id * 10000 + instance * 10`` (NOT contiguous), a 256-dim
  ``observation.state`` (``names: null``) that obeys the R1Pro index table, ``observation.cam_rel_poses`` [21],
  a variable-length ``observation.task_info``, ``task_index`` present in the parquet but not declared, no
  ``frame_index`` column, ``timestamp`` float64, a per-episode ``index`` (0..length-1, as the release's writer
  made it), ``meta/{tasks,episodes,episodes_stats}.jsonl`` and ``meta/episodes/task-XXXX/episode_XXXXXXXX.json``.
  Video features are listed in the release's order: left wrist, right wrist, head.
* :func:`write_behavior_2026`: LeRobot v3.0 like ``behavior-1k/2026-challenge-demos``: several episodes per parquet
  and per mp4 (one chunk per task), ``meta/episodes/chunk-000/file-000.parquet`` with the video offsets and
  per-episode ``stats/...`` columns, ``meta/tasks.parquet``, ``meta/stats.json`` (plus the release's
  ``tasks.jsonl``), a 61-dim state per the 2026 table, cameras ``observation.rgb.*_camera_0``,
  ``observation.robot2cam_pose.<camera>`` [7], ``next.reward`` / ``next.terminated`` / ``next.truncated``.
  Each camera groups episodes into mp4 files differently, so its file boundaries and ``from_timestamp``
  offsets differ from the other cameras'. ``lerobot``'s own ``LeRobotDataset`` opens it. Options rename the
  state and action, write a subset of the cameras under other keys, use MPEG-4 part 2 video and drop the extra
  columns: :func:`write_third_party_upload` is such a dataset named like a community upload (``state``,
  ``actions``, one ``image`` camera).

The episodes come from the synthetic world of :mod:`.world` (the same for every layout; described there);
its public names (``SyntheticSpec``, ``synthesize``, ``SyntheticEpisode``, ``load_ground_truth``, ``task_strings``,
the constants) are re-exported here, so ``behavior_smolvla.synthetic.datasets`` stays the one import for callers.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Mapping, Sequence
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from behavior_smolvla.synthetic.render import episode_frames, render_frame
from behavior_smolvla.synthetic.world import (
    ACTION_GROUPS,
    APPROACH_RATE,
    BASE_CMD_LIMIT,
    BASE_LAG,
    CHUNKS_SIZE_2025,
    CHUNKS_SIZE_2026,
    FINGER_OPEN_M,
    FINGER_STEP_M,
    FPS,
    SPEC_FILE,
    STATE_BLOCKS_2025,
    STATE_BLOCKS_2026,
    TARGET_LIMIT,
    TIMECODE_BITS,
    SyntheticEpisode,
    SyntheticSpec,
    _make_spec,
    camera_role,
    load_ground_truth,
    synthesize,
    task_strings,
)
from behavior_smolvla.errors import ConfigError
from behavior_smolvla.r1pro import ACTION_DIM, CAMERA_ROLES, CAMERAS_2025, CAMERAS_2026

__all__ = [
    "ACTION_GROUPS", "APPROACH_RATE", "BASE_CMD_LIMIT", "BASE_LAG", "CAMERAS_2025", "CAMERAS_2026", "CAMERA_ROLES",
    "CHUNKS_SIZE_2025", "CHUNKS_SIZE_2026", "FINGER_OPEN_M", "FINGER_STEP_M", "FPS", "SPEC_FILE", "STATE_BLOCKS_2025",
    "STATE_BLOCKS_2026", "TARGET_LIMIT", "TIMECODE_BITS", "SyntheticEpisode", "SyntheticSpec", "camera_role",
    "episode_frames",
    "load_ground_truth", "synthesize", "task_strings", "write_behavior_2025", "write_behavior_2026",
    "write_demo_dataset", "write_third_party_upload",
]


# ------------------------------------------------------------------------------------------------------------
# Writing


class _Mp4Writer:
    """One mp4 file with one yuv420p video stream; frames get consecutive pts on a 1/fps grid."""

    def __init__(self, path: Path, spec: SyntheticSpec, height: int, width: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        if spec.codec == "libx265":
            # Closed GOPs of exactly `gop` frames (no scene-cut keyframes), so every keyframe is an IDR frame a
            # decoder can start from and the keyframe interval equals `gop`.
            options = {"crf": str(spec.crf), "preset": spec.preset, "x265-params":
                       f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0:open-gop=0:log-level=error"}
        elif spec.codec == "mpeg4":
            # MPEG-4 part 2 has no crf: hold the quantiser at 2..4 (FFmpeg's scale 1..31, lower is better). With the
            # encoder's default rate control the error more than doubled after the first GOP (measured here on 32 px
            # synthetic frames: mean 3 -> 7-8 levels of 255). No B-frames: packets in presentation order.
            options = {"g": str(spec.gop), "keyint_min": str(spec.gop), "sc_threshold": "0", "bf": "0",
                       "qmin": "2", "qmax": "4"}
        else:
            options = {"crf": str(spec.crf), "preset": spec.preset, "g": str(spec.gop),
                       "keyint_min": str(spec.gop), "sc_threshold": "0"}
        self.stream = self.container.add_stream(spec.codec, rate=spec.fps, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.time_base = Fraction(1, spec.fps)
        self.pts = 0

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        # Explicit pts on the 1/fps grid: frame i of the file is presented at i / fps seconds.
        frame.pts = self.pts
        frame.time_base = self.time_base
        self.pts += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


class _ImageStats:
    """Per-channel image statistics in [0, 1] over a subsample of frames (as lerobot samples them)."""

    def __init__(self, length: int):
        self.keep = set(np.linspace(0, length - 1, min(length, 40)).round().astype(int).tolist())
        self.samples: list[np.ndarray] = []

    def add(self, t: int, rgb: np.ndarray) -> None:
        if t in self.keep:
            step = max(1, max(rgb.shape[:2]) // 150)  # lerobot also downsamples large frames for stats
            self.samples.append(rgb[::step, ::step].reshape(-1, 3).astype(np.float64) / 255.0)

    def pixels(self) -> np.ndarray:
        return np.concatenate(self.samples)


_QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def _vector_stats(values: np.ndarray, quantiles: Sequence[str]) -> dict[str, list]:
    """min, max, mean, std, the named quantiles and count of ``values`` [N, D] (or [N]) along axis 0."""
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    stats = {"min": v.min(0), "max": v.max(0), "mean": v.mean(0), "std": v.std(0)}
    stats.update({q: np.quantile(v, _QUANTILES[q], axis=0) for q in quantiles})
    out = {k: val.tolist() for k, val in stats.items()}
    out["count"] = [int(v.shape[0])]
    return out


def _image_stats(pixels: np.ndarray, frames: int) -> dict[str, list]:
    """lerobot's image stats layout: each value [3][1][1] (per channel), count = frames sampled."""
    stats = _vector_stats(pixels, list(_QUANTILES))
    out = {k: [[[c]] for c in v] for k, v in stats.items() if k != "count"}
    out["count"] = [frames]
    return out


def _prepare_root(root: str | Path, overwrite: bool) -> Path:
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ConfigError(f"{root} exists and is not empty; choose a new folder or pass overwrite=True")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n")


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _list_array(values: np.ndarray) -> pa.Array:
    """A float32 [N, D] array as a variable-length ``list<float>`` column, as pandas (2025 release) and lerobot's
    v3.0 writer (see g1_inspire_v30) store vectors."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _video_feature(height: int, width: int, spec: SyntheticSpec, names: list[str], codec_name: str) -> dict:
    return {"dtype": "video", "shape": [height, width, 3], "names": names, "info": {
        "video.fps": float(spec.fps), "video.height": height, "video.width": width, "video.channels": 3,
        "video.codec": codec_name, "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "has_audio": False}}


def write_behavior_2025(root: str | Path, *, episodes: int = 4, frames: int | Sequence[int] = 60, tasks: int = 2,
                        image_size: int | Mapping[str, Sequence[int]] | None = None, codec: str = "libx265",
                        gop: int = 250, fps: int = FPS, seed: int = 0, crf: int = 18, preset: str = "ultrafast",
                        overwrite: bool = False) -> Path:
    """Write a BEHAVIOR-2025-shaped dataset (LeRobot v2.1 customised like the release; see the module docstring).

    Args:
        root: output folder (created; must be empty unless ``overwrite``).
        episodes: number of episodes.
        frames: frames per episode (an int for all, or one length per episode).
        tasks: number of tasks (task ids ``0..tasks-1``, also the ``task-XXXX`` chunk folders).
        image_size: an int (square side, pixels) or ``{"head": (H, W), "left_wrist": ..., "right_wrist": ...}``;
            sizes must be even and >= 16 (libx265: not 34-48 wide). Default head 64x64, wrists 56x56 (the
            release: 720x720, 480x480).
        codec: ``"libx265"`` (HEVC, as the release) or ``"libx264"``.
        gop: keyframe interval in frames (the release: 250).
        fps: frames per second (the release: 30).
        seed: random seed; the same arguments write identical data.
        crf, preset: encoder quality and speed.
        overwrite: replace a non-empty ``root``.

    Returns:
        ``root`` as a Path.

    Raises:
        ConfigError: invalid arguments, or a non-empty ``root`` without ``overwrite``.
    """
    spec = _make_spec("behavior-2025", episodes, frames, tasks, image_size, codec, gop, fps, seed, crf, preset, 1)
    root = _prepare_root(root, overwrite)
    eps = synthesize(spec)
    data_tpl = "data/task-{episode_chunk:04d}/episode_{episode_index:08d}.parquet"
    video_tpl = "videos/task-{episode_chunk:04d}/{video_key}/episode_{episode_index:08d}.mp4"
    episodes_rows, stats_rows = [], []
    for ep in eps:
        chunk = ep.episode_index // CHUNKS_SIZE_2025
        T = ep.length
        table = pa.table({
            "index": pa.array(np.arange(T, dtype=np.int64)),
            "episode_index": pa.array(np.full(T, ep.episode_index, dtype=np.int64)),
            "task_index": pa.array(np.full(T, ep.task_index, dtype=np.int64)),
            "timestamp": pa.array(np.arange(T, dtype=np.float64) / spec.fps),
            "observation.state": _list_array(ep.state),
            "observation.cam_rel_poses": _list_array(ep.columns["observation.cam_rel_poses"]),
            "action": _list_array(ep.action),
            "observation.task_info": _list_array(ep.columns["observation.task_info"]),
        })
        path = root / data_tpl.format(episode_chunk=chunk, episode_index=ep.episode_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for role, key in CAMERAS_2025.items():
            h, w = spec.image_size[role]
            writer = _Mp4Writer(root / video_tpl.format(episode_chunk=chunk, video_key=key,
                                                        episode_index=ep.episode_index), spec, h, w)
            for t in range(T):
                writer.write(render_frame(ep, role, t))
            writer.close()
        state = ep.state.astype(np.float64)
        episodes_rows.append({
            "episode_index": ep.episode_index, "tasks": [ep.task], "length": T,
            "distance_traveled": round(float(np.linalg.norm(np.diff(state[:, 140:143], axis=0), axis=1).sum()), 4),
            "left_eef_displacement": round(float(np.linalg.norm(np.diff(state[:, 186:189], axis=0), axis=1).sum()), 4),
            "right_eef_displacement": round(float(np.linalg.norm(np.diff(state[:, 225:228], axis=0), axis=1).sum()),
                                            4)})
        stats_rows.append({"episode_index": ep.episode_index, "stats": {
            key: _vector_stats(values, ("q01", "q99")) for key, values in (
                ("action", ep.action), ("observation.state", ep.state),
                ("observation.cam_rel_poses", ep.columns["observation.cam_rel_poses"]))}})
        _write_json(root / f"meta/episodes/task-{chunk:04d}/episode_{ep.episode_index:08d}.json",
                    {"num_samples": T, "task_name": task_strings(ep.task_index)[0], "synthetic": True})

    features = {key: _video_feature(*spec.image_size[role], spec, ["height", "width", "rgb"], spec.codec)
                for role, key in CAMERAS_2025.items()}
    features.update({
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
        "timestamp": {"dtype": "float64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "observation.cam_rel_poses": {"dtype": "float32", "shape": [21], "names": None},
        "observation.state": {"dtype": "float32", "shape": [256], "names": None},
        "observation.task_info": {"dtype": "float32", "shape": [None], "names": None},
    })
    _write_json(root / "meta/info.json", {
        "codebase_version": "v2.1", "robot_type": "R1Pro", "total_episodes": len(eps),
        "total_frames": int(sum(spec.lengths)), "total_tasks": spec.tasks, "total_videos": len(eps) * 3,
        "chunks_size": CHUNKS_SIZE_2025, "fps": spec.fps, "splits": {"train": f"0:{len(eps)}"},
        "data_path": data_tpl, "video_path": video_tpl,
        "metainfo_path": "meta/episodes/task-{episode_chunk:04d}/episode_{episode_index:08d}.json",
        "annotation_path": "annotations/task-{episode_chunk:04d}/episode_{episode_index:08d}.json",
        "features": features})
    _write_jsonl(root / "meta/tasks.jsonl", [
        {"task_index": k, "task_name": task_strings(k)[0], "task": task_strings(k)[1]} for k in range(spec.tasks)])
    _write_jsonl(root / "meta/episodes.jsonl", episodes_rows)
    _write_jsonl(root / "meta/episodes_stats.jsonl", stats_rows)
    _write_json(root / SPEC_FILE, spec.to_json())
    return root


def _video_groups(group: list, role: str, per_file: int) -> list[list]:
    """Split one task's episodes into mp4 files, differently per camera so that file boundaries and
    ``from_timestamp`` offsets differ between cameras (as in real v3.0 data, where files roll over by size):
    head: ``per_file`` episodes per file; left wrist: the first episode alone, then ``per_file`` per file;
    right wrist: ``per_file + 1`` per file."""
    if role == "left_wrist":
        return [group[:1]] + [group[i:i + per_file] for i in range(1, len(group), per_file)]
    size = per_file + 1 if role == "right_wrist" else per_file
    return [group[i:i + size] for i in range(0, len(group), size)]


_CODEC_NAMES = {"libx265": "hevc", "libx264": "h264", "mpeg4": "mpeg4"}
"""Encoder -> the codec name FFmpeg reports when decoding (``info.json`` ``video.codec``)."""


def _camera_keys(cameras: Mapping[str, str] | None, state_key: str, action_key: str) -> dict[str, str]:
    """Role -> video key of the cameras to write (validated; see :func:`write_behavior_2026`)."""
    cams = dict(CAMERAS_2026 if cameras is None else cameras)
    unknown = sorted(set(cams) - set(CAMERA_ROLES))
    if unknown or not cams:
        raise ConfigError(f"cameras={cameras!r}: give a mapping role -> video key with roles among "
                          f"{', '.join(CAMERA_ROLES)} (unknown: {unknown})")
    names = [state_key, action_key, *cams.values()]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ConfigError(f"state_key, action_key and the camera keys must be distinct non-empty names: {names}")
    return cams


def write_behavior_2026(root: str | Path, *, episodes: int = 4, frames: int | Sequence[int] = 60, tasks: int = 2,
                        image_size: int | Mapping[str, Sequence[int]] | None = None, codec: str = "libx265",
                        gop: int = 8, fps: int = FPS, seed: int = 0, episodes_per_file: int = 2, crf: int = 18,
                        preset: str = "ultrafast", overwrite: bool = False, state_key: str = "observation.state",
                        action_key: str = "action", cameras: Mapping[str, str] | None = None,
                        extra_columns: bool = True) -> Path:
    """Write a BEHAVIOR-2026-shaped dataset (LeRobot v3.0; see the module docstring).

    Episodes are numbered 0..N-1 grouped by task; task ``k``'s episodes live in chunk ``k``. Parquet files hold
    ``episodes_per_file`` episodes; mp4 files hold several episodes, grouped differently per camera (head:
    ``episodes_per_file``; left wrist: the first episode alone, then ``episodes_per_file``; right wrist:
    ``episodes_per_file + 1``), so ``videos/<key>/from_timestamp`` is non-zero and differs between cameras.

    Args:
        root, episodes, frames, tasks, image_size, codec, fps, seed, crf, preset, overwrite: as
            :func:`write_behavior_2025`.
        gop: keyframe interval in frames (the 2026 writer's: 8).
        episodes_per_file: episodes per parquet file (>= 1).
        state_key, action_key: feature names of the state float32 [61] and the action float32 [23] (stored as
            ``list<float>`` columns, as lerobot's v3.0 writer stores vectors).
        cameras: role (``head``, ``left_wrist``, ``right_wrist``) -> video key of the cameras to write, a subset
            in policy order; None = the release's three (``r1pro.CAMERAS_2026``).
        extra_columns: write the release's ``observation.robot2cam_pose.*`` [7] and ``next.*`` columns.

    Returns:
        ``root`` as a Path.

    Raises:
        ConfigError: invalid arguments (names included), or a non-empty ``root`` without ``overwrite``.
    """
    spec = _make_spec("behavior-2026", episodes, frames, tasks, image_size, codec, gop, fps, seed, crf, preset,
                      episodes_per_file)
    cams = _camera_keys(cameras, state_key, action_key)
    root = _prepare_root(root, overwrite)
    eps = synthesize(spec)
    if not extra_columns:
        for ep in eps:
            ep.columns.clear()
    data_tpl = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    video_tpl = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    codec_name = _CODEC_NAMES[spec.codec]
    by_task: dict[int, list[SyntheticEpisode]] = {}
    for ep in eps:
        by_task.setdefault(ep.task_index, []).append(ep)

    rows: dict[int, dict] = {ep.episode_index: {} for ep in eps}
    starts, total = {}, 0
    for ep in eps:
        starts[ep.episode_index] = total
        total += ep.length

    # Data files: per task chunk, `episodes_per_file` episodes per parquet.
    for task, group in by_task.items():
        for file_index in range(math.ceil(len(group) / spec.episodes_per_file)):
            members = group[file_index * spec.episodes_per_file:(file_index + 1) * spec.episodes_per_file]
            cols: dict[str, list] = {}
            for ep in members:
                T = ep.length
                rows[ep.episode_index].update({"data/chunk_index": task, "data/file_index": file_index})
                part = {
                    state_key: ep.state, action_key: ep.action,
                    "timestamp": np.arange(T, dtype=np.float32) / np.float32(spec.fps),
                    "frame_index": np.arange(T, dtype=np.int64),
                    "episode_index": np.full(T, ep.episode_index, dtype=np.int64),
                    "index": starts[ep.episode_index] + np.arange(T, dtype=np.int64),
                    "task_index": np.full(T, ep.task_index, dtype=np.int64), **ep.columns}
                for k, v in part.items():
                    cols.setdefault(k, []).append(v)
            arrays = {}
            for k, parts in cols.items():
                v = np.concatenate(parts)
                arrays[k] = _list_array(v) if v.ndim == 2 else pa.array(v)
            path = root / data_tpl.format(chunk_index=task, file_index=file_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(arrays), path)

    # Video files: each camera groups a task's episodes into mp4 files its own way (see _video_groups).
    image_stats: dict[str, dict[int, tuple[np.ndarray, int]]] = {}
    for role, key in cams.items():
        h, w = spec.image_size[role]
        image_stats[key] = {}
        for task, group in by_task.items():
            for file_index, members in enumerate(_video_groups(group, role, spec.episodes_per_file)):
                writer = _Mp4Writer(root / video_tpl.format(video_key=key, chunk_index=task, file_index=file_index),
                                    spec, h, w)
                for ep in members:
                    start = writer.pts / spec.fps
                    rows[ep.episode_index].update({
                        f"videos/{key}/chunk_index": task, f"videos/{key}/file_index": file_index,
                        f"videos/{key}/from_timestamp": start,
                        f"videos/{key}/to_timestamp": start + ep.length / spec.fps})
                    collector = _ImageStats(ep.length)
                    for t in range(ep.length):
                        rgb = render_frame(ep, role, t)
                        collector.add(t, rgb)
                        writer.write(rgb)
                    image_stats[key][ep.episode_index] = (collector.pixels(), len(collector.samples))
                writer.close()

    # Per-episode metadata and stats (lerobot v3.0 column names).
    quantiles = list(_QUANTILES)
    meta_cols: dict[str, list] = {}
    for ep in eps:
        start = starts[ep.episode_index]
        row = {"episode_index": ep.episode_index, **rows[ep.episode_index], "tasks": [ep.task],
               "length": ep.length, "dataset_from_index": start, "dataset_to_index": start + ep.length}
        numeric = {state_key: ep.state, action_key: ep.action,
                   "timestamp": np.arange(ep.length) / spec.fps, "frame_index": np.arange(ep.length),
                   "episode_index": np.full(ep.length, ep.episode_index), "index": start + np.arange(ep.length),
                   "task_index": np.full(ep.length, ep.task_index),
                   **{k: v for k, v in ep.columns.items() if v.dtype != bool}}
        for feat, values in numeric.items():
            for stat, val in _vector_stats(values, quantiles).items():
                row[f"stats/{feat}/{stat}"] = val
        for key in cams.values():
            pixels, n = image_stats[key][ep.episode_index]
            for stat, val in _image_stats(pixels, n).items():
                row[f"stats/{key}/{stat}"] = val
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        for k, v in row.items():
            meta_cols.setdefault(k, []).append(v)
    meta_path = root / "meta/episodes/chunk-000/file-000.parquet"
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(meta_cols), meta_path)

    # Aggregate stats over every frame (images: over the sampled frames).
    all_numeric = {
        state_key: np.concatenate([ep.state for ep in eps]),
        action_key: np.concatenate([ep.action for ep in eps]),
        "timestamp": np.concatenate([np.arange(ep.length) / spec.fps for ep in eps]),
        "frame_index": np.concatenate([np.arange(ep.length) for ep in eps]),
        "episode_index": np.concatenate([np.full(ep.length, ep.episode_index) for ep in eps]),
        "index": np.arange(total), "task_index": np.concatenate([np.full(ep.length, ep.task_index) for ep in eps]),
        **{k: np.concatenate([ep.columns[k] for ep in eps]) for k in eps[0].columns
           if eps[0].columns[k].dtype != bool}}
    stats = {feat: _vector_stats(v, quantiles) for feat, v in all_numeric.items()}
    for key in cams.values():
        per_ep = image_stats[key].values()
        stats[key] = _image_stats(np.concatenate([p for p, _ in per_ep]), sum(n for _, n in per_ep))
    _write_json(root / "meta/stats.json", stats)

    task_names = [task_strings(k) for k in range(spec.tasks)]
    tasks_table = pa.table({"task_index": pa.array(range(spec.tasks), pa.int64()),
                            "task": pa.array([t for _, t in task_names], pa.string())})
    # pandas metadata makes `task` the DataFrame index, which is how lerobot's load_tasks expects tasks.parquet.
    tasks_table = tasks_table.replace_schema_metadata({b"pandas": json.dumps({
        "index_columns": ["task"], "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                                       "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.3.3"}).encode()})
    pq.write_table(tasks_table, root / "meta/tasks.parquet")
    _write_jsonl(root / "meta/tasks.jsonl", [
        {"task_index": k, "task_name": name, "task": task} for k, (name, task) in enumerate(task_names)])

    features = {
        state_key: {"dtype": "float32", "shape": [61], "names": None},
        action_key: {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
        **{key: _video_feature(*spec.image_size[role], spec, ["height", "width", "channels"], codec_name)
           for role, key in cams.items()},
        **{name: {"dtype": "bool" if v.dtype == bool else "float32", "shape": list(v.shape[1:]) or [1], "names": None}
           for name, v in eps[0].columns.items()},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    _write_json(root / "meta/info.json", {
        "codebase_version": "v3.0", "robot_type": "R1Pro", "fps": spec.fps, "total_episodes": len(eps),
        "total_frames": total, "total_tasks": spec.tasks, "chunks_size": CHUNKS_SIZE_2026,
        "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "data_path": data_tpl,
        "video_path": video_tpl, "splits": {"train": f"0:{len(eps)}"}, "features": features})
    _write_json(root / SPEC_FILE, spec.to_json())
    return root


def write_third_party_upload(root: str | Path, *, episodes: int = 4, frames: int | Sequence[int] = 30,
                             tasks: int = 2, image_size: int = 32, gop: int = 8, seed: int = 0, episodes_per_file: int = 2,
                             overwrite: bool = False) -> Path:
    """A LeRobot v3.0 dataset named like many community uploads rather than like the BEHAVIOR releases: the state
    is ``state`` (float32 [61], the 2026 layout), the action ``actions`` (float32 [23]), one camera ``image`` (the
    head view, square ``image_size`` px) encoded as MPEG-4 part 2 (``mpeg4``), vectors stored as ``list<float>``
    columns and no other feature columns. Reading it needs ``--state-key state --action-key actions``.

    Args:
        root, episodes, frames, tasks, gop, seed, episodes_per_file, overwrite: as :func:`write_behavior_2026`.
        image_size: side of the square camera frames in pixels (even, >= 16).

    Returns:
        ``root`` as a Path; :func:`load_ground_truth` regenerates its episodes (frames by role: ``head``).

    Raises:
        ConfigError: invalid arguments, or a non-empty ``root`` without ``overwrite``.
    """
    return write_behavior_2026(root, episodes=episodes, frames=frames, tasks=tasks, image_size=image_size,
                               codec="mpeg4", gop=gop, seed=seed, episodes_per_file=episodes_per_file,
                               overwrite=overwrite, state_key="state", action_key="actions",
                               cameras={"head": "image"}, extra_columns=False)


def write_demo_dataset(root: str | Path, *, overwrite: bool = False) -> Path:
    """A BEHAVIOR-2025-shaped dataset sized for a CPU demo: 24 episodes x 60 frames, 2 tasks, head 96x96,
    wrists 64x64, HEVC with the release's 250-frame GOP. Many short episodes rather than a few long ones: each
    episode draws a new target, and held-out targets are only predicted well after seeing many.

    Raises:
        ConfigError: a non-empty ``root`` without ``overwrite``.
    """
    return write_behavior_2025(root, episodes=24, frames=60, tasks=2,
                               image_size={"head": (96, 96), "left_wrist": (64, 64), "right_wrist": (64, 64)},
                               gop=250, seed=0, overwrite=overwrite)
