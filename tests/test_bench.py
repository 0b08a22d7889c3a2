"""Every benchmark under ``bench/`` runs: each script at its smallest size (``--smoke``) in a real subprocess with
``--json``, checked for its exit code and the keys that ``bench/README.md``'s tables and ``gpu_check.sh``'s summary
read. Figures are never compared with anything (no timing is asserted): these tests only keep the scripts from
rotting when the code they drive changes. A new script under ``bench/`` must get a test here
(``test_every_script_has_a_smoke_test``).

``real_size.py --smoke`` fine-tunes the tiny backbone through the trainer and keeps its checkpoint, which the
``serve.py`` test then serves (one training run for both). ``gpu_check.sh``'s CPU rehearsal (every stage, as on a
lent GPU) is the slow test; its stages are those two commands, so when it runs, the two tests check its stages'
outputs instead of running the scripts a second time.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
       "TOKENIZERS_PARALLELISM": "false"}
TESTED = {"cache_verify", "learning", "loader", "real_size", "scale", "serve", "train_step"}
"""The scripts the tests below run (bench/cache_verify.py, bench/learning.py, bench/loader.py, bench/real_size.py,
bench/scale.py, bench/serve.py, bench/train_step.py); ``gpu_check.sh`` has its own test."""


def run_script(script: str, *args: str, timeout: int = 900) -> dict:
    """``python bench/SCRIPT.py --smoke --json ARGS``: its exit code must be 0; returns the JSON object it printed
    last on stdout (progress goes to stderr, or before it)."""
    proc = subprocess.run([sys.executable, str(BENCH / f"{script}.py"), "--smoke", "--json", *args], cwd=REPO,
                          env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"bench/{script}.py failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n" \
                                 f"{proc.stderr[-3000:]}"
    text = "\n" + proc.stdout
    return json.loads(text[text.rindex("\n{"):])


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def test_every_script_has_a_smoke_test():
    assert {p.stem for p in BENCH.glob("*.py")} == TESTED


REHEARSAL_TEST = "test_gpu_check_rehearses_on_cpu"


def rehearsal_selected(request: pytest.FixtureRequest) -> bool:
    """Whether this session runs the (slow) ``gpu_check.sh`` rehearsal, whose stages are ``real_size.py --smoke`` and
    ``serve.py --smoke``: then their tests read the rehearsal's outputs instead of running both scripts again."""
    return any(item.name == REHEARSAL_TEST for item in request.session.items)


@pytest.fixture(scope="module")
def gpu_check_rehearsal(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, Path]:
    """``DEVICE=cpu bash bench/gpu_check.sh`` run once: the finished process and its ``OUT`` folder."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    env = {**ENV, "DEVICE": "cpu", "OUT": str(tmp / "out"), "WORK": str(tmp / "work"), "PYTHON": sys.executable}
    proc = subprocess.run(["bash", str(BENCH / "gpu_check.sh")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1800, check=False)
    return proc, tmp / "out"


def stage_json(request: pytest.FixtureRequest, stage: str) -> dict:
    """The JSON object the rehearsal's ``stage`` printed last (its ``.out``), its log on failure."""
    _, out = request.getfixturevalue("gpu_check_rehearsal")
    try:
        text = "\n" + (out / f"{stage}.out").read_text()
        return json.loads(text[text.rindex("\n{"):])
    except (OSError, ValueError):
        log = out / f"{stage}.log"
        tail = log.read_text()[-3000:] if log.is_file() else ""
        pytest.fail(f"gpu_check.sh's {stage} stage printed no JSON:\n{tail}")


@pytest.fixture(scope="module")
def real_size(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``real_size.py --smoke --json --keep-checkpoint``: its summary (the checkpoint is kept for the serve test);
    the rehearsal's stage when this session runs it (the same command)."""
    if rehearsal_selected(request):
        return stage_json(request, "real_size")
    return run_script("real_size", "--root", str(tmp_path_factory.mktemp("real_size")), "--keep-checkpoint")


def test_real_size(real_size):
    from behavior_smolvla.policy.checkpoint import PRETRAINED_DIR, load_train_config
    from behavior_smolvla.policy.smolvla import load_policy_bundle

    # The acceptance keys, then the ones the table prints.
    for key in ("params_total", "params_trainable", "step_s", "peak_rss_mib", "checkpoint_mib", "checkpoint_write_s",
                "checkpoint_verify_s", "checkpoint_load_s", "samples_per_s", "data_wait_frac", "model_load_s"):
        assert is_number(real_size[key]), key
    assert 0 < real_size["params_trainable"] <= real_size["params_total"]
    assert (real_size["batch_size"], real_size["image_size"], real_size["chunk_size"]) == (1, 64, 50)
    assert set(real_size["checkpoint_parts_mib"]) == {"pretrained_model", "training_state"}
    assert [r["fed_by"] for r in real_size["runs"]] == ["DataLoader"]
    # The benchmark's checkpoint is the trainer's: the input contract is in it and smolvla-eval/serve load it.
    checkpoint = Path(real_size["checkpoint_dir"])
    saved = load_train_config(checkpoint)
    assert {"run", "inputs", "dataset"} <= set(saved)
    bundle = load_policy_bundle(checkpoint / PRETRAINED_DIR, device="cpu")
    assert bundle.inputs.state_map.name == real_size["state_map"] == "r1pro-2025-top32"


def test_serve(request, real_size):
    # serve.py --smoke on real_size.py's checkpoint: the rehearsal's stage when this session runs it
    out = (stage_json(request, "serve") if rehearsal_selected(request)
           else run_script("serve", "--checkpoint", real_size["checkpoint_dir"]))
    assert (out["device"], out["image_size"], out["chunk_size"], out["n_action_steps"]) == ("cpu", 64, 50, 50)
    # --smoke: 12 single-step requests on one connection (1 model call, then 11 from the action queue), 2 chunked.
    counts = {name: out[name]["requests"] for name in ("queue_served", "model_call", "all_steps", "action_chunk")}
    assert counts == {"queue_served": 11, "model_call": 1, "all_steps": 12, "action_chunk": 2}
    for name in counts:
        for key in ("requests_per_s", "actions_per_s", "p50_ms", "p95_ms", "server_infer_p50_ms"):
            assert is_number(out[name][key]), (name, key)
    # --smoke times two strategies, each in its own server, and the model call alone for each (+ 2 single draws)
    assert [len(row["inference"]) > 0 for row in out["by_inference"]] == [True, True]
    assert all(is_number(row["server_infer_p50_ms"]) for row in out["by_inference"])
    assert len(out["model_call_alone"]) == 3 and all(is_number(r["median_ms"]) for r in out["model_call_alone"])


def test_train_step(tmp_path):
    out = run_script("train_step", "--root", str(tmp_path))
    assert [r["run"].split(" (")[0].split(",")[0] for r in out["rows"]] == [
        "bare", "bare + preprocessor", "bare + preprocessor", "bare + preprocessor + DataLoader", "trainer"]
    for row in out["rows"]:
        assert row["steps"] == 2
        for key in ("ms_per_step", "data_wait_ms", "forward_backward_ms", "optimizer_ms", "samples_per_s",
                    "cpu_ms_per_step"):
            assert is_number(row[key]), (row["run"], key)
    assert out["rows"][0]["vs_bare_total_pct"] is None
    assert all(is_number(r["vs_bare_total_pct"]) for r in out["rows"][1:])
    assert is_number(out["trainer_data_wait_frac"]) and out["params_trainable"] <= out["params"]


@pytest.mark.parametrize("layout", ["2025", "2026"])
def test_loader(tmp_path, layout):
    out = run_script("loader", "--layout", layout, "--only", "uc", "--root", str(tmp_path))
    assert (out["layout"], out["gop"]) == (layout, {"2025": 250, "2026": 8}[layout])
    assert out["episodes_per_file"] == {"2025": 1, "2026": 2}[layout]
    assert set(out["rows"]) == {"u", "c"}
    for mode, row in out["rows"].items():
        assert "error" not in row, row
        for key in ("samples_per_s", "samples_per_cpu_s", "peak_rss_mib", "startup_s", "x_decode_limit",
                    "cpu_per_sample_x_limit"):
            assert is_number(row[key]), (mode, key)
    assert out["rows"]["c"]["x_decode_limit"] == 1.0
    # (c) decodes every frame of the 4 episodes x 60 frames x 3 cameras once: one file per episode and camera in
    # 2025, 7 multi-episode files in 2026 (head 2 + left wrist 3 + right wrist 2)
    files = {"2025": 12, "2026": 7}[layout]
    assert out["rows"]["c"]["note"].startswith(f"{files} files, 720 frames")


@pytest.mark.slow
def test_loader_lerobot_row(tmp_path):
    """Row (b): the 2025 data converted by lerobot's own converter, read by ``LeRobotDataset`` (slow: the
    conversion)."""
    out = run_script("loader", "--layout", "2025", "--only", "b", "--root", str(tmp_path))
    row = out["rows"]["b"]
    assert "error" not in row, row
    assert is_number(row["samples_per_s"]) and row["x_lerobot"] == 1.0
    assert (next(tmp_path.glob("behavior2025_*_v30")) / "meta" / "info.json").is_file()


def test_scale(tmp_path):
    out = run_script("scale", "--root", str(tmp_path))
    assert (out["size"], out["episodes"], out["mode"]) == ("smoke", 4, "cache")
    for key in ("startup_s", "first_run_startup_s", "main_rss_mib", "max_worker_rss_mib", "max_worker_anon_mib",
                "max_worker_uss_mib", "import_s"):
        assert is_number(out[key]), key


def test_cache_verify(tmp_path):
    out = run_script("cache_verify", "--root", str(tmp_path))
    assert (out["rows"], out["row_bytes"]) == (20_000, 1136)
    for key in ("entry_gb", "build_s", "build_checksum_s", "open_s", "full_hot_s", "full_cold_s", "hot_gb_s",
                "cold_gb_s", "xxh3_gb_s", "blake2b_gb_s"):
        assert is_number(out[key]), key
    assert out["release"]["rows"] == 119_094_660 and out["task"]["rows"] == 2_381_893
    for scaled in (out["task"], out["release"]):
        assert all(is_number(scaled[k]) for k in ("gb", "open_s", "full_hot_s", "full_cold_s")), scaled
    assert not list(tmp_path.rglob("*.npy"))  # the entry is removed without --keep


def test_learning(tmp_path):
    out = run_script("learning", "--root", str(tmp_path))
    policy = [r for r in out["rows"] if r["variant"] is not None]
    names = [r["predictor"] for r in out["rows"]]
    # the served (EMA) weights with each inference strategy, then the raw weights at the default one
    assert [(r["weights"], r["inference"]) for r in policy] == [
        ("EMA", "one draw"), ("EMA", "zero noise"), ("EMA", "mean of K"), ("raw", "mean of K")]
    assert {"state (zero delta)", "mean_action"} <= set(names)
    for row in out["rows"]:
        for key in ("first_action_mae", "chunk_mae"):
            s = row[key]
            assert all(is_number(s[k]) for k in ("mean", "min", "max")) and s["min"] <= s["mean"] <= s["max"], row
    assert is_number(policy[0]["final_loss"]["mean"]) and len(policy[0]["per_seed"]["chunk_mae"]) == 1
    assert set(out["targets"]) >= {"chunk >= 30% better than state", "chunk better than hold",
                                   "first action better than state", "chunk better than mean_action"}


@pytest.mark.slow
def test_gpu_check_rehearses_on_cpu(gpu_check_rehearsal):
    """``DEVICE=cpu bash bench/gpu_check.sh``: every stage at its smallest on this machine, rc 0 each."""
    proc, out = gpu_check_rehearsal
    assert proc.returncode == 0, f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads((out / "gpu_check.json").read_text())
    assert {name: s["rc"] for name, s in summary["stages"].items()} == {
        "install": 0, "imports": 0, "real_size": 0, "serve": 0}
    assert summary["rehearsal"] is True and summary["device"] == "cpu"
    assert is_number(summary["real_size"]["serve_p50_ms"]) and summary["real_size"]["serve_calls"] == 2
    assert summary["serve"]["model_call"]["requests"] == 1
