"""smolvla-train end to end: real subprocesses, real lerobot SmolVLA on the tiny backbone, real PyAV decoding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from cli_runner import CliResult, run_in_process

from behavior_smolvla.policy.checkpoint import load_train_config, resolve_checkpoint
from behavior_smolvla.training.tracking import read_metrics

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


def run_train(*args: str, check: bool = True, timeout: int = 600,
              in_process: bool = False) -> subprocess.CompletedProcess | CliResult:
    """``smolvla-train ARGS`` in a subprocess, or (``in_process``) through the same Typer app in this process
    (``tests/cli_runner.py``: for errors, where a subprocess only adds an interpreter start and the torch imports)."""
    if in_process:
        proc = run_in_process("smolvla-train", list(args), env={"COLUMNS": "200"})
    else:
        proc = subprocess.run(
            [str(BIN / "smolvla-train"), *args], capture_output=True, text=True, env=ENV, timeout=timeout
        )
    if check and proc.returncode != 0:
        raise AssertionError(f"smolvla-train failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def base_args(dataset: Path, vlm: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--dataset-path", str(dataset), "--from-scratch", "--vlm-model", str(vlm), "--output-dir", str(out),
        "--image-size", "64", "--chunk-size", "8", "--batch-size", "4", "--num-workers", "0", "--device", "cpu",
        "--log-steps", "1", "--wandb-disable", "--lr", "1e-3", "--warmup-steps", "2", *extra,
    ]


def losses(run_dir: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if "loss" in r}


def assert_lerobot_loads(checkpoint: Path, vlm: Path) -> None:
    """lerobot's own loaders open the checkpoint (tokenizer name overridden to the local tiny backbone)."""
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.processor import PolicyProcessorPipeline

    pretrained = checkpoint / "pretrained_model"
    policy = SmolVLAPolicy.from_pretrained(pretrained)
    assert policy.config.chunk_size == 8
    pre = PolicyProcessorPipeline.from_pretrained(
        pretrained, config_filename="policy_preprocessor.json",
        overrides={"tokenizer_processor": {"tokenizer_name": str(vlm)}},
    )
    post = PolicyProcessorPipeline.from_pretrained(pretrained, config_filename="policy_postprocessor.json")
    assert len(pre.steps) > 0 and len(post.steps) > 0


@pytest.mark.slow
def test_train_synthetic_2025_layout_and_lerobot_load(synthetic_2025, tiny_vlm, tmp_path):
    out = tmp_path / "run"
    proc = run_train(*base_args(synthetic_2025, tiny_vlm, out, "--max-steps", "60", "--save-steps", "30",
                                "--val-episodes", "10020", "--eval-steps", "30", "--batch-size", "8",
                                "--no-train-expert-only", "--no-freeze-vision-encoder",
                                "--eval-noise", "sample", "--eval-num-samples", "2"))
    assert "effective batch 8" in proc.stdout
    assert "percent close" in proc.stdout and "; chunks: mean of 2 draws" in proc.stdout  # the validation line
    ckpts = out / "checkpoints"
    assert {"000030", "000060", "last", "best"} <= {p.name for p in ckpts.iterdir()}
    # Validation ran on the held-out episode at steps 30 and 60 and `best` points at the better one.
    val = [r for r in read_metrics(out) if "val_loss" in r]
    assert [r["step"] for r in val] == [30, 60]
    best_step = min(val, key=lambda r: r["val_chunk_mae"])["step"]
    assert os.readlink(ckpts / "best") == f"{best_step:06d}"
    assert (out / "eval" / "step_000060" / "error_vs_chunk_step.png").is_file()
    assert load_train_config(ckpts / "last")["dataset"]["val_episodes"] == [10020]
    assert (ckpts / "last").is_symlink() and os.readlink(ckpts / "last") == "000060"
    for step in ("000030", "000060"):
        pm = ckpts / step / "pretrained_model"
        for name in ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json",
                     "train_config.yaml"):
            assert (pm / name).is_file(), name
        ts = ckpts / step / "training_state"
        for name in ("training_step.json", "optimizer_state.safetensors", "optimizer_param_groups.json",
                     "scheduler_state.json", "rng_state.safetensors"):
            assert (ts / name).is_file(), name
    saved = load_train_config(ckpts / "last")
    assert saved["inputs"]["state_map"]["name"] == "r1pro-2025-top32"
    assert saved["inputs"]["cameras"] == [
        "observation.images.rgb.head", "observation.images.rgb.left_wrist", "observation.images.rgb.right_wrist"
    ]
    assert saved["run"]["optim"]["max_steps"] == 60
    loss = losses(out)
    assert sorted(loss) == list(range(1, 61))
    # Flow-matching loss is noisy at small batches: compare 10-step means (the run is seeded, so this is repeatable).
    first, last = sum(loss[s] for s in range(1, 11)) / 10, sum(loss[s] for s in range(51, 61)) / 10
    assert last < 0.9 * first, (first, last)
    record = [r for r in read_metrics(out) if "loss" in r][-1]
    for key in ("step", "loss", "lr", "grad_norm", "samples_per_s", "data_wait_frac"):
        assert key in record
    assert_lerobot_loads(ckpts / "last", tiny_vlm)


@pytest.fixture(scope="module")
def g1_config_run(g1_v30, tiny_vlm, tmp_path_factory) -> Path:
    """A 20-step run on the real G1 v3.0 data (every 5th frame) configured by a YAML file plus flags: shared by
    the real-data test and the config-file test (read-only). Its settings equal :func:`base_args`'s; checkpoints
    every 2 steps with ``keep_last`` 2."""
    out = tmp_path_factory.mktemp("g1_config") / "run"
    cfg = out.parent / "run.yaml"
    # Nested sections and flat flag names (dashes or underscores) mix; the command line wins over the file.
    cfg.write_text(yaml.safe_dump({
        "data": {"dataset_path": str(g1_v30), "frame_stride": 5},
        "policy": {"from_scratch": True, "vlm_model": str(tiny_vlm), "chunk_size": 8},
        "max_steps": 50, "batch-size": 4, "image_size": 64, "num_workers": 0, "device": "cpu",
        "wandb_disable": True, "save_steps": 2, "keep_last": 2, "log_steps": 1, "lr": 1e-3, "warmup-steps": 2,
    }))
    run_train("--config", str(cfg), "--max-steps", "20", "--output-dir", str(out))
    return out


@pytest.mark.slow
def test_train_real_g1_v30(g1_config_run, tiny_vlm):
    out = g1_config_run
    saved = load_train_config(resolve_checkpoint(out))
    assert saved["inputs"]["state_map"]["name"] == "identity" and saved["inputs"]["state_map"]["input_dim"] == 26
    loss = losses(out)
    assert sum(loss[s] for s in range(16, 21)) < sum(loss[s] for s in range(1, 6))
    assert_lerobot_loads(out / "checkpoints" / "last", tiny_vlm)


def _wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if (run_dir / "metrics.jsonl").exists() and any(r["step"] >= step for r in read_metrics(run_dir)):
            return
        time.sleep(0.05)
    raise AssertionError(f"run never reached step {step}")


RESUME_ARGS = ("--max-steps", "12", "--save-steps", "100", "--num-workers", "1", "--image-aug", "--ema-decay", "0.9")
"""The exact-resume runs' settings (with :func:`base_args`): a DataLoader worker and augmentation, whose random
state must resume too, and the weight average, which must resume with the training weights."""


@pytest.fixture(scope="module")
def uninterrupted_run(synthetic_2025, tiny_vlm, tmp_path_factory) -> Path:
    """A finished 12-step run with :data:`RESUME_ARGS` (one checkpoint, ``000012``, 64 px, state map
    r1pro-2025-top32): the reference of the exact-resume tests, and a 32-dim source checkpoint (read-only)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    run_train(*base_args(synthetic_2025, tiny_vlm, out, *RESUME_ARGS))
    return out


@pytest.mark.slow
def test_exact_resume_matches_uninterrupted(uninterrupted_run, synthetic_2025, tiny_vlm, tmp_path):
    """Stopped at some step s (SIGTERM: checkpoint and exit) and resumed == uninterrupted, loss for loss, with the
    weight average on: the resumed run continues the training weights (training_state) and the average
    (pretrained_model), and ends with the same served and training weights."""
    from safetensors.torch import load_file

    full, part = uninterrupted_run, tmp_path / "part"
    args = RESUME_ARGS
    proc = subprocess.Popen([str(BIN / "smolvla-train"), *base_args(synthetic_2025, tiny_vlm, part, *args)],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _wait_for_step(part, proc, 3)
    proc.send_signal(signal.SIGTERM)
    output = proc.communicate(timeout=300)[0]
    assert proc.returncode == 0, output[-3000:]
    stopped_at = int(resolve_checkpoint(part).name)
    assert 3 <= stopped_at < 12, output[-2000:]
    assert "stopped by signal" in output
    run_train("--resume", str(part))
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(1, 13))
    for step in range(1, 13):
        assert a[step] == b[step], (step, stopped_at, a[step], b[step])
    for name in ("pretrained_model/model.safetensors", "training_state/raw_weights.safetensors"):
        x, y = (load_file(str(run / "checkpoints" / "last" / name)) for run in (full, part))
        assert sorted(x) == sorted(y) and all(x[k].equal(y[k]) for k in x), name


@pytest.mark.slow
def test_kill_during_checkpoint_write_keeps_last(synthetic_2025, tiny_vlm, tmp_path):
    out = tmp_path / "run"
    args = base_args(synthetic_2025, tiny_vlm, out, "--max-steps", "400", "--save-steps", "1", "--keep-last", "2")
    proc = subprocess.Popen([str(BIN / "smolvla-train"), *args], env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpts = out / "checkpoints"
    killed_mid_write = False
    deadline = time.time() + 300
    try:
        # Wait for a first published checkpoint, then kill the process while a later one is being written.
        while time.time() < deadline and not (ckpts / "last").exists():
            time.sleep(0.05)
        while time.time() < deadline and proc.poll() is None:
            if any(p.name.startswith(".tmp-0") for p in ckpts.iterdir()):
                proc.send_signal(signal.SIGKILL)
                killed_mid_write = True
                break
            time.sleep(0.001)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert killed_mid_write, "never caught a checkpoint write in progress"
    last = resolve_checkpoint(out)
    assert (last / "pretrained_model" / "model.safetensors").is_file()
    assert json.loads((last / "training_state" / "training_step.json").read_text())["step"] >= 1
    assert_lerobot_loads(ckpts / "last", tiny_vlm)
    # ... and the run resumes from it (the leftover temporary folder is cleaned by the next write).
    run_train("--resume", str(out), "--max-steps", str(int(last.name) + 2))
    assert not any(p.name.startswith(".tmp-") for p in ckpts.iterdir())


def torchrun(train_args: list[str], port: int, nproc_per_node: int = 1, nnodes: int = 1, node_rank: int = 0
             ) -> list[str]:
    """The command line of ``smolvla-train TRAIN_ARGS`` under ``torchrun`` on this machine (gloo on CPU): node
    ``node_rank`` of ``nnodes`` with ``nproc_per_node`` processes, the rendezvous on 127.0.0.1:``port`` (each test
    its own port, so that a port still held by a previous run never fails another test). torchrun starts each rank in
    a session of its own (its process group: the rank, its DataLoader workers and their forkserver) and exits 0 when
    every rank did."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", str(nnodes), "--node_rank", str(node_rank),
            "--nproc_per_node", str(nproc_per_node), "--master_addr", "127.0.0.1", "--master_port", str(port),
            "-m", "behavior_smolvla.cli", "train", *train_args]


@pytest.mark.slow
def test_two_process_ddp_on_cpu(synthetic_2025, tiny_vlm, tmp_path):
    out = tmp_path / "run"
    cmd = torchrun(base_args(synthetic_2025, tiny_vlm, out, "--max-steps", "6", "--save-steps", "3"), port=29517,
                   nproc_per_node=2)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "effective batch 8 = 4 per process x 2 processes" in proc.stdout
    assert proc.stdout.count("effective batch") == 1  # only rank 0 talks
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000003", "000006", "last"]
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3, 4, 5, 6]  # one writer
    state = json.loads((out / "checkpoints" / "last" / "training_state" / "training_step.json").read_text())
    assert state["world_size"] == 2


@pytest.mark.slow
def test_wandb_offline_run_holds_metrics_and_config(synthetic_2025, tiny_vlm, tmp_path):
    out = tmp_path / "run"
    args = [a for a in base_args(synthetic_2025, tiny_vlm, out, "--max-steps", "4") if a != "--wandb-disable"]
    run_train(*args, "--wandb-mode", "online", "--wandb-project", "test-proj", "--wandb-tags", "a,b")
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    # wandb 0.31 keeps an offline run in one protobuf log (run-<id>.wandb, what `wandb sync` uploads) and has no
    # public reader for it: check that the config and the logged metric names and values are in that log.
    log = next(runs[0].glob("run-*.wandb")).read_bytes()
    for needle in (b"test-proj", b"max_steps", b"r1pro-2025-top32", b"train/loss", b"train/grad_norm",
                   b"train/samples_per_s"):
        assert needle in log, needle
    last_loss = [r for r in read_metrics(out) if "loss" in r][-1]["loss"]
    assert repr(last_loss).encode()[:8] in log  # the value metrics.jsonl holds was logged too


@pytest.mark.slow
def test_filter_state_217_from_32_dim_checkpoint(uninterrupted_run, synthetic_2025, tiny_vlm, tmp_path):
    src = uninterrupted_run  # any 32-dim (r1pro-2025-top32) checkpoint of this backbone and size
    out = tmp_path / "ft"
    args = [a for a in base_args(synthetic_2025, tiny_vlm, out, "--max-steps", "3") if a != "--from-scratch"]
    proc = run_train(*args, "--filter-state", "--policy-path", str(src / "checkpoints" / "last" / "pretrained_model"))
    reinit_lines = [line for line in proc.stdout.splitlines() if "freshly initialised" in line]
    assert len(reinit_lines) == 1 and "state_proj" in reinit_lines[0], proc.stdout
    saved = load_train_config(resolve_checkpoint(out))
    assert saved["inputs"]["state_map"]["name"] == "r1pro-2025-standard" and len(saved["inputs"]["state_map"]["names"]) == 217
    cfg = json.loads((out / "checkpoints" / "last" / "pretrained_model" / "config.json").read_text())
    assert cfg["max_state_dim"] == 217


def _one_line_error(proc: subprocess.CompletedProcess | CliResult, *needles: str) -> None:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    text = " ".join(lines)
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in text, (needle, text)


def test_errors_are_one_line(synthetic_2025, tiny_vlm, tmp_path):
    # The first case in a real subprocess (the installed script's exit code 2), the others in this process.
    _one_line_error(run_train("--dataset-path", str(tmp_path / "nope"), "--max-steps", "1", check=False),
                    "--dataset-path", "nope")
    _one_line_error(run_train("--dataset-path", str(synthetic_2025), check=False, in_process=True),
                    "--max-steps", "--num-epochs")
    _one_line_error(
        run_train(*base_args(synthetic_2025, tiny_vlm, tmp_path / "r1", "--max-steps", "1", "--state-map",
                             "r1pro-2026-full"), check=False, in_process=True),
        "r1pro-2026-full", "256",
    )
    offline = [a for a in base_args(synthetic_2025, tiny_vlm, tmp_path / "r2", "--max-steps", "1") if a != "--from-scratch"]
    _one_line_error(run_train(*offline, "--policy-path", "someone/not-cached-policy", check=False, in_process=True),
                    "someone/not-cached-policy", "--from-scratch")
    bad_cfg = tmp_path / "bad.yaml"
    bad_cfg.write_text("max_step: 3\n")
    _one_line_error(run_train("--config", str(bad_cfg), check=False, in_process=True), "bad.yaml", "max_step")
    _one_line_error(run_train("--resume", str(tmp_path), check=False, in_process=True), "no complete checkpoint")
    _one_line_error(run_train(*base_args(synthetic_2025, tiny_vlm, tmp_path / "r3", "--max-steps", "1",
                                         "--eval-num-samples", "0"), check=False, in_process=True),
                    "--eval-num-samples 0")
    _one_line_error(run_train(*base_args(synthetic_2025, tiny_vlm, tmp_path / "r3", "--max-steps", "1",
                                         "--eval-noise", "foo"), check=False, in_process=True), "--eval-noise 'foo'")
    existing = tmp_path / "existing"
    (existing / "checkpoints").mkdir(parents=True)
    _one_line_error(run_train(*base_args(synthetic_2025, tiny_vlm, existing, "--max-steps", "1"), check=False,
                              in_process=True),
                    "--resume", str(existing))


def test_nan_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(synthetic_2025, tiny_vlm, tmp_path):
    out = tmp_path / "run"
    # An absurd learning rate without clipping turns the weights to inf after the first update.
    args = base_args(synthetic_2025, tiny_vlm, out, "--max-steps", "20", "--save-steps", "1", "--lr", "1e12",
                     "--warmup-steps", "0", "--grad-clip-norm", "0")
    proc = run_train(*args, check=False, in_process=True)
    _one_line_error(proc, "loss is nan at step 2", "000001")
    assert os.readlink(out / "checkpoints" / "last") == "000001"
    assert_lerobot_loads(out / "checkpoints" / "last", tiny_vlm)


@pytest.mark.slow
def test_config_file_with_flag_overrides_and_keep_last(g1_config_run):
    out = g1_config_run
    saved = load_train_config(resolve_checkpoint(out))["run"]
    # --max-steps 20 on the command line beat the file's 50; the nested and dashed keys were read.
    assert saved["optim"]["max_steps"] == 20 and saved["data"]["frame_stride"] == 5 and saved["optim"]["batch_size"] == 4
    assert saved["optim"]["lr"] == 1e-3 and saved["optim"]["warmup_steps"] == 2
    # --keep-last 2: only the two newest step folders survive.
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["000018", "000020", "last"]


def test_trainer_steps_one_at_a_time_with_checkpoints_and_time_split(synthetic_2025, tiny_vlm, tmp_path):
    """``build_training`` + ``Trainer`` used as a library (what ``train()`` and ``bench/train_step.py`` do): each
    ``step()`` is one optimizer step; a checkpoint is written every ``save_steps`` and at the last step, a metrics
    record every ``log_steps``; ``step_times`` splits each step into disjoint parts that fit in its wall time."""
    import io
    import math

    from rich.console import Console

    from behavior_smolvla.config import TrainConfig, apply_overrides
    from behavior_smolvla.training.build import build_training
    from behavior_smolvla.training.loop import Trainer

    out = tmp_path / "run"
    cfg = TrainConfig()
    apply_overrides(cfg, {
        "dataset_path": str(synthetic_2025), "from_scratch": True, "vlm_model": str(tiny_vlm), "output_dir": str(out),
        "image_size": 32, "chunk_size": 4, "batch_size": 2, "num_workers": 0, "device": "cpu", "max_steps": 6,
        "log_steps": 2, "save_steps": 4, "wandb_disable": True,
    }, "test")
    console = Console(file=io.StringIO())
    training = build_training(cfg, console=console)
    seen: list[tuple[int, bool, dict[str, float], float]] = []
    with Trainer(training, console) as trainer:
        while not trainer.done:
            t0 = time.perf_counter()
            loss = trainer.step()
            wall = time.perf_counter() - t0
            step = training.state.step
            seen.append((step, (out / "checkpoints" / f"{step:06d}").is_dir(), dict(trainer.step_times), wall))
            assert math.isfinite(loss) and loss > 0  # flow-matching MSE
    assert [s for s, *_ in seen] == [1, 2, 3, 4, 5, 6] and trainer.result().steps == 6
    assert [s for s, saved, *_ in seen if saved] == [4, 6]  # every save_steps, and the last step
    for step, _, times, wall in seen:
        assert set(times) == {"data", "forward_backward", "optimizer", "log_checkpoint"}, times
        assert all(v >= 0 for v in times.values()) and sum(times.values()) <= wall, (step, times, wall)
    records = [r for r in read_metrics(out) if "loss" in r]
    assert [r["step"] for r in records] == [2, 4, 6]
    for r in records:
        split = r["time_data_s"] + r["time_forward_backward_s"] + r["time_optimizer_s"] + r["time_log_checkpoint_s"]
        assert split <= r["time_step_s"], r
