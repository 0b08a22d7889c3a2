"""``smolvla-eval``: outputs, default folder, and one-line errors (missing train config, a dataset whose state layout
does not fit the checkpoint). The explicit-output run and the missing-flag case use the installed console script in
real subprocesses; the default-folder run and the two checkpoint/dataset errors run the same app in this process
(``tests/cli_runner.py``)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cli_runner import CliResult, run_in_process

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def run_eval(*args: str, in_process: bool = False) -> subprocess.CompletedProcess | CliResult:
    if in_process:
        return run_in_process("smolvla-eval", list(args), env={"COLUMNS": "200"})
    return subprocess.run([str(BIN / "smolvla-eval"), *args], capture_output=True, text=True, env=ENV, timeout=600)


@pytest.fixture(scope="module")
def demo_ckpt_run(demo_short_run) -> Path:
    """A demo-trained run (conftest's ``demo_short_run``, shared by the session)."""
    return demo_short_run


@pytest.fixture()
def copied_checkpoint(demo_ckpt_run, tmp_path) -> Path:
    """A copy of the demo's last checkpoint inside a fresh run folder (the shared run stays untouched)."""
    last = (demo_ckpt_run / "checkpoints" / "last").resolve()
    dest = tmp_path / "run" / "checkpoints" / last.name
    shutil.copytree(last / "pretrained_model", dest / "pretrained_model")
    return dest


def dataset_facts(checkpoint: Path) -> dict:
    path = checkpoint / "pretrained_model" / "train_config.yaml"
    return yaml.safe_load(path.read_text())["dataset"]


def one_line_error(proc: subprocess.CompletedProcess | CliResult, *needles: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def test_eval_default_output_folder_table_and_report(copied_checkpoint):
    facts = dataset_facts(copied_checkpoint)
    episodes = ",".join(str(e) for e in facts["val_episodes"])
    proc = run_eval("--checkpoint", str(copied_checkpoint), "--dataset-path", facts["path"], "--episodes", episodes,
                    "--max-frames", "12", "--tolerance", "0.1", "--seed", "3", "--device", "cpu",
                    "--noise", "sample", "--num-samples", "2", in_process=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = list((copied_checkpoint.parent.parent / "eval").iterdir())
    assert len(evals) == 1 and evals[0].name.endswith(f"_{copied_checkpoint.name}")
    out = evals[0]
    assert str(out / "report.json") in " ".join(proc.stdout.split())  # the output says where the report is
    for label in ("all dims", "left_arm", "right_gripper", "hold", "mean_action", "policy chunks: mean of 2 draws"):
        assert label in proc.stdout, label
    report = json.loads((out / "report.json").read_text())
    assert report["frames_evaluated"] == 12 and report["tolerance"] == 0.1 and report["seed"] == 3
    assert report["inference"] == {"noise": "sample", "num_samples": 2, "label": "mean of 2 draws"}
    assert "inference: **mean of 2 draws** (`--noise sample --num-samples 2`)" in (out / "summary.md").read_text()
    assert report["checkpoints"] == [str(copied_checkpoint.resolve())]
    assert (out / "summary.md").is_file() and (out / "error_vs_chunk_step.png").is_file()


def test_eval_explicit_output_dir_and_training_episode_warning(demo_ckpt_run, tmp_path):
    facts = dataset_facts(demo_ckpt_run / "checkpoints" / "last")
    seen = facts["train_episodes"][0]
    proc = run_eval("--checkpoint", str(demo_ckpt_run), "--dataset-path", facts["path"], "--episodes", str(seen),
                    "--max-frames", "4", "--frame-stride", "5", "--output-dir", str(tmp_path / "ev"), "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "warning:" in proc.stderr and str(seen) in proc.stderr
    report = json.loads((tmp_path / "ev" / "report.json").read_text())
    assert report["overlapping_train_episodes"] == [seen] and report["frame_stride"] == 5


def test_eval_bad_inference_flags_are_one_line(tmp_path):
    """Checked before any checkpoint is read."""
    args = ["--checkpoint", str(tmp_path), "--dataset-path", str(tmp_path), "--episodes", "0"]
    one_line_error(run_eval(*args, "--num-samples", "0", in_process=True), "--num-samples 0", "whole number >= 1")
    one_line_error(run_eval(*args, "--noise", "foo", in_process=True), "--noise 'foo'", "zero", "sample")
    one_line_error(run_eval(*args, "--noise", "zero", "--num-samples", "4", in_process=True),
                   "--num-samples 4 with --noise zero",
                   "--noise sample")


def test_eval_missing_train_config_is_one_line(copied_checkpoint, tmp_path):
    (copied_checkpoint / "pretrained_model" / "train_config.yaml").unlink()
    proc = run_eval("--checkpoint", str(copied_checkpoint), "--dataset-path", str(tmp_path), "--episodes", "0",
                    in_process=True)
    one_line_error(proc, "train_config.yaml", "missing")


def test_eval_dataset_with_another_state_layout_is_one_line(demo_ckpt_run, synthetic_2026):
    proc = run_eval("--checkpoint", str(demo_ckpt_run), "--dataset-path", str(synthetic_2026), "--episodes", "0",
                    "--device", "cpu", in_process=True)
    one_line_error(proc, str(synthetic_2026), "61", "256", "state map")


def test_eval_requires_checkpoint_flag():
    proc = run_eval("--dataset-path", "x", "--episodes", "0")
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr
