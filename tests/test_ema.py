"""--ema-decay (training/ema.py): the average itself, what checkpoints serve, validation on it; how ``best`` is chosen;
the from-scratch default of ``train_expert_only``."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest
import torch

from behavior_smolvla.config import (
    PolicyConfig, TrainConfig, apply_overrides, validate_config,
)
from behavior_smolvla.errors import ConfigError
from behavior_smolvla.policy.smolvla import DEFAULT_VLM_MODEL, resolve_train_expert_only
from behavior_smolvla.training.ema import EMA, ema_decay_at
from behavior_smolvla.training.tracking import read_metrics


def _toy() -> torch.nn.Module:
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    module[0].requires_grad_(False)  # frozen, like SmolVLA's VLM
    return module


def test_ema_update_equals_hand_computation_with_warm_up():
    module = _toy()
    trainable = [p for p in module.parameters() if p.requires_grad]
    ema = EMA(module, decay=0.25)
    assert ema.names == ["1.weight", "1.bias"]  # frozen parameters are not copied
    hand = [p.detach().double().clone() for p in trainable]
    opt = torch.optim.SGD(trainable, lr=0.1)
    x = torch.randn(5, 3)
    used = []
    for k in range(5):
        opt.zero_grad()
        module(x).square().sum().backward()
        opt.step()
        used.append(ema.update())
        d = min(0.25, (1 + k) / (10 + k))  # the warm-up: 0.1, 2/11, then capped at D = 0.25
        hand = [d * h + (1 - d) * p.detach().double() for h, p in zip(hand, trainable)]
    assert used == pytest.approx([0.1, 2 / 11, 0.25, 0.25, 0.25])
    assert used == [ema_decay_at(0.25, k) for k in range(5)] and ema.updates == 5
    for s, h in zip(ema.shadow, hand):
        assert s.dtype == torch.float32
        torch.testing.assert_close(s.double(), h, rtol=1e-6, atol=1e-7)
    assert not torch.equal(ema.shadow[0], trainable[0].detach())


def test_applied_swaps_the_average_in_and_the_weights_back_bit_for_bit():
    module = _toy()
    ema = EMA(module, decay=0.5)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(1.0)
    ema.update()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    with ema.applied():
        for name, p in module.named_parameters():
            expected = ema.state_dict()[name] if name in ema.names else before[name]
            assert torch.equal(p.detach(), expected), name
    with pytest.raises(RuntimeError), ema.applied():
        raise RuntimeError("validation failed")
    for name, p in module.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_config_ema_decay_range():
    cfg = TrainConfig()
    apply_overrides(cfg, {"max_steps": 1, "dataset_path": "x", "ema_decay": 1.0}, "test")
    with pytest.raises(ConfigError, match="--ema-decay 1.0"):
        validate_config(cfg)
    cfg.optim.ema_decay = 0.999
    validate_config(cfg)


def test_train_expert_only_default_trains_a_random_vlm(tiny_vlm):
    # None (not given): a pretrained policy, or a fresh SmolVLA on a pretrained VLM (a hub id: lerobot loads its
    # weights), keeps SmolVLA's default (VLM frozen); a backbone folder without weights is random, so it trains.
    assert resolve_train_expert_only(PolicyConfig()) is True
    assert resolve_train_expert_only(PolicyConfig(from_scratch=True, vlm_model=DEFAULT_VLM_MODEL)) is True
    assert resolve_train_expert_only(PolicyConfig(from_scratch=True, vlm_model=str(tiny_vlm))) is False
    # Given: as given.
    assert resolve_train_expert_only(PolicyConfig(from_scratch=True, vlm_model=str(tiny_vlm),
                                                  train_expert_only=True)) is True
    assert resolve_train_expert_only(PolicyConfig(train_expert_only=False)) is False


def _run(dataset: Path, vlm: Path, out: Path, **extra) -> tuple[object, list[dict], str]:
    from rich.console import Console

    from behavior_smolvla.training.build import build_training
    from behavior_smolvla.training.loop import Trainer

    cfg = TrainConfig()
    apply_overrides(cfg, {
        "dataset_path": str(dataset), "from_scratch": True, "vlm_model": str(vlm), "output_dir": str(out),
        "image_size": 32, "chunk_size": 4, "batch_size": 2, "num_workers": 0, "device": "cpu",
        "log_steps": 1, "save_steps": 100, "wandb_disable": True, "lr": 1e-3, "warmup_steps": 0, "max_steps": 4,
        "episodes": "10,20,10010", **extra,
    }, "test")
    text = io.StringIO()
    console = Console(file=text, width=400)
    training = build_training(cfg, console=console)
    with Trainer(training, console) as trainer:
        while not trainer.done:
            trainer.step()
    return training, read_metrics(out), text.getvalue()


@pytest.mark.slow
def test_ema_run_serves_the_average_validates_it_and_picks_best_by_chunk_mae(synthetic_2025, tiny_vlm, tmp_path):
    """A run with --ema-decay and validation: the checkpoint's pretrained_model holds the EMA weights (what
    lerobot's SmolVLAPolicy.from_pretrained and load_policy_bundle load), training_state the training weights;
    validation scores the average and leaves training as it is without validation or EMA (its twin); `best` is
    the step with the lowest held-out chunk MAE, named in training_step.json."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from safetensors.torch import load_file

    from behavior_smolvla.policy.checkpoint import load_train_config
    from behavior_smolvla.policy.smolvla import load_policy_bundle

    out = tmp_path / "ema"
    training, records, said = _run(synthetic_2025, tiny_vlm, out, ema_decay=0.5, val_episodes="10020", eval_steps=2,
                                   eval_max_frames=4, save_steps=2)
    ema = training.ema
    shadow, raw = ema.state_dict(), ema.trained_state_dict()
    assert ema.updates == 4 and any(not torch.equal(shadow[n], raw[n]) for n in ema.names)
    # From scratch on a backbone without weights, the VLM trained too (train_expert_only resolved to False, said in
    # one line and saved so).
    assert said.count("the randomly initialised VLM trains too") == 1, said
    assert any(n.startswith("model.vlm_with_expert.vlm.model.text_model") for n in ema.names), ema.names[:5]
    last = out / "checkpoints" / "last"
    assert load_train_config(last)["run"]["policy"]["train_expert_only"] is False

    served = SmolVLAPolicy.from_pretrained(last / "pretrained_model").state_dict()
    for name in ema.names:
        assert torch.equal(served[name], shadow[name]), name
    saved_raw = load_file(str(last / "training_state" / "raw_weights.safetensors"))
    assert sorted(saved_raw) == sorted(ema.names)
    for name in ema.names:
        assert torch.equal(saved_raw[name], raw[name]), name
    bundle = load_policy_bundle(last, device="cpu")
    params = dict(bundle.policy.named_parameters())
    for name in ema.names:
        assert torch.equal(params[name].detach(), shadow[name]), name

    # best: the lowest chunk MAE of the validations (of the EMA weights) at steps 2 and 4, and the checkpoint says so.
    assert said.count("(EMA weights)") == 2 and said.count("chunk MAE") == 2 and "chooses best" in said, said
    val = {r["step"]: r["val_chunk_mae"] for r in records if "val_chunk_mae" in r}
    assert sorted(val) == [2, 4]
    best_step = min(val, key=val.get)
    assert os.readlink(out / "checkpoints" / "best") == f"{best_step:06d}"
    state = json.loads((out / "checkpoints" / "best" / "training_state" / "training_step.json").read_text())
    assert (state["best_metric_name"], state["best_step"], state["best_metric"]) == ("chunk_mae", best_step,
                                                                                      val[best_step])
    last_state = json.loads((last / "training_state" / "training_step.json").read_text())
    assert (last_state["ema_decay"], last_state["ema_steps"]) == (0.5, 4)

    # The twin without validation and without EMA trains identically: neither changes the training weights.
    twin, twin_records, _ = _run(synthetic_2025, tiny_vlm, tmp_path / "twin")
    assert twin.ema is None
    assert [(r["step"], r["loss"]) for r in twin_records] == [(r["step"], r["loss"]) for r in records if "loss" in r]
    twin_params = dict(twin.bundle.policy.named_parameters())
    for name in ema.names:
        assert torch.equal(twin_params[name].detach(), raw[name]), name
