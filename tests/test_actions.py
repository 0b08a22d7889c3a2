"""Delta actions, per-step normalisation, the `state` baseline and honest lr schedules on resume.

The targets and statistics are checked against direct numpy computations on the parquet files; the delta checkpoint
is a real smolvla-train run on the tiny backbone, loaded by lerobot's own loaders.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from cli_runner import CliResult, run_in_process

from behavior_smolvla.actions import REFERENCE_KEY, chunk_action_stats, to_absolute, to_delta
from behavior_smolvla.config import DataConfig, PolicyConfig
from behavior_smolvla.data.meta import DatasetMeta
from behavior_smolvla.inputs import PolicyInputs

BIN = Path(sys.executable).parent

# behavior_r1pro.md, "Action dims and the state dims that hold the same joints": (action slice, state slice).
R1PRO_2025 = [((3, 7), (236, 240)), ((7, 14), (158, 165)), ((15, 22), (197, 204))]
R1PRO_2026 = [((3, 7), (53, 57)), ((7, 14), (3, 10)), ((15, 22), (28, 35))]


def _raw_episode(meta: DatasetMeta, ep: int) -> tuple[np.ndarray, np.ndarray]:
    """(state [T, D], action [T, A]) of one episode read straight from its parquet file."""
    info = meta.episodes[ep]
    table = pq.read_table(info.data_path, columns=[meta.state_key, meta.action_key])
    state = np.array(table.column(meta.state_key).to_pylist(), dtype=np.float32)[info.row_start:info.row_stop]
    action = np.array(table.column(meta.action_key).to_pylist(), dtype=np.float32)[info.row_start:info.row_stop]
    return state, action


def _expected_reference(action_dim: int, pairs) -> list:
    ref = [None] * action_dim
    for (a0, a1), (s0, _) in pairs:
        ref[a0:a1] = range(s0, s0 + a1 - a0)
    return ref


@pytest.mark.parametrize("which", ["synthetic_2025", "synthetic_2026", "g1_v30"])
def test_delta_targets_and_inverse_equal_numpy(which, request):
    root = request.getfixturevalue(which)
    meta = DatasetMeta.load(root)
    chunk, stride = 5, 3
    inputs = PolicyInputs.resolve(meta, DataConfig(image_size=64, frame_stride=stride, action_mode="delta"),
                                  PolicyConfig(chunk_size=chunk))
    if which == "g1_v30":  # by equal names: every one of the 26 action names is a state name, same order
        expected = list(range(26))
    else:
        expected = _expected_reference(23, R1PRO_2025 if which == "synthetic_2025" else R1PRO_2026)
    assert list(inputs.action_reference) == expected
    assert (inputs.action_mode, inputs.action_norm) == ("delta", "per-step")
    saved = PolicyInputs.from_dict(json.loads(json.dumps(inputs.to_dict())), "test")
    assert saved == inputs

    ep = sorted(meta.episodes)[1]
    reader = inputs.dataset(meta, [ep])
    state, action = _raw_episode(meta, ep)
    ref = np.array([0 if r is None else r for r in expected])
    has = np.array([r is not None for r in expected])
    for i in (0, 3, len(reader) - 1):
        sample = reader.numeric_sample(i)
        t = i * stride
        steps = np.minimum(t + np.arange(chunk) * stride, len(action) - 1)
        reference = np.where(has, state[t, ref], 0).astype(np.float32)
        np.testing.assert_array_equal(sample[REFERENCE_KEY].numpy(), reference)
        delta = to_delta(sample["action"][None], sample[REFERENCE_KEY][None])[0].numpy()
        np.testing.assert_allclose(delta, action[steps] - np.where(has, state[t, ref], 0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(to_absolute(delta[None], reference[None])[0], action[steps], rtol=0, atol=1e-6)
    # Absolute mode: the training reader's samples are unchanged (no extra key), the contract still knows the
    # reference (for the `state` baseline).
    absolute = PolicyInputs.resolve(meta, DataConfig(image_size=64, frame_stride=stride), PolicyConfig(chunk_size=chunk))
    assert absolute.action_norm == "global" and absolute.delta_reference is None
    assert REFERENCE_KEY not in absolute.dataset(meta, [ep]).numeric_sample(0)


def test_per_step_stats_equal_direct_computation(g1_v30):
    meta = DatasetMeta.load(g1_v30)
    chunk, stride = 6, 2
    inputs = PolicyInputs.resolve(meta, DataConfig(image_size=64, frame_stride=stride, action_mode="delta"),
                                  PolicyConfig(chunk_size=chunk))
    reader = inputs.dataset(meta, [0, 3, 5])
    targets, valid = [], []
    for ep in (0, 3, 5):
        state, action = _raw_episode(meta, ep)
        for t in range(0, len(action), stride):
            steps = t + np.arange(chunk) * stride
            targets.append(action[np.minimum(steps, len(action) - 1)].astype(np.float64) - state[t].astype(np.float64))
            valid.append(steps < len(action))
    targets, valid = np.stack(targets), np.stack(valid)
    assert len(targets) == len(reader)
    stats = chunk_action_stats(reader, per_step=True, batch=37)  # blocks that cut episodes: streaming is exact
    for k in range(chunk):
        x = targets[valid[:, k], k]
        np.testing.assert_allclose(stats["mean"][k], x.mean(0), rtol=0, atol=1e-6)
        np.testing.assert_allclose(stats["std"][k], x.std(0), rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(stats["min"][k], x.min(0).astype(np.float32))
        np.testing.assert_array_equal(stats["max"][k], x.max(0).astype(np.float32))
    flat = chunk_action_stats(reader, per_step=False)
    np.testing.assert_allclose(flat["mean"], targets[valid].mean(0), rtol=0, atol=1e-6)
    np.testing.assert_allclose(flat["std"], targets[valid].std(0), rtol=1e-4, atol=1e-6)


def test_reference_file_and_errors(g1_v30, tmp_path):
    from behavior_smolvla.errors import ConfigError

    meta = DatasetMeta.load(g1_v30)
    f = tmp_path / "ref.yaml"
    f.write_text("action_reference:\n  0: 0\n  kRightElbow: kRightElbow\n  2: null\n")
    inputs = PolicyInputs.resolve(meta, DataConfig(image_size=64, action_mode="delta", action_reference=str(f)),
                                  PolicyConfig(chunk_size=4))
    assert inputs.action_reference[:3] == (0, None, None) and inputs.action_reference[10] == 10
    assert sum(r is not None for r in inputs.action_reference) == 2
    f.write_text("action_reference:\n  nope: 0\n")
    with pytest.raises(ConfigError, match="--action-reference .*unknown action dim 'nope'"):
        PolicyInputs.resolve(meta, DataConfig(action_mode="delta", action_reference=str(f)), PolicyConfig())
    with pytest.raises(ConfigError, match="--action-mode"):
        PolicyInputs.resolve(meta, DataConfig(action_mode="relative"), PolicyConfig())


def test_baselines_on_a_hand_computed_case():
    from behavior_smolvla.evaluation.engine import EvalFrames, score

    # 2 frames, chunk 2, 3 action dims; dim 0 references a state dim, dims 1-2 do not; dim 2 is constant (range 0).
    truth = np.array([[[1.0, 5.0, 2.0], [1.2, 5.0, 2.0]], [[0.5, 7.0, 2.0], [0.4, 7.0, 2.0]]], dtype=np.float32)
    frames = EvalFrames(indices=np.arange(2), episode_index=np.zeros(2, int), frame_index=np.arange(2),
                        timestamp=np.zeros(2, np.float32), truth=truth, is_pad=np.zeros((2, 2), bool),
                        previous_action=np.array([[0.9, 4.0, 2.0], [0.6, 6.0, 2.0]], np.float32),
                        reference_state=np.array([[1.1, 0.0, 0.0], [0.5, 0.0, 0.0]], np.float32))
    stats = {"mean": np.array([0.0, 6.0, 2.0], np.float32), "min": np.array([-1.0, 4.0, 2.0], np.float32),
             "max": np.array([1.0, 8.0, 2.0], np.float32)}
    pred = truth.copy()
    pred[:, :, 2] += 4e-5  # within 0.05 x the range floor 1e-3 on the constant dim
    out = score(pred, frames, stats, 0.05, ["a", "b", "c"], {"a": [0], "b": [1], "c": [2]}, (0, None, None))
    assert list(out) == ["policy", "state", "hold", "mean_action"]
    st = out["state"]["first_action_mae"]["per_dim"]
    # state: dim 0 = current state (1.1, 0.5) vs truth (1.0, 0.5); dim 1 = mean 6 vs (5, 7); dim 2 = mean 2.
    assert st["a"] == pytest.approx(0.05) and st["b"] == pytest.approx(1.0) and st["c"] == 0.0
    assert out["state"]["chunk_mae"]["per_dim"]["a"] == pytest.approx((0.1 + 0.1 + 0.0 + 0.1) / 4)
    hold = out["hold"]["first_action_mae"]["per_dim"]
    assert hold["a"] == pytest.approx(0.1) and hold["b"] == pytest.approx(1.0)
    assert out["mean_action"]["first_action_mae"]["per_dim"]["a"] == pytest.approx(0.75)
    assert out["policy"]["percent_close"]["per_dim"]["c"] == 1.0  # constant dim judged by its error, not 0%
    # Without a reference there is no `state` predictor.
    assert "state" not in score(pred, frames, stats, 0.05, ["a", "b", "c"], {"a": [0], "b": [1], "c": [2]}, None)


# --- a real delta-mode run ------------------------------------------------------------------------------------


def _train(*args: str, timeout: int = 600, in_process: bool = False) -> subprocess.CompletedProcess | CliResult:
    """``smolvla-train ARGS`` in a subprocess, or (``in_process``) through the same Typer app in this process
    (``tests/cli_runner.py``), for resumes whose printed schedule is checked: an interpreter start adds nothing."""
    env = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    import os

    if in_process:
        proc = run_in_process("smolvla-train", list(args), env={"COLUMNS": "200"})
    else:
        proc = subprocess.run([str(BIN / "smolvla-train"), *args], capture_output=True, text=True,
                              env={**os.environ, **env}, timeout=timeout)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _base(dataset: Path, vlm: Path, out: Path, *extra: str) -> list[str]:
    return ["--dataset-path", str(dataset), "--from-scratch", "--vlm-model", str(vlm), "--output-dir", str(out),
            "--image-size", "64", "--chunk-size", "6", "--frame-stride", "2", "--batch-size", "4", "--num-workers",
            "0", "--device", "cpu", "--log-steps", "1", "--wandb-disable", "--lr", "1e-3", "--warmup-steps", "2",
            "--decay-steps", "100", "--decay-lr", "1e-4", "--action-mode", "delta", "--val-episodes", "5", *extra]


def _records(run: Path) -> dict[int, dict]:
    from behavior_smolvla.training.tracking import read_metrics

    return {r["step"]: r for r in read_metrics(run) if "loss" in r}


def _copy_run(run: Path, to: Path, keep_step: int) -> Path:
    """A copy of ``run`` as it was at ``keep_step``: later checkpoints and metrics removed."""
    shutil.copytree(run, to, symlinks=True)
    for ck in (to / "checkpoints").iterdir():
        if ck.name.isdigit() and int(ck.name) > keep_step:
            shutil.rmtree(ck)
    lines = [json.loads(x) for x in (to / "metrics.jsonl").read_text().splitlines() if x.strip()]
    (to / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines if r.get("step", 0) <= keep_step))
    return to / "checkpoints" / f"{keep_step:06d}"


@pytest.fixture(scope="module")
def delta_run(synthetic_2026, tiny_vlm, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("delta") / "run"
    proc = _train(*_base(synthetic_2026, tiny_vlm, out, "--max-steps", "6", "--save-steps", "3"))
    return out, proc.stdout


@pytest.mark.slow
def test_delta_checkpoint_loads_in_lerobot_and_train_eval_serve_agree(delta_run, tiny_vlm):
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import policy_action_to_transition, transition_to_policy_action

    from behavior_smolvla.policy.inference import Inference
    from behavior_smolvla.policy.smolvla import load_policy_bundle, to_policy_batch
    from behavior_smolvla.r1pro import EVALUATOR_RGB_KEYS, camera_role
    from behavior_smolvla.serving.observation import PROPRIO_KEY, TASK_ID_KEY
    from behavior_smolvla.serving.policy import BehaviorPolicy
    from behavior_smolvla.training.build import model_batch

    run, stdout = delta_run
    assert ("actions: delta (action - current state) where 18 of 23 action dims reference a raw-state dim: 3:7 <- state "
            "53:57, 7:14 <- state 3:10, 15:22 <- state 28:35; the other dims absolute; per-step normalisation") in stdout
    assert ("schedule: --decay-steps 100 is longer than the schedule's 6 steps: lerobot shortens it to warm-up 0 "
            "(from 2) and cosine decay 6 steps") in stdout
    assert "the randomly initialised VLM trains too" in stdout  # from scratch on a backbone without weights
    bundle = load_policy_bundle(run, device="cpu")
    inputs = bundle.inputs
    assert (inputs.action_mode, inputs.action_norm) == ("delta", "per-step")
    pretrained = run / "checkpoints" / "last" / "pretrained_model"
    policy = SmolVLAPolicy.from_pretrained(pretrained)
    pre = PolicyProcessorPipeline.from_pretrained(pretrained, config_filename="policy_preprocessor.json",
                                                  overrides={"tokenizer_processor": {"tokenizer_name": str(tiny_vlm)}})
    post = PolicyProcessorPipeline.from_pretrained(pretrained, config_filename="policy_postprocessor.json",
                                                   to_transition=policy_action_to_transition,
                                                   to_output=transition_to_policy_action)
    unnorm = next(s for s in post.steps if getattr(s, "stats", None))
    assert np.shape(unnorm.stats["action"]["mean"]) == (6, 23)  # per-step statistics survive lerobot's save/load
    assert bundle.action_stats["mean"].shape == (23,)

    meta = inputs.load_meta(bundle.train_config["dataset"]["path"])
    eval_ds = inputs.eval_dataset(meta, [5])
    sample = eval_ds.load_sample(4)
    # The evaluator's observation of that frame: its raw proprio; the images are replaced below by the served ones
    # (the image path's own agreement is test_serve's; here the action path is compared exactly).
    obs = {PROPRIO_KEY: _raw_episode(meta, 5)[0][4], TASK_ID_KEY: np.array([1])}
    for camera in inputs.cameras:
        rgb = (sample[camera] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
        obs[EVALUATOR_RGB_KEYS[camera_role(camera)]] = np.concatenate([rgb, np.full((*rgb.shape[:2], 1), 255,
                                                                                    np.uint8)], -1)
    one_draw = Inference("sample", 1)  # seeded noise below, as lerobot draws it
    served_policy = BehaviorPolicy(bundle, noise_seed=0, inference=one_draw)
    served_batch = served_policy.spec(obs)
    np.testing.assert_array_equal(served_batch[REFERENCE_KEY][0].numpy(), sample[REFERENCE_KEY].numpy())
    assert torch.equal(served_batch["observation.state"][0], sample["observation.state"])
    served = served_policy.act_chunk(obs, 6)

    eval_batch = {**{c: served_batch[c] for c in inputs.cameras}, "observation.state": sample["observation.state"][None],
                  REFERENCE_KEY: sample[REFERENCE_KEY][None], "task": [sample["task"]]}
    evaluated = bundle.predict_chunk(eval_batch, one_draw, noise_seed=0)[0]
    # lerobot alone: its processors and policy, then the reference state added back.
    noise = torch.randn((1, 6, policy.config.max_action_dim), generator=torch.Generator().manual_seed(0))
    policy.eval()
    with torch.inference_mode():
        raw = policy.predict_action_chunk(pre(to_policy_batch(eval_batch, inputs.camera_map)), noise=noise)
    by_lerobot = (post(raw)[0] + sample[REFERENCE_KEY]).numpy()
    np.testing.assert_allclose(evaluated, by_lerobot, rtol=0, atol=1e-5)
    np.testing.assert_allclose(served, evaluated, rtol=0, atol=1e-5)
    # The training path's targets on that frame, unnormalised and with the reference added back, are the recorded
    # (absolute) chunk the evaluation scores against.
    train_ds = inputs.dataset(meta, [5])
    tsample = train_ds.load_sample(2)  # frame 4 at stride 2
    assert int(tsample["frame_index"]) == int(sample["frame_index"])
    batch = {k: (v[None] if isinstance(v, torch.Tensor) else [v]) for k, v in tsample.items()}
    targets = model_batch(bundle.preprocessor, batch, inputs.camera_map, uint8_frames=False)["action"]
    back = post(targets)[0] + tsample[REFERENCE_KEY]
    truth = sample["action"][::2].numpy()
    np.testing.assert_allclose(back.numpy(), truth, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_delta_exact_resume_and_honest_schedules(delta_run, tiny_vlm, tmp_path):
    from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig

    run, _ = delta_run
    full = _records(run)
    # Exact resume in delta mode: from checkpoint 3 of a copy, steps 4-6 give the same losses bit for bit.
    ck3 = _copy_run(run, tmp_path / "again", 3)
    _train("--resume", str(ck3))
    again = _records(tmp_path / "again")
    assert sorted(again) == list(range(1, 7))
    for s in range(1, 7):
        assert again[s]["loss"] == full[s]["loss"], s

    def lr_curve(schedule_steps: int, steps) -> list[float]:
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1e-3)
        lam = CosineDecayWithWarmupSchedulerConfig(num_warmup_steps=2, num_decay_steps=100, peak_lr=1e-3,
                                                   decay_lr=1e-4).build(opt, schedule_steps).lr_lambdas[0]
        return [1e-3 * lam(s) for s in steps]

    # The first run was 6 steps long: lerobot shortened --decay-steps 100, and the start said so.
    assert [full[s]["lr"] for s in range(1, 7)] == pytest.approx(lr_curve(6, range(1, 7)))
    # Resume with a larger --max-steps: the saved 6-step schedule continues and the final lr is held.
    ck6 = _copy_run(run, tmp_path / "longer", 6)
    proc = _train("--resume", str(ck6), "--max-steps", "9", in_process=True)
    assert ("--max-steps 9 differs from the 6 steps the lr schedule was built for: it continues unchanged then "
            "holds lr 0.0001 from step 6 to 9") in proc.stdout
    longer = _records(tmp_path / "longer")
    assert [longer[s]["lr"] for s in (7, 8, 9)] == pytest.approx([1e-4] * 3)
    # ... or, with --reschedule, it is rebuilt for 9 steps.
    ck6 = _copy_run(run, tmp_path / "rebuilt", 6)
    proc = _train("--resume", str(ck6), "--max-steps", "9", "--reschedule", in_process=True)
    assert "schedule: --reschedule: rebuilt for 9 steps (was 6)" in proc.stdout
    rebuilt = _records(tmp_path / "rebuilt")
    assert [rebuilt[s]["lr"] for s in (7, 8, 9)] == pytest.approx(lr_curve(9, (7, 8, 9)))
