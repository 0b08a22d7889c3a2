"""What checking the numeric cache costs (issue "Trust nothing on disk"), at one task of the BEHAVIOR 2025 release
and extrapolated to the whole release. Prints a table (or ``--json``); not a test.

An entry of ``--rows`` rows with the release's columns (float32 state [256], action [23], timestamp; int64 frame and
task index: 1136 bytes a row) is written by the cache's own builder (``NumericCache.open_or_build``, with a row
reader that generates seeded values instead of reading parquet files, which would measure parquet instead) under
``--root``, then measured:

* ``build_checksum_s``: the content checksums the build takes of the files it has written (part of every build);
* ``open_s``: opening the entry as every reader does (manifest, each file's size, header, shape and dtype, the bounds
  and task indices against the metadata, the task-index column's range, the stride-1 frame table's record and row
  range; no checksum, the files being unchanged);
* ``full_hot_s`` / ``full_cold_s``: the full check (``--verify-data``: the XXH3-128 checksum of every file), from the
  page cache, and after the entry's pages were dropped from it (``posix_fadvise(DONTNEED)``: read from disk);
* ``xxh3_gb_s`` / ``blake2b_gb_s``: one core hashing a hot 256 MiB block with each, the reason for the choice.

The release's figures scale the measured ones by its rows (119,094,660 frames, ``../shared/reference/
behavior_r1pro.md``): ``open_s`` by the task-index scan it holds (linear in rows), the full check by bytes.

    python bench/cache_verify.py                 # one task: 2,381,893 rows (119,094,660 / 50), 2.7 GB on disk
    python bench/cache_verify.py --rows 500000 --json
    python bench/cache_verify.py --smoke --json  # the script itself in seconds (20,000 rows)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

RELEASE_FRAMES = 119_094_660
"""Frames of the BEHAVIOR 2025 release (50 tasks, 10,000 episodes; ``behavior_r1pro.md``)."""
RELEASE_TASKS = 50
TASK_ROWS = RELEASE_FRAMES // RELEASE_TASKS
"""One average 2025 task (2,381,893 frames)."""
EPISODE_FRAMES = 11_900
"""The release's average episode length (~6.6 min at 30 fps)."""
STATE_DIM, ACTION_DIM, FPS = 256, 23, 30
ROW_BYTES = 4 * (STATE_DIM + ACTION_DIM + 1) + 8 * 2
SMOKE_ROWS = 20_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "cache_verify",
                   help="folder for the entry (removed afterwards unless --keep)")
    p.add_argument("--rows", type=int, default=None, help=f"rows of the entry (default {TASK_ROWS:,}: one task)")
    p.add_argument("--keep", action="store_true", help="keep the entry under --root")
    p.add_argument("--smoke", action="store_true", help=f"{SMOKE_ROWS:,} rows: the script itself in seconds")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = p.parse_args(argv)
    if args.rows is None:
        args.rows = SMOKE_ROWS if args.smoke else TASK_ROWS
    if args.rows < 1:
        p.error("--rows must be at least 1")
    return args


def synthetic_meta(root: Path, rows: int) -> SimpleNamespace:
    """What the cache reads of a dataset's metadata, for ``rows`` frames in episodes of ~11,900 (their data files:
    empty placeholders, never read; the cache key stats them)."""
    from behavior_smolvla.data.meta import EpisodeInfo

    (root / "data").mkdir(parents=True, exist_ok=True)
    episodes = {}
    start = 0
    for ep in range(-(-rows // EPISODE_FRAMES)):
        length = min(EPISODE_FRAMES, rows - start)
        path = root / "data" / f"episode_{ep:06d}.parquet"
        path.touch()
        episodes[ep] = EpisodeInfo(ep, length, ["task"], path, 0, length)
        start += length
    return SimpleNamespace(root=root, state_key="observation.state", action_key="action", state_dim=STATE_DIM,
                           action_dim=ACTION_DIM, fps=FPS, tasks={0: "task"}, episodes=episodes)


def generated_rows(meta: SimpleNamespace):
    """A row reader (``cache.RowReader``) that generates each episode's columns from a seed."""
    import numpy as np

    def read(path: Path, eps: list[int]) -> dict:
        out = {}
        for ep in eps:
            n = meta.episodes[ep].length
            rng = np.random.default_rng(ep)
            columns = (rng.standard_normal((n, STATE_DIM), dtype=np.float32),
                       rng.standard_normal((n, ACTION_DIM), dtype=np.float32),
                       (np.arange(n) / FPS).astype(np.float32), np.arange(n, dtype=np.int64),
                       np.zeros(n, dtype=np.int64))
            out[ep] = (columns, None)
        return out
    return read


def drop_page_cache(folder: Path) -> None:
    """Write the folder's files to disk and drop their pages from the page cache (no root needed)."""
    for path in folder.iterdir():
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def hash_rate(name: str) -> float:
    """GB/s of one core hashing a hot 256 MiB block with ``name`` (``xxh3`` or ``blake2b``), in 4 MiB calls."""
    import numpy as np
    import xxhash

    block = memoryview(np.random.default_rng(0).integers(0, 255, 256 << 20, dtype=np.uint8))
    digest = xxhash.xxh3_128() if name == "xxh3" else hashlib.blake2b(digest_size=16)
    start = time.perf_counter()
    for i in range(0, len(block), 1 << 22):
        digest.update(block[i:i + (1 << 22)])
    digest.hexdigest()
    return len(block) / (time.perf_counter() - start) / 1e9


def measure(args: argparse.Namespace) -> dict:
    from behavior_smolvla.data.cache import FULL, NUMERIC_COLUMNS, NumericCache, check_entry, file_checksum
    from behavior_smolvla.data.dataset import FRAME_TABLE_DTYPE

    root = args.root.resolve() / f"rows-{args.rows}"
    shutil.rmtree(root, ignore_errors=True)
    meta = synthetic_meta(root / "dataset", args.rows)
    episodes = sorted(meta.episodes)
    t = time.perf_counter()
    cache = NumericCache.open_or_build(meta, episodes, generated_rows(meta), cache_dir=root / "cache")
    cache.frame_table(1, episodes, FRAME_TABLE_DTYPE)  # the reader's frame table at stride 1, built once
    build_s = time.perf_counter() - t
    entry = cache.path
    del cache
    files = [entry / f"{name}.npy" for name in NUMERIC_COLUMNS]
    entry_bytes = sum(p.stat().st_size for p in files)

    t = time.perf_counter()
    for path in files:
        file_checksum(path)
    checksum_s = time.perf_counter() - t
    t = time.perf_counter()
    NumericCache.open_or_build(meta, episodes, generated_rows(meta), cache_dir=root / "cache").frame_table(
        1, episodes, FRAME_TABLE_DTYPE)
    open_s = time.perf_counter() - t
    t = time.perf_counter()
    assert check_entry(entry, meta, episodes, FULL) is None
    full_hot_s = time.perf_counter() - t
    drop_page_cache(entry)
    t = time.perf_counter()
    assert check_entry(entry, meta, episodes, FULL) is None
    full_cold_s = time.perf_counter() - t
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)

    scale = RELEASE_FRAMES / args.rows
    task = TASK_ROWS / args.rows
    gb = entry_bytes / 1e9
    return {
        "rows": args.rows, "episodes": len(episodes), "entry_gb": round(gb, 3), "row_bytes": ROW_BYTES,
        "build_s": round(build_s, 2), "build_checksum_s": round(checksum_s, 3), "open_s": round(open_s, 4),
        "full_hot_s": round(full_hot_s, 3), "full_cold_s": round(full_cold_s, 3),
        "hot_gb_s": round(gb / full_hot_s, 2), "cold_gb_s": round(gb / full_cold_s, 2),
        "xxh3_gb_s": round(hash_rate("xxh3"), 2), "blake2b_gb_s": round(hash_rate("blake2b"), 2),
        "task": {"rows": TASK_ROWS, "gb": round(TASK_ROWS * ROW_BYTES / 1e9, 2), "open_s": round(open_s * task, 3),
                 "full_hot_s": round(full_hot_s * task, 2), "full_cold_s": round(full_cold_s * task, 2)},
        "release": {"rows": RELEASE_FRAMES, "gb": round(RELEASE_FRAMES * ROW_BYTES / 1e9, 1),
                    "open_s": round(open_s * scale, 2), "full_hot_s": round(full_hot_s * scale, 1),
                    "full_cold_s": round(full_cold_s * scale, 1)},
        "cpus": len(os.sched_getaffinity(0)),
    }


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = measure(args)
    if args.json:
        print(json.dumps(out))
        return
    rows = [("measured", f"{out['rows']:,}", out["entry_gb"], out["open_s"], out["full_hot_s"], out["full_cold_s"]),
            ("one task", f"{out['task']['rows']:,}", out["task"]["gb"], out["task"]["open_s"],
             out["task"]["full_hot_s"], out["task"]["full_cold_s"]),
            ("2025 release", f"{out['release']['rows']:,}", out["release"]["gb"], out["release"]["open_s"],
             out["release"]["full_hot_s"], out["release"]["full_cold_s"])]
    print("| entry | rows | GB | open (every run) s | full check, page cache s | full check, disk s |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(v) for v in row) + " |")
    print(f"\nbuild {out['build_s']} s, of which checksums {out['build_checksum_s']} s; one core hashes "
          f"{out['xxh3_gb_s']} GB/s with XXH3-128, {out['blake2b_gb_s']} GB/s with BLAKE2b; {out['cpus']} CPUs")


if __name__ == "__main__":
    main()
