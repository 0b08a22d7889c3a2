"""A dataset named like a community upload rather than a BEHAVIOR release (LeRobot v3.0 with ``state``, ``actions`` and
one MPEG-4 part 2 camera ``image``; ``synthetic.write_third_party_upload``): it is a valid v3.0 dataset, every console
script reads it with ``--state-key state --action-key actions`` (real subprocesses), the trained checkpoint serves
evaluator observations, and without the flags training stops with one line that names them (the training command in
this process: ``tests/cli_runner.py``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from cli_runner import run_in_process

from behavior_smolvla.synthetic.render import episode_frames
from behavior_smolvla.synthetic.datasets import load_ground_truth, write_third_party_upload

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# COLUMNS=80: the console scripts' rich output at a typical terminal width (the flags line must not wrap).
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p),
       "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
       "COLUMNS": "80"}
KEY_FLAGS = ("--state-key", "state", "--action-key", "actions")
LENGTHS = [20, 24, 22, 26]  # episodes 0, 1 (task 0) and 2, 3 (task 1)
HELD_OUT = 3
IMAGE = 32
# Mean |decoded - rendered| of a frame in [0, 1] units: MPEG-4 at quantiser 2..4 plus yuv420p chroma loss on the
# synthetic frames' sharp edges (measured ~0.012 on 32 px frames).
MAX_FRAME_MAE = 0.04


def run(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / script), *args], capture_output=True, text=True, env=ENV, timeout=timeout,
                          check=False)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"{proc.args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def upload(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_third_party_upload(tmp_path_factory.mktemp("third_party") / "upload", episodes=len(LENGTHS),
                                    frames=LENGTHS, tasks=2, image_size=IMAGE)


def test_upload_is_a_lerobot_v30_dataset(upload):
    info = json.loads((upload / "meta/info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_frames"] == sum(LENGTHS)
    features = info["features"]
    assert set(features) == {"state", "actions", "image", "timestamp", "frame_index", "episode_index", "index",
                             "task_index"}
    assert features["state"] == {"dtype": "float32", "shape": [61], "names": None}
    assert features["actions"] == {"dtype": "float32", "shape": [23], "names": None}
    assert features["image"]["dtype"] == "video" and features["image"]["shape"] == [IMAGE, IMAGE, 3]
    assert features["image"]["info"]["video.codec"] == "mpeg4"

    # Vectors are variable-size list<float> columns (not fixed_size_list), as in many uploads.
    data_files = sorted(upload.glob("data/*/*.parquet"))
    assert data_files
    for path in data_files:
        schema = pq.read_schema(path)
        assert schema.field("state").type == pa.list_(pa.float32())
        assert schema.field("actions").type == pa.list_(pa.float32())
    for path in upload.glob("videos/image/*/*.mp4"):
        with av.open(str(path)) as container:
            assert container.streams.video[0].codec_context.name == "mpeg4"

    # Statistics under the new names: per episode (meta/episodes) and over the dataset (meta/stats.json).
    truth = load_ground_truth(upload)
    episodes = pq.read_table(next(upload.glob("meta/episodes/*/*.parquet"))).to_pydict()
    assert not [c for c in episodes if c.startswith(("stats/observation.", "stats/action/"))]
    for row, ep in enumerate(episodes["episode_index"]):
        np.testing.assert_allclose(episodes["stats/state/mean"][row], truth[ep].state.mean(0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(episodes["stats/actions/max"][row], truth[ep].action.max(0), rtol=1e-6)
        assert np.asarray(episodes["stats/image/mean"][row]).shape == (3, 1, 1)
    stats = json.loads((upload / "meta/stats.json").read_text())
    everything = np.concatenate([e.state for e in truth.values()])
    np.testing.assert_allclose(stats["state"]["std"], everything.std(0), rtol=1e-4, atol=1e-6)
    assert len(stats["actions"]["mean"]) == 23 and np.asarray(stats["image"]["mean"]).shape == (3, 1, 1)

    # lerobot's own reader opens it and returns what was written.
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    ds = LeRobotDataset("local/third_party", root=upload, video_backend="pyav")
    assert ds.num_frames == sum(LENGTHS) and ds.num_episodes == len(LENGTHS)
    for i in (0, 21, sum(LENGTHS) - 1):
        sample = ds[i]
        ep, f = truth[int(sample["episode_index"])], int(sample["frame_index"])
        np.testing.assert_array_equal(sample["state"].numpy(), ep.state[f])
        np.testing.assert_array_equal(sample["actions"].numpy(), ep.action[f])
        frame = sample["image"].numpy().transpose(1, 2, 0)
        assert np.abs(frame - episode_frames(ep, "head", [f])[0] / 255.0).mean() < MAX_FRAME_MAE


@pytest.mark.slow
def test_every_script_reads_it_with_the_key_flags(upload, tmp_path_factory, tmp_path):
    from behavior_smolvla.policy.backbone import build_tiny_vlm
    from behavior_smolvla.r1pro import EVALUATOR_RGB_KEYS
    from behavior_smolvla.serving.policy import load_policy

    # smolvla-inspect: the state/action candidates and the exact flags, on one line.
    proc = ok(run("smolvla-inspect", str(upload)))
    assert "state [61]" in proc.stdout and "actions [23]" in proc.stdout
    flags_line = next(line for line in proc.stdout.splitlines() if line.startswith("train on it with:"))
    assert flags_line.endswith(f"smolvla-train --dataset-path {upload} --state-key state --action-key actions ...")

    # smolvla-filter-state: the 2026 default map over `state`, with statistics from the episodes' stored stats.
    report = json.loads(ok(run("smolvla-filter-state", "--dataset", str(upload), *KEY_FLAGS, "--json")).stdout)
    assert (report["name"], report["input_dim"], report["output_dim"]) == ("r1pro-2026-b1k25", 61, 25)
    assert report["frames"] == sum(LENGTHS) and report["episodes"] == list(range(len(LENGTHS)))
    truth = load_ground_truth(upload)
    everything = np.concatenate([e.state for e in truth.values()])[:, report["source_indices"]]
    np.testing.assert_allclose(report["stats"]["mean"], everything.mean(0), rtol=1e-4, atol=1e-6)

    # smolvla-train on episodes 0-2, episode 3 held out.
    vlm = build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm_32") / "tiny_vlm", image_size=IMAGE)
    run_dir = tmp_path / "run"
    ok(run("smolvla-train", "--dataset-path", str(upload), *KEY_FLAGS, "--from-scratch", "--vlm-model", str(vlm),
           "--image-size", str(IMAGE), "--chunk-size", "4", "--max-steps", "4", "--save-steps", "4",
           "--batch-size", "4", "--num-workers", "0", "--device", "cpu", "--val-episodes", str(HELD_OUT),
           "--log-steps", "1", "--lr", "1e-3", "--warmup-steps", "1", "--wandb-disable", "--output-dir", str(run_dir)))
    saved = yaml.safe_load((run_dir / "checkpoints/last/pretrained_model/train_config.yaml").read_text())["inputs"]
    assert (saved["state_key"], saved["action_key"], saved["cameras"]) == ("state", "actions", ["image"])
    assert saved["action_dim"] == 23 and saved["state_map"]["name"] == "r1pro-2026-b1k25"

    # smolvla-eval on the held-out episode: the checkpoint's keys are used without repeating the flags.
    out = tmp_path / "eval"
    ok(run("smolvla-eval", "--checkpoint", str(run_dir), "--dataset-path", str(upload), "--episodes", str(HELD_OUT),
           "--max-frames", "8", "--device", "cpu", "--output-dir", str(out)))
    evaluation = json.loads((out / "report.json").read_text())
    assert evaluation["frames_evaluated"] == 8 and evaluation["episodes"] == [HELD_OUT]
    assert (out / "predictions.npz").is_file()

    # Serving: an evaluator observation (full 61-dim proprio, three RGBA cameras); the one camera `image` takes the
    # head camera by position, and the batch equals what the training reader makes of the same frame.
    policy = load_policy(run_dir, device="cpu", noise_seed=0)
    ep = truth[HELD_OUT]
    head = episode_frames(ep, "head", [0])[0]
    rng = np.random.default_rng(0)
    obs = {"robot_r1::proprio": ep.state[0], "task_id": np.array([ep.task_index])}
    for role, key in EVALUATOR_RGB_KEYS.items():
        rgb = head if role == "head" else rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
        obs[key] = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255, np.uint8)], axis=-1)
    assert [c["observation_key"] for c in policy.metadata()["cameras"]] == [EVALUATOR_RGB_KEYS["head"]]
    batch = policy.spec(obs)
    inputs = policy.model.inputs
    sample = inputs.eval_dataset(inputs.load_meta(upload), [HELD_OUT])[0]
    assert int(sample["frame_index"]) == 0
    np.testing.assert_array_equal(batch["observation.state"][0].numpy(), sample["observation.state"].numpy())
    assert batch["image"].shape[1:] == sample["image"].shape
    assert (batch["image"][0] - sample["image"]).abs().mean().item() < MAX_FRAME_MAE
    assert batch["task"] == [sample["task"]]

    action = policy.act(obs)
    assert action.dtype == np.float32 and action.shape == (23,) and np.isfinite(action).all()
    policy.reset()
    np.testing.assert_array_equal(policy.act(obs), action)  # noise_seed: the same observation, the same action


def test_missing_state_key_is_one_line_naming_the_flag(upload, tmp_path):
    proc = run_in_process("smolvla-train", ["--dataset-path", str(upload), "--max-steps", "1", "--output-dir",
                                            str(tmp_path / "run"), "--wandb-disable"], env={"COLUMNS": "80"})
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for needle in ("'observation.state'", "state [61]", "actions [23]", "--state-key"):
        assert needle in lines[0], (needle, lines[0])
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_writer_rejects_bad_names(tmp_path):
    from behavior_smolvla.synthetic.datasets import write_behavior_2026
    from behavior_smolvla.errors import ConfigError

    common = {"episodes": 1, "frames": 4, "tasks": 1, "image_size": 32, "codec": "mpeg4"}
    with pytest.raises(ConfigError, match="roles among head, left_wrist, right_wrist"):
        write_behavior_2026(tmp_path / "a", cameras={"front": "image"}, **common)
    with pytest.raises(ConfigError, match="distinct"):
        write_behavior_2026(tmp_path / "b", state_key="x", action_key="x", **common)
    with pytest.raises(ConfigError, match="mpeg4"):
        write_behavior_2026(tmp_path / "c", **{**common, "codec": "libvpx"})
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
