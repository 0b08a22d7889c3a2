"""behavior_smolvla.data.dataset on real data: the shared G1 datasets (v3.0 checked sample by sample against lerobot's own
``LeRobotDataset``), mirrors of them with files removed or damaged, and tiny parquet datasets written here in the
BEHAVIOR 2025 layout."""

from __future__ import annotations

import json
import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from behavior_smolvla.data.dataset import BehaviorDataset

from behavior_smolvla.data.meta import DatasetMeta, parse_episode_spec
from behavior_smolvla.errors import ConfigError, DatasetError, StateMapError, VideoError
from behavior_smolvla.state_maps.maps import load_state_map

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
V30 = DATA / "g1_inspire_v30"
V21 = DATA / "g1_inspire_v21"
CAMERA = "observation.images.cam_high"
TASK = "Pick up the yellow bottle on the table."
CHUNK = 50


def one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def mirror(src: Path, dst: Path) -> Path:
    """A writable stand-in for a dataset: meta/ copied, every data and video file symlinked."""
    shutil.copytree(src / "meta", dst / "meta")
    for sub in ("data", "videos"):
        for path in (src / sub).rglob("*"):
            if path.is_file():
                target = dst / path.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.symlink_to(path)
    return dst


def write_behavior_2025_like(root: Path, *, state_lengths: dict[int, int] | None = None,
                             fixed_size: bool = False) -> Path:
    """A tiny dataset in the BEHAVIOR 2025 layout (v2.1 with task-XXXX folders, chunks_size 10000, non-contiguous
    episode indices, undeclared ``task_index`` and a variable-length ``observation.task_info`` column), no videos,
    no stored statistics. ``state_lengths`` overrides the written state length of some episodes."""
    episodes = {60010: 7, 60020: 5, 61030: 6}
    state_dim, action_dim = 4, 2
    info = {
        "codebase_version": "v2.1", "fps": 30, "chunks_size": 10000,
        "data_path": "data/task-{episode_chunk:04d}/episode_{episode_index:08d}.parquet",
        "video_path": "videos/task-{episode_chunk:04d}/{video_key}/episode_{episode_index:08d}.mp4",
        "features": {
            "observation.state": {"dtype": "float32", "shape": [state_dim], "names": None},
            "action": {"dtype": "float32", "shape": [action_dim], "names": [["vx", "wz"]]},
            "timestamp": {"dtype": "float32", "shape": [1], "names": None},
            "frame_index": {"dtype": "int64", "shape": [1], "names": None},
            "episode_index": {"dtype": "int64", "shape": [1], "names": None},
            "index": {"dtype": "int64", "shape": [1], "names": None},
        },
    }
    (root / "meta").mkdir(parents=True)
    (root / "meta" / "info.json").write_text(json.dumps(info))
    tasks = [{"task_index": 6, "task_name": "picking_up_trash", "task": "pick up the trash"},
             {"task_index": 1, "task_name": "turning_on_radio", "task": "turn on the radio"}]
    (root / "meta" / "tasks.jsonl").write_text("".join(json.dumps(t) + "\n" for t in tasks))
    lines = [{"episode_index": e, "tasks": ["pick up the trash" if e < 61000 else "turn on the radio"], "length": n}
             for e, n in episodes.items()]
    (root / "meta" / "episodes.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    index = 0
    for ep, length in episodes.items():
        width = (state_lengths or {}).get(ep, state_dim)
        state = (np.arange(length * width, dtype=np.float32).reshape(length, width) + ep).tolist()
        action = (-np.arange(length * action_dim, dtype=np.float32).reshape(length, action_dim)).tolist()
        state_type = pa.list_(pa.float32(), width) if fixed_size else pa.list_(pa.float32())
        table = pa.table({
            "observation.state": pa.array(state, type=state_type),
            "action": pa.array(action, type=pa.list_(pa.float32(), action_dim)),
            "observation.task_info": pa.array([[1.0] * (1 + i % 3) for i in range(length)], pa.list_(pa.float32())),
            "timestamp": pa.array(np.arange(length, dtype=np.float32) / 30),
            "frame_index": pa.array(np.arange(length)),
            "episode_index": pa.array(np.full(length, ep)),
            "index": pa.array(np.arange(index, index + length)),
            "task_index": pa.array(np.full(length, 6 if ep < 61000 else 1)),
        })
        index += length
        path = root / "data" / f"task-{ep // 10000:04d}" / f"episode_{ep:08d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
    return root


# -- the lerobot oracle -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def oracle():
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    fps = json.loads((V30 / "meta" / "info.json").read_text())["fps"]
    return LeRobotDataset("local/g1", root=V30, video_backend="pyav",
                          delta_timestamps={"action": [d / fps for d in range(CHUNK)]})


@pytest.fixture(scope="module")
def v30() -> BehaviorDataset:
    return BehaviorDataset(V30, chunk_size=CHUNK)


def test_samples_equal_lerobot_exactly(oracle, v30):
    assert len(v30) == len(oracle) == 2897
    meta = v30.meta
    rng = np.random.default_rng(2024)
    # Random samples plus every episode's first and last frames (where chunks pad and videos change files).
    edges = [i for ep in meta.episodes.values() for i in (ep.row_start, ep.row_stop - 1)]
    bounds = {ep: (info.row_start, info.row_stop) for ep, info in meta.episodes.items()}  # one data file here
    indices = sorted(set(rng.choice(len(v30), 50, replace=False).tolist()) | set(edges))
    assert len(indices) >= 50
    for i in indices:
        mine, ref = v30[i], oracle[i]
        torch.testing.assert_close(mine["observation.state"], ref["observation.state"], rtol=0, atol=0)
        torch.testing.assert_close(mine["action"], ref["action"], rtol=0, atol=0)
        assert torch.equal(mine["action_is_pad"], ref["action_is_pad"])
        assert mine["task"] == ref["task"] == TASK
        for key in ("episode_index", "frame_index", "index", "timestamp"):
            assert mine[key].dtype == ref[key].dtype and mine[key].item() == ref[key].item(), key
        frame, ref_frame = mine[CAMERA], ref[CAMERA]
        assert frame.shape == ref_frame.shape == (3, 480, 640) and frame.dtype == torch.float32
        assert (frame - ref_frame).abs().mean().item() < 1 / 255
        begin, end = bounds[mine["episode_index"].item()]
        assert mine["action_is_pad"].sum().item() == max(0, i + CHUNK - end)


def test_v30_metadata_and_file_offsets(v30):
    meta = v30.meta
    assert (meta.version, meta.fps, meta.state_dim, meta.action_dim, meta.camera_keys) == ("v3.0", 30.0, 26, 26,
                                                                                           [CAMERA])
    assert meta.state_names[0] == "kLeftShoulderPitch" and len(meta.state_names) == 26  # from names: [[...]]
    assert list(meta.episodes) == list(range(8)) and meta.total_frames == 2897
    ep4 = meta.episodes[4]
    assert (ep4.row_start, ep4.row_stop, ep4.length) == (1462, 1806, 344)
    path, offset = ep4.videos[CAMERA]
    assert path.name == "file-001.mp4" and offset == pytest.approx(12.866666666666667)
    assert meta.video_path(4, CAMERA) == path
    assert v30.tasks == [TASK]


def test_v21_reads_all_noncontiguous_episodes(tmp_path):
    ds = BehaviorDataset(V21, chunk_size=8, image_size=64)
    lengths = {row["episode_index"]: row["length"]
               for row in map(json.loads, (V21 / "meta" / "episodes.jsonl").read_text().splitlines())}
    assert ds.episodes == [1, 2, 4, 5, 7, 8, 10, 11] == sorted(lengths)
    assert ds.meta.version == "v2.1" and len(ds) == sum(lengths.values()) == 3027
    episodes, counts = np.unique(ds.frame_table["episode_index"], return_counts=True)
    assert dict(zip(episodes.tolist(), counts.tolist(), strict=True)) == lengths
    position = 0
    for ep, length in lengths.items():
        for i in (position, position + length - 1):  # first and last frame of each episode decode
            sample = ds[i]
            assert sample["episode_index"].item() == ep
            assert sample["frame_index"].item() == i - position
            assert sample[CAMERA].shape == (3, 48, 64)
        position += length
    last = ds[position - 1]
    assert last["action_is_pad"].tolist() == [False] + [True] * 7
    assert torch.equal(last["action"][1], last["action"][0])  # padded rows repeat the episode's last action


def test_episode_spec():
    available = [1, 2, 4, 5, 7, 8, 10, 11]
    assert parse_episode_spec(None, available) == available
    assert parse_episode_spec("1-5, 10", available) == [1, 2, 4, 5, 10]  # a range skips the gaps
    assert parse_episode_spec([11, 1, 1], available) == [1, 11]
    with pytest.raises(DatasetError) as excinfo:
        parse_episode_spec("0-39,45", available)
    message = one_line_error(excinfo)
    assert "0, 39, 45 not in the dataset" in message and "1-2, 4-5, 7-8, 10-11" in message
    with pytest.raises(DatasetError, match="cannot read 'x'"):
        parse_episode_spec("1,x", available)


def test_unknown_episode_and_camera_are_named_with_what_exists():
    with pytest.raises(DatasetError) as excinfo:
        BehaviorDataset(V21, episodes=[3])
    message = one_line_error(excinfo)
    assert "episode(s) 3 not in the dataset" in message and "1-2, 4-5, 7-8, 10-11" in message
    with pytest.raises(DatasetError) as excinfo:
        BehaviorDataset(V21, cameras=["observation.images.cam_left"])
    message = one_line_error(excinfo)
    assert "'observation.images.cam_left'" in message and CAMERA in message
    with pytest.raises(DatasetError, match="episode 3 not in"):
        DatasetMeta.load(V21).video_path(3, CAMERA)


def test_missing_info_json(tmp_path):
    shutil.copytree(V21 / "meta", tmp_path / "meta")
    (tmp_path / "meta" / "info.json").unlink()
    with pytest.raises(DatasetError) as excinfo:
        BehaviorDataset(tmp_path)
    assert f"{tmp_path / 'meta' / 'info.json'} not found" in one_line_error(excinfo)
    with pytest.raises(DatasetError, match="does not exist"):
        DatasetMeta.load(tmp_path / "nowhere")


def test_missing_and_truncated_videos(tmp_path):
    root = mirror(V21, tmp_path / "ds")
    video = root / "videos" / "chunk-000" / CAMERA / "episode_000004.mp4"
    video.unlink()
    with pytest.raises(VideoError) as excinfo:
        BehaviorDataset(root)
    message = one_line_error(excinfo)
    assert str(video) in message and "episode 4" in message
    assert len(BehaviorDataset(root, episodes=[1, 2])) == 393 + 343  # other episodes stay readable

    original = V21 / "videos" / "chunk-000" / CAMERA / "episode_000004.mp4"
    video.write_bytes(original.read_bytes()[: original.stat().st_size // 2])
    ds = BehaviorDataset(root, episodes=[2, 4])
    assert ds[0][CAMERA].shape == (3, 480, 640)
    with pytest.raises(VideoError) as excinfo:
        ds[343 + 10]
    assert str(video) in one_line_error(excinfo)


def test_missing_parquet(tmp_path):
    root = mirror(V30, tmp_path / "ds")
    (root / "data" / "chunk-000" / "file-000.parquet").unlink()
    with pytest.raises(DatasetError) as excinfo:
        BehaviorDataset(root, cameras=[])
    assert "file-000.parquet" in one_line_error(excinfo)


@pytest.mark.parametrize("fixed_size", [False, True])
def test_state_column_shorter_than_declared(tmp_path, fixed_size):
    root = write_behavior_2025_like(tmp_path / "ds", state_lengths={60020: 3}, fixed_size=fixed_size)
    BehaviorDataset(root, episodes=[60010])  # the intact episode is fine
    with pytest.raises(DatasetError) as excinfo:
        BehaviorDataset(root)
    message = one_line_error(excinfo)
    assert "'observation.state'" in message and "episode_00060020.parquet" in message
    assert "length 3" in message and "shorter" in message and "[4]" in message


def test_behavior_2025_layout_tasks_extras_and_computed_stats(tmp_path):
    root = write_behavior_2025_like(tmp_path / "ds")
    meta = DatasetMeta.load(root)
    assert meta.episodes[61030].data_path == root / "data" / "task-0006" / "episode_00061030.parquet"
    assert meta.tasks == {6: "pick up the trash", 1: "turn on the radio"}
    assert meta.state_names is None and meta.action_names == ["vx", "wz"] and meta.camera_keys == []
    ds = BehaviorDataset(root, chunk_size=3)
    assert len(ds) == 18 and ds.cameras == []
    assert "observation.task_info" not in ds[0]
    sample = ds[12]  # episode 61030, frame 0
    assert sample["task"] == "turn on the radio" and sample["episode_index"].item() == 61030
    np.testing.assert_array_equal(sample["observation.state"].numpy(), [61030, 61031, 61032, 61033])
    assert sorted(ds.tasks) == ["pick up the trash", "turn on the radio"]

    rows = np.concatenate([(np.arange(n * 4, dtype=np.float32).reshape(n, 4) + ep)
                           for ep, n in ((60010, 7), (60020, 5), (61030, 6))])
    assert ds.stats_source == "computed from data"
    state = ds.stats["observation.state"]
    for key, expected in (("mean", rows.mean(0)), ("std", rows.std(0)), ("min", rows.min(0)), ("max", rows.max(0)),
                          ("q01", np.quantile(rows, 0.01, 0)), ("q99", np.quantile(rows, 0.99, 0))):
        assert state[key].dtype == np.float32
        np.testing.assert_allclose(state[key], expected, rtol=1e-6)

    extra = BehaviorDataset(root, extra_columns=["observation.task_info"])
    assert [extra[i]["observation.task_info"].tolist() for i in range(3)] == [[1.0], [1.0, 1.0], [1.0, 1.0, 1.0]]


def test_stored_statistics_are_aggregated_over_the_selected_episodes(v30):
    # All episodes: the per-episode stats, aggregated, reproduce lerobot's own meta/stats.json.
    whole = json.loads((V30 / "meta" / "stats.json").read_text())
    assert v30.stats_source == "episode stats"
    for feature in ("observation.state", "action"):
        for key in ("mean", "std", "min", "max"):
            np.testing.assert_allclose(v30.stats[feature][key], whole[feature][key], rtol=1e-5, atol=1e-6)
    # A subset (v2.1 episodes_stats.jsonl): equal to the statistics of exactly those rows.
    subset = BehaviorDataset(V21, episodes="4-8", cameras=[])
    assert subset.episodes == [4, 5, 7, 8] and subset.stats_source == "episode stats"
    rows = np.concatenate([pq.read_table(V21 / "data" / "chunk-000" / f"episode_{e:06d}.parquet",
                                         columns=["action"]).column("action").to_numpy(zero_copy_only=False).tolist()
                           for e in (4, 5, 7, 8)]).astype(np.float64)
    action = subset.stats["action"]
    np.testing.assert_allclose(action["mean"], rows.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(action["std"], rows.std(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(action["min"], rows.min(0))
    np.testing.assert_allclose(action["max"], rows.max(0))
    assert all(v.dtype == np.float32 for v in action.values())


def test_frame_stride_takes_actions_at_the_strided_rate():
    base = BehaviorDataset(V30, episodes=[1], cameras=[], chunk_size=5)
    strided = BehaviorDataset(V30, episodes=[1], cameras=[], chunk_size=5, frame_stride=3)
    assert len(base) == 342 and len(strided) == math.ceil(342 / 3)
    for j in (0, 7, len(strided) - 2, len(strided) - 1):
        sample = strided[j]
        row = 3 * j
        assert sample["frame_index"].item() == row
        wanted = [row + 3 * d for d in range(5)]
        expected = torch.stack([base[min(r, 341)]["action"][0] for r in wanted])
        assert torch.equal(sample["action"], expected)
        assert sample["action_is_pad"].tolist() == [r >= 342 for r in wanted]
        assert torch.equal(sample["observation.state"], base[row]["observation.state"])
    with pytest.raises(ConfigError, match="frame_stride"):
        BehaviorDataset(V30, cameras=[], frame_stride=0)


def test_sample_stride_starts_a_strided_chunk_at_every_frame():
    """``sample_stride=1`` with ``frame_stride=3``: a sample per frame, each the 10 Hz chunk of the strided reader's
    sample at that frame, so every third one equals the strided reader's samples."""
    strided = BehaviorDataset(V30, episodes=[1], cameras=[], chunk_size=5, frame_stride=3)
    every = BehaviorDataset(V30, episodes=[1], cameras=[], chunk_size=5, frame_stride=3, sample_stride=1)
    assert len(every) == 342 and every.sample_stride == 1 and strided.sample_stride == 3
    for j in (0, 7, len(strided) - 1):
        for key in ("frame_index", "action", "action_is_pad", "observation.state"):
            assert torch.equal(every[3 * j][key], strided[j][key]), key
    sample = every[338]  # between the strided reader's frames: its chunk still steps 3 frames
    assert sample["action_is_pad"].tolist() == [False, False, True, True, True]
    assert torch.equal(sample["action"][1], every[341]["action"][0])
    with pytest.raises(ConfigError, match="sample_stride"):
        BehaviorDataset(V30, cameras=[], frame_stride=3, sample_stride=0)


def test_state_map_selects_dims_and_their_stats(tmp_path):
    path = tmp_path / "g1-arms.yaml"
    path.write_text("kind: map\nname: g1-arms\nlayout: any\ndescription: test map\nentries:\n"
                    "  - {slice: '0:7'}\n  - {name: left_hand_sum, slice: '14:20', reduce: sum}\n")
    raw = BehaviorDataset(V30, episodes="0-2", cameras=[])
    mapped = BehaviorDataset(V30, episodes="0-2", cameras=[],
                             state_map=load_state_map(str(path)).bind(26, raw.meta.state_names))
    assert mapped.state_names == raw.meta.state_names[:7] + ["left_hand_sum"]
    for i in (0, 500, len(raw) - 1):
        state = raw[i]["observation.state"]
        expected = torch.cat([state[:7], state[14:20].sum().reshape(1)])
        torch.testing.assert_close(mapped[i]["observation.state"], expected)
    mapped_state, raw_state = mapped.stats["observation.state"], raw.stats["observation.state"]
    np.testing.assert_array_equal(mapped_state["min"][:7], raw_state["min"][:7])
    np.testing.assert_allclose(mapped_state["mean"][7], raw_state["mean"][14:20].sum(), rtol=1e-5)
    assert mapped.stats["action"].keys() == raw.stats["action"].keys()


def test_dataloader_workers_match_single_process(v30):
    from torch.utils.data import DataLoader

    ds = BehaviorDataset(V30, episodes=[2, 6], chunk_size=4, image_size=96)
    ds[0]  # opens a decoder in this process: the workers must not inherit it
    assert len(pickle.dumps(ds)) < 2_000_000  # arrays only, no open containers
    picks = [0, 5, 361, 100, 600, 709]
    loaders = [DataLoader(torch.utils.data.Subset(ds, picks), batch_size=3, num_workers=w) for w in (0, 2)]
    batches = [list(loader) for loader in loaders]
    for a, b in zip(*batches, strict=True):
        assert a.keys() == b.keys()
        for key, value in a.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, b[key]), key
            else:
                assert value == b[key]
    assert batches[0][0][CAMERA].shape == (3, 3, 72, 96)


# -- velocity state maps ------------------------------------------------------------------------------------------


def _episode_states(meta: DatasetMeta, episodes: list[int]) -> dict[int, np.ndarray]:
    """Raw float32 ``[n, 26]`` state of each episode, read straight from the parquet files."""
    out = {}
    for ep in episodes:
        info = meta.episodes[ep]
        column = pq.read_table(info.data_path, columns=["observation.state"]).column("observation.state")
        out[ep] = np.asarray(column.to_pylist(), dtype=np.float32)[info.row_start:info.row_stop]
    return out


def test_velocity_map_reads_the_clamped_earlier_frame_in_every_reader(g1_v30):
    """observation.state at frame f of an episode = map(s[f], s[max(0, f - lag * stride)]): the training reader
    (every 3rd frame, cached), the evaluation reader (every frame) and an in-memory reader agree, the first frames
    of each episode are clamped to its first state (zero motion at frame 0), episode 1 never reads episode 0, and
    the velocity dims' stats equal numpy over every frame of the selected episodes."""
    from behavior_smolvla.config import DataConfig, PolicyConfig
    from behavior_smolvla.inputs import PolicyInputs

    meta = DatasetMeta.load(g1_v30)
    episodes = [0, 1]
    inputs = PolicyInputs.resolve(meta, DataConfig(state_map="identity-motion", frame_stride=3, image_size=64),
                                  PolicyConfig(chunk_size=4))
    m = inputs.state_map
    assert m.lag_frames == 3 and m.velocity_dt == pytest.approx(0.1) and inputs.policy_state_dim == 52
    states = _episode_states(meta, episodes)
    expected = {}
    for ep, s in states.items():
        earlier = s[np.maximum(0, np.arange(len(s)) - 3)]
        expected[ep] = np.concatenate([s, (s - earlier) / np.float32(0.1)], axis=1)
        np.testing.assert_array_equal(expected[ep][0, 26:], 0.0)
        np.testing.assert_allclose(expected[ep][7, 26:], (s[7] - s[4]) / 0.1, rtol=1e-5, atol=1e-6)
    train = inputs.dataset(meta, episodes)
    evaluation = inputs.eval_dataset(meta, episodes)
    in_memory = BehaviorDataset(meta, episodes=episodes, cameras=[], chunk_size=1, state_map=m, in_memory=True)
    assert train.frame_stride == 3 and evaluation.frame_stride == 1
    for reader in (train, evaluation, in_memory):
        seen = 0
        for i in range(len(reader)):
            sample = reader.numeric_sample(i)
            ep, f = int(sample["episode_index"]), int(sample["frame_index"])
            np.testing.assert_allclose(sample["observation.state"].numpy(), expected[ep][f], rtol=1e-6, atol=1e-6,
                                       err_msg=f"episode {ep} frame {f}")
            seen += f < 3  # the clamped frames
        assert seen == (2 if reader is train else 6)
    # Statistics: positions from the stored per-episode stats, velocities exact over every frame.
    every = np.concatenate([expected[ep] for ep in episodes]).astype(np.float64)
    for reader in (train, evaluation):
        stats = reader.stats["observation.state"]
        velocity = every[:, 26:]
        direct = {"mean": velocity.mean(0), "std": velocity.std(0), "min": velocity.min(0), "max": velocity.max(0)}
        assert set(direct) <= set(stats)
        for key, value in stats.items():  # the keys the stored stats have, every one computed for the velocities
            want = direct[key] if key in direct else np.quantile(velocity, int(key[1:]) / 100, axis=0)
            np.testing.assert_allclose(value[26:], want, rtol=1e-5, atol=1e-6, err_msg=key)
        np.testing.assert_allclose(stats["mean"][:26], every[:, :26].mean(0), rtol=1e-5, atol=1e-5)
    # A dataset at another frame rate cannot feed this map: its velocities would span another time.
    at_10_fps = load_state_map("identity-motion").bind(26, fps=10, frame_stride=1)
    with pytest.raises(StateMapError, match="timed for 10 fps but .* is recorded at 30 fps") as info:
        BehaviorDataset(meta, episodes=episodes, cameras=[], chunk_size=1, state_map=at_10_fps)
    one_line_error(info)
