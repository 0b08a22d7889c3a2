"""Trust nothing on disk: a numeric cache entry damaged after it was built (truncated, deleted, random bytes, a
same-length overwrite, zeros, NaN, a garbage manifest, an out-of-range task index, a damaged statistics file or frame
table) is found when it is opened and rebuilt, with one line naming the damaged file; what the reader then serves
equals the intact entry's. An entry that cannot be replaced is one error line naming the folder to delete; a worker
that finds damage does the same; ``verify_cache`` (``--verify-data``) also finds an edit that kept the file's size
and modification time.

Each case damages real files written by a real build, then runs ``smolvla-filter-state --dataset`` (which reads
the dataset through the numeric cache) in this process with the test's own ``SMOLVLA_CACHE_DIR``, and asserts the exit
code, one stderr line naming the file, no traceback, and that nothing already written was lost: the report equals
the intact run's and every rebuilt file holds exactly the bytes it was first built with.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from cli_runner import CliResult, run_in_process, without_cache_builds

from behavior_smolvla.data import cache as cache_module
from behavior_smolvla.data.cache import CHECKSUM, FULL, NUMERIC_COLUMNS, check_entry, npy_header
from behavior_smolvla.data.dataset import BehaviorDataset
from behavior_smolvla.data.meta import DatasetMeta
from behavior_smolvla.errors import CacheError


@dataclass
class Built:
    """A dataset copy, its cache folder, the one entry built for it, and that entry's first manifest."""

    dataset: Path
    cache: Path
    entry: Path
    manifest: dict
    report: str
    """``smolvla-filter-state --dataset ... --json`` on the intact entry."""


def filter_state(built: Built) -> CliResult:
    return run_in_process("smolvla-filter-state", ["--dataset", str(built.dataset), "--json"],
                          env={"SMOLVLA_CACHE_DIR": str(built.cache)})


@pytest.fixture
def built(g1_v21, tmp_path) -> Built:
    """meta/ and data/ of the real G1 v2.1 dataset (8 episodes, 3027 frames, 26-dim state) and its cache entry,
    built by a first run of the command (whose stats also leave a ``stats-*.npz`` and a ``frames-s1.npy``)."""
    dataset = tmp_path / "dataset"
    shutil.copytree(g1_v21 / "meta", dataset / "meta")
    shutil.copytree(g1_v21 / "data", dataset / "data")
    first = Built(dataset, tmp_path / "cache", Path(), {}, "")
    result = filter_state(first)
    assert result.returncode == 0 and not without_cache_builds(result.stderr), result.stderr
    entries = [p for p in first.cache.iterdir() if p.is_dir()]
    assert len(entries) == 1
    entry = entries[0]
    assert len(list(entry.glob("stats-*.npz"))) == 1 and (entry / "frames-s1.npy").is_file()
    return Built(dataset, first.cache, entry, json.loads((entry / "manifest.json").read_text()), result.stdout)


# -- damage, to real files written by the build -------------------------------------------------------------------


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(0).randbytes(path.stat().st_size))


def overwrite_data(path: Path, fill: Callable[[int], bytes], at: float = 0.5) -> None:
    """Overwrite bytes of the data region (the ``.npy`` header kept), length unchanged."""
    _, _, offset = npy_header(path)
    data = bytearray(path.read_bytes())
    start = offset + int((len(data) - offset) * at) // 4 * 4
    patch = fill(min(256, len(data) - start))
    data[start:start + len(patch)] = patch
    path.write_bytes(bytes(data))


def zeros_after_header(path: Path) -> None:
    _, _, offset = npy_header(path)
    path.write_bytes(path.read_bytes()[:offset] + bytes(path.stat().st_size - offset))


def nan_values(path: Path) -> None:
    overwrite_data(path, lambda n: np.full(n // 4, np.nan, np.float32).tobytes(), at=0.3)


def keep_mtime(damage: Callable[[Path], None]) -> Callable[[Path], None]:
    """``damage``, then the file's modification time put back (an edit the default check does not hash)."""
    def apply(path: Path) -> None:
        stat = path.stat()
        damage(path)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return apply


def task_index_99(path: Path) -> None:
    overwrite_data(path, lambda n: np.int64(99).tobytes(), at=0.6)


def edit_manifest_bounds(path: Path) -> None:
    manifest = json.loads(path.read_text())
    manifest["bounds"][1][2] += 5
    path.write_text(json.dumps(manifest))


@dataclass
class Damage:
    id: str
    file: str
    """File of the entry to damage (a glob pattern)."""
    apply: Callable[[Path], None]
    line: str
    """What the one stderr line must say, beside the file's name."""


DAMAGES = [
    Damage("state-truncated", "state.npy", truncate, "truncated to"),
    Damage("action-deleted", "action.npy", Path.unlink, "missing"),
    Damage("timestamp-random-bytes", "timestamp.npy", random_bytes, "no readable .npy header"),
    Damage("action-same-length-overwrite", "action.npy",
           lambda p: overwrite_data(p, lambda n: random.Random(1).randbytes(n)), "checksum"),
    Damage("state-zeros", "state.npy", zeros_after_header, "checksum"),
    Damage("state-nan", "state.npy", nan_values, "checksum"),
    Damage("frame-index-zeros-whole-file", "frame_index.npy", lambda p: p.write_bytes(bytes(p.stat().st_size)),
           "no readable .npy header"),
    Damage("manifest-garbage", "manifest.json", lambda p: p.write_text("{not json"), "unreadable"),
    Damage("manifest-random-bytes", "manifest.json", random_bytes, "unreadable"),
    Damage("manifest-edited-bounds", "manifest.json", edit_manifest_bounds, "do not fit"),
    Damage("task-index-out-of-range", "task_index.npy", keep_mtime(task_index_99), "task index 99"),
    Damage("stats-random-bytes", "stats-*.npz", random_bytes, "recomputing"),
    Damage("stats-truncated", "stats-*.npz", truncate, "recomputing"),
    Damage("frame-table-truncated", "frames-s1.npy", truncate, "truncated to"),
    Damage("frame-table-record-garbage", "frames-s1.json", lambda p: p.write_text("[1, 2"), "unreadable"),
]


@pytest.mark.parametrize("damage", DAMAGES, ids=[d.id for d in DAMAGES])
def test_damaged_entry_is_rebuilt_with_one_line(built: Built, damage: Damage):
    path = next(built.entry.glob(damage.file))
    damage.apply(path)
    result = filter_state(built)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output[-3000:]
    assert result.returncode == 0, output[-3000:]
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert path.name in lines[0] and damage.line in lines[0] and str(built.entry) in lines[0], lines[0]
    # nothing lost, nothing garbage: the same report, and every column file holds the bytes it was built with
    assert result.stdout == built.report
    meta = DatasetMeta.load(built.dataset)
    assert check_entry(built.entry, meta, sorted(meta.episodes), FULL) is None
    rebuilt = json.loads((built.entry / "manifest.json").read_text())
    for name in NUMERIC_COLUMNS:
        assert rebuilt["files"][name][CHECKSUM] == built.manifest["files"][name][CHECKSUM], name
    # the damage is gone for good: the next run says nothing
    again = filter_state(built)
    assert again.returncode == 0 and not again.stderr and again.stdout == built.report


def test_entry_that_cannot_be_replaced_names_the_folder_to_delete(built: Built, monkeypatch):
    """A damaged entry this process may not move (e.g. another user's, in a shared cache): one error line naming
    the folder; the damaged entry is left as it was. (``os.rename`` is made to fail for that folder only: as root,
    the tests cannot be refused a rename for real.)"""
    rename = os.rename

    def refuse(src, dst, *args, **kwargs):
        if Path(src) == built.entry:
            raise PermissionError(1, "Operation not permitted", str(src))
        return rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(cache_module.os, "rename", refuse)
    truncate(built.entry / "state.npy")
    result = filter_state(built)
    assert "Traceback" not in result.stdout + result.stderr
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert f"delete the folder {built.entry}" in lines[0] and "state.npy" in lines[0]
    assert (built.entry / "manifest.json").read_text() == json.dumps(built.manifest)  # left as it was


def test_worker_finding_damage_names_the_folder(built: Built):
    """What a DataLoader worker unpickles is checked (structure only): a file damaged after the reader's process
    opened the entry is a one-line CacheError, not a numpy error deep in a worker."""
    ds = BehaviorDataset(built.dataset, cameras=[], chunk_size=4, cache_dir=built.cache)
    payload = pickle.dumps(ds)
    truncate(built.entry / "action.npy")
    with pytest.raises(CacheError) as info:
        pickle.loads(payload)
    message = str(info.value)
    assert "\n" not in message and "action.npy" in message and f"delete the folder {built.entry}" in message


def test_task_index_damaged_while_mapped_is_one_line(built: Built):
    """A task index written into a mapped file after the entry was checked: the sample says which entry is damaged
    instead of raising a KeyError."""
    ds = BehaviorDataset(built.dataset, cameras=[], chunk_size=4, cache_dir=built.cache)
    path = built.entry / "task_index.npy"
    _, _, offset = npy_header(path)
    with open(path, "r+b") as fh:
        fh.seek(offset + 8 * 10)
        fh.write(np.int64(99).tobytes())
    with pytest.raises(CacheError) as info:
        ds.numeric_sample(int(np.flatnonzero(ds.frame_table["row"] == 10)[0]))
    assert "task index 99" in str(info.value) and f"delete the folder {built.entry}" in str(info.value)


def test_verify_cache_finds_an_edit_that_kept_size_and_mtime(built: Built, capfd):
    """Opening hashes only the files modified since they were built (size or modification time); ``verify_cache``
    (``smolvla-train --verify-data``) hashes every file, so it also finds damage that left both unchanged."""
    path = built.entry / "state.npy"
    keep_mtime(zeros_after_header)(path)
    default = BehaviorDataset(built.dataset, cameras=[], chunk_size=4, cache_dir=built.cache)
    assert not np.asarray(default._state).any()  # the documented limit of the default check
    assert capfd.readouterr().err == ""
    verified = BehaviorDataset(built.dataset, cameras=[], chunk_size=4, cache_dir=built.cache, verify_cache=True)
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 1 and "state.npy" in lines[0] and "checksum" in lines[0], lines
    memory = BehaviorDataset(built.dataset, cameras=[], chunk_size=4, in_memory=True)
    assert np.array_equal(np.asarray(verified._state), memory._state)
