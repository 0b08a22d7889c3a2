"""behavior_smolvla.synthetic.datasets: the two BEHAVIOR layouts on disk, their round trip through the reader (and, for
v3.0, through lerobot's own LeRobotDataset), the R1Pro state's internal consistency, and learnability."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from behavior_smolvla.synthetic.render import episode_frames
from behavior_smolvla.synthetic import datasets as S
from behavior_smolvla.data.dataset import BehaviorDataset
from behavior_smolvla.data.meta import DatasetMeta
from behavior_smolvla.errors import ConfigError

CHUNK = 8
# Decoded frames vs the rendered ones. yuv420p stores colour at half resolution, so pixels on the edge of a
# saturated disc lose up to ~50 levels; the whole-frame mean absolute error measured at crf 18 is 2.5-4.7 levels
# (of 255). A frame decoded one index off differs by >= 6 levels (the timecode row and the progress stripe move),
# which the nearest-frame check below also rules out.
MAX_FRAME_MAE = 6.0
SQUARE_32 = {role: (32, 32) for role in S.CAMERA_ROLES}


def _spans(state: np.ndarray, table=S.STATE_BLOCKS_2025) -> dict[str, np.ndarray]:
    return {name: state[..., start:stop] for name, start, stop in table}


def _check_round_trip(root: Path, expected_version: str) -> None:
    """Every sample of the dataset, as the reader returns it, equals the generator's ground truth."""
    truth = S.load_ground_truth(root)
    meta = DatasetMeta.load(root)
    assert meta.version == expected_version
    assert sorted(meta.episodes) == sorted(truth)
    assert {i: e.length for i, e in meta.episodes.items()} == {i: e.length for i, e in truth.items()}
    assert meta.total_frames == sum(e.length for e in truth.values())
    assert sorted(meta.tasks.values()) == sorted({e.task for e in truth.values()})

    ds = BehaviorDataset(root, chunk_size=CHUNK)
    assert len(ds) == meta.total_frames
    decoded: dict[tuple[int, str], list[np.ndarray]] = {}
    for i in range(len(ds)):
        sample = ds[i]
        ep = truth[int(sample["episode_index"])]
        f = int(sample["frame_index"])
        assert sample["task"] == ep.task
        assert float(sample["timestamp"]) == pytest.approx(f / S.FPS, abs=1e-6)
        np.testing.assert_array_equal(sample["observation.state"].numpy(), ep.state[f])
        rows = np.minimum(np.arange(f, f + CHUNK), ep.length - 1)
        np.testing.assert_array_equal(sample["action"].numpy(), ep.action[rows])
        np.testing.assert_array_equal(sample["action_is_pad"].numpy(), np.arange(f, f + CHUNK) >= ep.length)
        for key in meta.camera_keys:
            assert sample[key].shape == (3, *ep.spec.image_size[S.camera_role(key, ep.spec.layout)])
            decoded.setdefault((ep.episode_index, key), []).append(
                np.rint(sample[key].numpy().transpose(1, 2, 0) * 255))
    for (index, key), frames in decoded.items():
        frames = np.stack(frames)
        rendered = episode_frames(truth[index], key).astype(np.float64)
        assert len(frames) == len(rendered)
        mae = np.abs(frames[:, None] - rendered[None]).mean(axis=(2, 3, 4))  # [decoded, rendered]
        assert np.diag(mae).max() < MAX_FRAME_MAE, (index, key, np.diag(mae).max())
        np.testing.assert_array_equal(mae.argmin(axis=1), np.arange(len(frames)))


# -- the 2025 layout ---------------------------------------------------------------------------------------------


def test_2025_layout_matches_the_release(synthetic_2025):
    info = json.loads((synthetic_2025 / "meta/info.json").read_text())
    assert info["codebase_version"] == "v2.1" and info["fps"] == 30 and info["chunks_size"] == 10000
    assert info["data_path"] == "data/task-{episode_chunk:04d}/episode_{episode_index:08d}.parquet"
    assert info["video_path"] == "videos/task-{episode_chunk:04d}/{video_key}/episode_{episode_index:08d}.mp4"
    features = info["features"]
    assert features["observation.state"] == {"dtype": "float32", "shape": [256], "names": None}
    assert features["action"]["shape"] == [23] and features["observation.cam_rel_poses"]["shape"] == [21]
    assert features["observation.task_info"]["shape"] == [None]
    assert "task_index" not in features and "frame_index" not in features
    videos = [k for k, f in features.items() if f["dtype"] == "video"]
    assert videos == list(S.CAMERAS_2025.values())
    head = features["observation.images.rgb.head"]
    assert head["shape"] == [64, 64, 3]
    assert head["info"]["video.codec"] == "libx265" and head["info"]["video.pix_fmt"] == "yuv420p"

    episodes = [json.loads(line) for line in (synthetic_2025 / "meta/episodes.jsonl").read_text().splitlines()]
    assert [e["episode_index"] for e in episodes] == [10, 20, 10010, 10020]
    assert [e["length"] for e in episodes] == [40, 52, 46, 60]
    tasks = [json.loads(line) for line in (synthetic_2025 / "meta/tasks.jsonl").read_text().splitlines()]
    assert [sorted(t) for t in tasks] == [["task", "task_index", "task_name"]] * 2
    stats = [json.loads(line) for line in (synthetic_2025 / "meta/episodes_stats.jsonl").read_text().splitlines()]
    assert [s["episode_index"] for s in stats] == [10, 20, 10010, 10020]
    state_stats = stats[3]["stats"]["observation.state"]
    assert sorted(state_stats) == ["count", "max", "mean", "min", "q01", "q99", "std"]
    assert state_stats["count"] == [60] and len(state_stats["mean"]) == 256
    for index, chunk in ((10, 0), (10010, 1)):
        assert (synthetic_2025 / f"meta/episodes/task-{chunk:04d}/episode_{index:08d}.json").is_file()

    table = pq.read_table(synthetic_2025 / "data/task-0001/episode_00010020.parquet")
    assert table.schema.field("observation.state").type == pa.list_(pa.float32())  # variable-length, as pandas wrote
    assert table.schema.field("timestamp").type == pa.float64()
    assert "frame_index" not in table.column_names
    np.testing.assert_array_equal(table.column("task_index").to_numpy(), 1)
    np.testing.assert_array_equal(table.column("index").to_numpy(), np.arange(60))  # per episode, as released
    task_info_0 = pq.read_table(synthetic_2025 / "data/task-0000/episode_00000010.parquet").column(
        "observation.task_info").to_pylist()
    assert len(task_info_0[0]) != len(table.column("observation.task_info").to_pylist()[0])


def test_2025_round_trip_through_the_reader(synthetic_2025):
    _check_round_trip(synthetic_2025, "v2.1")


def test_2025_state_obeys_the_index_table(synthetic_2025):
    for path in sorted((synthetic_2025 / "data").rglob("*.parquet")):
        table = pq.read_table(path)
        state = np.array(table.column("observation.state").to_pylist(), dtype=np.float32)
        action = np.array(table.column("action").to_pylist(), dtype=np.float32)
        b = _spans(state)
        q = b["joint_qpos"].astype(np.float64)
        np.testing.assert_allclose(b["joint_qpos_sin"], np.sin(q), atol=1e-6)
        np.testing.assert_allclose(b["joint_qpos_cos"], np.cos(q), atol=1e-6)
        for side, sl, fingers, eef in (("left", slice(10, 24, 2), slice(24, 26), slice(186, 189)),
                                       ("right", slice(11, 24, 2), slice(26, 28), slice(225, 228))):
            arm = b[f"arm_{side}_qpos"].astype(np.float64)
            np.testing.assert_array_equal(b[f"arm_{side}_qpos"], b["joint_qpos"][:, sl])
            np.testing.assert_allclose(b[f"arm_{side}_qpos_sin"], np.sin(arm), atol=1e-6)
            np.testing.assert_allclose(b[f"arm_{side}_qpos_cos"], np.cos(arm), atol=1e-6)
            np.testing.assert_array_equal(b[f"arm_{side}_qvel"], b["joint_qvel"][:, sl])
            np.testing.assert_array_equal(b[f"gripper_{side}_qpos"], b["joint_qpos"][:, fingers])
            assert b[f"gripper_{side}_qpos"].min() >= 0.0 and b[f"gripper_{side}_qpos"].max() <= 0.05 + 1e-7
            np.testing.assert_allclose(np.linalg.norm(b[f"eef_{side}_quat"], axis=1), 1.0, atol=1e-6)
            np.testing.assert_array_equal(state[:, eef], b[f"eef_{side}_pos"])
        np.testing.assert_array_equal(b["trunk_qpos"], b["joint_qpos"][:, 6:10])
        # Velocities are the backward difference of positions (x fps).
        np.testing.assert_allclose(b["joint_qvel"][1:], np.diff(q, axis=0) * 30, atol=1e-3)
        # Base blocks: pose (x, y, yaw) agrees with the virtual base joints, the 2-D orientation and the
        # robot position; sin/cos blocks with their angles.
        base = b["base_qpos"].astype(np.float64)
        np.testing.assert_array_equal(b["base_qpos"], b["joint_qpos"][:, [0, 1, 5]])
        np.testing.assert_allclose(b["base_qpos_sin"], np.sin(base), atol=1e-6)
        np.testing.assert_allclose(b["base_qpos_cos"], np.cos(base), atol=1e-6)
        np.testing.assert_array_equal(b["robot_pos"][:, :2], b["base_qpos"][:, :2])
        np.testing.assert_allclose(np.sin(b["robot_2d_ori"][:, 0]), b["robot_2d_ori_sin"][:, 0], atol=1e-6)
        np.testing.assert_allclose(np.cos(b["robot_2d_ori"][:, 0]), b["robot_2d_ori_cos"][:, 0], atol=1e-6)
        np.testing.assert_allclose(b["robot_2d_ori_sin"][:, 0], np.sin(base[:, 2]), atol=1e-6)
        np.testing.assert_allclose(b["robot_ori_sin"][:, 2], np.sin(base[:, 2]), atol=1e-6)
        np.testing.assert_array_equal(b["robot_lin_vel"][:, :2], b["base_qvel"][:, :2])
        np.testing.assert_array_equal(b["robot_ang_vel"][:, 2], b["base_qvel"][:, 2])
        assert b["joint_qeffort"].std() > 1.0  # noise, like the release's unusable efforts
        # The robot reaches its commanded torso / arm positions on the next frame.
        np.testing.assert_array_equal(action[:-1, 3:7], b["trunk_qpos"][1:])
        np.testing.assert_array_equal(action[:-1, 7:14], b["arm_left_qpos"][1:])
        np.testing.assert_array_equal(action[:-1, 15:22], b["arm_right_qpos"][1:])
        assert set(np.unique(action[:, [14, 22]])) <= {-1.0, 1.0}
        assert np.abs(action[:, :2]).max() <= S.BASE_CMD_LIMIT and np.abs(action[:, 2]).max() <= S.BASE_CMD_LIMIT


# -- the 2026 layout ---------------------------------------------------------------------------------------------


def test_2026_layout_is_lerobot_v30(synthetic_2026):
    info = json.loads((synthetic_2026 / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    assert info["features"]["observation.state"]["shape"] == [61]
    for key in ("next.reward", "next.terminated", "next.truncated", "task_index", "frame_index"):
        assert key in info["features"]
    episodes = pq.read_table(synthetic_2026 / "meta/episodes/chunk-000/file-000.parquet").to_pylist()
    assert [e["episode_index"] for e in episodes] == list(range(6))
    assert [e["data/chunk_index"] for e in episodes] == [0, 0, 0, 1, 1, 1]  # one chunk per task
    assert all(len(e["stats/observation.state/mean"]) == 61 for e in episodes)
    offsets = {key: [round(e[f"videos/{key}/from_timestamp"], 6) for e in episodes]
               for key in S.CAMERAS_2026.values()}
    assert len({tuple(v) for v in offsets.values()}) == 3, offsets  # each camera has its own offsets
    assert all(max(v) > 0 for v in offsets.values())
    for e in episodes:
        for key in S.CAMERAS_2026.values():
            duration = e[f"videos/{key}/to_timestamp"] - e[f"videos/{key}/from_timestamp"]
            assert duration == pytest.approx(e["length"] / 30)
    assert (synthetic_2026 / "meta/stats.json").is_file() and (synthetic_2026 / "meta/tasks.jsonl").is_file()


def test_2026_round_trip_through_the_reader(synthetic_2026):
    _check_round_trip(synthetic_2026, "v3.0")


def test_2026_opens_in_lerobot_dataset(synthetic_2026):
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    truth = S.load_ground_truth(synthetic_2026)
    ds = LeRobotDataset("local/synthetic_2026", root=synthetic_2026, video_backend="pyav",
                        delta_timestamps={"action": [d / 30 for d in range(CHUNK)]})
    assert ds.num_frames == sum(e.length for e in truth.values()) and ds.num_episodes == 6
    for i in np.random.default_rng(0).choice(ds.num_frames, 12, replace=False):
        sample = ds[int(i)]
        ep = truth[int(sample["episode_index"])]
        f = int(sample["frame_index"])
        np.testing.assert_array_equal(sample["observation.state"].numpy(), ep.state[f])
        np.testing.assert_array_equal(sample["action"].numpy(), ep.action[np.minimum(np.arange(f, f + CHUNK),
                                                                                     ep.length - 1)])
        assert sample["task"] == ep.task
        for key in S.CAMERAS_2026.values():
            frame = sample[key].numpy().transpose(1, 2, 0) * 255
            assert np.abs(frame - episode_frames(ep, key, [f])[0]).mean() < MAX_FRAME_MAE


def test_2026_state_is_the_2025_blocks_in_the_2026_order():
    kwargs = {"lengths": (20, 24), "tasks": 2, "image_size": SQUARE_32}
    old = S.synthesize(S.SyntheticSpec(layout="behavior-2025", **kwargs))
    new = S.synthesize(S.SyntheticSpec(layout="behavior-2026", **kwargs))
    for a, b in zip(old, new, strict=True):
        blocks = _spans(a.state)
        expected = np.concatenate([blocks[name] for name, _, _ in S.STATE_BLOCKS_2026], axis=1)
        np.testing.assert_array_equal(b.state, expected)
        np.testing.assert_array_equal(b.action, a.action)
        np.testing.assert_array_equal(episode_frames(b, "head"), episode_frames(a, "head"))


# -- generator behaviour -----------------------------------------------------------------------------------------


def test_same_seed_same_data_other_seed_other_data():
    spec = S.SyntheticSpec(layout="behavior-2025", lengths=(16, 16), tasks=1, image_size=SQUARE_32)
    a, b = S.synthesize(spec), S.synthesize(spec)
    c = S.synthesize(dataclasses.replace(spec, seed=7))
    for x, y, z in zip(a, b, c, strict=True):
        np.testing.assert_array_equal(x.state, y.state)
        np.testing.assert_array_equal(episode_frames(x, "left_wrist"), episode_frames(y, "left_wrist"))
        assert not np.array_equal(x.action, z.action)


def test_content_is_learnable():
    """A ridge regression from what a policy sees (state + coarse pixels) to the action, fitted on 12 episodes,
    beats the mean action by far on 4 held-out episodes (normalised MSE)."""
    spec = S.SyntheticSpec(layout="behavior-2025", lengths=(40,) * 16, tasks=2,
                           image_size=SQUARE_32)
    episodes = S.synthesize(spec)
    allowed = np.r_[84:112, 152:158, 158:165, 179:186, 193:197, 197:204, 218:225, 232:244, 253:256]

    def features(ep):
        pixels = [episode_frames(ep, role)[:, ::4, ::4].reshape(ep.length, -1) / 255.0 for role in S.CAMERA_ROLES]
        return np.concatenate([ep.state[:, allowed], *pixels], axis=1)

    x = [features(ep) for ep in episodes]
    y = [ep.action for ep in episodes]
    held_out = [0, 5, 10, 15]
    train = [i for i in range(16) if i not in held_out]
    x_train, y_train = np.concatenate([x[i] for i in train]), np.concatenate([y[i] for i in train])
    x_test, y_test = np.concatenate([x[i] for i in held_out]), np.concatenate([y[i] for i in held_out])
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    y_mu, y_sd = y_train.mean(0), y_train.std(0) + 1e-6
    a = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    w = np.linalg.solve(a.T @ a + 1.0 * np.eye(a.shape[1]), a.T @ ((y_train - y_mu) / y_sd))
    pred = np.c_[(x_test - mu) / sd, np.ones(len(x_test))] @ w
    model_mse = ((pred - (y_test - y_mu) / y_sd) ** 2).mean()
    mean_mse = (((y_test - y_mu) / y_sd) ** 2).mean()
    assert model_mse < 0.3 * mean_mse, (model_mse, mean_mse)


def test_demo_dataset(demo_short_run):
    # the dataset smolvla-train --demo wrote with write_demo_dataset (the shared demo run's; not written again here)
    root = demo_short_run / "demo_data"
    meta = DatasetMeta.load(root)
    assert meta.version == "v2.1" and len(meta.episodes) == 24 and meta.total_frames == 24 * 60
    assert meta.state_dim == 256 and meta.action_dim == 23
    assert [meta.features[k]["shape"][:2] for k in meta.camera_keys] == [[64, 64], [64, 64], [96, 96]]


@pytest.mark.parametrize("kwargs, needle", [
    ({"image_size": 45}, "even"),
    ({"image_size": {"head": (64, 64), "left_wrist": (48, 48), "right_wrist": (64, 64)}}, "libx265"),
    ({"image_size": {"head": (64, 64)}}, "missing"),
    ({"codec": "libvpx"}, "codec"),
    ({"episodes": 3, "frames": [10, 12]}, "one length per episode"),
    ({"tasks": 5, "episodes": 2}, "tasks=5"),
])
def test_bad_arguments_raise_one_line_config_errors(tmp_path, kwargs, needle):
    with pytest.raises(ConfigError) as excinfo:
        S.write_behavior_2025(tmp_path / "x", **kwargs)
    assert needle in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_refuses_to_write_into_a_non_empty_folder(tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        S.write_behavior_2026(tmp_path / "busy", episodes=1, frames=4, tasks=1, image_size=32)
    assert (tmp_path / "busy" / "file.txt").read_text() == "keep me"
    S.write_behavior_2026(tmp_path / "busy", episodes=1, frames=4, tasks=1, image_size=32, overwrite=True)
    assert not (tmp_path / "busy" / "file.txt").exists()
    shutil.rmtree(tmp_path / "busy")
