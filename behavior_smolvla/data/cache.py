"""Out-of-core numeric data: the state, action, timestamps, frame and task indices of the selected episodes, stored
once as ``.npy`` files and memory-mapped by every process that reads them.

Why: reading every selected row into numpy in the main process and pickling that into every DataLoader worker made
each process's memory grow with the number of frames (one BEHAVIOR task with a 217-dim mapped state is ~2 GB per
copy; the 2025 release's ~100 GB of state could not be loaded at all). Memory-mapped files are shared through the
page cache: a process holds only the pages it touched, the kernel can drop them at will, and a pickled reader
carries file names instead of arrays.

Layout under the cache folder (``--cache-dir``; default :func:`default_cache_dir`), one entry per
(dataset, selected episodes, state and action keys, their files' sizes and modification times, format version)::

    <cache>/<dataset name>-<key>/manifest.json       rows, dims, episode bounds, task indices used
                                 state.npy           float32 [N, D_raw]  (the dataset's state, unmapped)
                                 action.npy          float32 [N, A]
                                 timestamp.npy       float32 [N]         seconds in the episode
                                 frame_index.npy     int64   [N]
                                 task_index.npy      int64   [N]
                                 frames-s<k>.npy     the frame table of frame stride k
                                 stats-<key>.npz     normalisation statistics (keyed by the metadata they
                                                     come from), so later runs skip parsing them

The raw state is stored, and a reader applies its state map to each row it reads (a gather of ~200 values), so one
entry serves every state map without a second copy on disk. A changed data parquet (size or mtime), another selection or other keys give another key, hence a fresh entry; an
unchanged dataset reuses its entry without opening a parquet file. Entries are written into a temporary folder and
renamed into place (atomic on one filesystem), under an exclusive ``flock`` on ``<cache>/.<entry>.lock``: concurrent
runs and the processes of one node under DDP build an entry once, the others wait for the lock and then open it.
Old entries are never deleted automatically; remove folders of the cache to reclaim disk.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from behavior_smolvla.errors import ConfigError, DatasetError

CACHE_FORMAT = 1
"""Version of the cache layout; bumping it invalidates every entry (it is part of the key)."""
CACHE_ENV = "SMOLVLA_CACHE_DIR"
"""Environment variable overriding the default cache folder (the ``--cache-dir`` flag overrides both)."""
NUMERIC_COLUMNS = ("state", "action", "timestamp", "frame_index", "task_index")
PROGRESS_AFTER_S = 2.0
"""Show a progress bar only for builds that take longer than this (seconds)."""
STATS_BLOCK_VALUES = 1 << 25
"""Values (float64, i.e. 256 MiB) gathered at once by :func:`columnwise_data_stats`."""


def default_cache_dir() -> Path:
    """``$SMOLVLA_CACHE_DIR``, else ``behavior_smolvla/`` beside the Hugging Face cache (``$HF_HOME``'s parent,
    by default ``~/.cache/behavior_smolvla``)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    hf_home = Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()
    return hf_home.parent / "behavior_smolvla"


def writable_cache_dir(cache_dir: str | os.PathLike | None) -> Path:
    """The cache folder, created if needed and checked writable.

    Raises:
        ConfigError: it cannot be created or written (one line naming it and ``--cache-dir``).
    """
    path = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise ConfigError(f"--cache-dir {path}: cannot write there ({exc.strerror or exc}); pass a writable folder "
                          f"with --cache-dir or set {CACHE_ENV}") from None
    return path


# -- keys -------------------------------------------------------------------------------------------------------


def numeric_key(meta: Any, episodes: Sequence[int]) -> str:
    """Hex key of the numeric data of ``episodes`` of ``meta``: changes whenever a data file they live in changes
    (size or modification time), or the selection, the state/action keys or their dims, the task table or
    :data:`CACHE_FORMAT` do.

    Raises:
        DatasetError: a data file of a selected episode does not exist.
    """
    files: dict[Path, list[int]] = {}
    for ep in episodes:
        files.setdefault(meta.episodes[ep].data_path, []).append(ep)
    digest = hashlib.sha256()
    header = [CACHE_FORMAT, str(Path(meta.root).resolve()), meta.state_key, meta.action_key, meta.state_dim,
              meta.action_dim, meta.fps, sorted(meta.tasks.items())]
    digest.update(json.dumps(header, default=str).encode())
    root = str(meta.root).rstrip("/") + "/"
    for (path, eps), stat in zip(files.items(), stat_files(list(files)), strict=True):
        if stat is None:
            raise DatasetError(f"data file {path} (episode {eps[0]}) does not exist; re-download the data/ folder "
                               "or select other episodes")
        rel = str(path).removeprefix(root)
        spans = [(ep, meta.episodes[ep].row_start, meta.episodes[ep].row_stop) for ep in eps]
        digest.update(json.dumps([rel, stat.st_size, stat.st_mtime_ns, spans]).encode())
    return digest.hexdigest()[:24]


def stat_files(paths: Sequence[Path | str], threads: int = 16) -> list[os.stat_result | None]:
    """``os.stat`` of many files in parallel threads (the system calls release the GIL, and on network filesystems
    each one waits on a round trip); None for a file that does not exist. The 2025 release has 40,000 data and
    video files."""
    def one(path: Path | str) -> os.stat_result | None:
        try:
            return os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            return None

    if len(paths) < 64:
        return [one(p) for p in paths]
    # a few large chunks: one future per file costs more than the stat itself
    size = -(-len(paths) // (4 * threads))
    chunks = [paths[i:i + size] for i in range(0, len(paths), size)]
    with ThreadPoolExecutor(threads) as pool:
        return [st for part in pool.map(lambda chunk: [one(p) for p in chunk], chunks) for st in part]


def stats_key(meta: Any, episodes: Sequence[int], extra: Sequence[Any] = ()) -> str:
    """Hex key of the normalisation statistics of ``episodes``: their selection, the state/action keys and dims, and
    the size and modification time of every metadata file statistics are read from (``meta/stats.json``,
    ``meta/episodes_stats.jsonl``, ``meta/episodes/*/*.parquet``)."""
    root = Path(meta.root)
    sources = [root / "meta" / "stats.json", root / "meta" / "episodes_stats.jsonl"]
    if meta.version == "v3.0":
        sources += sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    marks = [(str(p.relative_to(root)), None if st is None else (st.st_size, st.st_mtime_ns))
             for p, st in zip(sources, stat_files(sources), strict=True)]
    blob = json.dumps([CACHE_FORMAT, meta.state_key, meta.action_key, meta.state_dim, meta.action_dim,
                       [int(e) for e in episodes], marks, list(extra)], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# -- locking and atomic writes ----------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(lock_path: Path, what: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; say once on stderr when waiting for another process."""
    with open(lock_path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(f"waiting for another process building {what} ...", file=sys.stderr, flush=True)
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def save_npy_atomic(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (``.npy``) through a temporary file in the same folder and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.save(fh, array)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_npy(path: Path) -> np.ndarray:
    """A read-only memory map of a ``.npy`` file (a 0-row array is loaded: numpy cannot map empty files)."""
    try:
        return np.load(path, mmap_mode="r")
    except ValueError:
        return np.load(path)


class _Progress:
    """A rich progress bar that appears only once a build has run :data:`PROGRESS_AFTER_S` seconds."""

    def __init__(self, description: str, total: int):
        self.description, self.total, self.done = description, total, 0
        self.start = time.monotonic()
        self.bar: Any = None
        self.task: Any = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.bar is None and time.monotonic() - self.start > PROGRESS_AFTER_S:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                TimeRemainingColumn(), console=Console(stderr=True), transient=True)
            self.bar.start()
            self.task = self.bar.add_task(self.description, total=self.total)
        if self.bar is not None:
            self.bar.update(self.task, completed=self.done)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# -- the numeric cache ------------------------------------------------------------------------------------------

RowReader = Callable[[Path, list[int]], dict[int, tuple[np.ndarray, ...]]]
"""``(data file, its selected episodes) -> {episode: (state, action, timestamp, frame_index, task_index)}``, each
array covering that episode's rows (validated against the metadata by the caller's reader)."""


class NumericCache:
    """One cache entry: memory-mapped numeric columns of the selected episodes, in episode order.

    Attributes:
        path: the entry's folder.
        rows: N, total rows.
        bounds: episode -> ``(start, stop)`` rows of the arrays (half-open).
        task_indices: sorted distinct task indices of the rows.
        arrays: column name (:data:`NUMERIC_COLUMNS`) -> read-only memory map.
    """

    def __init__(self, path: Path):
        self.path = path
        manifest = json.loads((path / "manifest.json").read_text())
        self.rows = int(manifest["rows"])
        self.bounds = {int(ep): (int(a), int(b)) for ep, a, b in manifest["bounds"]}
        self.task_indices = [int(t) for t in manifest["task_indices"]]
        self.arrays = {name: open_npy(path / f"{name}.npy") for name in NUMERIC_COLUMNS}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}  # mapped again by the receiving process

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(Path(state["path"]))

    @classmethod
    def open_or_build(cls, meta: Any, episodes: Sequence[int], read_rows: RowReader,
                      cache_dir: str | os.PathLike | None = None, threads: int | None = None) -> NumericCache:
        """The entry of ``episodes`` of ``meta``: opened when it exists, else built (once, under a lock; reading
        the data files in ``threads`` threads, at most a few files in memory at once; one line on stderr says so)
        and opened.

        Raises:
            ConfigError: an unwritable cache folder.
            DatasetError: missing or malformed data files (from ``read_rows``).
        """
        root = writable_cache_dir(cache_dir)
        name = f"{Path(meta.root).name or 'dataset'}-{numeric_key(meta, episodes)}"
        entry = root / name
        if (entry / "manifest.json").is_file():
            return cls(entry)
        with _locked(root / f".{name}.lock", f"the numeric cache {entry}"):
            if not (entry / "manifest.json").is_file():
                t0 = time.perf_counter()
                _build(entry, meta, list(episodes), read_rows, threads)
                built = cls(entry)
                # one line per build, from the process that built it: which node or run paid for it
                print(f"numeric cache: built {entry} ({built.rows} rows of {len(episodes)} episodes) in "
                      f"{time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
                return built
        return cls(entry)

    def load_stats(self, key: str) -> tuple[dict[str, dict[str, np.ndarray]], str] | None:
        """Normalisation statistics saved by :meth:`save_stats` under ``key``, or None."""
        path = self.path / f"stats-{key}.npz"
        if not path.is_file():
            return None
        with np.load(path) as data:
            source = str(data["__source__"])
            stats: dict[str, dict[str, np.ndarray]] = {}
            for name in data.files:
                if name != "__source__":
                    feature, stat = name.split("/")
                    stats.setdefault(feature, {})[stat] = data[name]
        return stats, source

    def save_stats(self, key: str, stats: dict[str, dict[str, np.ndarray]], source: str) -> None:
        """Keep the statistics of this entry's episodes (``key``: :func:`stats_key`), written atomically: reading
        them back skips parsing ``episodes_stats.jsonl`` (~230 MB for the 2025 release) on later runs."""
        path = self.path / f"stats-{key}.npz"
        arrays = {f"{feature}/{stat}": value for feature, values in stats.items() for stat, value in values.items()}
        fd, tmp = tempfile.mkstemp(dir=self.path, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, __source__=np.asarray(source), **arrays)
            os.replace(tmp, path)
        except OSError:
            with contextlib.suppress(OSError):
                os.unlink(tmp)  # a read-only shared cache: the statistics are recomputed next time

    def frame_table(self, stride: int, episodes: Sequence[int], dtype: np.dtype) -> np.ndarray:
        """Structured ``[len]`` memory map (``episode_index, frame_index, row``) of every ``stride``-th row of
        each episode, in episode order (built once per stride)."""
        path = self.path / f"frames-s{int(stride)}.npy"
        if not path.is_file():
            parts = []
            frame_index = self.arrays["frame_index"]
            for ep in episodes:
                begin, end = self.bounds[ep]
                rows = np.arange(begin, end, stride, dtype=np.int64)
                part = np.empty(len(rows), dtype=dtype)
                part["episode_index"] = ep
                part["frame_index"] = frame_index[begin:end:stride]
                part["row"] = rows
                parts.append(part)
            save_npy_atomic(path, np.concatenate(parts) if parts else np.empty(0, dtype=dtype))
        return open_npy(path)


def _build(entry: Path, meta: Any, episodes: list[int], read_rows: RowReader, threads: int | None) -> None:
    bounds: dict[int, tuple[int, int]] = {}
    cursor = 0
    for ep in episodes:
        bounds[ep] = (cursor, cursor + meta.episodes[ep].length)
        cursor += meta.episodes[ep].length
    rows = cursor
    by_file: dict[Path, list[int]] = {}
    for ep in episodes:
        by_file.setdefault(meta.episodes[ep].data_path, []).append(ep)
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}.tmp-"))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; a shared cache must be readable by other users
    try:
        specs = {"state": (np.float32, (rows, meta.state_dim)), "action": (np.float32, (rows, meta.action_dim)),
                 "timestamp": (np.float32, (rows,)), "frame_index": (np.int64, (rows,)),
                 "task_index": (np.int64, (rows,))}
        arrays = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
                  if rows else np.empty(shape, dtype) for name, (dtype, shape) in specs.items()}
        tasks: set[int] = set()
        progress = _Progress(f"caching the state and action of {len(episodes)} episodes", len(by_file))
        workers = threads or min(8, max(2, os.cpu_count() or 1))
        items = list(by_file.items())
        try:
            with ThreadPoolExecutor(workers) as pool:
                # a bounded window of files in flight keeps memory at a few files' rows
                window = 2 * workers
                pending = [pool.submit(read_rows, path, eps) for path, eps in items[:window]]
                next_item = window
                while pending:
                    loaded = pending.pop(0).result()
                    if next_item < len(items):
                        pending.append(pool.submit(read_rows, *items[next_item]))
                        next_item += 1
                    for ep, columns in loaded.items():
                        begin, end = bounds[ep]
                        for name, values in zip(NUMERIC_COLUMNS, columns, strict=True):
                            arrays[name][begin:end] = values
                        tasks.update(np.unique(columns[4]).tolist())
                    progress.advance()
        finally:
            progress.close()
        for name, array in arrays.items():
            if rows:
                array.flush()
            else:
                np.save(tmp / f"{name}.npy", array)
        del arrays
        manifest = {"format": CACHE_FORMAT, "dataset": str(meta.root), "rows": rows,
                    "state_key": meta.state_key, "action_key": meta.action_key,
                    "bounds": [[ep, *bounds[ep]] for ep in episodes], "task_indices": sorted(tasks),
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / "manifest.json").write_text(json.dumps(manifest))
        try:
            os.rename(tmp, entry)
        except OSError:
            # another writer (without the lock, e.g. on a filesystem without flock) finished first: keep its entry
            if not (entry / "manifest.json").is_file():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# -- statistics over memory maps --------------------------------------------------------------------------------


def columnwise_data_stats(values: np.ndarray, stats_fn: Callable[[np.ndarray], dict[str, np.ndarray]],
                          block_values: int = STATS_BLOCK_VALUES) -> dict[str, np.ndarray]:
    """``stats_fn`` (a per-column statistic such as :func:`behavior_smolvla.data.stats.data_stats`) of a ``[N, D]``
    array, computed over blocks of columns so that at most ``block_values`` values are gathered at once.

    Every statistic of ``data_stats`` is computed column by column along axis 0, so the result equals
    ``stats_fn(values)`` exactly; memory is bounded by a block instead of the whole (memory-mapped) array.
    """
    n, d = values.shape
    width = max(1, min(d, block_values // max(1, n)))
    parts = [stats_fn(np.asarray(values[:, lo:lo + width])) for lo in range(0, d, width)]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
