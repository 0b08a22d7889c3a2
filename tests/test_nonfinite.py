"""Non-finite state or action values: found while the rows are read (the numeric cache's build, or the in-memory
reader), refused in one line naming the episode, frame and value, or with ``drop_nonfinite`` (``smolvla-train
--drop-nonfinite``) left out from the first such frame to the episode's end, so that every action chunk is made of
kept frames (padded at the new end), the statistics come from the kept frames, and the count is said in one line.

The NaN and inf are written into real parquet files of a copy of the real G1 v2.1 dataset.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from cli_runner import run_in_process, without_cache_builds
from test_cache import _assert_same_samples

from behavior_smolvla.data.cache import DroppedFrames
from behavior_smolvla.data.dataset import BehaviorDataset
from behavior_smolvla.data.meta import DatasetMeta
from behavior_smolvla.errors import DatasetError

CHUNK, STRIDE = 7, 2


def set_value(root: Path, episode: int, column: str, frame: int, dim: int, value: float) -> None:
    """Write ``value`` into ``column[frame][dim]`` of an episode's parquet file (v2.1: one file per episode)."""
    path = DatasetMeta.load(root).episodes[episode].data_path
    table = pq.read_table(path)
    rows = table.column(column).to_pylist()
    rows[frame][dim] = value
    index = table.schema.get_field_index(column)
    pq.write_table(table.set_column(index, table.schema.field(index), pa.array(rows, type=table.schema.field(index).type)),
                   path)


@pytest.fixture
def damaged(g1_v21, tmp_path) -> Path:
    """meta/ and data/ of G1 v2.1 with NaN in observation.state dim 3 of episode 4's frame 37 (and frame 40) and
    +inf in action dim 0 of episode 10's first frame (so all of episode 10 is dropped)."""
    root = tmp_path / "dataset"
    shutil.copytree(g1_v21 / "meta", root / "meta")
    shutil.copytree(g1_v21 / "data", root / "data")
    set_value(root, 4, "observation.state", 37, 3, float("nan"))
    set_value(root, 4, "observation.state", 40, 3, float("nan"))
    set_value(root, 10, "action", 0, 0, float("inf"))
    return root


def test_nonfinite_values_are_refused_naming_episode_frame_and_value(damaged, tmp_path):
    for kwargs in ({"cache_dir": tmp_path / "cache"}, {"in_memory": True}):
        with pytest.raises(DatasetError) as info:
            BehaviorDataset(damaged, cameras=[], **kwargs)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith("episode 4 frame 37 (data/chunk-000/episode_000004.parquet): observation.state "
                                  "dim 3 is nan;") and "--drop-nonfinite" in message
    assert not [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]  # nothing half-built is left


def test_drop_nonfinite_cuts_episodes_and_keeps_chunks_consistent(damaged, g1_v21, tmp_path, capfd):
    meta = DatasetMeta.load(damaged)
    length = {ep: info.length for ep, info in meta.episodes.items()}
    kwargs = {"cameras": [], "chunk_size": CHUNK, "frame_stride": STRIDE, "drop_nonfinite": True}
    cached = BehaviorDataset(damaged, cache_dir=tmp_path / "cache", **kwargs)
    line = without_cache_builds(capfd.readouterr().err).strip()
    dropped = length[4] - 37 + length[10]
    assert line == (f"--drop-nonfinite: dropped {dropped} frames with non-finite state or action values, each from "
                    "its first such frame to its episode's end (2 episode(s): 4 from frame 37, 10 from frame 0)")
    assert cached.dropped == [
        DroppedFrames(4, 37, length[4] - 37, "observation.state dim 3 is nan", "data/chunk-000/episode_000004.parquet"),
        DroppedFrames(10, 0, length[10], "action dim 0 is inf", "data/chunk-000/episode_000010.parquet")]
    assert cached.episode_lengths == {**length, 4: 37, 10: 0}
    assert len(cached) == sum(math.ceil(n / STRIDE) for n in cached.episode_lengths.values())

    # the same samples in memory, and from a reader unpickled in a worker
    memory = BehaviorDataset(damaged, in_memory=True, **kwargs)
    assert memory.dropped == cached.dropped
    _assert_same_samples(cached, memory, range(len(cached)))

    # every chunk of episode 4 stops at its new end: the kept actions are the recorded ones, the rest is padding
    intact = BehaviorDataset(g1_v21, cameras=[], chunk_size=CHUNK, frame_stride=STRIDE, in_memory=True)
    where = {(int(e["episode_index"]), int(e["frame_index"])): i for i, e in enumerate(intact.frame_table)}
    for i in np.flatnonzero(cached.frame_table["episode_index"] == 4):
        sample, frame = cached.numeric_sample(int(i)), int(cached.frame_table[i]["frame_index"])
        reference = intact.numeric_sample(where[(4, frame)])
        pad = frame + STRIDE * np.arange(CHUNK) >= 37
        assert np.array_equal(sample["action_is_pad"].numpy(), pad)
        assert torch_equal(sample["action"][~pad], reference["action"][~pad])
        assert np.isfinite(sample["action"].numpy()).all() and np.isfinite(sample["observation.state"].numpy()).all()
    assert 10 not in set(cached.frame_table["episode_index"].tolist())

    # statistics from the kept frames only (those stored with the dataset include the dropped ones)
    assert cached.stats_source == "computed from the kept frames"
    kept = np.concatenate([intact._action[slice(*intact._bounds[ep])][:cached.episode_lengths[ep]]
                           for ep in cached.episodes])
    np.testing.assert_allclose(cached.stats["action"]["mean"], kept.mean(0), rtol=1e-5, atol=1e-6)
    assert all(np.isfinite(v).all() for feature in cached.stats.values() for v in feature.values())

    # the entry remembers what it dropped: opening it without drop_nonfinite refuses as a fresh build would
    with pytest.raises(DatasetError, match=r"^episode 4 frame 37 \(data/chunk-000/episode_000004.parquet\)"):
        BehaviorDataset(damaged, cameras=[], cache_dir=tmp_path / "cache")


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_train_drop_nonfinite_with_verify_data(synthetic_2025, tiny_vlm, tmp_path):
    """``smolvla-train --drop-nonfinite --verify-data`` on data holding a NaN, whose numeric cache entry (built by an
    earlier reader) was then zeroed in place with its size and modification time kept: one line says what was
    dropped, one that the entry was damaged and rebuilt, and the run trains and writes its checkpoint."""
    import os

    from behavior_smolvla.data.cache import npy_header

    root = tmp_path / "dataset"
    shutil.copytree(synthetic_2025, root)
    set_value(root, 20, "observation.state", 30, 7, float("nan"))
    cache = tmp_path / "cache"
    BehaviorDataset(root, cache_dir=cache, drop_nonfinite=True)  # the entry training will open
    (entry,) = [p for p in cache.iterdir() if p.is_dir()]
    state = entry / "state.npy"
    stat, (_, _, offset) = state.stat(), npy_header(state)
    state.write_bytes(state.read_bytes()[:offset] + bytes(stat.st_size - offset))
    os.utime(state, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    out = tmp_path / "run"
    result = run_in_process("smolvla-train", [
        "--dataset-path", str(root), "--from-scratch", "--vlm-model", str(tiny_vlm), "--image-size", "64",
        "--chunk-size", "4", "--batch-size", "2", "--num-workers", "0", "--device", "cpu", "--max-steps", "1",
        "--wandb-disable", "--output-dir", str(out), "--cache-dir", str(cache), "--drop-nonfinite", "--verify-data"])
    assert "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    lines = (result.stdout + result.stderr).splitlines()
    dropped = [x for x in lines if x.startswith("--drop-nonfinite: dropped")]
    assert len(dropped) == 1 and "(1 episode(s): 20 from frame 30)" in dropped[0], dropped
    damage = [x for x in lines if "is damaged" in x]
    assert len(damage) == 1 and "state.npy" in damage[0] and "rebuilding it" in damage[0], damage
    assert (out / "checkpoints" / "last").is_dir()
