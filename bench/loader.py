"""Data-loading benchmark on BEHAVIOR-like HEVC video (issue 2, section 6). Prints a table (or ``--json``); not a test.

Three ways to feed training, measured on the same generated data (three cameras 720x720 / 480x480 / 480x480, HEVC),
chunk 50, batch 8, frames resized to 224x224. ``--layout`` picks the release whose shape the data has:

* ``2025`` (default): LeRobot v2.1, one mp4 per episode and camera, one keyframe per 250 frames (the 2025 release);
* ``2026``: LeRobot v3.0 as the 2026 release (what users train on now): files holding several episodes
  (``--episodes-per-file``, each camera grouped differently), HEVC with a keyframe every 8 frames at crf 30, the
  release's camera keys (``observation.rgb.*_camera_0``). A short GOP makes a random frame cheap to reach, so the
  locality-aware plan gains less over random access; (b) reads this dataset as it is (no conversion).

(a) this project's ``TrainingStream`` (locality-aware plan) through a ``DataLoader`` with ``--workers`` workers;
    (a') the same with ``uint8_images=True`` (frames stay uint8 until the consumer converts them, e.g. on the GPU);
    (a'') (a') with ``batch_ring=False``: each batch handed over in a new shared storage (``--only r``);
(b) lerobot's ``LeRobotDataset(video_backend="pyav")`` with a shuffling ``DataLoader`` (``--workers`` workers) on
    the same data converted to LeRobot v3.0 by lerobot's own converter (what a 2025-era user does);
(c) the decode limit: PyAV decoding every frame of the same videos once, sequentially, at 224x224, in one process
    with ``--workers`` FFmpeg threads (as many as (a) has decoding processes), converted by the reader's own
    ``frame_to_rgb`` with one reused swscale context per file (so (a)/(c) measures only what the stream adds to
    decoding and converting). One sample = one frame of each camera.

Each measurement runs in its own process; its peak RSS is the largest sum of resident memory over that process and
its children (DataLoader workers), sampled every 0.1 s. Throughput excludes start-up: samples/s is every sample
received divided by the time from the moment the last worker was ready (``worker_init_fn``) to the last arrival.
(b) is slow (every sample decodes ~125 frames per camera), so it runs ``--lerobot-batches`` batches.
On a shared machine other processes steal CPU, so (c), (a) and (a') alternate ``--repeat`` times; the table gives the
median and the range of each, together with samples per CPU-second (the process tree's user + system time: main
process and workers), which load disturbs less.

The dataset is generated once and cached under ``--root`` (default ``outputs/bench``); generating 2 x 1500 frames
of three HEVC cameras takes several minutes on two cores.

    python bench/loader.py                     # generate if needed, measure (a), (b), (c), print the table
    python bench/loader.py --seconds 30 --lerobot-batches 2 --repeat 1 --markdown
    python bench/loader.py --layout 2026       # the 2026 release's shape
    python bench/loader.py --smoke --json      # the script itself in seconds (tiny cameras, 60 frames)
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SIZES = {"head": (720, 720), "left_wrist": (480, 480), "right_wrist": (480, 480)}
"""Camera resolutions of the BEHAVIOR 2025 and 2026 releases (``../shared/reference/behavior_r1pro.md``)."""
SMOKE_SIZES = {"head": (64, 64), "left_wrist": (48, 64), "right_wrist": (48, 64)}
"""``--smoke``: tiny cameras (libx265 encodes nothing narrower than ~64 px; non-square like the tests' data)."""
GOP = {"2025": 250, "2026": 8}
"""Keyframe interval of each release's libx265 videos (same source; 2026: ``video.g`` 8 in its info.json)."""
CRF = {"2025": 18, "2026": 30}
"""Encoder quality: the 2026 release's crf 30; 2025: the generator's default (the release does not state one)."""
REPO_ID = "bench/behavior"
SMOKE = {"episodes": 4, "frames": 60, "batch_size": 2, "chunk_size": 10, "image_size": 32, "workers": 1,
         "seconds": 2.0, "lerobot_batches": 1, "repeat": 1}
"""``--smoke``: every row once on the smallest data (figures meaningless)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "bench", help="cache folder for the datasets")
    p.add_argument("--episodes", type=int, default=2, help="episodes to generate (>= 2)")
    p.add_argument("--frames", type=int, default=1500, help="frames per episode")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=50)
    p.add_argument("--image-size", type=int, default=224, help="frames are resized to this square size")
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers for (a) and (b)")
    p.add_argument("--streams", type=int, default=None, help="TrainingStream lanes for (a) (default: its own)")
    p.add_argument("--open-spans", type=int, default=None, help="spans mixed per batch for (a) (default: its own)")
    p.add_argument("--readahead", type=int, default=None, help="frames decoded per decoder in a row for (a) "
                                                                  "(default: its own)")
    p.add_argument("--seconds", type=float, default=60.0, help="time budget of (a) (it also stops after one epoch)")
    p.add_argument("--lerobot-batches", type=int, default=4, help="batches of (b) to time")
    p.add_argument("--only", default="aubc", help="which measurements to run, e.g. 'ac' (u: (a) with uint8 frames; "
                                                   "r: (a') handing each batch over in a new storage, no ring)")
    p.add_argument("--repeat", type=int, default=3, help="runs of (a), (a') and (c), alternating; medians reported")
    p.add_argument("--markdown", action="store_true", help="print a markdown table instead of a rich one")
    p.add_argument("--json", action="store_true", help="print one JSON object (the rows' figures) instead of a table")
    p.add_argument("--layout", choices=sorted(GOP), default="2025",
                   help="the release whose shape the generated data has (see above)")
    p.add_argument("--episodes-per-file", type=int, default=2, help="--layout 2026: episodes per parquet/head mp4")
    p.add_argument("--smoke", action="store_true",
                   help="try the script in seconds: cameras 64/48 px, " + ", ".join(
                       f"--{k.replace('_', '-')} {v}" for k, v in SMOKE.items()) + " (figures meaningless)")
    p.add_argument("--measure", choices=["a", "u", "r", "b", "c"], help=argparse.SUPPRESS)  # internal: one measurement
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)  # flags given explicitly still win
    args = p.parse_args(argv)
    args.camera_sizes = SMOKE_SIZES if args.smoke else SIZES
    args.gop = GOP[args.layout]
    return args


# -- data -------------------------------------------------------------------------------------------------------


def ensure_datasets(args: argparse.Namespace) -> tuple[Path, Path]:
    """The dataset this project reads and the v3.0 one lerobot reads, generated on first use: for ``--layout
    2025`` the v2.1 dataset and its lerobot-converted copy, for ``2026`` the same v3.0 dataset twice."""
    from behavior_smolvla.synthetic.datasets import write_behavior_2025, write_behavior_2026

    sizes = args.camera_sizes
    px = _sizes_label(sizes)
    if args.layout == "2026":
        tag = f"e{args.episodes}_f{args.frames}_gop{args.gop}_epf{args.episodes_per_file}_{px.replace('/', '-')}"
        v30 = args.root / f"behavior2026_{tag}"
        if not (v30 / ".complete").is_file():
            _say(args, f"generating {v30} ({args.episodes} episodes x {args.frames} frames, {args.episodes_per_file} "
                       f"episodes per file, HEVC {px}, GOP {args.gop}, crf {CRF['2026']}) ...")
            t0 = time.perf_counter()
            write_behavior_2026(v30, episodes=args.episodes, frames=args.frames, tasks=1, image_size=sizes,
                                codec="libx265", gop=args.gop, crf=CRF["2026"],
                                episodes_per_file=args.episodes_per_file, overwrite=True)
            (v30 / ".complete").touch()
            _say(args, f"  done in {time.perf_counter() - t0:.0f} s")
        return v30, v30
    tag = f"e{args.episodes}_f{args.frames}_gop{args.gop}" + ("" if sizes == SIZES else f"_{px.replace('/', '-')}")
    v21 = args.root / f"behavior2025_{tag}"
    v30 = args.root / f"behavior2025_{tag}_v30"
    if not (v21 / ".complete").is_file():
        _say(args, f"generating {v21} ({args.episodes} episodes x {args.frames} frames, HEVC {px}, GOP {args.gop}) ...")
        t0 = time.perf_counter()
        write_behavior_2025(v21, episodes=args.episodes, frames=args.frames, tasks=1, image_size=sizes,
                            codec="libx265", gop=args.gop, overwrite=True)
        (v21 / ".complete").touch()
        _say(args, f"  done in {time.perf_counter() - t0:.0f} s")
    if not (v30 / ".complete").is_file():
        convert_to_v30(v21, v30)
        (v30 / ".complete").touch()
    return v21, v30


def _sizes_label(sizes: dict[str, tuple[int, int]]) -> str:
    """``720/480/480``: the cameras' heights (head, wrists), or ``HxW`` each where one is not square."""
    return "/".join(str(h) if h == w else f"{h}x{w}" for h, w in sizes.values())


def _say(args: argparse.Namespace, text: str) -> None:
    """Progress: on stderr with ``--json`` (stdout then holds the one JSON object)."""
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


def convert_to_v30(v21: Path, v30: Path) -> None:
    """Convert with lerobot's ``convert_dataset_v21_to_v30``, as a 2025-era user does.

    The BEHAVIOR 2025 layout needs a staging copy first (videos hard-linked, frames untouched), because
    * the converter needs episodes numbered 0..N-1 (it checks each index against its position; BEHAVIOR's are
      ``task * 10000 + 10 * i``) and the v2.1 ``total_chunks`` field;
    * lerobot's reader needs a dataset-wide ``index``, ``frame_index`` and a declared ``task_index`` column (the
      release has a per-episode ``index``, no ``frame_index``, an undeclared ``task_index``), and fails on the
      variable-length ``observation.task_info`` (``shape [None]``: pyarrow's ``list_`` wants an int), which is
      dropped (it is privileged information a policy must not use anyway).
    The converter's globs ``data/*/*.parquet`` and ``videos/*/<key>/*.mp4`` accept the ``task-XXXX`` folders; it
    concatenates the videos by stream copy.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq
    from lerobot.scripts.convert_dataset_v21_to_v30 import convert_dataset

    print(f"converting to LeRobot v3.0 with lerobot's converter -> {v30} ...", flush=True, file=sys.stderr)
    work = v30.with_name(v30.name + "_work")
    for path in (work, work.with_name(work.name + "_old"), work.with_name(work.name + "_v30"), v30):
        shutil.rmtree(path, ignore_errors=True)
    info = json.loads((v21 / "meta" / "info.json").read_text())
    episodes = [json.loads(line) for line in (v21 / "meta" / "episodes.jsonl").read_text().splitlines() if line]
    stats = {row["episode_index"]: row for row in
             (json.loads(line) for line in (v21 / "meta" / "episodes_stats.jsonl").read_text().splitlines() if line)}
    video_keys = [k for k, f in info["features"].items() if f["dtype"] == "video"]
    new_episodes, new_stats, offset = [], [], 0
    for new_index, row in enumerate(sorted(episodes, key=lambda r: r["episode_index"])):
        old = row["episode_index"]
        chunk = old // info["chunks_size"]
        table = pq.read_table(v21 / info["data_path"].format(episode_chunk=chunk, episode_index=old))
        n = table.num_rows
        table = table.set_column(table.schema.get_field_index("episode_index"), "episode_index",
                                 pa.array([new_index] * n, pa.int64()))
        table = table.set_column(table.schema.get_field_index("index"), "index",
                                 pa.array(range(offset, offset + n), pa.int64()))
        table = table.drop_columns(["observation.task_info"]).append_column("frame_index",
                                                                            pa.array(range(n), pa.int64()))
        target = work / info["data_path"].format(episode_chunk=0, episode_index=new_index)
        target.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, target)
        for key in video_keys:
            source = v21 / info["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=old)
            link = work / info["video_path"].format(episode_chunk=0, video_key=key, episode_index=new_index)
            link.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, link)
        new_episodes.append({**row, "episode_index": new_index})
        new_stats.append({**stats[old], "episode_index": new_index})
        offset += n
    info.update(total_chunks=1, total_videos=len(episodes) * len(video_keys), splits={"train": f"0:{len(episodes)}"})
    info["features"].pop("observation.task_info", None)
    for name in ("frame_index", "task_index"):
        info["features"][name] = {"dtype": "int64", "shape": [1], "names": None}
    (work / "meta").mkdir(parents=True, exist_ok=True)
    (work / "meta" / "info.json").write_text(json.dumps(info, indent=4))
    shutil.copy(v21 / "meta" / "tasks.jsonl", work / "meta" / "tasks.jsonl")
    for name, rows in (("episodes.jsonl", new_episodes), ("episodes_stats.jsonl", new_stats)):
        (work / "meta" / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    convert_dataset(repo_id=REPO_ID, root=work, push_to_hub=False, force_conversion=True)
    work.rename(v30)
    shutil.rmtree(work.with_name(work.name + "_old"), ignore_errors=True)


# -- measurements (each in its own process) ---------------------------------------------------------------------


def measure_ours(args: argparse.Namespace, v21: Path, uint8_images: bool = False, batch_ring: bool = True) -> dict:
    from torch.utils.data import DataLoader

    from behavior_smolvla.data.dataset import BehaviorDataset
    from behavior_smolvla.data.sampler import TrainingStream

    ds = BehaviorDataset(v21, chunk_size=args.chunk_size, image_size=args.image_size)
    options = {"streams": args.streams} if args.streams else {}
    if args.readahead:
        options["readahead"] = args.readahead
    stream = TrainingStream(ds, seed=0, batch_size=args.batch_size, uint8_images=uint8_images, batch_ring=batch_ring,
                            open_spans=args.open_spans, **options)
    ready = _ReadyClock(args.workers)
    loader = DataLoader(stream, batch_size=None, num_workers=args.workers, prefetch_factor=4 if args.workers else None,
                        multiprocessing_context=ready.context, worker_init_fn=ready.worker_init_fn)
    return _time_loader(loader, ready, seconds=args.seconds, max_batches=None,
                        note=f"streams={stream.streams}, open_spans={stream.open_spans}, "
                             f"readahead={stream.readahead or 'auto'}, span={stream.span_frames} frames, "
                             f"1 epoch = {len(stream)} batches")


def measure_lerobot(args: argparse.Namespace, v30: Path) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from torch.utils.data import DataLoader
    from torchvision.transforms import v2

    resize = v2.Resize((args.image_size, args.image_size), antialias=True)
    probe = LeRobotDataset(REPO_ID, root=v30, video_backend="pyav")
    fps = probe.meta.fps
    ds = LeRobotDataset(REPO_ID, root=v30, video_backend="pyav", image_transforms=resize,
                        delta_timestamps={"action": [i / fps for i in range(args.chunk_size)]})
    ready = _ReadyClock(args.workers)
    loader = DataLoader(ds, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        generator=torch.Generator().manual_seed(0), multiprocessing_context=ready.context,
                        worker_init_fn=ready.worker_init_fn)
    return _time_loader(loader, ready, seconds=None, max_batches=args.lerobot_batches,
                        note=f"{args.lerobot_batches} batches, random access")


def measure_decode(args: argparse.Namespace, v21: Path) -> dict:
    import av
    from av.video.reformatter import VideoReformatter

    from behavior_smolvla.data.meta import DatasetMeta
    from behavior_smolvla.data.video import frame_to_rgb

    meta = DatasetMeta.load(v21)
    # Each file once: a v3.0 file (2026 layout) holds several episodes.
    paths = list(dict.fromkeys(info.videos[key][0] for info in meta.episodes.values() for key in meta.camera_keys))
    frames = 0
    t0 = time.perf_counter()
    cpu0 = _tree_cpu_seconds()
    for path in paths:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.thread_count = max(1, args.workers)  # as many decoding threads as (a) has worker processes
            reformatter = VideoReformatter()
            for frame in container.decode(stream):
                frame_to_rgb(frame, args.image_size, args.image_size, reformatter)
                frames += 1
    seconds = time.perf_counter() - t0
    samples = frames / len(meta.camera_keys)
    return {"samples": samples, "seconds": seconds, "cpu_seconds": _tree_cpu_seconds() - cpu0, "cpu_samples": samples,
            "startup_s": 0.0,
            "note": f"{len(paths)} files, {frames} frames, 1 process, {max(1, args.workers)} FFmpeg threads"}


def _tree_cpu_seconds() -> float:
    """CPU time (user + system, seconds) used so far by this process and its live children (DataLoader workers),
    read from ``/proc`` (~1 ms: call it rarely, it is charged to this process)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.Error:
            pass
    return total


def _finished_cpu_seconds() -> float:
    """CPU time (seconds) of this process plus every child it has waited for (the DataLoader's workers, once shut
    down): exact, and read without polling during the measurement."""
    import resource

    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class _ReadyClock:
    """Records when each DataLoader worker is ready (``worker_init_fn``), so throughput excludes process start-up
    without letting batches the workers prefetched during start-up count as free."""

    def __init__(self, workers: int):
        import multiprocessing

        self.workers = workers
        self.context = multiprocessing.get_context("spawn") if workers else None
        self.times = self.context.Array("d", workers) if workers else None
        self.worker_init_fn = functools.partial(_mark_ready, self.times) if workers else None
        self.created = time.time()

    def ready_at(self) -> float:
        """Wall-clock time (``time.time``) when the last worker became ready (creation time without workers)."""
        return max(self.times[:]) if self.workers else self.created


def _mark_ready(times, worker_id: int) -> None:
    times[worker_id] = time.time()


def _time_loader(loader, ready: _ReadyClock, seconds: float | None, max_batches: int | None, note: str) -> dict:
    """Iterate ``loader``; samples/s = every sample received / (last arrival - all workers ready). CPU per sample
    counts the batches after the first: the process tree's CPU at the first batch (read once from ``/proc``, so
    start-up is excluded) to the end, read after the workers were shut down (nothing polled in between)."""
    t_start = time.time()
    cpu_ready = None
    samples = batches = first = 0
    iterator = iter(loader)
    for batch in iterator:
        if cpu_ready is None:
            cpu_ready = _tree_cpu_seconds()
            first = len(batch["task"])
        samples += len(batch["task"])
        batches += 1
        if max_batches is not None and batches >= max_batches:
            break
        if seconds is not None and time.time() - ready.ready_at() >= seconds:
            break
    t_end = time.time()
    before_shutdown = _tree_cpu_seconds()  # in case a worker is killed rather than joined (then it is not counted)
    shutdown = getattr(iterator, "_shutdown_workers", None)
    if shutdown is not None:
        shutdown()  # joins the workers, so that their CPU time is in RUSAGE_CHILDREN
    cpu = max(_finished_cpu_seconds(), before_shutdown) - (cpu_ready or 0.0)
    t_ready = ready.ready_at()
    return {"samples": samples, "seconds": t_end - t_ready, "cpu_seconds": cpu, "cpu_samples": samples - first,
            "startup_s": t_ready - t_start, "note": note}


def run_measurement(mode: str, argv: list[str]) -> dict:
    """Run one measurement in a child process; return its result with ``peak_rss_mib`` (child + its children)."""
    import psutil

    cmd = [sys.executable, str(Path(__file__).resolve()), *argv, "--measure", mode]
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env, text=True)
    peak = 0
    done = threading.Event()

    def watch() -> None:
        nonlocal peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            try:
                tree = [root, *root.children(recursive=True)]
                total = 0
                for p in tree:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                peak = max(peak, total)
            except psutil.Error:
                pass
            done.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    out, _ = proc.communicate()
    done.set()
    watcher.join()
    if proc.returncode != 0:
        return {"error": f"exit code {proc.returncode} (see the messages above)"}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_rss_mib"] = peak / 2**20
    return result


# -- report -----------------------------------------------------------------------------------------------------


LABELS = {
    "a": "(a) behavior_smolvla TrainingStream + DataLoader",
    "u": "(a') the same, uint8 frames (the consumer converts, e.g. on the GPU)",
    "r": "(a'') (a') with a new shared storage per batch (no ring)",
    "b": "(b) lerobot LeRobotDataset (pyav) + shuffling DataLoader",
    "c": "(c) decode limit: PyAV, every frame once, sequential",
}


def _summary(runs: list[dict]) -> dict | None:
    """Median and range of samples/s and samples per CPU-second over the successful runs of one method."""
    ok = [r for r in runs if "error" not in r and r["seconds"] > 0]
    if not ok:
        return None
    rate = sorted(r["samples"] / r["seconds"] for r in ok)
    per_cpu = sorted(r["cpu_samples"] / r["cpu_seconds"] for r in ok if r.get("cpu_seconds", 0) > 0
                     and r.get("cpu_samples", 0) > 0)
    return {"rate": statistics.median(rate), "rate_range": (rate[0], rate[-1]),
            "per_cpu": statistics.median(per_cpu) if per_cpu else None,
            "per_cpu_range": (per_cpu[0], per_cpu[-1]) if per_cpu else None,
            "rss": statistics.median(r["peak_rss_mib"] for r in ok), "startup": statistics.median(r["startup_s"] for r in ok),
            "note": ok[-1]["note"], "runs": len(ok)}


def json_report(results: dict[str, list[dict]], args: argparse.Namespace) -> dict:
    """The table's figures as one object: the setup, then per row (``a``, ``u``, ``r``, ``b``, ``c``) the median
    and range of samples/s and samples per CPU-second, peak RSS, start-up, the ratios to (b) and (c), or ``error``."""
    summary = {m: _summary(runs) for m, runs in results.items()}
    b, c = summary.get("b"), summary.get("c")
    rows = {}
    for mode, r in summary.items():
        if r is None:
            rows[mode] = {"method": LABELS[mode], "error": results[mode][-1].get("error", "no successful run")}
            continue
        rows[mode] = {
            "method": LABELS[mode], "samples_per_s": r["rate"], "samples_per_s_range": list(r["rate_range"]),
            "samples_per_cpu_s": r["per_cpu"],
            "samples_per_cpu_s_range": r["per_cpu_range"] and list(r["per_cpu_range"]),
            "peak_rss_mib": r["rss"], "startup_s": r["startup"], "runs": r["runs"], "note": r["note"],
            "x_lerobot": r["rate"] / b["rate"] if b else None, "x_decode_limit": r["rate"] / c["rate"] if c else None,
            "cpu_per_sample_x_limit": (c["per_cpu"] / r["per_cpu"] if c and c["per_cpu"] and r["per_cpu"] else None),
        }
    return {"layout": args.layout, "episodes": args.episodes, "frames": args.frames, "gop": args.gop,
            "cameras": {role: list(size) for role, size in args.camera_sizes.items()},
            "episodes_per_file": args.episodes_per_file if args.layout == "2026" else 1,
            "chunk_size": args.chunk_size, "batch_size": args.batch_size, "workers": args.workers,
            "image_size": args.image_size, "repeat": args.repeat, "cpus": os.cpu_count(), "rows": rows}


def print_report(results: dict[str, list[dict]], args: argparse.Namespace, markdown: bool) -> None:
    summary = {m: _summary(runs) for m, runs in results.items()}
    header = ["method", "samples/s median [range]", "x (b)", "x (c)", "samples/CPU-s median [range]",
              "CPU per sample x (c)", "peak RSS MiB", "start-up s", "notes"]
    rows = []
    for mode in [m for m in "aurbc" if m in results]:
        r = summary[mode]
        if r is None:
            rows.append([LABELS[mode], "failed", "", "", "", "", "", "", results[mode][-1].get("error", "")])
            continue
        c = summary.get("c")
        b = summary.get("b")
        rows.append([
            LABELS[mode], f"{r['rate']:.2f} [{r['rate_range'][0]:.2f}-{r['rate_range'][1]:.2f}]",
            f"{r['rate'] / b['rate']:.0f}" if b else "",
            f"{r['rate'] / c['rate']:.2f}" if c else "",
            f"{r['per_cpu']:.1f} [{r['per_cpu_range'][0]:.1f}-{r['per_cpu_range'][1]:.1f}]" if r["per_cpu"] else "",
            f"{c['per_cpu'] / r['per_cpu']:.2f}" if c and c["per_cpu"] and r["per_cpu"] else "",
            f"{r['rss']:.0f}", f"{r['startup']:.1f}", f"{r['runs']} runs; {r['note']}"])
    title = (f"{args.layout} layout: {args.episodes} episodes x {args.frames} frames, HEVC "
             f"{_sizes_label(args.camera_sizes)}, GOP {args.gop}, chunk {args.chunk_size}, "
             f"batch {args.batch_size}, {args.workers} workers, {args.image_size}x{args.image_size}, "
             f"{os.cpu_count()} CPUs; medians of {args.repeat} alternated runs of each row but (b)")
    # Issue 13's targets: CPU per delivered sample <= 1.25x the limit's, throughput >= 0.9x the limit (quiet
    # machine), and >= 150x lerobot's LeRobotDataset.
    targets = []
    c, b = summary.get("c"), summary.get("b")
    for mode in ("a", "u"):
        r = summary.get(mode)
        if r is None:
            continue
        name = "(a)" if mode == "a" else "(a')"
        if b:
            ok = r["rate"] >= 150 * b["rate"]
            targets.append(f"target {name} >= 150x (b): {r['rate'] / b['rate']:.0f}x -> {'met' if ok else 'NOT met'}")
        if c:
            ok = r["rate"] >= 0.9 * c["rate"]
            targets.append(f"target {name} >= 0.9x (c) (quiet machine): {r['rate'] / c['rate']:.2f}x -> "
                           f"{'met' if ok else 'NOT met'}")
            if r["per_cpu"] and c["per_cpu"]:
                ratio = c["per_cpu"] / r["per_cpu"]
                targets.append(f"target {name} CPU per sample <= 1.25x (c)'s: {ratio:.2f}x -> "
                               f"{'met' if ratio <= 1.25 else 'NOT met'}")
    if markdown:
        print(f"\n{title}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
        for row in rows:
            print("| " + " | ".join(row) + " |")
        print()
        for line in targets:
            print(f"- {line}")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for i, name in enumerate(header):
        table.add_column(name, justify="right" if 0 < i < len(header) - 1 else "left")
    for row in rows:
        table.add_row(*row)
    console = Console()
    console.print(table)
    for line in targets:
        console.print(line)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.episodes < 2 or args.frames < 1:
        raise SystemExit("--episodes must be >= 2 and --frames >= 1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.measure:
        v21, v30 = ensure_datasets(args)
        fn = {"a": lambda: measure_ours(args, v21), "u": lambda: measure_ours(args, v21, uint8_images=True),
              "r": lambda: measure_ours(args, v21, uint8_images=True, batch_ring=False),
              "b": lambda: measure_lerobot(args, v30),
              "c": lambda: measure_decode(args, v21)}[args.measure]
        print(json.dumps(fn()), flush=True)
        return
    ensure_datasets(args)
    results: dict[str, list[dict]] = {}
    # (c), (a) and (a') alternate, so that load from elsewhere falls on all of them alike; medians are reported.
    schedule = [m for _ in range(args.repeat) for m in "caur" if m in args.only] + (["b"] if "b" in args.only else [])
    for mode in schedule:
        _say(args, f"measuring {LABELS[mode]} ...")
        r = run_measurement(mode, argv)
        results.setdefault(mode, []).append(r)
        if "error" not in r:
            per_cpu = (f"{r['cpu_samples'] / r['cpu_seconds']:.1f} samples per CPU-second, "
                       if r["cpu_seconds"] > 0 and r["cpu_samples"] > 0 else "")
            _say(args, f"  {r['samples'] / r['seconds']:.2f} samples/s, {per_cpu}peak RSS {r['peak_rss_mib']:.0f} MiB")
    if args.json:
        print(json.dumps(json_report(results, args)))
    else:
        print_report(results, args, args.markdown)
    failed = [m for m, runs in results.items() if all("error" in r for r in runs)]
    if failed:
        sys.exit(f"measurement(s) failed: {', '.join(LABELS[m] for m in failed)}")


if __name__ == "__main__":
    main()
