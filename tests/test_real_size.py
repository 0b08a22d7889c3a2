"""The full-size ``lerobot/smolvla_base`` stand-in: its size, lerobot loading it, and fine-tuning it end to end.

Slow (~2 minutes on 2 cores, ~5 GB of RAM at peak): the stand-in is built once per module (450 M parameters,
1.8 GB on disk) by its command line in a real subprocess; the fine-tune runs ``smolvla-train`` and ``smolvla-eval``
as subprocesses at a reduced image size (64 px: the architecture is unchanged, only the vision encoder sees fewer
patches), with ``--filter-state`` so that the pretrained ``state_proj`` is widened to 217 dims. Exact resume is
tested at the tiny backbone's size (``test_train.py``, ``test_actions.py``: the same code path); at this size it was
verified once, by hand (the step-3 loss of a resumed run equal to the uninterrupted run's), and is left out here
because every resumed run reloads and rewrites 2.4 GB.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from behavior_smolvla.policy.checkpoint import load_train_config, resolve_checkpoint
from behavior_smolvla.training.tracking import read_metrics

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
# The SmolVLA paper (arXiv 2506.01844): ~450 M parameters, ~100 M of them in the action expert (trained with the
# VLM frozen). The acceptance: within 10%.
PUBLISHED_TOTAL, PUBLISHED_TRAINABLE = 450e6, 100e6


def run(*cmd: str, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, env=ENV, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``python -m behavior_smolvla.policy.standin OUT``: the stand-in's ``pretrained_model`` folder."""
    out = tmp_path_factory.mktemp("standin") / "smolvla_base"
    proc = run(sys.executable, "-m", "behavior_smolvla.policy.standin", str(out))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(info["policy_path"]) == out / "pretrained_model"
    return out / "pretrained_model"


@pytest.mark.slow
def test_standin_has_the_published_size_and_lerobot_loads_it(standin):
    from lerobot.policies.smolvla import SmolVLAPolicy

    from behavior_smolvla.policy.standin import count_parameters

    vlm = json.loads((standin.parent / "vlm" / "config.json").read_text())
    vision, text = vlm["vision_config"], vlm["text_config"]
    # 64 image tokens per camera, as SmolVLM2's processor (image_seq_len 64).
    assert (vision["image_size"] // vision["patch_size"] // vlm["scale_factor"]) ** 2 == 64
    assert text["hidden_size"] == 960 and text["num_hidden_layers"] == 32 and text["vocab_size"] == 49280

    policy = SmolVLAPolicy.from_pretrained(standin)
    counts = count_parameters(policy)
    assert abs(counts["params_total"] - PUBLISHED_TOTAL) / PUBLISHED_TOTAL < 0.10, counts
    assert abs(counts["params_trainable"] - PUBLISHED_TRAINABLE) / PUBLISHED_TRAINABLE < 0.10, counts
    assert counts == {k: v for k, v in json.loads((standin.parent / "standin.json").read_text()).items() if k in counts}
    cfg = policy.config
    assert (cfg.chunk_size, cfg.max_state_dim, cfg.num_vlm_layers, cfg.resize_imgs_with_padding) == (50, 32, 16,
                                                                                                      (512, 512))
    assert len(policy.model.vlm_with_expert.get_vlm_model().text_model.layers) == 16
    assert policy.model.vlm_with_expert.expert_hidden_size == 720  # 0.75 x 960


@pytest.mark.slow
def test_fine_tune_standin_with_filter_state_eval_and_act(standin, synthetic_2025, tmp_path):
    # tests/ is on sys.path (pytest's rootdir conftest): the evaluator-shaped observation of the serving tests.
    from test_serve import make_observation

    from behavior_smolvla.policy.inference import Inference
    from behavior_smolvla.serving.policy import load_policy

    out = tmp_path / "ft"
    args = ["--dataset-path", str(synthetic_2025), "--policy-path", str(standin), "--filter-state",
            "--image-size", "64", "--batch-size", "1", "--max-steps", "1", "--num-workers", "0",
            "--device", "cpu", "--log-steps", "1", "--wandb-disable", "--val-episodes", "10020"]
    proc = run(str(BIN / "smolvla-train"), *args, "--output-dir", str(out))
    reinit = [line for line in proc.stdout.splitlines() if "freshly initialised" in line]
    assert len(reinit) == 1 and "model.state_proj.weight" in reinit[0] and "action" not in reinit[0], proc.stdout
    saved = load_train_config(resolve_checkpoint(out))
    assert len(saved["inputs"]["state_map"]["names"]) == 217
    cfg = json.loads((out / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert (cfg["max_state_dim"], cfg["chunk_size"], cfg["num_vlm_layers"]) == (217, 50, 16)
    losses = [r["loss"] for r in read_metrics(out) if "loss" in r]
    assert len(losses) == 1 and np.isfinite(losses[0])

    report = tmp_path / "eval"
    run(str(BIN / "smolvla-eval"), "--checkpoint", str(out), "--dataset-path", str(synthetic_2025), "--episodes",
        "10020", "--device", "cpu", "--max-frames", "1", "--noise", "zero", "--output-dir", str(report))
    assert (report / "report.json").is_file()

    # zero noise: one expert pass per denoising step instead of the default 8 draws' (the strategies themselves are
    # tested on the tiny backbone; here what matters is that the 217-dim full-size checkpoint evaluates and serves)
    policy = load_policy(out, device="cpu", inference=Inference("zero", 1))
    action = policy.act(make_observation(np.random.default_rng(0)))
    assert action.shape == (23,) and action.dtype == np.float32 and np.isfinite(action).all()
