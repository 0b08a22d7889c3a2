"""The numeric cache (behavior_smolvla.data.cache): memory-mapped samples equal the in-memory reader's, the cache
is reused while the data is unchanged and rebuilt when a parquet file changes, concurrent builders end with one
valid entry, the pickled reader does not grow with the number of frames, and a bad cache folder fails in one line."""

from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from behavior_smolvla.data.cache import NumericCache, columnwise_data_stats
from behavior_smolvla.data.dataset import BehaviorDataset
from behavior_smolvla.data.meta import DatasetMeta
from behavior_smolvla.data.stats import data_stats
from behavior_smolvla.errors import ConfigError
from behavior_smolvla.state_maps.maps import load_state_map, standard_track_map


def _assert_same_samples(a: BehaviorDataset, b: BehaviorDataset, indices) -> None:
    assert len(a) == len(b)
    assert a.frame_table.dtype == b.frame_table.dtype and np.array_equal(a.frame_table, b.frame_table)
    assert a.tasks == b.tasks and a.stats_source == b.stats_source
    for feature in a.stats:
        assert a.stats[feature].keys() == b.stats[feature].keys()
        for key, value in a.stats[feature].items():
            assert value.dtype == b.stats[feature][key].dtype and np.array_equal(value, b.stats[feature][key])
    for i in indices:
        x, y = a.numeric_sample(i), b.numeric_sample(i)
        assert x.keys() == y.keys()
        for key, value in x.items():
            if isinstance(value, torch.Tensor):
                assert value.dtype == y[key].dtype and value.shape == y[key].shape, key
                assert torch.equal(value, y[key]), (i, key)
            else:
                assert value == y[key]


@pytest.mark.parametrize("name", ["g1_v21", "g1_v30", "synthetic_2025", "synthetic_2026"])
def test_cached_samples_equal_in_memory(name, request, tmp_path):
    root = request.getfixturevalue(name)
    meta = DatasetMeta.load(root)
    state_map = standard_track_map(meta.state_dim) if meta.state_dim in (256, 61) else None
    kwargs = {"cameras": [], "chunk_size": 7, "frame_stride": 2, "state_map": state_map}
    cached = BehaviorDataset(meta, cache_dir=tmp_path, **kwargs)
    memory = BehaviorDataset(meta, in_memory=True, **kwargs)
    assert not cached.numeric_in_memory and memory.numeric_in_memory
    assert isinstance(cached._state, np.memmap)
    _assert_same_samples(cached, memory, range(len(cached)))
    # what a DataLoader worker receives: the same samples, mapped again from the files
    _assert_same_samples(pickle.loads(pickle.dumps(cached)), memory, range(0, len(cached), 5))


def test_cached_state_with_sum_entries_equals_in_memory(synthetic_2025, tmp_path):
    """r1pro-2025-b1k23 sums gripper finger widths: mapping one cached row at a time gives the whole-array values."""
    state_map = load_state_map("r1pro-2025-b1k23").bind(256)
    kwargs = {"cameras": [], "chunk_size": 3, "state_map": state_map}
    _assert_same_samples(BehaviorDataset(synthetic_2025, cache_dir=tmp_path, **kwargs),
                         BehaviorDataset(synthetic_2025, in_memory=True, **kwargs), range(0, 198, 3))


def test_cached_frames_equal_in_memory(synthetic_2026, tmp_path):
    cached = BehaviorDataset(synthetic_2026, chunk_size=4, cache_dir=tmp_path)
    memory = BehaviorDataset(synthetic_2026, chunk_size=4, in_memory=True)
    for i in (0, 17, len(cached) - 1):
        x, y = cached[i], memory[i]
        for camera in cached.cameras:
            assert torch.equal(x[camera], y[camera])


def test_pickled_reader_does_not_grow_with_frames(synthetic_2025, tmp_path):
    """The pickle is metadata and file names: the same size whether an episode is sampled at every frame or every
    tenth (lengths differ 10x), and no array of per-frame values travels."""
    every = BehaviorDataset(synthetic_2025, cameras=[], cache_dir=tmp_path)
    tenth = BehaviorDataset(synthetic_2025, cameras=[], cache_dir=tmp_path, frame_stride=10)
    assert len(every) > 5 * len(tenth)
    assert abs(len(pickle.dumps(every)) - len(pickle.dumps(tenth))) < 64
    memory = BehaviorDataset(synthetic_2025, cameras=[], in_memory=True)
    assert len(pickle.dumps(every)) < len(pickle.dumps(memory)) - 4 * every.meta.state_dim * len(every)


def _mirror_numeric(src: Path, dst: Path) -> Path:
    """meta/ and data/ of a dataset (no videos: readers here use cameras=[])."""
    shutil.copytree(src / "meta", dst / "meta")
    shutil.copytree(src / "data", dst / "data")
    return dst


def test_cache_reused_until_a_parquet_changes(g1_v21, tmp_path):
    root = _mirror_numeric(g1_v21, tmp_path / "data")
    cache = tmp_path / "cache"
    first = BehaviorDataset(root, cameras=[], cache_dir=cache)
    entry = first._cache.path
    built = (entry / "manifest.json").stat().st_mtime_ns
    again = BehaviorDataset(root, cameras=[], cache_dir=cache)
    assert again._cache.path == entry and (entry / "manifest.json").stat().st_mtime_ns == built
    assert len([p for p in cache.iterdir() if p.is_dir()]) == 1
    # the statistics were kept with the entry and are read back, equal to what the in-memory reader computes
    assert len(list(entry.glob("stats-*.npz"))) == 1
    memory = BehaviorDataset(root, cameras=[], in_memory=True)
    for feature in memory.stats:
        for key, value in memory.stats[feature].items():
            assert again.stats[feature][key].dtype == value.dtype
            assert np.array_equal(again.stats[feature][key], value)
    assert again.stats_source == memory.stats_source == "episode stats"
    # edited per-episode statistics are parsed again
    stats_file = root / "meta" / "episodes_stats.jsonl"
    stats_file.write_text(stats_file.read_text() + "\n")
    BehaviorDataset(root, cameras=[], cache_dir=cache)
    assert len(list(entry.glob("stats-*.npz"))) == 2

    # change one state value of episode 4 in its parquet file: a new entry, holding the new value
    path = first.meta.episodes[4].data_path
    table = pq.read_table(path)
    state = table.column("observation.state").to_pylist()
    state[0][3] = 123.5
    index = table.schema.get_field_index("observation.state")
    table = table.set_column(index, table.schema.field(index), pa.array(state, type=table.schema.field(index).type))
    pq.write_table(table, path)
    changed = BehaviorDataset(root, cameras=[], cache_dir=cache)
    assert changed._cache.path != entry
    row = changed.frame_table[changed.frame_table["episode_index"] == 4][0]
    assert changed.numeric_sample(int(np.flatnonzero(changed.frame_table["row"] == row["row"])[0]))[
        "observation.state"][3] == np.float32(123.5)
    assert first.numeric_sample(0)["observation.state"].shape == (26,)  # the old entry stays readable


_BUILD = """
import sys
from behavior_smolvla.data.dataset import BehaviorDataset
ds = BehaviorDataset(sys.argv[1], cameras=[], cache_dir=sys.argv[2])
print(ds._cache.path, float(ds._state.sum()))
"""


def test_concurrent_builders_end_with_one_valid_entry(g1_v30, tmp_path):
    cache = tmp_path / "cache"
    procs = [subprocess.Popen([sys.executable, "-c", _BUILD, str(g1_v30), str(cache)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outputs]
    lines = {out.strip() for out, _ in outputs}
    assert len(lines) == 1
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and not [p for p in cache.iterdir() if ".tmp" in p.name]
    reference = BehaviorDataset(g1_v30, cameras=[], in_memory=True)
    cached = NumericCache(entries[0])
    assert np.array_equal(cached.arrays["state"], reference._state)
    assert np.array_equal(cached.arrays["action"], reference._action)


def test_unwritable_cache_dir_is_one_line(g1_v21, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ConfigError, match=r"--cache-dir .*a_file/cache: cannot write there") as info:
        BehaviorDataset(g1_v21, cameras=[], cache_dir=blocker / "cache")
    assert "\n" not in str(info.value)


def test_columnwise_stats_equal_whole_array_stats():
    values = np.random.default_rng(0).normal(size=(1000, 37)).astype(np.float32)
    whole = data_stats(values)
    blocked = columnwise_data_stats(values, data_stats, block_values=3000)  # 3 columns per block
    assert whole.keys() == blocked.keys()
    for key in whole:
        assert np.array_equal(whole[key], blocked[key]), key


@pytest.mark.parametrize("name", ["g1_v21", "synthetic_2025"])
def test_episode_stats_fast_path_equals_line_parser(name, request, monkeypatch):
    """episodes_stats.jsonl read by pyarrow with a state/action-only schema gives what the line parser gives."""
    import behavior_smolvla.data.meta as meta_module

    meta = DatasetMeta.load(request.getfixturevalue(name))
    episodes = list(meta.episodes)[1:]
    fast = meta.episode_stats(episodes)
    monkeypatch.setattr(meta_module, "_episode_stats_jsonl_arrow", lambda *args: None)
    slow = meta.episode_stats(episodes)
    assert fast.keys() == slow.keys() == set(episodes)
    for ep in slow:
        assert fast[ep].keys() == slow[ep].keys()
        for feature in slow[ep]:
            assert fast[ep][feature].keys() == slow[ep][feature].keys()
            for key, value in slow[ep][feature].items():
                assert fast[ep][feature][key].dtype == value.dtype and np.array_equal(fast[ep][feature][key], value)
