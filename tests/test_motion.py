"""A velocity state map end to end on the real G1 data: a few training steps with ``identity-motion`` (26 joint
positions + their velocities over one policy step), the checkpoint's contract, and the server's per-session proprio
history building the same observation.state as the evaluation reader, frame by frame."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from behavior_smolvla.data.meta import DatasetMeta
from behavior_smolvla.inputs import PolicyInputs
from behavior_smolvla.serving.observation import PROPRIO_KEY

STRIDE = 3
HELD_OUT = 7


@pytest.fixture(scope="module")
def motion_run(g1_v30: Path, tiny_vlm: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 optimizer steps of delta actions at a frame stride of 3 with the identity-motion map (52-dim state)."""
    from behavior_smolvla.config import TrainConfig, apply_overrides
    from behavior_smolvla.training.loop import train

    out = tmp_path_factory.mktemp("motion") / "run"
    cfg = TrainConfig()
    apply_overrides(cfg, {
        "dataset_path": str(g1_v30), "episodes": "0-1", "val_episodes": str(HELD_OUT), "state_map": "identity-motion",
        "action_mode": "delta", "frame_stride": STRIDE, "chunk_size": 4, "image_size": 32, "from_scratch": True,
        "vlm_model": str(tiny_vlm), "output_dir": str(out), "batch_size": 2, "num_workers": 0, "device": "cpu", "max_steps": 3,
        "save_steps": 3, "log_steps": 1, "wandb_disable": True,
    }, "test")
    result = train(cfg, console=Console(file=io.StringIO()))
    assert result.steps == 3
    return out


@pytest.mark.slow
def test_training_with_velocities_saves_a_contract_that_round_trips(motion_run, g1_v30):
    from behavior_smolvla.policy.smolvla import load_policy_bundle

    bundle = load_policy_bundle(motion_run, device="cpu")
    inputs = bundle.inputs
    m = inputs.state_map
    assert m.name == "identity-motion" and inputs.policy_state_dim == 52 and m.timing == (30.0, STRIDE)
    assert m.names[26:] == [f"{n}.vel" for n in m.names[:26]] and m.lag_frames == STRIDE
    assert bundle.policy.config.max_state_dim == 52  # widened past SmolVLA's 32 state slots
    assert PolicyInputs.from_dict(json.loads(json.dumps(inputs.to_dict())), "test") == inputs
    # The pre-processor normalises the state with the training reader's stats of the mapped state (velocities
    # included), as saved in the checkpoint.
    reader = inputs.dataset(DatasetMeta.load(g1_v30), [0, 1])
    normalizer = next(step for step in bundle.preprocessor.steps if getattr(step, "stats", None))
    for key in ("mean", "std"):
        np.testing.assert_allclose(np.asarray(normalizer.stats["observation.state"][key]),
                                   reader.stats["observation.state"][key], rtol=1e-6, err_msg=key)


@pytest.mark.slow
def test_served_policy_builds_the_readers_state_frame_by_frame(motion_run, g1_v30):
    """BehaviorPolicy fed the held-out episode's proprio one frame per step sends the model exactly the evaluation
    reader's observation.state (zero motion at the first step, after reset() too); with chunk requests of
    lag frames the observations land on the training reader's frames and still match."""
    from behavior_smolvla.serving.policy import load_policy

    served = load_policy(motion_run, device="cpu", n_action_steps=1, noise_seed=0)
    seen: list[np.ndarray] = []
    predict = served.model.predict_chunk

    def spy(batch, *args, **kwargs):  # the real model call, with the state it was given recorded
        seen.append(batch["observation.state"].numpy()[0].copy())
        return predict(batch, *args, **kwargs)

    served.model.predict_chunk = spy
    meta = DatasetMeta.load(g1_v30)
    reader = served.model.inputs.eval_dataset(meta, [HELD_OUT])
    info = meta.episodes[HELD_OUT]
    column = pq.read_table(info.data_path, columns=["observation.state"]).column("observation.state")
    raw_state = np.asarray(column.to_pylist(), dtype=np.float32)[info.row_start:info.row_stop]
    image_key = served.spec.camera_sources[served.model.inputs.cameras[0]]  # the G1's one camera: by position
    image = np.zeros((48, 64, 3), dtype=np.uint8)

    def observation(frame: int) -> dict:
        return {PROPRIO_KEY: raw_state[frame], image_key: image}

    frames = list(range(8))
    for f in frames:
        served.act(observation(f))
    expected = [reader.numeric_sample(f)["observation.state"].numpy() for f in frames]
    np.testing.assert_array_equal(seen[0][26:], 0.0)
    np.testing.assert_allclose(np.stack(seen), np.stack(expected), rtol=1e-6, atol=1e-6)

    # A new episode: the history starts again (zero motion), even though the proprio differs from the last one.
    served.reset()
    seen.clear()
    served.act(observation(20))
    np.testing.assert_array_equal(seen[0][26:], 0.0)

    # Chunk requests of `lag` actions: the next observation comes lag frames later (steps 0, 3, 6, 9).
    served.reset()
    seen.clear()
    for f in range(0, 12, STRIDE):
        served.step({**observation(f), "__action_chunk_size__": STRIDE}, STRIDE)
    expected = [reader.numeric_sample(f)["observation.state"].numpy() for f in range(0, 12, STRIDE)]
    np.testing.assert_allclose(np.stack(seen), np.stack(expected), rtol=1e-6, atol=1e-6)


@pytest.mark.slow
def test_velocities_only_with_absolute_actions_warns_in_one_line(g1_v30, tiny_vlm, tmp_path):
    """``motion-only`` drops the positions: with absolute actions the policy cannot see where the joints are, so the
    run says so in one line (and still trains: an action need not be a joint position)."""
    from behavior_smolvla.config import TrainConfig, apply_overrides
    from behavior_smolvla.training.loop import train

    cfg = TrainConfig()
    apply_overrides(cfg, {
        "dataset_path": str(g1_v30), "episodes": "0", "state_map": "motion-only", "action_mode": "absolute",
        "frame_stride": STRIDE, "chunk_size": 4, "image_size": 32, "from_scratch": True, "vlm_model": str(tiny_vlm),
        "output_dir": str(tmp_path / "run"), "batch_size": 2, "num_workers": 0, "device": "cpu", "max_steps": 1,
        "save_steps": 1, "log_steps": 1, "wandb_disable": True,
    }, "test")
    out = io.StringIO()
    assert train(cfg, console=Console(file=out, width=400)).steps == 1
    warnings = [line for line in out.getvalue().splitlines() if line.startswith("warning: --state-map motion-only")]
    assert len(warnings) == 1 and "--action-mode delta" in warnings[0], out.getvalue()
    from behavior_smolvla.policy.smolvla import load_policy_bundle

    inputs = load_policy_bundle(tmp_path / "run", device="cpu").inputs
    assert inputs.state_map.name == "motion-only" and inputs.policy_state_dim == 26 and inputs.action_mode == "absolute"
