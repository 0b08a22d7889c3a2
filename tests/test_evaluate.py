"""Offline evaluation: metric code on hand-made numbers, reference predictors against the parquet data, the report
of a demo-trained checkpoint (single and ensemble), validation during training.

Real lerobot SmolVLA on the demo's tiny backbone, real PyAV decoding: the checkpoints are conftest's
``demo_short_run`` (the full demo's run when the session trains it, else a 10-step one); the learning test uses the
full ``smolvla-train --demo`` run (``demo_run``, a real subprocess)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from behavior_smolvla.evaluation.engine import evaluate_checkpoints, spread_evenly, validate
from behavior_smolvla.evaluation.metrics import action_layout, chunk_metrics, ensemble_disagreement, hold_chunks, pearson
from behavior_smolvla.r1pro import ACTION_GROUPS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_ckpt_run(demo_short_run) -> Path:
    """A demo-trained run with two or more step checkpoints (conftest's ``demo_short_run``, shared by the session)."""
    return demo_short_run


def train_config(run: Path) -> dict:
    return yaml.safe_load((run / "checkpoints" / "last" / "pretrained_model" / "train_config.yaml").read_text())


def step_checkpoints(run: Path) -> list[Path]:
    return sorted(p for p in (run / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def single_report(demo_ckpt_run, tmp_path_factory) -> dict:
    cfg = train_config(demo_ckpt_run)["dataset"]
    return evaluate_checkpoints([demo_ckpt_run], cfg["path"], cfg["val_episodes"],
                                output_dir=tmp_path_factory.mktemp("single"), device="cpu", progress=False)


# --- metric code on hand-made numbers ------------------------------------------------------------------------


def test_chunk_metrics_hand_computed():
    # 2 frames, chunk 3, 2 dims; frame 1's last step is past the episode's end (its values must not count).
    truth = np.array([[[0, 0], [1, 1], [2, 2]], [[1, 0], [1, 0], [7, 7]]], dtype=np.float32)
    pred = np.array([[[0.5, 0], [1, 2], [2, 2]], [[1, 1], [3, 0], [100, 100]]], dtype=np.float32)
    pad = np.array([[False, False, False], [False, False, True]])
    # |err|: frame 0 [[.5, 0], [0, 1], [0, 0]]; frame 1 [[0, 1], [2, 0], (pad)]. Threshold 0.1 * range = [1, 0.4].
    m = chunk_metrics(pred, truth, pad, value_range=np.array([10.0, 4.0]), tolerance=0.1, names=["a", "b"],
                      groups={"a": [0], "b": [1], "both": [0, 1]})
    assert m["frames"] == 2
    assert m["first_action_mae"]["per_dim"] == pytest.approx({"a": 0.25, "b": 0.5})
    assert m["first_action_mae"]["mean"] == pytest.approx(0.375)
    assert m["first_action_mae"]["per_group"]["both"] == pytest.approx(0.375)
    assert m["chunk_mae"]["per_dim"] == pytest.approx({"a": 2.5 / 5, "b": 2.0 / 5})
    assert m["chunk_mae"]["mean"] == pytest.approx(0.45)
    assert m["mae_by_chunk_step"]["all dims"] == pytest.approx([0.375, 0.75, 0.0])
    assert m["mae_by_chunk_step"]["a"] == pytest.approx([0.25, 1.0, 0.0])
    assert m["percent_close"]["per_dim"] == pytest.approx({"a": 1.0, "b": 0.5})
    assert m["percent_close"]["mean"] == pytest.approx(0.75)
    assert m["percent_close_chunk"]["per_dim"] == pytest.approx({"a": 0.8, "b": 0.6})
    assert m["percent_close_chunk"]["per_group"]["both"] == pytest.approx(0.7)


def test_chunk_step_never_valid_is_none():
    truth = np.zeros((1, 2, 1))
    m = chunk_metrics(truth + 1, truth, np.array([[False, True]]), np.ones(1), 0.05, ["x"], {"x": [0]})
    assert m["mae_by_chunk_step"]["x"] == [1.0, None]
    json.dumps(m, allow_nan=False)


def test_reference_predictors_and_ensemble_helpers():
    prev = np.array([[1.0, 2.0], [3.0, 4.0]])
    hold = hold_chunks(prev, 3)
    assert hold.shape == (2, 3, 2) and (hold[1] == [3.0, 4.0]).all()
    # Two members; frame 0 disagrees by 1 in each dim (population std of {0, 2} = 1), frame 1 agrees.
    preds = np.zeros((2, 2, 3, 2))
    preds[1, 0, 0] = [2.0, 2.0]
    assert ensemble_disagreement(preds) == pytest.approx([1.0, 0.0])
    # deviations (-1, 0, 1) and (-1, 1, 0): r = 1 / sqrt(2 * 2)
    assert pearson(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    assert pearson(np.array([1.0, 1.0]), np.array([1.0, 2.0])) is None


def test_action_layout_r1pro_and_named_dims(g1_v30):
    from behavior_smolvla.data.meta import DatasetMeta

    names, groups = action_layout(23, None)
    assert list(groups) == [g for g, _, _ in ACTION_GROUPS]
    assert groups["left_gripper"] == [14] and groups["right_arm"] == list(range(15, 22)) and len(names) == 23
    meta = DatasetMeta.load(g1_v30)  # a real 26-dim action with names: one group per named dim
    names, groups = action_layout(meta.action_dim, meta.action_names)
    assert names == meta.action_names and list(groups) == names and groups[names[3]] == [3]
    assert action_layout(4, None)[0] == ["action.0", "action.1", "action.2", "action.3"]


def test_spread_evenly_keeps_ends():
    assert spread_evenly(np.arange(10), 4).tolist() == [0, 3, 6, 9]
    assert spread_evenly(np.arange(3), 10).tolist() == [0, 1, 2]


# --- a demo-trained checkpoint --------------------------------------------------------------------------------


def _all_numbers(tree) -> list:
    if isinstance(tree, dict):
        return [x for v in tree.values() for x in _all_numbers(v)]
    if isinstance(tree, list):
        return [x for v in tree for x in _all_numbers(v)]
    return [tree]


def test_report_holds_every_metric_finite(single_report):
    out = Path(single_report["output_dir"])
    report = json.loads((out / "report.json").read_text())
    assert set(report["predictors"]) == {"policy", "state", "hold", "mean_action"} and report["primary"] == "policy"
    groups = [g for g, _, _ in ACTION_GROUPS]
    for name, m in report["predictors"].items():
        for metric in ("first_action_mae", "chunk_mae", "percent_close", "percent_close_chunk"):
            assert list(m[metric]["per_group"]) == groups, (name, metric)
            assert len(m[metric]["per_dim"]) == 23
        assert len(m["mae_by_chunk_step"]["all dims"]) == report["chunk_size"]
        values = _all_numbers({k: v for k, v in m.items()})
        assert values and all(isinstance(v, int | float) and math.isfinite(v) for v in values), name
        for metric in ("percent_close", "percent_close_chunk"):
            assert all(0.0 <= v <= 1.0 for v in _all_numbers(m[metric]))
    cfg = train_config(Path(report["checkpoints"][0]).parent.parent)
    assert report["episodes"] == cfg["dataset"]["val_episodes"]
    assert report["frames_evaluated"] == sum(report["frames_per_episode"].values()) > 0
    assert report["dataset"]["path"] == str(Path(cfg["dataset"]["path"]).resolve())
    assert "git_commit" in report and report["warnings"] == [] and report["overlapping_train_episodes"] == []
    assert (out / "summary.md").read_text().count("| right_gripper |") == 1
    plots = report["files"]["plots"]
    assert "error_vs_chunk_step.png" in plots
    assert {f"first_action_episode_{e}.png" for e in report["episodes"]} <= set(plots)
    for name in plots:
        data = (out / name).read_bytes()
        assert data[:8] == PNG_MAGIC and len(data) > 20_000, name


def _episode_actions(dataset: Path, episodes: list[int]) -> dict[int, np.ndarray]:
    """float64 [T, 23] actions per episode, read straight from the parquet files (not through the project's reader)."""
    out = {}
    for path in sorted((dataset / "data").rglob("*.parquet")):
        table = pq.read_table(path, columns=["episode_index", "action"])
        ep_col = table.column("episode_index").to_numpy()
        for ep in np.unique(ep_col):
            if int(ep) in episodes:
                rows = table.filter(table.column("episode_index") == ep).column("action").to_pylist()
                out[int(ep)] = np.asarray(rows, dtype=np.float64)
    assert sorted(out) == sorted(episodes)
    return out


def test_reference_predictors_equal_direct_computation(single_report):
    cfg = train_config(Path(single_report["checkpoints"][0]).parent.parent)
    dataset = Path(cfg["dataset"]["path"])
    chunk, tol = single_report["chunk_size"], single_report["tolerance"]
    assert single_report["chunk_stride"] == 1 and single_report["frame_stride"] == 1
    train = np.concatenate(list(_episode_actions(dataset, cfg["dataset"]["train_episodes"]).values()))
    mean, value_range = train.mean(0), np.maximum(train.max(0) - train.min(0), 1e-3)  # metrics.RANGE_FLOOR
    first = {"hold": [], "mean_action": []}
    chunk_err = {"hold": [], "mean_action": []}
    chunk_valid = []
    for ep, actions in _episode_actions(dataset, single_report["episodes"]).items():
        length = len(actions)
        for t in range(length):
            held = actions[max(t - 1, 0)]
            for d in range(chunk):
                if t + d >= length:
                    continue
                truth = actions[t + d]
                for name, pred in (("hold", held), ("mean_action", mean)):
                    err = np.abs(pred - truth)
                    chunk_err[name].append(err)
                    if d == 0:
                        first[name].append(err)
    names = single_report["action_names"]
    for name in ("hold", "mean_action"):
        m = single_report["predictors"][name]
        first_err, all_err = np.array(first[name]), np.array(chunk_err[name])
        assert m["frames"] == len(first_err)
        np.testing.assert_allclose([m["first_action_mae"]["per_dim"][n] for n in names], first_err.mean(0),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose([m["chunk_mae"]["per_dim"][n] for n in names], all_err.mean(0),
                                   rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose([m["percent_close"]["per_dim"][n] for n in names],
                                   (first_err <= tol * value_range).mean(0), atol=1e-9)
        np.testing.assert_allclose(m["percent_close"]["mean"], (first_err <= tol * value_range).mean(), atol=1e-9)
    np.testing.assert_allclose(single_report["action_stats"]["mean"], mean, rtol=1e-5, atol=1e-6)


def test_ensemble_of_two_checkpoints(demo_ckpt_run, tmp_path):
    cfg = train_config(demo_ckpt_run)["dataset"]
    members = step_checkpoints(demo_ckpt_run)[-2:]
    report = evaluate_checkpoints(members, cfg["path"], cfg["val_episodes"], output_dir=tmp_path, max_frames=40,
                                  device="cpu", progress=False)
    assert report["primary"] == "ensemble" and report["frames_evaluated"] == 40
    assert [m["checkpoint"] for m in report["members"]] == [str(p.resolve()) for p in members]
    ens = report["ensemble"]
    assert ens["size"] == 2 and ens["disagreement"]["mean"] > 0
    assert -1.0 <= ens["disagreement_error_correlation"] <= 1.0
    # The ensemble's prediction is the members' mean: check against the saved per-member predictions.
    saved = np.load(tmp_path / "predictions.npz")
    pred, truth = saved["predictions"].astype(np.float64).mean(0), saved["truth"].astype(np.float64)
    assert report["predictors"]["ensemble"]["first_action_mae"]["mean"] == pytest.approx(
        np.abs(pred[:, 0] - truth[:, 0]).mean(), rel=1e-5)
    assert saved["disagreement"].shape == (40,)


def test_training_episodes_give_a_warning_not_an_error(demo_ckpt_run, tmp_path):
    cfg = train_config(demo_ckpt_run)["dataset"]
    seen = cfg["train_episodes"][0]
    report = evaluate_checkpoints([demo_ckpt_run], cfg["path"], [seen, cfg["val_episodes"][0]], output_dir=tmp_path,
                                  max_frames=8, device="cpu", progress=False)
    assert report["overlapping_train_episodes"] == [seen]
    assert len(report["warnings"]) == 1 and str(seen) in report["warnings"][0]


# --- validation during training ---------------------------------------------------------------------------------


def test_validate_is_repeatable_and_leaves_the_rng_alone(demo_ckpt_run, tmp_path):
    from behavior_smolvla.policy.smolvla import load_policy_bundle

    bundle = load_policy_bundle(demo_ckpt_run, device="cpu")
    d = bundle.train_config["dataset"]
    ds = bundle.inputs.eval_dataset(bundle.inputs.load_meta(d["path"]), d["val_episodes"])
    bundle.policy.train()  # as inside the training loop
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    # Twice on the same frames and seeds (once in training mode, once in eval mode): the same numbers.
    first = validate(bundle, ds, max_frames=12, seed=7, output_dir=tmp_path / "plots")
    assert torch.equal(torch.rand(3), expected_next), "validate() consumed the global RNG"
    assert bundle.policy.training, "validate() must give the policy back in training mode"
    bundle.policy.eval()
    second = validate(bundle, ds, max_frames=12, seed=7)
    assert not bundle.policy.training
    for key in ("val_loss", "first_action_mae", "chunk_mae", "percent_close", "mean_action_first_action_mae"):
        assert math.isfinite(first[key]) and first[key] == pytest.approx(second[key], rel=1e-6), key
    assert first["val_loss"] > 0 and 0.0 <= first["percent_close"] <= 1.0 and first["frames"] == 12
    assert set(first["plots"]) == {"error_vs_chunk_step", *(f"first_action_episode_{e}" for e in d["val_episodes"])}
    for path in first["plots"].values():
        assert Path(path).read_bytes()[:8] == PNG_MAGIC
    assert second["plots"] == {}


@pytest.mark.slow
def test_validation_evaluation_and_serving_draw_chunks_alike_for_each_strategy(demo_ckpt_run, tmp_path):
    """For zero noise, one draw and the mean of 3 draws, one frame's chunk is the same through validation during
    training (``validate`` / ``predict_frames``), ``evaluate_checkpoints`` (its predictions.npz and report) and the
    served policy (``BehaviorPolicy.act_chunk`` on the evaluator's observation of that frame), with the same seed.

    Evaluation and validation read the frame through the evaluation reader; the server gets the frame as the
    evaluator sends it and replays the training colour path on it, which rounds differently (test_serve bounds
    that), so serving is compared with ``predict_chunk`` on the served batch, and the evaluation with
    ``predict_chunk`` on the reader's batch: every path hands the strategy and the seed on unchanged."""
    from behavior_smolvla.data.dataset import REFERENCE_KEY, BehaviorDataset
    from behavior_smolvla.evaluation.engine import predict_frames, select_eval_frames
    from behavior_smolvla.policy.inference import Inference
    from behavior_smolvla.policy.smolvla import load_policy_bundle
    from behavior_smolvla.r1pro import EVALUATOR_RGB_KEYS, camera_role
    from behavior_smolvla.serving.observation import PROPRIO_KEY, TASK_ID_KEY
    from behavior_smolvla.serving.policy import BehaviorPolicy

    bundle = load_policy_bundle(demo_ckpt_run, device="cpu")
    inputs, d, seed = bundle.inputs, bundle.train_config["dataset"], 5
    episode = d["val_episodes"][0]
    meta = inputs.load_meta(d["path"])
    ds = inputs.eval_dataset(meta, [episode])
    frames = select_eval_frames(ds, inputs.chunk_size, inputs.frame_stride, inputs.frame_stride, max_frames=1)
    index = int(frames.indices[0])
    sample = ds.load_sample(index)
    keys = [*inputs.cameras, "observation.state", *([REFERENCE_KEY] if REFERENCE_KEY in sample else [])]
    read = {**{k: sample[k][None] for k in keys}, "task": [sample["task"]]}
    raw_state = BehaviorDataset(meta, [episode], cameras=[], chunk_size=1).numeric_sample(index)["observation.state"]
    obs = {PROPRIO_KEY: raw_state.numpy(), TASK_ID_KEY: np.array([{t: i for i, t in meta.tasks.items()}[sample["task"]]])}
    for camera in inputs.cameras:
        rgb = (sample[camera] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        obs[EVALUATOR_RGB_KEYS[camera_role(camera)]] = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])

    chunks = {}
    for inference in (Inference("zero", 1), Inference("sample", 1), Inference("sample", 3)):
        label = inference.describe()
        expected = bundle.predict_chunk(read, inference, noise_seed=seed)[0]
        validated, _ = predict_frames([bundle], [(ds, [0])], frames, seed=seed, inference=inference)
        np.testing.assert_allclose(validated[0, 0], expected, rtol=0, atol=1e-5, err_msg=label)
        report = evaluate_checkpoints([demo_ckpt_run], d["path"], [episode], output_dir=tmp_path / label, max_frames=1,
                                      seed=seed, inference=inference, device="cpu", progress=False)
        assert report["inference"] == inference.to_dict() and f"inference: **{label}**" in (
            tmp_path / label / "summary.md").read_text()
        evaluated = np.load(tmp_path / label / "predictions.npz")["predictions"]
        np.testing.assert_allclose(evaluated[0, 0], expected, rtol=0, atol=1e-5, err_msg=label)
        val = validate(bundle, ds, max_frames=1, seed=seed, inference=inference)
        assert val["chunk_mae"] == pytest.approx(report["predictors"]["policy"]["chunk_mae"]["mean"], abs=1e-5)

        policy = BehaviorPolicy(bundle, noise_seed=seed, inference=inference)
        served_batch = policy.spec(obs)
        assert torch.equal(served_batch["observation.state"][0], sample["observation.state"])
        served = policy.act_chunk(obs, bundle.chunk_size)
        np.testing.assert_allclose(served, bundle.predict_chunk(served_batch, inference, noise_seed=seed)[0],
                                   rtol=0, atol=1e-5, err_msg=label)
        assert policy.metadata()["inference"] == inference.to_dict()
        chunks[label] = expected
    # The three strategies are three different chunks (the comparison above would pass if the strategy were lost).
    assert min(np.abs(a - b).max() for a, b in [(chunks["zero noise"], chunks["one draw"]),
                                                 (chunks["one draw"], chunks["mean of 3 draws"])]) > 1e-3


# --- learning: the full demo ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full_demo_run(demo_run) -> Path:
    """The full ``smolvla-train --demo`` run (conftest, a real subprocess with the built-in settings)."""
    return demo_run


@pytest.mark.slow
def test_demo_policy_beats_the_mean_action_on_held_out_episodes(full_demo_run, tmp_path):
    cfg = train_config(full_demo_run)["dataset"]
    report = evaluate_checkpoints([full_demo_run], cfg["path"], cfg["val_episodes"], output_dir=tmp_path,
                                  device="cpu", progress=False)
    assert report["overlapping_train_episodes"] == []
    policy = report["predictors"]["policy"]["first_action_mae"]["mean"]
    baseline = report["predictors"]["mean_action"]["first_action_mae"]["mean"]
    assert policy < baseline, (policy, baseline)
