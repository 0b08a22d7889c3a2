"""Out-of-core numeric data: the state, action, timestamps, frame and task indices of the selected episodes, stored
once as ``.npy`` files and memory-mapped by every process that reads them.

Why: reading every selected row into numpy in the main process and pickling that into every DataLoader worker made
each process's memory grow with the number of frames (one BEHAVIOR task with a 217-dim mapped state is ~2 GB per
copy; the 2025 release's ~100 GB of state could not be loaded at all). Memory-mapped files are shared through the
page cache: a process holds only the pages it touched, the kernel can drop them at will, and a pickled reader
carries file names instead of arrays.

Layout under the cache folder (``--cache-dir``; default :func:`default_cache_dir`), one entry per
(dataset, selected episodes, state and action keys, their files' sizes and modification times, format version)::

    <cache>/<dataset name>-<key>/manifest.json       rows, episode bounds, task indices used, dropped frames, and
                                                     per file: shape, dtype, size, mtime, content checksum
                                 state.npy           float32 [N, D_raw]  (the dataset's state, unmapped)
                                 action.npy          float32 [N, A]
                                 timestamp.npy       float32 [N]         seconds in the episode
                                 frame_index.npy     int64   [N]
                                 task_index.npy      int64   [N]
                                 frames-s<k>.npy     the frame table of frame stride k (its record: .json)
                                 stats-<key>.npz     normalisation statistics (keyed by the metadata they
                                                     come from), so later runs skip parsing them

The raw state is stored, and a reader applies its state map to each row it reads (a gather of ~200 values), so one
entry serves every state map without a second copy on disk. A changed data parquet (size or mtime), another selection or other keys give another key, hence a fresh entry; an
unchanged dataset reuses its entry without opening a parquet file. Entries are written into a temporary folder and
renamed into place (atomic on one filesystem), under an exclusive ``flock`` on ``<cache>/.<entry>.lock``: concurrent
runs and the processes of one node under DDP build an entry once, the others wait for the lock and then open it.
Old entries are never deleted automatically; remove folders of the cache to reclaim disk.

Nothing on disk is trusted (a cache is rebuildable by definition, so it must never take a run down or feed it garbage):

* the manifest records, for every file, its shape, dtype, size, modification time and an XXH3-128 content checksum
  (:data:`CHECKSUM`), taken when the file is written;
* opening an entry checks its structure: manifest readable and well-formed, every file present with the size,
  ``.npy`` header, shape and dtype it was built with, episode bounds that fit the dataset's metadata, task indices in
  the task table. The content checksum is checked for every file whose size or modification time changed since it
  was built (an edit in place), and for every file with ``verify`` (``smolvla-train --verify-data``). DataLoader
  workers check the structure only (their reader's process has just checked the rest). What a full check costs, for
  one task and for a whole release: ``bench/cache_verify.py`` (README.md, "Numeric cache");
* a damaged entry is rebuilt under the lock, with one line on stderr naming what was damaged; one that cannot be
  replaced is a one-line :class:`~behavior_smolvla.errors.CacheError` naming the folder to delete. Derived files (a
  frame table, the kept statistics) are rebuilt the same way;
* non-finite state or action values are found while an entry is built (every row is read then anyway): refused, or
  with ``drop_nonfinite`` the episode is cut before its first such frame (:class:`DroppedFrames`, kept in the
  manifest).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import mmap
import os
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xxhash

from behavior_smolvla.errors import CacheError, ConfigError, DatasetError

CACHE_FORMAT = 2
"""Version of the cache layout; bumping it invalidates every entry (it is part of the key). 2: per-file records
(shape, dtype, size, modification time, content checksum) and dropped frames in the manifest."""
MANIFEST = "manifest.json"
CHECKSUM = "xxh3_128"
"""The content checksum of every cache file: xxhash's XXH3, 128 bits. 3-8 GB/s on one core of a loaded 2-vCPU VM,
17-25x BLAKE2b (``hashlib.blake2b``) there (``bench/cache_verify.py``), so hashing costs less than reading the file
from disk. It detects damage, not tampering: whoever can rewrite a cache file can rewrite the
manifest as well, so a cryptographic hash would buy nothing here."""
HASH_BLOCK = 1 << 22
"""Bytes hashed per call (4 MiB): blocks that stay in the CPU cache hash faster than one call over a whole map."""
STRUCTURE, CHANGED, FULL = "structure", "changed", "full"
"""Check levels of an entry: ``structure`` (files present, sizes, ``.npy`` headers, shapes, dtypes: what a DataLoader
worker checks), ``changed`` (also the bounds and task indices against the metadata, and the content checksum of every
file modified since it was built: what opening an entry checks), ``full`` (the content checksum of every file:
``--verify-data``)."""
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
    """A read-only memory map of a ``.npy`` file of the cache (a 0-row array is loaded: numpy cannot map empty files).

    Raises:
        CacheError: the file is missing or unreadable (damaged after its entry was checked), naming its folder.
    """
    path = Path(path)
    try:
        if math.prod(npy_header(path)[0]) == 0:
            return np.load(path)  # numpy cannot map a file without data
        return np.load(path, mmap_mode="r")
    except (OSError, ValueError, EOFError, SyntaxError) as exc:
        raise CacheError(damaged_message(path.parent, f"{path.name} cannot be read: {_short(exc)}")) from None


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


# -- file records and checks ------------------------------------------------------------------------------------


class _Damaged(Exception):
    """What is wrong with a cache entry, as a short phrase naming the file (internal: becomes a rebuild or a
    :class:`CacheError`)."""


def _short(exc: BaseException) -> str:
    """An exception's message on one line: its first sentence, at most 120 characters."""
    text = " ".join(str(getattr(exc, "strerror", None) or exc).split())
    return text.split(". ")[0][:120]


BUILT_LINE_PREFIX = "numeric cache: built "
"""Start of the one stderr line a process prints when it has built an entry (not when it found one)."""


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def damaged_message(entry: Path, problem: str) -> str:
    """The one line of a damaged entry that this process cannot rebuild: what is wrong and the folder to delete."""
    return (f"numeric cache entry {entry} is damaged ({problem}); run again to rebuild it, or delete the folder "
            f"{entry}")


def file_checksum(path: Path) -> str:
    """Hex :data:`CHECKSUM` of a file's bytes, read through a memory map in :data:`HASH_BLOCK` blocks."""
    digest = xxhash.xxh3_128()
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size:
            with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    for start in range(0, size, HASH_BLOCK):
                        digest.update(view[start:start + HASH_BLOCK])
                finally:
                    view.release()
    return digest.hexdigest()


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset in bytes)`` from a ``.npy`` file's header.

    Raises:
        ValueError, OSError, EOFError, SyntaxError: not a readable ``.npy`` header (what numpy's parser raises).
    """
    fmt = np.lib.format
    with open(path, "rb") as fh:
        version = fmt.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = fmt.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = fmt.read_array_header_2_0(fh)
        else:
            raise ValueError(f".npy format version {version} is not one this cache writes")
        return tuple(int(n) for n in shape), dtype, fh.tell()


def _dtype_text(dtype: np.dtype) -> str:
    """A dtype as the manifest stores it: the ``.npy`` header's description, as JSON text (structured ones too)."""
    return json.dumps(np.lib.format.dtype_to_descr(np.dtype(dtype)))


def file_record(path: Path) -> dict[str, Any]:
    """What the manifest keeps of a ``.npy`` file it has just written: ``shape``, ``dtype``, ``bytes``,
    ``mtime_ns`` and the :data:`CHECKSUM` of its bytes."""
    shape, dtype, _ = npy_header(path)
    digest = file_checksum(path)
    stat = os.stat(path)
    return {"shape": list(shape), "dtype": _dtype_text(dtype), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns,
            CHECKSUM: digest}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _record_problem(record: Any) -> str | None:
    if not isinstance(record, Mapping):
        return "is not a mapping"
    shape = record.get("shape")
    if not (isinstance(shape, list) and all(_is_int(n) and n >= 0 for n in shape)):
        return "has no valid shape"
    if not isinstance(record.get("dtype"), str) or not isinstance(record.get(CHECKSUM), str):
        return f"has no dtype or {CHECKSUM}"
    if not (_is_int(record.get("bytes")) and _is_int(record.get("mtime_ns"))):
        return "has no size or modification time"
    return None


def check_file(path: Path, record: Mapping[str, Any], level: str) -> None:
    """Check one ``.npy`` file of an entry against its record (see :data:`STRUCTURE` for the levels).

    Raises:
        _Damaged: missing, another size, an unreadable header, another shape or dtype than built, or (``changed``:
            when its size or modification time differ from the record; ``full``: always) another content checksum.
    """
    name = path.name
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        raise _Damaged(f"{name} is missing") from None
    except OSError as exc:
        raise _Damaged(f"{name} cannot be read: {_short(exc)}") from None
    if stat.st_size != record["bytes"]:
        how = "truncated" if stat.st_size < record["bytes"] else "grown"
        raise _Damaged(f"{name} was {how} to {stat.st_size} bytes ({record['bytes']} when built)")
    try:
        shape, dtype, offset = npy_header(path)
    except (OSError, ValueError, EOFError, SyntaxError, TypeError):  # what numpy's header parser raises on any bytes
        raise _Damaged(f"{name} has no readable .npy header") from None
    if list(shape) != record["shape"] or _dtype_text(dtype) != record["dtype"]:
        raise _Damaged(f"{name} holds {dtype} {list(shape)}, not the {record['dtype']} {record['shape']} it was built "
                       "with")
    if offset + math.prod(shape) * dtype.itemsize != stat.st_size:
        raise _Damaged(f"{name}: its header's shape {list(shape)} does not fit its {stat.st_size} bytes")
    if level == FULL or (level == CHANGED and stat.st_mtime_ns != record["mtime_ns"]):
        if file_checksum(path) != record[CHECKSUM]:
            raise _Damaged(f"{name} no longer matches the content checksum taken when it was built")


@dataclass(frozen=True)
class DroppedFrames:
    """The frames of one episode left out with ``drop_nonfinite`` (``smolvla-train --drop-nonfinite``): its first frame
    holding a non-finite state or action value, and every frame after it.

    Cutting the episode there (rather than removing single frames) keeps every action chunk as the reader builds it
    everywhere else: a chunk never steps over a dropped frame, it is padded at the new end of the episode
    (``action_is_pad``), and a velocity state map's earlier frame is always a kept one.

    Attributes:
        episode: the episode index.
        frame: ``frame_index`` of its first non-finite frame (the first dropped).
        frames: frames dropped (from ``frame`` to the episode's end).
        detail: which value, e.g. ``"observation.state dim 3 is nan"``.
        file: the data file, relative to the dataset folder.
    """

    episode: int
    frame: int
    frames: int
    detail: str
    file: str

    def refusal(self) -> str:
        """The one-line error of this frame when frames are not dropped."""
        return (f"episode {self.episode} frame {self.frame} ({self.file}): {self.detail}; fix the data, or train with "
                "--drop-nonfinite to leave out such a frame and the rest of its episode")


def describe_dropped(dropped: Sequence[DroppedFrames]) -> str:
    """One line: how many frames ``drop_nonfinite`` left out, and where."""
    listed = ", ".join(f"{d.episode} from frame {d.frame}" for d in dropped[:6]) + (", ..." if len(dropped) > 6 else "")
    return (f"--drop-nonfinite: dropped {sum(d.frames for d in dropped)} frames with non-finite state or action "
            f"values, each from its first such frame to its episode's end ({len(dropped)} episode(s): {listed})")


def _dropped_problem(items: Any) -> str | None:
    if not isinstance(items, list):
        return "is not a list"
    for item in items:
        if not (isinstance(item, Mapping) and set(item) == {"episode", "frame", "frames", "detail", "file"}
                and all(_is_int(item[k]) for k in ("episode", "frame", "frames"))
                and all(isinstance(item[k], str) for k in ("detail", "file"))):
            return f"holds a malformed entry {str(item)[:80]}"
    return None


def _manifest_problem(manifest: Any) -> str | None:
    """Why a parsed ``manifest.json`` is not one this code wrote, or None."""
    if not isinstance(manifest, Mapping):
        return "is not a JSON object"
    if manifest.get("format") != CACHE_FORMAT:
        return f"has format {manifest.get('format')!r}, not {CACHE_FORMAT}"
    if not (_is_int(manifest.get("rows")) and manifest["rows"] >= 0):
        return "has no valid row count"
    bounds = manifest.get("bounds")
    if not (isinstance(bounds, list) and all(isinstance(b, list) and len(b) == 3 and all(map(_is_int, b))
                                            for b in bounds)):
        return "has no valid episode bounds"
    tasks = manifest.get("task_indices")
    if not (isinstance(tasks, list) and all(map(_is_int, tasks))):
        return "has no valid task indices"
    files = manifest.get("files")
    if not (isinstance(files, Mapping) and set(files) == set(NUMERIC_COLUMNS)):
        return "does not list the entry's files"
    for name, record in files.items():
        problem = _record_problem(record)
        if problem:
            return f"record of {name}.npy {problem}"
    problem = _dropped_problem(manifest.get("dropped"))
    return f"list of dropped frames {problem}" if problem else None


def read_manifest(entry: Path) -> dict[str, Any]:
    """The parsed, well-formed ``manifest.json`` of an entry.

    Raises:
        _Damaged: missing, unreadable, not JSON, or not in the layout of :data:`CACHE_FORMAT`.
    """
    try:
        manifest = json.loads((entry / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise _Damaged(f"{MANIFEST} is missing") from None
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError and UnicodeDecodeError
        raise _Damaged(f"{MANIFEST} is unreadable ({_short(exc)})") from None
    problem = _manifest_problem(manifest)
    if problem:
        raise _Damaged(f"{MANIFEST} {problem}")
    return manifest


def _column_specs(rows: int, state_dim: int, action_dim: int) -> dict[str, tuple[Any, tuple[int, ...]]]:
    """Column name -> (dtype, shape) of an entry of ``rows`` rows."""
    return {"state": (np.float32, (rows, state_dim)), "action": (np.float32, (rows, action_dim)),
            "timestamp": (np.float32, (rows,)), "frame_index": (np.int64, (rows,)), "task_index": (np.int64, (rows,))}


def _check_against_meta(manifest: Mapping[str, Any], meta: Any, episodes: Sequence[int]) -> None:
    """The manifest describes ``episodes`` of ``meta``: the same episodes, rows that fit their lengths (less dropped
    frames), columns of the dataset's dims, task indices of its task table."""
    bounds = manifest["bounds"]
    if [b[0] for b in bounds] != [int(e) for e in episodes]:
        raise _Damaged(f"{MANIFEST} lists other episodes than the ones its folder name stands for")
    dropped = {d["episode"]: d["frames"] for d in manifest["dropped"]}
    cursor = 0
    for ep, start, stop in bounds:
        want = meta.episodes[ep].length - dropped.get(ep, 0)
        if start != cursor or stop - start != want:
            raise _Damaged(f"{MANIFEST}: rows {start}-{stop} of episode {ep} do not fit its {want} frames")
        cursor = stop
    if manifest["rows"] != cursor:
        raise _Damaged(f"{MANIFEST}: {manifest['rows']} rows, its episodes have {cursor}")
    for name, (dtype, shape) in _column_specs(cursor, meta.state_dim, meta.action_dim).items():
        record = manifest["files"][name]
        if record["shape"] != list(shape) or record["dtype"] != _dtype_text(dtype):
            raise _Damaged(f"{MANIFEST}: {name}.npy is recorded as {record['dtype']} {record['shape']}, the dataset "
                           f"needs {np.dtype(dtype)} {list(shape)}")
    unknown = sorted(set(manifest["task_indices"]) - set(meta.tasks))
    if unknown:
        raise _Damaged(f"{MANIFEST}: task index {unknown[0]} is not in the dataset's task table")


def _check_task_index(entry: Path, manifest: Mapping[str, Any]) -> None:
    """Every task index of ``task_index.npy`` lies between the smallest and largest the entry was built with (the
    int64 column is 1.4% of an entry's bytes; one pass, no full membership test: the checksum covers the rest)."""
    if not manifest["rows"]:
        return
    values = np.load(entry / "task_index.npy", mmap_mode="r")
    lo, hi = int(values.min()), int(values.max())
    known = manifest["task_indices"]
    for value in (lo, hi):
        if value not in known:
            raise _Damaged(f"task_index.npy holds task index {value}, which the entry was not built with")


def check_entry(entry: Path, meta: Any = None, episodes: Sequence[int] | None = None, level: str = CHANGED
                ) -> str | None:
    """What is damaged in a cache entry, or None when it is whole.

    Args:
        entry: the entry's folder.
        meta, episodes: the dataset metadata and selected episodes it must describe (``changed`` and ``full``).
        level: :data:`STRUCTURE`, :data:`CHANGED` or :data:`FULL` (see there).

    Returns:
        None, or one short phrase naming the damaged file (``"state.npy was truncated to 4096 bytes (...)"``).
    """
    try:
        if not entry.is_dir() or entry.is_symlink():
            raise _Damaged("it is not a folder")
        manifest = read_manifest(entry)
        if level != STRUCTURE:
            _check_against_meta(manifest, meta, episodes)
        for name in NUMERIC_COLUMNS:
            check_file(entry / f"{name}.npy", manifest["files"][name], level)
        if level != STRUCTURE:
            _check_task_index(entry, manifest)
    except _Damaged as exc:
        return str(exc)
    return None


# -- the numeric cache ------------------------------------------------------------------------------------------

RowReader = Callable[[Path, list[int]], dict[int, tuple[tuple[np.ndarray, ...], DroppedFrames | None]]]
"""``(data file, its selected episodes) -> {episode: ((state, action, timestamp, frame_index, task_index),
dropped)}``, each array covering that episode's kept rows (validated against the metadata by the caller's reader);
``dropped`` says which frames were left out (None: the whole episode is kept)."""


class NumericCache:
    """One cache entry: memory-mapped numeric columns of the selected episodes, in episode order.

    Attributes:
        path: the entry's folder.
        rows: N, total rows.
        bounds: episode -> ``(start, stop)`` rows of the arrays (half-open).
        task_indices: sorted distinct task indices of the rows.
        dropped: :class:`DroppedFrames` of the episodes cut by ``drop_nonfinite`` when the entry was built.
        arrays: column name (:data:`NUMERIC_COLUMNS`) -> read-only memory map.
    """

    def __init__(self, path: Path, check: str | None = STRUCTURE):
        """Open an entry (``check``: the level of :func:`check_entry` run first without metadata, i.e. at most
        :data:`STRUCTURE`-deep; None when the caller has just checked it).

        Raises:
            CacheError: the entry is damaged (naming the file and the folder to delete).
        """
        self.path = Path(path)
        try:
            manifest = read_manifest(self.path)
            if check is not None:
                for name in NUMERIC_COLUMNS:
                    check_file(self.path / f"{name}.npy", manifest["files"][name], check)
        except _Damaged as exc:
            raise CacheError(damaged_message(self.path, str(exc))) from None
        self.rows = int(manifest["rows"])
        self.bounds = {int(ep): (int(a), int(b)) for ep, a, b in manifest["bounds"]}
        self.task_indices = [int(t) for t in manifest["task_indices"]]
        self.dropped = [DroppedFrames(**d) for d in manifest["dropped"]]
        self.arrays = {name: open_npy(self.path / f"{name}.npy") for name in NUMERIC_COLUMNS}

    def __getstate__(self) -> dict[str, Any]:
        return {"path": str(self.path)}  # mapped again by the receiving process

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A DataLoader worker: the structure only (the process that pickled the reader checked the rest just now).
        self.__init__(Path(state["path"]), check=STRUCTURE)

    @classmethod
    def open_or_build(cls, meta: Any, episodes: Sequence[int], read_rows: RowReader,
                      cache_dir: str | os.PathLike | None = None, threads: int | None = None,
                      verify: bool = False) -> NumericCache:
        """The entry of ``episodes`` of ``meta``: opened when it exists and passes :func:`check_entry` (level
        :data:`CHANGED`, or :data:`FULL` with ``verify``), else built (once, under a lock; reading the data files in
        ``threads`` threads, at most a few files in memory at once) and opened. A damaged entry is replaced, saying
        so in one line on stderr.

        Raises:
            ConfigError: an unwritable cache folder.
            CacheError: a damaged entry that cannot be replaced, or an entry that cannot be written (disk full).
            DatasetError: missing or malformed data files, non-finite values (from ``read_rows``).
        """
        root = writable_cache_dir(cache_dir)
        name = f"{Path(meta.root).name or 'dataset'}-{numeric_key(meta, episodes)}"
        entry = root / name
        level = FULL if verify else CHANGED
        if os.path.lexists(entry) and check_entry(entry, meta, episodes, level) is None:
            return cls(entry, check=None)
        with _locked(root / f".{name}.lock", f"the numeric cache {entry}"):
            damaged_entry = False
            if os.path.lexists(entry):  # damaged, or rebuilt meanwhile by the process that held the lock
                problem = check_entry(entry, meta, episodes, level)
                if problem is None:
                    return cls(entry, check=None)
                _discard(entry, problem)
                _say(f"numeric cache entry {entry} is damaged ({problem}); rebuilding it")
                damaged_entry = True
            try:
                t0 = time.perf_counter()
                _build(entry, meta, list(episodes), read_rows, threads)
            except OSError as exc:
                where = f" ({exc.filename})" if exc.filename else ""
                raise CacheError(f"cannot write the numeric cache entry {entry}: {_short(exc)}{where}; free space in "
                                 f"{root} or pass another --cache-dir") from None
            problem = check_entry(entry, meta, episodes, STRUCTURE)
            if problem is not None:  # written and renamed just now: the disk or filesystem is failing
                raise CacheError(f"the numeric cache entry {entry} is damaged right after it was built ({problem}); "
                                 f"delete the folder {entry} and pass another --cache-dir")
            built = cls(entry, check=None)
            if not damaged_entry:  # a rebuild was announced by its one damage line
                # one line per build, from the process that built it: which node or run paid for it
                _say(f"{BUILT_LINE_PREFIX}{entry} ({built.rows} rows of {len(episodes)} episodes) in "
                     f"{time.perf_counter() - t0:.1f} s")
            return built
        return cls(entry, check=None)

    def load_stats(self, key: str, dims: Mapping[str, int]) -> tuple[dict[str, dict[str, np.ndarray]], str] | None:
        """Normalisation statistics saved by :meth:`save_stats` under ``key``, or None: absent, or damaged (said in
        one line; the caller recomputes and saves them again). Each of ``dims`` (feature -> size) must have finite
        float32 ``[size]`` mean, std, min and max (the zip members' CRC-32 catches damaged bytes)."""
        path = self.path / f"stats-{key}.npz"
        if not path.is_file():
            return None
        try:
            stats: dict[str, dict[str, np.ndarray]] = {}
            with np.load(path) as data:
                source = str(data["__source__"])
                for member in data.files:
                    if member != "__source__":
                        feature, stat = member.split("/")
                        stats.setdefault(feature, {})[stat] = data[member]
            for feature, dim in dims.items():
                values = stats.get(feature, {})
                for stat in ("mean", "std", "min", "max"):
                    value = values.get(stat)
                    if value is None or value.shape != (dim,) or value.dtype != np.float32:
                        raise ValueError(f"{feature} {stat} is missing or not float32 [{dim}]")
                if not all(np.isfinite(v).all() for v in values.values()):
                    raise ValueError(f"{feature} statistics are not finite")
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            _say(f"numeric cache entry {self.path}: {path.name} is damaged ({_short(exc)}); recomputing the "
                 "statistics")
            return None
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
        each episode, in episode order (built once per stride, with its record in ``frames-s<k>.json``; a damaged
        one is rebuilt, saying so in one line)."""
        path = self.path / f"frames-s{int(stride)}.npy"
        record_path = path.with_suffix(".json")
        length = sum(len(range(*self.bounds[ep], stride)) for ep in episodes)
        if path.exists() or record_path.exists():
            try:
                self._check_frame_table(path, record_path, length, dtype)
                return open_npy(path)
            except _Damaged as exc:
                _say(f"numeric cache entry {self.path}: {exc}; rebuilding it")
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
        _write_json_atomic(record_path, file_record(path))
        return open_npy(path)

    def _check_frame_table(self, path: Path, record_path: Path, length: int, dtype: np.dtype) -> None:
        try:
            record = json.loads(record_path.read_bytes())
        except FileNotFoundError:
            raise _Damaged(f"{record_path.name} is missing") from None
        except (OSError, ValueError) as exc:
            raise _Damaged(f"{record_path.name} is unreadable ({_short(exc)})") from None
        problem = _record_problem(record)
        if problem:
            raise _Damaged(f"{record_path.name} {problem}")
        check_file(path, record, CHANGED)
        if record["shape"] != [length] or record["dtype"] != _dtype_text(dtype):
            raise _Damaged(f"{path.name} holds {record['dtype']} {record['shape']}, not {length} frames")
        rows = np.load(path, mmap_mode="r")["row"] if length else np.zeros(0, np.int64)
        if length and not (0 <= int(rows.min()) and int(rows.max()) < self.rows):
            raise _Damaged(f"{path.name} holds rows outside the entry's {self.rows}")


def _write_json_atomic(path: Path, value: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(value, fh)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _discard(entry: Path, problem: str) -> None:
    """Move a damaged entry out of the way (one rename: readers that mapped its files keep them) and delete it.

    Raises:
        CacheError: it cannot be moved (e.g. another user's entry in a shared cache), naming the folder to delete.
    """
    aside = entry.parent / f".{entry.name}.damaged-{os.getpid()}"
    try:
        os.rename(entry, aside)
    except OSError as exc:
        raise CacheError(f"numeric cache entry {entry} is damaged ({problem}) and cannot be replaced here "
                         f"({_short(exc)}); delete the folder {entry} and run again") from None
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            aside.unlink()


def _build(entry: Path, meta: Any, episodes: list[int], read_rows: RowReader, threads: int | None) -> None:
    """Write the entry into a temporary folder beside it, then rename it into place. Rows are written at the
    metadata's offsets; when frames were dropped the columns are compacted afterwards (a second pass, only then)."""
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
        specs = _column_specs(rows, meta.state_dim, meta.action_dim)
        arrays = {name: np.lib.format.open_memmap(tmp / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
                  if rows else np.empty(shape, dtype) for name, (dtype, shape) in specs.items()}
        tasks: set[int] = set()
        kept = {ep: stop - start for ep, (start, stop) in bounds.items()}
        dropped: dict[int, DroppedFrames] = {}
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
                    for ep, (columns, cut) in loaded.items():
                        begin = bounds[ep][0]
                        kept[ep] = len(columns[0])
                        for name, values in zip(NUMERIC_COLUMNS, columns, strict=True):
                            arrays[name][begin:begin + kept[ep]] = values
                        tasks.update(np.unique(columns[4]).tolist())
                        if cut is not None:
                            dropped[ep] = cut
                    progress.advance()
        finally:
            progress.close()
        for array in arrays.values():
            if rows:
                array.flush()
        if dropped:
            arrays, bounds = _compact(tmp, arrays, bounds, kept, meta)
        for name, array in arrays.items():
            if not len(array):
                np.save(tmp / f"{name}.npy", array)
        del arrays
        manifest = {"format": CACHE_FORMAT, "dataset": str(Path(meta.root).resolve()),
                    "rows": sum(kept.values()), "state_key": meta.state_key, "action_key": meta.action_key,
                    "bounds": [[ep, *bounds[ep]] for ep in episodes], "task_indices": sorted(tasks),
                    "dropped": [asdict(dropped[ep]) for ep in episodes if ep in dropped],
                    "files": {name: file_record(tmp / f"{name}.npy") for name in NUMERIC_COLUMNS},
                    "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (tmp / MANIFEST).write_text(json.dumps(manifest))
        try:
            os.rename(tmp, entry)
        except OSError:
            # another writer (without the lock, e.g. on a filesystem without flock) finished first: keep its entry
            if check_entry(entry, meta, episodes, STRUCTURE) is not None:
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _compact(folder: Path, arrays: dict[str, np.ndarray], bounds: dict[int, tuple[int, int]], kept: dict[int, int],
             meta: Any) -> tuple[dict[str, np.ndarray], dict[int, tuple[int, int]]]:
    """Columns holding only the kept rows of each episode (in episode order), replacing the full-length ones."""
    new_bounds: dict[int, tuple[int, int]] = {}
    cursor = 0
    for ep in bounds:
        new_bounds[ep] = (cursor, cursor + kept[ep])
        cursor += kept[ep]
    out = {}
    for name, (dtype, shape) in _column_specs(cursor, meta.state_dim, meta.action_dim).items():
        if not cursor:
            out[name] = np.empty(shape, dtype)
            continue
        part = folder / f".{name}.compact.npy"
        target = np.lib.format.open_memmap(part, mode="w+", dtype=dtype, shape=shape)
        for ep, (start, _) in bounds.items():
            target[new_bounds[ep][0]:new_bounds[ep][1]] = arrays[name][start:start + kept[ep]]
        target.flush()
        del target
        os.replace(part, folder / f"{name}.npy")
        out[name] = np.load(folder / f"{name}.npy", mmap_mode="r")
    return out, new_bounds


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
