"""The dataset report behind ``smolvla-inspect``: what a LeRobot dataset folder holds and whether its files are whole.

:func:`inspect_dataset` reads the metadata with :class:`~behavior_smolvla.data.dataset.DatasetMeta` (v3.0, v2.1 and the
BEHAVIOR 2025 release layout), checks that every data and video file the metadata names exists, and measures a
spread sample of the files: parquet row counts, and for each camera the codec, resolution, pixel format, frame
rate, frame count and keyframe interval as found in the mp4 packets (:func:`~behavior_smolvla.data.video.probe_video`),
not as ``info.json`` declares them. Missing, unreadable or inconsistent files are listed in the report, never
raised: a partly downloaded dataset still gets a full report. :func:`print_report` renders it with rich.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

from behavior_smolvla.data.meta import (
    ACTION_KEY, BOOKKEEPING_COLUMNS, STATE_KEY, DatasetMeta, column_type_problem, format_indices,
)
from behavior_smolvla.errors import DatasetError, VideoError
from behavior_smolvla.data.video import DecodeCheck, probe_video, verify_video

DEFAULT_PROBE_FILES = 8
"""Files measured per camera (and data files whose row counts are read) unless told otherwise: enough to see
the encoding of a release of 10,000 episodes without demuxing all its 30,000 mp4 files."""



def _spread(n: int, k: int | None) -> list[int]:
    """``k`` indices spread evenly over ``range(n)``, first and last included (all when ``k`` is None)."""
    if k is None or k >= n:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, max(k, 1)).round().astype(int).tolist()))


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _files_by_path(episodes: Mapping[int, Any], path_of: Callable[[Any], Path], label: str,
                   problems: list[dict[str, str]], root: Path) -> tuple[dict[Path, list[int]], list[Path], list[Path]]:
    """The files the episodes name (``path_of(episode)``) -> their episodes; each file is checked once, and a
    missing one is reported as a problem. Returns ``(files, present, missing)``."""
    files: dict[Path, list[int]] = {}
    for index, ep in episodes.items():
        files.setdefault(path_of(ep), []).append(index)
    present, missing = [], []
    for path, eps in files.items():
        if path.is_file():
            present.append(path)
        else:
            missing.append(path)
            problems.append({"kind": "missing", "path": _relative(path, root),
                             "detail": f"{label} episode(s) {format_indices(eps)}"})
    return files, present, missing


def _feature_entry(meta: DatasetMeta, key: str | None, names: Sequence[str] | None) -> dict[str, Any] | None:
    feature = meta.features.get(key) if key else None
    if feature is None:
        return None
    return {"dtype": feature.get("dtype"), "shape": list(feature.get("shape") or []), "names": names}


def _guess(candidates: Sequence[str], word: str, exclude: str | None = None) -> str | None:
    """The candidate whose name says ``word`` (``state``, ``action``), preferring the shortest such name."""
    named = sorted((k for k in candidates if word in k.lower() and k != exclude), key=len)
    return named[0] if named else None


def training_flags(meta: DatasetMeta) -> str | None:
    """The ``--state-key`` / ``--action-key`` flags a dataset needs (None when its features have the default names).

    Keys are guessed from the float vector features' names (``state``, ``action``); ``NAME`` stands where no name
    says so.
    """
    if meta.state_key == STATE_KEY and meta.action_key == ACTION_KEY:
        return None
    candidates = list(meta.vector_features)
    state = meta.state_key or _guess(candidates, "state") or "NAME"
    action = meta.action_key or _guess(candidates, "action", exclude=state) or "NAME"
    return " ".join(f"--{role}-key {key}" for role, key, default in (("state", state, STATE_KEY),
                                                                        ("action", action, ACTION_KEY))
                    if key != default)


def inspect_dataset(root: str | os.PathLike, *, probe_files: int | None = DEFAULT_PROBE_FILES,
                    state_key: str | None = None, action_key: str | None = None, verify: bool = False,
                    jobs: int | None = None, console: Console | None = None) -> dict[str, Any]:
    """Report on a dataset folder (JSON-serialisable). Any LeRobot dataset is described, one without an
    ``observation.state`` or ``action`` feature too.

    Args:
        root: the dataset folder (holding ``meta/info.json``).
        state_key, action_key: the features to describe as the state and the action (``--state-key``,
            ``--action-key``); None: ``observation.state`` and ``action`` where the dataset has them (absent ones are
            reported as None, with the float vector features listed as candidates and the flags to train on them).
            A key given that is not a float vector feature is a "feature" problem.
        probe_files: how many files per camera to measure, and how many data files to read row counts from,
            spread over the dataset; ``None`` measures every file. Existence is checked for every file.
        verify: also decode every frame of every video (:func:`verify_videos`, parallel over ``jobs`` files, a
            progress bar on ``console``) and compare stored per-episode statistics with the data
            (:func:`verify_stats`); adds ``verified`` (True) and "damaged video" / "stats" problems.

    Returns:
        dict with ``root``, ``format`` (``"v2.1"``/``"v3.0"``), ``codebase_version`` (as stored), ``robot_type``,
        ``fps`` (Hz), ``episodes`` (``count``, ``indices`` as runs such as ``"10, 20, 10010-10011"``, ``first``,
        ``last``, ``contiguous``), ``frames`` (``total``, ``per_episode`` min / mean / max), ``duration_s``,
        ``tasks`` (list of ``task_index``, ``task``, ``episodes``, ``frames``; select with ``--tasks``), ``state_key`` / ``action_key`` (the features
        found for them, or None), ``features`` (those two by name: ``dtype``, ``shape``, ``names`` or None),
        ``vector_features`` (every float vector feature: name -> size, the state / action candidates),
        ``train_flags`` (e.g. ``"--state-key state --action-key actions"``, None for the default names),
        ``other_features`` (declared, non-video, non-
        bookkeeping: key -> dtype and shape), ``undeclared_columns`` (parquet columns info.json does not declare),
        ``data_files`` (``count``, ``checked``, ``missing``), ``cameras`` (one dict per video key, in info.json
        order: ``key``, ``declared`` height / width / codec, and as measured ``height``, ``width``, ``codec``,
        ``pix_fmt``, ``fps``, ``keyframe_interval`` (frames, measured in the probed files that hold at least two
        keyframes; None when they disagree (see ``keyframe_intervals``) or when every probed file holds a single
        keyframe: then ``keyframe_interval_at_least`` is the longest such file's frame count), ``sizes``
        (distinct ``WxH``), ``frames`` (in the probed files) vs ``expected_frames`` (the metadata's lengths of
        their episodes), ``files``, ``probed``, ``missing``), ``verified`` (``verify``) and ``problems`` (list of
        ``kind`` in {"missing", "unreadable", "frame count", "row count", "codec" (info.json's ``video.codec``
        differs from the probed files'), "feature" (a ``state_key`` / ``action_key`` given that the dataset lacks),
        "type" (a probed data file stores the state, action or a bookkeeping column as something else than the
        numbers info.json declares), "damaged video", "stats" (the last two with ``verify``)}, ``path`` relative to
        ``root``, ``detail``). The report lists no problem exactly when ``smolvla-inspect`` exits 0.

    Raises:
        DatasetError: the folder or its metadata (``meta/info.json``, episodes, tasks) is missing or malformed; file
            problems below the metadata are reported, not raised.
    """
    meta = DatasetMeta.load(root, state_key=state_key or STATE_KEY, action_key=action_key or ACTION_KEY,
                            require_state_action=False)
    root = meta.root
    problems: list[dict[str, str]] = []
    for role, asked, found in (("state", state_key, meta.state_key), ("action", action_key, meta.action_key)):
        if asked is not None and found is None:
            what = "is not a float vector feature" if asked in meta.features else "is not a feature"
            listed = ", ".join(f"{k} [{n}]" for k, n in meta.vector_features.items()) or "none"
            problems.append({"kind": "feature", "path": "meta/info.json",
                             "detail": f"--{role}-key {asked!r} {what} of this dataset; its float vector features: "
                                       f"{listed}"})
    state_key, action_key = state_key or STATE_KEY, action_key or ACTION_KEY
    episodes = meta.episodes
    indices = list(episodes)
    lengths = np.array([e.length for e in episodes.values()], dtype=np.int64)

    task_counts = Counter(task for e in episodes.values() for task in e.tasks)
    task_frames = Counter()
    for e in episodes.values():
        for task in e.tasks:
            task_frames[task] += e.length
    tasks = [{"task_index": i, "task": t, "episodes": task_counts.get(t, 0), "frames": task_frames.get(t, 0)}
             for i, t in sorted(meta.tasks.items())]

    # Data files: existence for all, row counts (and the column schema) for a spread sample.
    data_files, present, missing_data = _files_by_path(
        episodes, lambda ep: ep.data_path, "data file of", problems, root)
    data_paths = list(data_files)
    columns: set[str] = set()
    checked = 0
    for i in _spread(len(present), probe_files):
        path = present[i]
        expected = sum(episodes[e].length for e in data_files[path])
        try:
            parquet = pq.ParquetFile(path)
            rows = parquet.metadata.num_rows
            schema = parquet.schema_arrow
            columns.update(schema.names)
        except (pa.ArrowException, OSError) as exc:
            problems.append({"kind": "unreadable", "path": _relative(path, root), "detail": " ".join(str(exc).split())})
            continue
        checked += 1
        for name in dict.fromkeys([meta.state_key, meta.action_key, *BOOKKEEPING_COLUMNS]):
            if name is not None and name in schema.names:
                problem = column_type_problem(name, schema.field(name).type,
                                              (meta.features.get(name) or {}).get("dtype"))
                if problem:
                    problems.append({"kind": "type", "path": _relative(path, root), "detail": problem})
        if rows != expected:
            problems.append({"kind": "row count", "path": _relative(path, root),
                             "detail": f"{rows} rows, the metadata's episodes {format_indices(data_files[path])} "
                                       f"have {expected} frames"})

    cameras = [_inspect_camera(meta, key, probe_files, problems) for key in meta.camera_keys]
    if verify:
        present_eps = [e for e in episodes if all(p.is_file() for p, _ in episodes[e].videos.values())]
        problems.extend(verify_dataset(meta, present_eps, jobs=jobs, console=console))

    declared = set(meta.features)
    other = {k: {"dtype": f.get("dtype"), "shape": list(f.get("shape") or [])} for k, f in meta.features.items()
             if k not in (meta.state_key, meta.action_key) and f.get("dtype") != "video"
             and k not in BOOKKEEPING_COLUMNS}
    return {
        "root": str(root),
        "format": meta.version,
        "codebase_version": str(meta.info.get("codebase_version", "")),
        "robot_type": meta.info.get("robot_type"),
        "fps": meta.fps,
        "episodes": {
            "count": len(indices),
            "indices": format_indices(indices, limit=16),
            "first": int(indices[0]) if indices else None,
            "last": int(indices[-1]) if indices else None,
            "contiguous": bool(indices) and indices == list(range(indices[0], indices[-1] + 1)),
        },
        "frames": {
            "total": int(lengths.sum()),
            "per_episode": {"min": int(lengths.min()), "mean": round(float(lengths.mean()), 1),
                            "max": int(lengths.max())} if len(lengths) else None,
        },
        "duration_s": round(float(lengths.sum()) / meta.fps, 3),
        "tasks": tasks,
        "state_key": meta.state_key,
        "action_key": meta.action_key,
        "features": {key: _feature_entry(meta, key, names)
                     for key, names in ((state_key, meta.state_names), (action_key, meta.action_names))},
        "vector_features": meta.vector_features,
        "train_flags": training_flags(meta),
        "other_features": other,
        "undeclared_columns": sorted(columns - declared),
        "data_files": {"count": len(data_paths), "checked": checked, "missing": len(missing_data)},
        "cameras": cameras,
        "verified": verify,
        "problems": problems,
    }


def _inspect_camera(meta: DatasetMeta, key: str, probe_files: int | None,
                    problems: list[dict[str, str]]) -> dict[str, Any]:
    root = meta.root
    info = meta.features[key].get("info") or {}
    shape = list(meta.features[key].get("shape") or [])
    declared = {"height": info.get("video.height", shape[0] if len(shape) == 3 else None),
                "width": info.get("video.width", shape[1] if len(shape) == 3 else None),
                "codec": info.get("video.codec")}
    files, present, missing = _files_by_path(
        meta.episodes, lambda ep: ep.videos[key][0], f"camera {key},", problems, root)
    paths = list(files)
    measured: list[Any] = []
    frames = expected = 0
    for i in _spread(len(present), probe_files):
        path = present[i]
        try:
            video = probe_video(path)
        except VideoError as exc:
            problems.append({"kind": "unreadable", "path": _relative(path, root), "detail": str(exc)})
            continue
        measured.append(video)
        want = sum(meta.episodes[e].length for e in files[path])
        frames += video.frame_count
        expected += want
        if video.frame_count != want:
            problems.append({"kind": "frame count", "path": _relative(path, root),
                             "detail": f"{video.frame_count} frames, the metadata's episodes "
                                       f"{format_indices(files[path])} have {want}"})
    first = measured[0] if measured else None
    codecs = sorted({v.codec for v in measured})
    if declared["codec"] and codecs and any(not _same_codec(declared["codec"], c) for c in codecs):
        problems.append({"kind": "codec", "path": "meta/info.json",
                         "detail": f"camera {key} declares video.codec {declared['codec']!r} but its files are "
                                   f"{', '.join(codecs)}; fix info.json (decoding follows the files)"})
    # probe_video gives frame_count for a file with a single keyframe: its interval is then only a lower bound.
    intervals = sorted({v.keyframe_interval for v in measured if v.keyframe_interval < v.frame_count})
    single = [v for v in measured if v.keyframe_interval >= v.frame_count]
    return {
        "key": key,
        "declared": declared,
        "height": first.height if first else None,
        "width": first.width if first else None,
        "codec": first.codec if first else None,
        "pix_fmt": first.pix_fmt if first else None,
        "fps": first.fps if first else None,
        "keyframe_interval": intervals[0] if len(intervals) == 1 else None,
        "keyframe_intervals": intervals,
        "single_keyframe_files": len(single),
        "keyframe_interval_at_least": max(v.frame_count for v in single) if single and not intervals else None,
        "sizes": sorted({f"{v.width}x{v.height}" for v in measured}),
        "frames": frames,
        "expected_frames": expected,
        "files": len(paths),
        "probed": len(measured),
        "missing": len(missing),
    }


_CODEC_ALIASES = {"h264": {"h264", "avc", "avc1", "libx264"}, "hevc": {"hevc", "h265", "hvc1", "hev1", "libx265"},
                  "av1": {"av1", "av01", "libaom-av1", "libsvtav1", "libdav1d"}, "vp9": {"vp9", "libvpx-vp9"}}


def _same_codec(declared: str, measured: str) -> bool:
    """Whether two codec names mean the same format (info.json may use the encoder's or the fourcc's name)."""
    a, b = declared.lower(), measured.lower()
    return a == b or any(a in names and b in names for names in _CODEC_ALIASES.values())


def _names_label(names: Sequence[str] | None, limit: int = 6) -> str:
    if not names:
        return "-"
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} names)" if len(names) > limit else "")


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """Render an :func:`inspect_dataset` report as rich tables (summary, tasks, features, cameras, problems)."""
    console = console or Console()
    eps, frames = report["episodes"], report["frames"]
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("dataset", report["root"])
    summary.add_row("format", f"LeRobot {report['format']} (codebase_version {report['codebase_version']})"
                    + (f", robot {report['robot_type']}" if report.get("robot_type") else ""))
    summary.add_row("fps", f"{report['fps']:g}")
    summary.add_row("episodes", f"{eps['count']}: {eps['indices']}"
                    + ("" if eps["contiguous"] else "  [yellow](not contiguous)[/]"))
    per = frames["per_episode"]
    summary.add_row("frames", f"{frames['total']} ({report['duration_s'] / 60:.1f} min)"
                    + (f"; per episode min {per['min']}, mean {per['mean']}, max {per['max']}" if per else ""))
    data = report["data_files"]
    summary.add_row("data files", f"{data['count']} ({data['checked']} checked, {data['missing']} missing)")
    if report["undeclared_columns"]:
        summary.add_row("undeclared columns", ", ".join(report["undeclared_columns"]))
    console.print(summary)

    tasks = Table(title=f"tasks ({len(report['tasks'])})", title_justify="left")
    tasks.add_column("index", justify="right")
    tasks.add_column("episodes", justify="right")
    tasks.add_column("frames", justify="right")
    tasks.add_column("task")
    # the 2025 release has 50 tasks: list them all, so that --tasks can be read off this table
    shown = report["tasks"][:60]
    for task in shown:
        tasks.add_row(str(task["task_index"]), str(task["episodes"]), str(task.get("frames", "")), task["task"])
    if len(report["tasks"]) > len(shown):
        tasks.add_row("...", "", "", f"{len(report['tasks']) - len(shown)} more")
    console.print(tasks)

    features = Table(title="features", title_justify="left")
    for column in ("key", "dtype", "shape", "names"):
        features.add_column(column)
    for key, feature in report["features"].items():
        if feature is not None:
            features.add_row(key, str(feature["dtype"]), str(feature["shape"]), _names_label(feature["names"]))
    for key, feature in report["other_features"].items():
        features.add_row(f"[dim]{key}[/]", str(feature["dtype"]), str(feature["shape"]), "")
    console.print(features)
    missing = [k for k, v in report["features"].items() if v is None]
    if missing:
        listed = ", ".join(f"{k} [{n}]" for k, n in report["vector_features"].items()) or "none"
        console.print(f"[yellow]no feature named {' or '.join(missing)}[/]; float vector features (state / action "
                      f"candidates): {listed}", soft_wrap=True)
    if report["train_flags"]:
        # soft_wrap: one line however narrow the terminal, so the command can be copied (and grepped) whole.
        console.print(f"train on it with: [bold]smolvla-train --dataset-path {report['root']} "
                      f"{report['train_flags']} ...[/]", soft_wrap=True, highlight=False)

    keys = [cam["key"] for cam in report["cameras"]]
    # Camera keys share a long prefix (observation.images.rgb.): show it once, in the title.
    prefix = os.path.commonprefix(keys)
    prefix = prefix[: prefix.rfind(".") + 1]
    cameras = Table(title=f"cameras ({len(keys)}{', ' + prefix + '*' if prefix else ''}; as measured in the mp4 "
                          "files)", title_justify="left")
    cameras.add_column("camera", no_wrap=True)
    cameras.add_column("WxH")
    cameras.add_column("codec")
    cameras.add_column("keyframe every", justify="right")
    cameras.add_column("frames (probed files)", justify="right")
    cameras.add_column("files (probed)", justify="right")
    for cam in report["cameras"]:
        size = ", ".join(cam["sizes"]) or "-"
        declared = cam["declared"]
        if declared["width"] and f"{declared['width']}x{declared['height']}" not in cam["sizes"] and cam["sizes"]:
            size += f" [yellow](declared {declared['width']}x{declared['height']})[/]"
        if cam["keyframe_intervals"]:
            kfi = ", ".join(str(v) for v in cam["keyframe_intervals"])
        elif cam["keyframe_interval_at_least"]:
            kfi = f">= {cam['keyframe_interval_at_least']} (1/file)"
        else:
            kfi = "-"
        codec = " ".join(str(v) for v in (cam["codec"], cam["pix_fmt"]) if v) or "-"
        if cam["fps"] and abs(cam["fps"] - report["fps"]) > 1e-6:
            codec += f" [yellow]{cam['fps']:g} fps[/]"
        frame_label = f"{cam['frames']}" + ("" if cam["frames"] == cam["expected_frames"]
                                            else f" [red](expected {cam['expected_frames']})[/]")
        files = f"{cam['files']} ({cam['probed']})" + (f" [red]{cam['missing']} missing[/]" if cam["missing"] else "")
        cameras.add_row(cam["key"][len(prefix):], size, codec, kfi, frame_label, files)
    console.print(cameras)

    if report["problems"]:
        problems = Table(title=f"[red]problems ({len(report['problems'])})[/]", title_justify="left")
        for column in ("kind", "file", "detail"):
            problems.add_column(column, overflow="fold")
        for problem in report["problems"][:50]:
            problems.add_row(problem["kind"], problem["path"], problem["detail"])
        if len(report["problems"]) > 50:
            problems.add_row("...", f"{len(report['problems']) - 50} more", "")
        console.print(problems)
    else:
        checked = ("every video decoded frame by frame, stored statistics match the data" if report.get("verified")
                   else "probed files match it; --verify decodes every frame")
        console.print(f"[green]no problems found[/] (every file the metadata names exists; {checked})")


# -- full verification (--verify) --------------------------------------------------------------------------------


def video_files(meta: DatasetMeta, episodes: Sequence[int] | None = None, cameras: Sequence[str] | None = None
                ) -> dict[Path, tuple[str, list[int]]]:
    """Every video file of ``episodes`` (None: all) and ``cameras`` (None: all) -> (camera, its episodes)."""
    out: dict[Path, tuple[str, list[int]]] = {}
    for ep in (meta.episodes if episodes is None else episodes):
        for key in (meta.camera_keys if cameras is None else cameras):
            path = meta.episodes[ep].videos[key][0]
            out.setdefault(path, (key, []))[1].append(int(ep))
    return out


def verify_videos(meta: DatasetMeta, episodes: Sequence[int] | None = None, cameras: Sequence[str] | None = None,
                  jobs: int | None = None, console: Console | None = None) -> list[DecodeCheck]:
    """Decode every frame of every (selected) video file, in parallel over files, with a progress bar.

    Files are checked by a thread pool (FFmpeg decodes outside the GIL), one decoding thread each. A file's
    expected frame count is the metadata's length sum of the episodes it stores.

    Args:
        meta: the dataset.
        episodes, cameras: the selection (None: everything).
        jobs: parallel files (None: the usable cores).
        console: where the progress bar goes (None: no bar).

    Returns:
        One :class:`~behavior_smolvla.data.video.DecodeCheck` per damaged or missing file (first bad frame and
        why), in path order; empty when every file decodes whole.
    """
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    files = video_files(meta, episodes, cameras)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, int(jobs or cores))
    bad: list[DecodeCheck] = []
    progress = Progress(TextColumn("[bold]decoding videos"), MofNCompleteColumn(), BarColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console, disable=console is None, transient=True)
    with progress, ThreadPoolExecutor(max_workers=jobs) as pool:
        task = progress.add_task("verify", total=len(files))
        futures = [pool.submit(verify_video, path, sum(meta.episodes[e].length for e in eps), 1)
                   for path, (_, eps) in files.items()]
        for future in as_completed(futures):
            check = future.result()
            if check.first_bad_frame is not None:
                bad.append(check)
            progress.advance(task)
    return sorted(bad, key=lambda c: str(c.path))


def verify_stats(meta: DatasetMeta, episodes: Sequence[int] | None = None) -> list[dict[str, str]]:
    """Compare the per-episode statistics stored with the dataset with ones recomputed from its rows.

    Returns:
        Problems (``kind`` "stats", ``path`` the episodes metadata, ``detail``: the episode, feature and the first
        disagreeing statistic), one per episode and feature; empty when no statistics are stored or all agree.
    """
    from behavior_smolvla.data.stats import compare_stats, episode_data_stats

    if meta.state_key is None or meta.action_key is None:
        return []
    selected = list(meta.episodes if episodes is None else episodes)
    stored = meta.episode_stats(selected)
    source = "meta/episodes_stats.jsonl" if meta.version == "v2.1" else "meta/episodes"
    problems = []
    for ep, computed in episode_data_stats(meta, [e for e in selected if e in stored]):
        for feature, stats in computed.items():
            if feature not in stored[ep]:
                continue
            for issue in compare_stats(stored[ep][feature], stats)[:1]:
                problems.append({"kind": "stats", "path": source,
                                 "detail": f"episode {ep} {feature}: {issue}; train with --recompute-stats"})
    return problems


def verify_dataset(meta: DatasetMeta, episodes: Sequence[int] | None = None, cameras: Sequence[str] | None = None,
                   jobs: int | None = None, console: Console | None = None) -> list[dict[str, str]]:
    """:func:`verify_videos` and :func:`verify_stats` as report problems (``kind`` "damaged video" / "stats")."""
    problems = []
    for check in verify_videos(meta, episodes, cameras, jobs=jobs, console=console):
        problems.append({"kind": "damaged video", "path": _relative(check.path, meta.root),
                         "detail": f"first bad frame {check.first_bad_frame}: {check.reason}"})
    try:
        problems += verify_stats(meta, episodes)
    except DatasetError as exc:  # a data file that cannot be read: a problem to list, not a reason to stop
        problems.append({"kind": "unreadable", "path": "data/", "detail": str(exc)})
    return problems
