"""Startup and memory at release scale (issue 13, section 5). Prints a table (``--json``: one object per size); not a
test.

Writes (once, cached under ``--root``, default ``outputs/scale``) BEHAVIOR-2025-layout datasets (LeRobot v2.1 as the
release: ``task-XXXX`` chunks, episode indices ``task * 10000 + k * 10``, one parquet per episode, per-episode stats
with per-camera image stats in ``meta/episodes_stats.jsonl``) with the real 256-dim state and 23-dim action, and
tiny video: one 32x32 MPEG-4 file per camera (one keyframe per 250 frames), long enough for the longest episode and
linked by every episode. Sizes (``--sizes``):

* ``task-20``: 20 episodes of ~10,000 frames (~0.2 M frames);
* ``task-200``: 200 episodes of ~10,000 frames (~2 M frames): one full-size task;
* ``release-10k``: 10,000 episodes of ~60 frames in 50 tasks (0.6 M frames): release-shaped metadata.

For each size, in a fresh process: build the training reader as ``smolvla-train`` does, from the input contract
(``PolicyInputs.resolve``: ``--filter-state`` map, three cameras at 64x64, chunk 50) and a ``TrainingStream`` (batch
8, ``uint8_images``) and iterate a ``DataLoader`` with ``--workers`` workers started as ``smolvla-train`` starts
them (``--context``: a forkserver; ``spawn`` for comparison). Reported:
``startup_s`` (metadata + reader + stream + DataLoader until the first batch arrives, imports excluded and shown
apart as ``import_s``), ``main_rss_mib`` (the main process's resident
memory at the first batch), ``max_worker_rss_mib`` (the largest worker's resident memory after ``--batches``
batches), its anonymous part ``max_worker_anon_mib`` and the largest unique set ``max_worker_uss_mib`` (pages
no other process shares: what one more worker costs). Pages of the memory-mapped cache are shared page cache, and
a forked worker shares the libraries its forkserver loaded; RSS counts both in every process that touched them.
The numeric cache is built by the first run of a size (its time to the first batch is ``first_run_startup_s``)
and reused afterwards; ``--repeat`` runs are reported as the median (and range).
``--mode memory`` measures the previous reader (numeric columns read into memory, ``in_memory=True``) for
comparison; it needs several GB per worker at the full-task size.

    python bench/scale.py                          # generate if needed, measure every size, print the table
    python bench/scale.py --sizes task-20 --mode memory --json
    python bench/scale.py --smoke --json           # the script itself in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {
    "task-20": {"episodes": 20, "frames": 10_000, "tasks": 1},
    "task-200": {"episodes": 200, "frames": 10_000, "tasks": 1},
    "release-10k": {"episodes": 10_000, "frames": 60, "tasks": 50},
    "smoke": {"episodes": 4, "frames": 120, "tasks": 2},
}
"""Episode counts and mean lengths. One 2025 task is 200 episodes and ~1.5-2.4 M frames; the 2025 release is 50
tasks, 10,000 episodes, 119 M frames (``../shared/reference/behavior_r1pro.md``). ``smoke`` only tries the script."""
DEFAULT_SIZES = ("task-20", "task-200", "release-10k")
CAMERAS = ("observation.images.rgb.head", "observation.images.rgb.left_wrist", "observation.images.rgb.right_wrist")
STATE_DIM, ACTION_DIM, FPS, GOP, SIDE = 256, 23, 30, 250, 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "scale", help="datasets and the numeric cache")
    p.add_argument("--sizes", default=",".join(DEFAULT_SIZES), help=f"comma-separated, of: {', '.join(SIZES)}")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--batches", type=int, default=20, help="batches read before the worker memory is taken")
    p.add_argument("--repeat", type=int, default=3, help="runs per size (after the one that builds the cache)")
    p.add_argument("--mode", choices=["cache", "memory"], default="cache")
    p.add_argument("--context", choices=["forkserver", "spawn"], default="forkserver",
                   help="how DataLoader workers start (smolvla-train: forkserver)")
    p.add_argument("--json", action="store_true", help="print one JSON object per size instead of a table")
    p.add_argument("--smoke", action="store_true",
                   help="try the script in seconds: --sizes smoke (4 episodes x ~120 frames) --workers 1 --batches 2 "
                        "--repeat 0 (figures meaningless)")
    p.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one run of one size, in a child process
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(sizes="smoke", workers=1, batches=2, repeat=0)  # flags given explicitly still win
    return p.parse_args(argv)


# -- datasets ---------------------------------------------------------------------------------------------------


def _lengths(size: dict) -> list[int]:
    """Deterministic episode lengths spread +-20% around the mean."""
    n, mean = size["episodes"], size["frames"]
    return [int(mean * (0.8 + 0.4 * ((k * 7919) % 1000) / 1000)) for k in range(n)]


def _video(path: Path, frames: int) -> None:
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.mp4")
    with av.open(str(tmp), "w") as out:
        stream = out.add_stream("mpeg4", rate=FPS)
        stream.width = stream.height = SIDE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = GOP
        stream.codec_context.options = {"g": str(GOP), "keyint_min": str(GOP), "sc_threshold": "0"}
        for t in range(frames):
            image = np.full((SIDE, SIDE, 3), (t * 3) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    tmp.rename(path)


def _stats(values, quantiles: bool = True) -> dict:
    import numpy as np

    v = values.astype(np.float64)
    out = {"min": v.min(0), "max": v.max(0), "mean": v.mean(0), "std": v.std(0)}
    if quantiles:
        out.update({"q01": np.quantile(v, 0.01, axis=0), "q99": np.quantile(v, 0.99, axis=0)})
    result = {k: x.tolist() for k, x in out.items()}
    result["count"] = [len(v)]
    return result


def ensure_dataset(root: Path, name: str) -> Path:
    """The dataset of size ``name`` under ``root`` (written when missing; ``meta/info.json`` is written last, so a
    dataset with it is complete)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = root / name
    if (out / "meta" / "info.json").is_file():
        return out
    size = SIZES[name]
    lengths = _lengths(size)
    per_task = -(-size["episodes"] // size["tasks"])
    shared = root / "videos" / f"{SIDE}px_{max(lengths)}f"
    for camera in CAMERAS:
        if not (shared / f"{camera}.mp4").is_file():
            _video(shared / f"{camera}.mp4", max(lengths))
    data_tpl = "data/task-{episode_chunk:04d}/episode_{episode_index:08d}.parquet"
    video_tpl = "videos/task-{episode_chunk:04d}/{video_key}/episode_{episode_index:08d}.mp4"
    image_stats = {k: [[[0.5]]] * 3 for k in ("min", "max", "mean", "std")} | {"count": [100]}
    episodes_rows, stats_rows = [], []
    start = time.monotonic()
    for k, length in enumerate(lengths):
        task = k // per_task
        ep = task * 10_000 + (k % per_task) * 10
        t = np.arange(length, dtype=np.float64)
        # smooth, bounded, per-dimension-distinct signals (compress like real joint trajectories, not like noise)
        phase = np.arange(STATE_DIM) * 0.37 + k
        state = np.sin(t[:, None] / 90.0 + phase) * (1 + np.arange(STATE_DIM) % 7)
        # on a 1/64 grid: few mantissa bits, so zstd compresses the parquet files (disk) as it does real data
        state = (np.round(state * 64) / 64).astype(np.float32)
        action = state[:, :ACTION_DIM] * 0.5
        flat = pa.array(state.reshape(-1), type=pa.float32())
        table = pa.table({
            "index": pa.array(np.arange(length, dtype=np.int64)),
            "episode_index": pa.array(np.full(length, ep, dtype=np.int64)),
            "task_index": pa.array(np.full(length, task, dtype=np.int64)),
            "timestamp": pa.array(t / FPS),
            "observation.state": pa.ListArray.from_arrays(
                pa.array(np.arange(0, state.size + 1, STATE_DIM, dtype=np.int32)), flat),
            "action": pa.ListArray.from_arrays(pa.array(np.arange(0, action.size + 1, ACTION_DIM, dtype=np.int32)),
                                               pa.array(action.reshape(-1), type=pa.float32())),
        })
        path = out / data_tpl.format(episode_chunk=task, episode_index=ep)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="zstd")
        for camera in CAMERAS:
            link = out / video_tpl.format(episode_chunk=task, video_key=camera, episode_index=ep)
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(os.path.relpath(shared / f"{camera}.mp4", link.parent), link)
        episodes_rows.append({"episode_index": ep, "tasks": [f"task {task}: do the thing"], "length": length})
        stride = max(1, length // 500)  # stats of a subsample: cheap, and the bench does not depend on their values
        stats_rows.append({"episode_index": ep, "stats": {
            "action": _stats(action[::stride]), "observation.state": _stats(state[::stride]),
            **{camera: image_stats for camera in CAMERAS}}})
        if k % 500 == 499:
            print(f"  {name}: {k + 1}/{len(lengths)} episodes written ({time.monotonic() - start:.0f} s)",
                  file=sys.stderr, flush=True)
    meta = out / "meta"
    meta.mkdir(parents=True, exist_ok=True)
    video_feature = {"dtype": "video", "shape": [SIDE, SIDE, 3], "names": ["height", "width", "rgb"],
                     "info": {"video.fps": float(FPS), "video.height": SIDE, "video.width": SIDE,
                              "video.codec": "mpeg4", "video.pix_fmt": "yuv420p", "video.is_depth_map": False}}
    features = {camera: video_feature for camera in CAMERAS} | {
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
        "timestamp": {"dtype": "float64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
        "observation.state": {"dtype": "float32", "shape": [STATE_DIM], "names": None},
    }
    (meta / "tasks.jsonl").write_text("".join(
        json.dumps({"task_index": t, "task": f"task {t}: do the thing"}) + "\n" for t in range(size["tasks"])))
    (meta / "episodes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in episodes_rows))
    (meta / "episodes_stats.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stats_rows))
    (meta / "info.json").write_text(json.dumps({
        "codebase_version": "v2.1", "robot_type": "R1Pro", "total_episodes": len(lengths),
        "total_frames": sum(lengths), "total_tasks": size["tasks"], "chunks_size": 10_000, "fps": FPS,
        "data_path": data_tpl, "video_path": video_tpl, "features": features}, indent=2))
    return out


# -- one measurement (child process) ----------------------------------------------------------------------------


def _memory_mib(pid: int) -> dict[str, float]:
    fields = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                fields[key] = int(value.split()[0]) / 1024
    return fields


def measure(args: argparse.Namespace, name: str) -> dict:
    t_import = time.monotonic()
    import psutil
    import torch
    from torch.utils.data import DataLoader

    from behavior_smolvla.data.dataset import BehaviorDataset
    from behavior_smolvla.data.meta import DatasetMeta
    from behavior_smolvla.data.sampler import TrainingStream
    from behavior_smolvla.state_maps.maps import standard_track_map

    import_s = time.monotonic() - t_import
    root = args.root / name
    start = time.monotonic()
    try:
        from behavior_smolvla.data.sampler import worker_context
    except ImportError:  # an older checkout: it spawned its workers
        args.context = "spawn"
    context = worker_context() if args.context == "forkserver" else args.context  # as smolvla-train: early
    meta = DatasetMeta.load(root)
    meta_s = time.monotonic() - start
    import inspect

    kwargs = {"cache_dir": args.root / "cache", "in_memory": args.mode == "memory"}
    if "in_memory" not in inspect.signature(BehaviorDataset).parameters:
        kwargs = {}  # the code before the numeric cache (run this script against an older checkout to compare)
    try:
        from behavior_smolvla.config import DataConfig, PolicyConfig
        from behavior_smolvla.inputs import PolicyInputs
    except ImportError:  # a checkout before the input contract: the same reader, built by hand
        state_map = standard_track_map(meta.state_dim).bind(meta.state_dim)
        dataset = BehaviorDataset(meta, cameras=list(CAMERAS), chunk_size=50, image_size=64, state_map=state_map,
                                  **kwargs)
    else:
        # the reader smolvla-train builds: what the policy reads is resolved by the contract, as in training
        inputs = PolicyInputs.resolve(meta, DataConfig(cameras=list(CAMERAS), image_size=64, filter_state=True),
                                      PolicyConfig(chunk_size=50))
        state_map = inputs.state_map
        dataset = inputs.dataset(meta, None, **kwargs)
    dataset_s = time.monotonic() - start
    stream = TrainingStream(dataset, seed=0, batch_size=8, streams=args.workers, uint8_images=True, decoder_threads=1)
    stream_s = time.monotonic() - start
    loader = DataLoader(stream, batch_size=None, num_workers=args.workers, multiprocessing_context=context)
    iterator = iter(loader)
    batch = next(iterator)
    startup_s = time.monotonic() - start
    main = _memory_mib(os.getpid())
    for _ in range(args.batches - 1):
        batch = next(iterator)
    assert batch["observation.state"].shape[-1] == state_map.output_dim
    # DataLoader workers: the descendants without children (not the forkserver, whose children they are) that are
    # not multiprocessing's resource tracker
    children = [c for c in psutil.Process().children(recursive=True)
                if not c.children() and "resource_tracker" not in " ".join(c.cmdline())]
    workers = [_memory_mib(c.pid) | {"uss": c.memory_full_info().uss / 2**20} for c in children]
    worker_rss = max(w["VmRSS"] for w in workers)
    worker_anon = max(w["RssAnon"] for w in workers)
    worker_uss = max(w["uss"] for w in workers)
    del iterator
    return {"size": name, "mode": args.mode, "context": args.context, "episodes": len(dataset.episodes), "frames": int(meta.total_frames),
            "samples": len(dataset), "startup_s": round(startup_s, 2), "meta_s": round(meta_s, 2),
            "dataset_s": round(dataset_s, 2), "stream_s": round(stream_s, 2), "import_s": round(import_s, 2),
            "main_rss_mib": round(main["VmRSS"]), "main_anon_mib": round(main["RssAnon"]),
            "max_worker_rss_mib": round(worker_rss), "max_worker_anon_mib": round(worker_anon),
            "max_worker_uss_mib": round(worker_uss),
            "workers": len(workers), "torch": torch.__version__}


def run_child(args: argparse.Namespace, name: str) -> dict:
    cmd = [sys.executable, __file__, "--measure", name, "--root", str(args.root), "--workers", str(args.workers),
           "--batches", str(args.batches), "--mode", args.mode, "--context", args.context]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{name}: measurement failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.root = args.root.resolve()
    if args.measure:
        print(json.dumps(measure(args, args.measure)))
        return
    names = [s.strip() for s in args.sizes.split(",") if s.strip()]
    unknown = [n for n in names if n not in SIZES]
    if unknown:
        raise SystemExit(f"--sizes: unknown {unknown}; choose from {', '.join(SIZES)}")
    results = []
    for name in names:
        t = time.monotonic()
        ensure_dataset(args.root, name)
        written_s = time.monotonic() - t
        first = run_child(args, name)  # builds the cache if needed
        runs = [run_child(args, name) for _ in range(args.repeat)]
        row = dict(runs[len(runs) // 2]) if runs else dict(first)
        for key in ("startup_s", "main_rss_mib", "max_worker_rss_mib", "max_worker_anon_mib", "max_worker_uss_mib"):
            values = [r[key] for r in runs] or [first[key]]
            row[key] = statistics.median(values)
            row[f"{key}_range"] = [min(values), max(values)]
        row["first_run_startup_s"] = first["startup_s"]
        row["dataset_written_s"] = round(written_s, 1)
        results.append(row)
        if args.json:
            print(json.dumps(row), flush=True)
    if not args.json:
        header = ("size", "episodes", "frames", "startup_s", "first_run_startup_s", "main_rss_mib",
                  "max_worker_rss_mib", "max_worker_anon_mib", "max_worker_uss_mib")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for r in results:
            print("| " + " | ".join(str(r[h]) for h in header) + " |")


if __name__ == "__main__":
    main()
