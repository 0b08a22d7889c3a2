"""The policy layer on lerobot's real SmolVLA, built on the tiny offline VLM backbone (CPU, a few seconds)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import json
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import yaml

from behavior_smolvla.config import PolicyConfig
from behavior_smolvla.errors import ConfigError, DatasetError, PolicyLoadError
from behavior_smolvla.inputs import PolicyInputs, policy_camera_keys
from behavior_smolvla.policy.backbone import build_tiny_vlm, tiny_vlm_vocabulary
from behavior_smolvla.policy.inference import Inference
from behavior_smolvla.policy.smolvla import create_policy, load_policy_bundle, resolve_device, save_policy, to_policy_batch
from behavior_smolvla.state_maps.maps import load_state_map

CAMERAS = ["observation.images.rgb.head", "observation.images.rgb.left_wrist", "observation.images.rgb.right_wrist"]
CHUNK, STATE, ACTION, B = 10, 32, 23, 4
TASK = "Pick up the yellow bottle on the table."


def _stats(dim: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dim).astype(np.float32)
    std = (0.5 + rng.random(dim)).astype(np.float32)
    return {"mean": mean, "std": std, "min": mean - 3 * std, "max": mean + 3 * std}


def _inputs(state_dim: int = STATE, chunk_size: int = CHUNK, n_action_steps: int | None = None) -> PolicyInputs:
    """The input contract of these tests: the state as it is (identity map), three cameras, 64 px."""
    return PolicyInputs(state_key="observation.state", action_key="action",
                        state_map=load_state_map("identity").bind(state_dim), action_dim=ACTION, action_names=None,
                        cameras=tuple(CAMERAS), image_size=64, chunk_size=chunk_size,
                        n_action_steps=n_action_steps or chunk_size, frame_stride=1, fps=30.0,
                        task_map={0: TASK}, tasks=(TASK,))


def _create(stats, state_dim: int = STATE, chunk_size: int = CHUNK, policy_path: str | None = None, **options):
    """create_policy on CPU: from scratch when ``options`` name a ``vlm_model`` without a policy path."""
    config = PolicyConfig(from_scratch=policy_path is None, **options)
    return create_policy(_inputs(state_dim, chunk_size), config, stats, device="cpu", policy_path=policy_path)


def _batch(state_dim: int = STATE, with_action: bool = True, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {cam: torch.rand(B, 3, 48, 64, generator=g) for cam in CAMERAS}  # not square: SmolVLA pads
    batch["observation.state"] = torch.randn(B, state_dim, generator=g)
    batch["task"] = [TASK, "turning_on_radio", TASK, "open the drawer"]
    batch["episode_index"] = torch.arange(B)
    if with_action:
        batch["action"] = torch.randn(B, CHUNK, ACTION, generator=g)
        pad = torch.zeros(B, CHUNK, dtype=torch.bool)
        pad[0, 6:] = True  # the first sample's episode ends inside the chunk
        batch["action_is_pad"] = pad
    return batch


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny_smolvlm", image_size=64)


@pytest.fixture(scope="module")
def stats() -> dict:
    return {"observation.state": _stats(STATE, 1), "action": _stats(ACTION, 2)}


@pytest.fixture(scope="module")
def bundle(tiny_vlm, stats):
    torch.manual_seed(0)
    return _create(stats, vlm_model=str(tiny_vlm))


@pytest.fixture(scope="module")
def saved(bundle, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("ckpt") / "pretrained_model"
    config = yaml.safe_dump({"inputs": bundle.inputs.to_dict()}, sort_keys=False)
    save_policy(bundle, directory, extra_files={"train_config.yaml": config, "notes.bin": b"\x00\x01"})
    return directory


def _predict(policy, preprocessor, postprocessor, batch: dict, seed: int = 123) -> torch.Tensor:
    torch.manual_seed(seed)
    policy.reset()
    return postprocessor(policy.predict_action_chunk(preprocessor(batch)))


def test_tiny_vlm_folder_is_complete_idempotent_and_tokenises_tasks(tiny_vlm):
    from transformers import AutoConfig, AutoProcessor

    config = AutoConfig.from_pretrained(tiny_vlm)
    assert config.vision_config.image_size == 64 and config.scale_factor == 2
    processor = AutoProcessor.from_pretrained(tiny_vlm)
    tok = processor.tokenizer
    vocab = tiny_vlm_vocabulary()
    assert tok.fake_image_token_id == vocab["<fake_token_around_image>"]
    assert tok.global_image_token_id == vocab["<global-img>"]
    assert config.image_token_id == vocab["<image>"] == processor.image_token_id
    assert processor.image_seq_len == (64 // 16 // 2) ** 2
    words = tok.convert_ids_to_tokens(tok("Pick up the yellow_bottle, then ZORBLAX it.\n")["input_ids"])
    assert words == ["pick", "up", "the", "yellow", "bottle", ",", "then", "<unk>", "it", "."]

    stamp = {p.name: p.stat().st_mtime_ns for p in tiny_vlm.iterdir()}
    assert build_tiny_vlm(tiny_vlm, image_size=64) == tiny_vlm
    assert {p.name: p.stat().st_mtime_ns for p in tiny_vlm.iterdir()} == stamp
    with pytest.raises(PolicyLoadError, match="image_size"):
        build_tiny_vlm(tiny_vlm, image_size=128)
    with pytest.raises(ConfigError, match="multiple of 32"):
        build_tiny_vlm(tiny_vlm.parent / "other", image_size=48)


def test_camera_keys_and_policy_batch_rename_without_copies():
    camera_map = policy_camera_keys(CAMERAS)
    assert camera_map == {cam: f"observation.images.camera{i}" for i, cam in enumerate(CAMERAS, 1)}
    with pytest.raises(ConfigError, match="more than once"):
        policy_camera_keys([CAMERAS[0], CAMERAS[0]])

    sample = _batch()
    batch = to_policy_batch(sample, camera_map)
    assert set(batch) == {*camera_map.values(), "observation.state", "action", "action_is_pad", "task"}
    for cam, key in camera_map.items():
        assert batch[key] is sample[cam]
    for key in ("observation.state", "action", "action_is_pad", "task"):
        assert batch[key] is sample[key]
    del sample[CAMERAS[2]]
    with pytest.raises(DatasetError, match="right_wrist"):
        to_policy_batch(sample, camera_map)


def test_resolve_device():
    expected = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device"):
        resolve_device("tpu7")


def test_scratch_forward_backward_trains_the_random_vlm_and_the_expert(bundle, stats):
    config = bundle.policy.config
    assert config.vlm_model_name.endswith("tiny_smolvlm") and config.load_vlm_weights is False
    assert (config.max_state_dim, config.max_action_dim, config.chunk_size) == (32, 32, CHUNK)
    assert tuple(config.resize_imgs_with_padding) == (64, 64)
    assert list(config.image_features) == [f"observation.images.camera{i}" for i in (1, 2, 3)]
    assert bundle.reinitialised == []

    sample = _batch()
    batch = bundle.preprocessor(to_policy_batch(sample, policy_camera_keys(CAMERAS)))
    mean, std = (torch.from_numpy(stats["observation.state"][k]) for k in ("mean", "std"))
    torch.testing.assert_close(batch["observation.state"], (sample["observation.state"] - mean) / (std + 1e-8))
    assert batch["observation.language.tokens"].shape[0] == B

    bundle.policy.train()
    bundle.policy.zero_grad()
    loss, info = bundle.policy.forward(batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    named = dict(bundle.policy.named_parameters())
    assert named["model.action_out_proj.weight"].grad.abs().sum() > 0
    assert named["model.state_proj.weight"].grad.abs().sum() > 0
    # The tiny backbone has no weights: its random VLM trains too (train_expert_only's default from scratch), its
    # vision encoder stays frozen (freeze_vision_encoder's default).
    assert config.train_expert_only is False
    vlm = {n: p for n, p in named.items() if n.startswith("model.vlm_with_expert.vlm.")}
    assert named["model.vlm_with_expert.vlm.model.text_model.layers.0.self_attn.q_proj.weight"].grad.abs().sum() > 0
    assert all(not p.requires_grad for n, p in vlm.items() if ".vision_model." in n)
    assert any(p.requires_grad for n, p in vlm.items() if ".text_model." in n)
    bundle.policy.zero_grad()


def test_predicted_chunk_is_unnormalised(bundle, stats):
    preprocessor, postprocessor, policy = bundle.preprocessor, bundle.postprocessor, bundle.policy
    batch = preprocessor(to_policy_batch(_batch(with_action=False), policy_camera_keys(CAMERAS)))
    torch.manual_seed(7)
    normalised = policy.predict_action_chunk(batch)
    assert normalised.shape == (B, CHUNK, ACTION)
    actions = postprocessor(normalised)
    assert actions.shape == (B, CHUNK, ACTION) and actions.dtype == torch.float32 and actions.device.type == "cpu"
    mean, std = (torch.from_numpy(stats["action"][k]) for k in ("mean", "std"))
    torch.testing.assert_close(actions, normalised.cpu() * (std + 1e-8) + mean)


def test_save_then_load_with_lerobot_gives_identical_predictions(bundle, saved, tiny_vlm):
    from lerobot.policies.smolvla import SmolVLAPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import (
        batch_to_transition,
        policy_action_to_transition,
        transition_to_batch,
        transition_to_policy_action,
    )

    for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json"):
        assert (saved / name).is_file()
    assert list(saved.glob("policy_preprocessor_step_*normalizer_processor.safetensors"))
    assert yaml.safe_load((saved / "train_config.yaml").read_text())["inputs"] == bundle.inputs.to_dict()
    assert (saved / "notes.bin").read_bytes() == b"\x00\x01"

    batch = to_policy_batch(_batch(with_action=False), policy_camera_keys(CAMERAS))
    reference = _predict(bundle.policy, bundle.preprocessor, bundle.postprocessor, dict(batch))

    policy = SmolVLAPolicy.from_pretrained(saved)
    preprocessor = PolicyProcessorPipeline.from_pretrained(
        saved, config_filename="policy_preprocessor.json",
        overrides={"tokenizer_processor": {"tokenizer_name": str(tiny_vlm)}},
        to_transition=batch_to_transition, to_output=transition_to_batch,
    )
    postprocessor = PolicyProcessorPipeline.from_pretrained(
        saved, config_filename="policy_postprocessor.json",
        to_transition=policy_action_to_transition, to_output=transition_to_policy_action,
    )
    torch.testing.assert_close(_predict(policy, preprocessor, postprocessor, dict(batch)), reference, rtol=0, atol=0)

    loaded = load_policy_bundle(saved, device="cpu", tokenizer_name=str(tiny_vlm))
    assert loaded.reinitialised == [] and not loaded.policy.training and loaded.inputs == bundle.inputs
    prediction = _predict(loaded.policy, loaded.preprocessor, loaded.postprocessor, dict(batch))
    torch.testing.assert_close(prediction, reference, rtol=0, atol=0)


def test_pretrained_folder_with_wider_state_reinitialises_only_state_proj(saved, tiny_vlm):
    wide = 217  # the 2025 standard-track-legal R1Pro state
    stats = {"observation.state": _stats(wide, 3), "action": _stats(ACTION, 4)}
    wider = _create(stats, state_dim=wide, chunk_size=8, policy_path=str(saved))
    assert wider.reinitialised == ["model.state_proj.bias", "model.state_proj.weight"]
    config = wider.policy.config
    assert (config.max_state_dim, config.max_action_dim, config.chunk_size) == (wide, 32, 8)
    assert config.vlm_model_name == str(tiny_vlm) and tuple(config.resize_imgs_with_padding) == (64, 64)

    source = load_file(str(saved / "model.safetensors"))
    target = wider.policy.state_dict()
    assert set(source) == set(target)
    assert target["model.state_proj.weight"].shape == (source["model.state_proj.weight"].shape[0], wide)
    for name, tensor in source.items():
        if name not in wider.reinitialised:
            assert torch.equal(target[name], tensor), name

    sample = _batch(state_dim=wide)
    sample["action"] = sample["action"][:, :8]
    sample["action_is_pad"] = sample["action_is_pad"][:, :8]
    loss, _ = wider.policy.forward(wider.preprocessor(to_policy_batch(sample, policy_camera_keys(CAMERAS))))
    assert torch.isfinite(loss)

    same = _create({"observation.state": _stats(STATE, 1), "action": _stats(ACTION, 2)}, policy_path=str(saved))
    assert same.reinitialised == []
    assert all(torch.equal(same.policy.state_dict()[k], v) for k, v in source.items())


def test_hub_id_offline_and_uncached_raises_one_line_policy_load_error(monkeypatch, stats):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PolicyLoadError) as info:
        _create(stats, policy_path="behavior-smolvla-tests/no-such-policy")
    message = str(info.value)
    assert "\n" not in message
    assert "behavior-smolvla-tests/no-such-policy" in message and "--from-scratch --vlm-model" in message


def test_bad_stats_and_options_are_reported(tiny_vlm, stats):
    with pytest.raises(DatasetError, match=r"observation\.state\.mean have shape \(32,\)"):
        _create(stats, state_dim=STATE + 1, vlm_model=str(tiny_vlm))
    with pytest.raises(ConfigError, match="--n-action-steps"):
        _inputs(n_action_steps=20)


def test_load_policy_bundle_rejects_incomplete_folder(saved, tmp_path):
    from behavior_smolvla.errors import CheckpointError

    partial = tmp_path / "partial" / "pretrained_model"
    partial.mkdir(parents=True)
    (partial / "config.json").write_text(json.dumps(json.loads((saved / "config.json").read_text())))
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_policy_bundle(partial)


def test_pretrained_weights_on_another_backbone_are_refused(saved, tiny_vlm, stats):
    other = build_tiny_vlm(tiny_vlm.parent / "tiny_smolvlm_128", image_size=128)  # other vision position table
    with pytest.raises(PolicyLoadError, match="only the state and action projections may change shape"):
        _create(stats, policy_path=str(saved), vlm_model=str(other))


def test_pretrained_checkpoint_missing_a_weight_is_refused(saved, stats, tmp_path):
    import shutil

    from safetensors.torch import save_file

    broken = tmp_path / "broken"
    shutil.copytree(saved, broken)
    weights = load_file(str(saved / "model.safetensors"))
    del weights["model.action_time_mlp_in.bias"]
    save_file(weights, str(broken / "model.safetensors"))
    with pytest.raises(PolicyLoadError, match=r"1 missing and 0 unexpected key\(s\) \(model.action_time_mlp_in.bias"):
        _create(stats, policy_path=str(broken))


# --- the inference strategy: zero noise, one draw, mean of K draws --------------------------------------------------


def _lerobot_chunk(bundle, batch: dict, noise: torch.Tensor) -> np.ndarray:
    """One chunk by lerobot alone from an explicit initial noise [B, chunk, max_action_dim], unnormalised."""
    with torch.inference_mode():
        actions = bundle.policy.predict_action_chunk(
            bundle.preprocessor(to_policy_batch(batch, bundle.inputs.camera_map)), noise=noise)
    return bundle.postprocessor(actions).numpy()


def test_zero_noise_is_deterministic_and_lerobots_chunk_from_zeros(bundle):
    batch = _batch(with_action=False)
    zero = bundle.predict_chunk(batch, Inference("zero", 1))
    assert Inference() == Inference("sample", 8)  # the default: the mean of 8 draws (bench/learning.py)
    assert zero.shape == (B, CHUNK, ACTION) and zero.dtype == np.float32
    np.testing.assert_array_equal(bundle.predict_chunk(batch, Inference("zero", 1), noise_seed=99), zero)
    zeros = torch.zeros(B, CHUNK, bundle.policy.config.max_action_dim)
    np.testing.assert_allclose(zero, _lerobot_chunk(bundle, batch, zeros), rtol=0, atol=1e-6)


def test_mean_of_k_draws_is_the_mean_of_k_single_lerobot_draws(bundle):
    """K draws in one batched call (the prefix encoded once, its cache repeated) equal K separate lerobot calls on
    the documented noise: a generator seeded with the noise seed draws [K, B, chunk, max_action_dim], draw k = slice
    k. One draw with the same seed starts from slice 0 of that noise."""
    batch, k, seed = _batch(with_action=False), 3, 11
    mean_of_k = Inference("sample", k)
    noise = torch.randn((k, B, CHUNK, bundle.policy.config.max_action_dim),
                        generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(mean_of_k.initial_noise(B, CHUNK, bundle.policy.config.max_action_dim, seed), noise,
                               rtol=0, atol=0)
    draws = np.stack([_lerobot_chunk(bundle, batch, noise[i]) for i in range(k)])
    assert np.abs(draws[0] - draws[1]).max() > 0.1  # the draws differ: the mean is not trivially one of them
    np.testing.assert_allclose(bundle.predict_chunk(batch, mean_of_k, noise_seed=seed), draws.mean(0),
                               rtol=0, atol=1e-5)
    one = bundle.predict_chunk(batch, Inference("sample", 1), noise_seed=seed)
    np.testing.assert_allclose(one, draws[0], rtol=0, atol=1e-5)
    # One frame (B = 1): its own [K, 1, chunk, max_action_dim] noise from the seed.
    single_frame = {key: value[:1] for key, value in batch.items()}
    noise = mean_of_k.initial_noise(1, CHUNK, bundle.policy.config.max_action_dim, seed)
    np.testing.assert_allclose(bundle.predict_chunk(single_frame, mean_of_k, noise_seed=seed),
                               np.stack([_lerobot_chunk(bundle, single_frame, noise[i]) for i in range(k)]).mean(0),
                               rtol=0, atol=1e-5)


def test_inference_labels_round_trip_and_one_line_errors(bundle):
    assert [Inference(*a).describe() for a in (("zero", 1), ("sample", 1), ("sample", 8))] == [
        "zero noise", "one draw", "mean of 8 draws"]
    mean = Inference("sample", 8)
    assert mean.to_dict() == {"noise": "sample", "num_samples": 8, "label": "mean of 8 draws"}
    assert Inference.from_dict(mean.to_dict()) == mean
    assert Inference.from_flags(None, None) == Inference() and Inference.from_flags("sample", None).num_samples == 8
    assert Inference.from_flags("zero", None) == Inference("zero", 1)  # --noise zero alone: one chunk
    for args, flags, needle in (
        (("foo", 1), (), "--noise 'foo': use zero"),
        (("sample", 0), (), "--num-samples 0: must be a whole number >= 1"),
        (("zero", 4), (), "--num-samples 4 with --noise zero"),
        (("zero", 2), ("--eval-noise", "--eval-num-samples"), "--eval-num-samples 2 with --eval-noise zero"),
    ):
        with pytest.raises(ConfigError) as info:
            Inference.from_flags(*args, *flags)
        assert needle in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="--num-samples 2.0"):
        Inference("sample", 2.0)  # not a whole number of draws
    bundle.policy.config.use_cache = False  # lerobot cannot denoise without its prefix cache: refused, not a traceback
    try:
        with pytest.raises(ConfigError, match="prefix cache"):
            bundle.predict_chunk(_batch(with_action=False), mean, noise_seed=0)
    finally:
        bundle.policy.config.use_cache = True
