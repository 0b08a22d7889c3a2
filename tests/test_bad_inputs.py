"""Bad inputs across the five commands, as a hostile or unlucky user would give them: each case runs a command on a
damaged copy of a test fixture (or with a bad flag) and must end with exit code 2 and ONE ``error:`` line on stderr
naming the file or flag (or, for ``smolvla-inspect``'s problem report, exit code 1 with the file named in the
report), and no Python traceback anywhere.

Most cases run the command in this process (``tests/cli_runner.py``: the same Typer app, error wrapper and exit
code, without an interpreter start and the torch imports per case); the cases marked ``subprocess`` (at least one
per command, and both of inspect's exit codes) run the installed console script in a real subprocess.

Most cases fail before any model is built; the damaged-checkpoint cases share one tiny real checkpoint run (2
steps of SmolVLA on the tiny backbone at 32 px, trained once per module).
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_runner import CliResult, run_in_process, run_subprocess, without_cache_builds

ENV = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "COLUMNS": "200",
       "PYTHONUNBUFFERED": "1"}
UNWRITABLE = "/proc/no-such-dir/run"
"""A folder that cannot be created even by root (procfs refuses new entries)."""


@dataclass
class Ctx:
    """Paths a case builds its arguments from; ``tmp`` is the case's own folder for damaged copies."""

    dataset: Path
    vlm: Path
    run: Path
    tmp: Path


def run_cli(command: str, args: list[str], in_process: bool = False) -> CliResult:
    if in_process:
        return run_in_process(command, args, env=ENV)
    return run_subprocess(command, args, env=ENV)


# -- fixtures ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def base(synthetic_2025, tmp_path_factory) -> tuple[Path, Path, Path]:
    """(dataset, tiny 32 px backbone, a 2-step run with checkpoints 000001 and 000002)."""
    from behavior_smolvla.policy.backbone import build_tiny_vlm

    root = tmp_path_factory.mktemp("bad_inputs")
    vlm = build_tiny_vlm(root / "vlm", image_size=32)
    run = root / "run"
    proc = run_cli("smolvla-train", [*train_args(synthetic_2025, vlm, run), "--max-steps", "2", "--save-steps", "1"],
                   in_process=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert (run / "checkpoints" / "000001").is_dir() and (run / "checkpoints" / "000002").is_dir()
    return synthetic_2025, vlm, run


def train_args(dataset: Path, vlm: Path, out: Path) -> list[str]:
    return ["--dataset-path", str(dataset), "--from-scratch", "--vlm-model", str(vlm), "--output-dir", str(out),
            "--image-size", "32", "--chunk-size", "4", "--batch-size", "2", "--num-workers", "0", "--device", "cpu",
            "--wandb-disable", "--max-steps", "2"]


# -- damage -----------------------------------------------------------------------------------------------------


def copy_dataset(c: Ctx) -> Path:
    dst = c.tmp / "dataset"
    if not dst.exists():
        shutil.copytree(c.dataset, dst)
    return dst


def copy_run(c: Ctx) -> Path:
    dst = c.tmp / "run"
    if not dst.exists():
        shutil.copytree(c.run, dst, symlinks=True)
    return dst


FIRST_VIDEO = "videos/task-0000/observation.images.rgb.head/episode_00000010.mp4"
FIRST_DATA = "data/task-0000/episode_00000010.parquet"


def overwrite_middle(path: Path, at: float = 0.3, size: int = 200) -> None:
    """Overwrite ``size`` bytes at fraction ``at`` of the file with seeded random bytes (length kept)."""
    data = bytearray(path.read_bytes())
    i = int(len(data) * at)
    data[i:i + size] = random.Random(0).randbytes(size)
    path.write_bytes(bytes(data))


def truncate(path: Path, fraction: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])


def damaged_video(c: Ctx) -> Path:
    ds = copy_dataset(c)
    overwrite_middle(ds / FIRST_VIDEO)
    return ds


def damaged_parquet(c: Ctx) -> Path:
    ds = copy_dataset(c)
    truncate(ds / FIRST_DATA)
    return ds


def edit_info(c: Ctx, edit: Callable[[dict], None]) -> Path:
    ds = copy_dataset(c)
    info = json.loads((ds / "meta" / "info.json").read_text())
    edit(info)
    (ds / "meta" / "info.json").write_text(json.dumps(info))
    return ds


def replace_meta(c: Ctx, name: str, text: str | None) -> Path:
    """A dataset copy whose ``meta/<name>`` holds ``text`` (None: is deleted)."""
    ds = copy_dataset(c)
    path = ds / "meta" / name
    if text is None:
        path.unlink()
    else:
        path.write_text(text)
    return ds


def last_points_nowhere(c: Ctx) -> Path:
    """A run copy whose newest step folder is gone, so that ``checkpoints/last`` dangles."""
    run = copy_run(c)
    shutil.rmtree(run / "checkpoints" / "000002")
    return run


def zero_std(c: Ctx) -> Path:
    """Stored per-episode stats that disagree with the data: std 0 on a moving action dim of episode 10."""
    ds = copy_dataset(c)
    path = ds / "meta" / "episodes_stats.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows[0]["stats"]["action"]["std"][3] = 0.0
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return ds


def edit_column(c: Ctx, column: str, edit: Callable) -> Path:
    """A dataset copy whose first data file (episode 10) has ``column`` replaced by ``edit(pyarrow column)``."""
    import pyarrow.parquet as pq

    ds = copy_dataset(c)
    path = ds / FIRST_DATA
    table = pq.read_table(path)
    index = table.schema.get_field_index(column)
    table = table.set_column(index, column, edit(table.column(column)))
    pq.write_table(table, path)
    return ds


def nan_state(c: Ctx) -> Path:
    """NaN in observation.state dim 5 of frames 7 and 9 of episode 10."""
    import pyarrow as pa

    def edit(column):
        rows = column.to_pylist()
        for frame in (7, 9):
            rows[frame][5] = float("nan")
        return pa.array(rows, type=column.type)
    return edit_column(c, "observation.state", edit)


def state_as_strings(c: Ctx) -> Path:
    """observation.state (declared float32 in info.json) stored as lists of strings."""
    import pyarrow as pa

    return edit_column(c, "observation.state",
                       lambda column: pa.array([[f"{v:.6f}" for v in row] for row in column.to_pylist()]))


def random_file(c: Ctx, name: str) -> Path:
    path = c.tmp / name
    path.write_bytes(random.Random(2).randbytes(2048))
    return path


def random_meta(c: Ctx, name: str) -> Path:
    """A dataset copy whose ``meta/<name>`` is random bytes of its length."""
    ds = copy_dataset(c)
    path = ds / "meta" / name
    path.write_bytes(random.Random(3).randbytes(path.stat().st_size))
    return ds


def text_file(c: Ctx, name: str, text: str) -> Path:
    path = c.tmp / name
    path.write_text(text)
    return path


def a_file(c: Ctx) -> Path:
    return text_file(c, "a_file", "not a folder\n")


def damaged_ckpt(c: Ctx, file: str, how: str = "truncate") -> Path:
    """A copy of the run whose newest checkpoint (000002, ``last``) has ``file`` damaged."""
    run = copy_run(c)
    path = run / "checkpoints" / "000002" / file
    if how == "truncate":
        truncate(path, 0.3)
    elif how == "random":
        path.write_bytes(random.Random(1).randbytes(path.stat().st_size))
    else:
        path.write_text(how)
    return run


BAD_YAML = "run: [unclosed\n  data: {"
MODEL = "pretrained_model/model.safetensors"
OPTIM = "training_state/optimizer_state.safetensors"
TRAIN_CONFIG = "pretrained_model/train_config.yaml"


# -- the cases --------------------------------------------------------------------------------------------------


@dataclass
class Case:
    id: str
    command: str
    args: Callable[[Ctx], list[str]]
    needles: list[str] = field(default_factory=list)
    """Substrings of the error line (exit 2) or of stdout (inspect's report, exit 1); ``{tmp}`` is the case folder."""
    code: int = 2
    slow: bool = False
    """Trains for some steps (marked ``slow``, deselected by ``make test-fast``)."""
    subprocess: bool = False
    """Run the installed console script in a subprocess (else in this process)."""


def _train(*extra: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [*train_args(c.dataset, c.vlm, c.tmp / "out"), *extra]


def _train_on(dataset: Callable[[Ctx], Path], *extra: str) -> Callable[[Ctx], list[str]]:
    return lambda c: [*train_args(dataset(c), c.vlm, c.tmp / "out"), *extra]


def _eval(checkpoint: Callable[[Ctx], Path] | None = None, *extra: str) -> Callable[[Ctx], list[str]]:
    def args(c: Ctx) -> list[str]:
        ckpt = checkpoint(c) if checkpoint else c.run
        return ["--checkpoint", str(ckpt), "--dataset-path", str(c.dataset), "--episodes", "10", "--device", "cpu",
                "--max-frames", "2", *extra]
    return args


CASES = [
    # smolvla-inspect
    Case("inspect-missing-folder", "smolvla-inspect", lambda c: [str(c.tmp / "nope")], ["nope", "does not exist"],
         subprocess=True),
    Case("inspect-regular-file", "smolvla-inspect", lambda c: [str(a_file(c))], ["a_file", "is a file"]),
    Case("inspect-info-json-garbage", "smolvla-inspect", lambda c: [str(replace_meta(c, "info.json", "{oops"))],
         ["info.json"]),
    Case("inspect-no-info-json", "smolvla-inspect", lambda c: [str(replace_meta(c, "info.json", None))],
         ["info.json"]),
    Case("inspect-episodes-jsonl-garbage", "smolvla-inspect",
         lambda c: [str(replace_meta(c, "episodes.jsonl", "{x\n"))], ["episodes.jsonl"]),
    Case("inspect-probe-files-negative", "smolvla-inspect", lambda c: [str(c.dataset), "--probe-files", "-1"],
         ["--probe-files"]),
    Case("inspect-verify-damaged-video", "smolvla-inspect", lambda c: [str(damaged_video(c)), "--verify"],
         ["damaged video", "episode_00000010.mp4", "first bad frame"], code=1),
    Case("inspect-truncated-parquet", "smolvla-inspect", lambda c: [str(damaged_parquet(c))],
         ["unreadable", "episode_00000010.parquet"], code=1, subprocess=True),
    Case("inspect-codec-mismatch", "smolvla-inspect",
         lambda c: [str(edit_info(c, lambda i: i["features"]["observation.images.rgb.head"].setdefault(
             "info", {}).update({"video.codec": "av1"})))], ["codec", "av1", "hevc"], code=1),
    Case("inspect-verify-stats-disagree", "smolvla-inspect", lambda c: [str(zero_std(c)), "--verify"],
         ["stats", "episode 10", "std dim 3"], code=1),
    Case("inspect-state-key-unknown", "smolvla-inspect", lambda c: [str(c.dataset), "--state-key", "nope"],
         ["feature", "--state-key 'nope'", "observation.state [256]"], code=1),
    Case("inspect-state-key-empty", "smolvla-inspect", lambda c: [str(c.dataset), "--state-key", ""],
         ["--state-key", "empty"]),
    Case("inspect-state-stored-as-strings", "smolvla-inspect", lambda c: [str(state_as_strings(c))],
         ["type", "episode_00000010.parquet", "observation.state"], code=1),
    Case("inspect-info-json-random-bytes", "smolvla-inspect", lambda c: [str(random_meta(c, "info.json"))],
         ["info.json", "not a UTF-8 text file"]),
    Case("inspect-episodes-jsonl-random-bytes", "smolvla-inspect",
         lambda c: [str(random_meta(c, "episodes.jsonl"))], ["episodes.jsonl", "not a UTF-8 text file"]),
    # smolvla-filter-state
    Case("filter-unknown-map", "smolvla-filter-state", lambda c: ["--map", "no-such-map"], ["no-such-map"],
         subprocess=True),
    Case("filter-map-bad-yaml", "smolvla-filter-state", lambda c: ["--map", str(text_file(c, "m.yaml", BAD_YAML))],
         ["m.yaml"]),
    Case("filter-map-unknown-block", "smolvla-filter-state",
         lambda c: ["--map", str(text_file(c, "m.yaml", "kind: map\nname: m\nlayout: r1pro-2025\nentries:\n"
                                                       "  - no_such_block\n"))], ["no_such_block"]),
    Case("filter-dataset-missing", "smolvla-filter-state", lambda c: ["--dataset", str(c.tmp / "nope")], ["nope"]),
    Case("filter-episode-not-in-dataset", "smolvla-filter-state",
         lambda c: ["--dataset", str(c.dataset), "--episodes", "999"], ["999"]),
    Case("filter-episode-spec-garbage", "smolvla-filter-state",
         lambda c: ["--dataset", str(c.dataset), "--episodes", "3-x"], ["3-x"]),
    # smolvla-train: flags
    Case("train-lr-zero", "smolvla-train", _train("--lr", "0"), ["--lr"], subprocess=True),
    Case("train-lr-negative", "smolvla-train", _train("--lr", "-1e-3"), ["--lr"]),
    Case("train-lr-nan", "smolvla-train", _train("--lr", "nan"), ["--lr", "nan"]),
    Case("train-grad-clip-negative", "smolvla-train", _train("--grad-clip-norm", "-1"), ["--grad-clip-norm"]),
    Case("train-weight-decay-inf", "smolvla-train", _train("--weight-decay", "inf"), ["--weight-decay"]),
    Case("train-decay-steps-zero", "smolvla-train", _train("--decay-steps", "0"), ["--decay-steps"]),
    Case("train-max-steps-zero", "smolvla-train", _train("--max-steps", "0"), ["--max-steps"]),
    Case("train-snake-case-flag-checked", "smolvla-train", _train("--batch_size", "0"), ["--batch-size"],
         subprocess=True),
    Case("train-chunk-size-huge", "smolvla-train", _train("--chunk-size", "100000"), ["--chunk-size", "60"]),
    Case("train-batch-size-huge", "smolvla-train", _train("--batch-size", "100000"), ["--batch-size", "198"]),
    Case("train-image-size-huge", "smolvla-train", _train("--image-size", "100000"), ["--image-size", "GB"]),
    Case("train-precision-unknown", "smolvla-train", _train("--precision", "fp8"), ["--precision"]),
    Case("train-ema-decay-one", "smolvla-train", _train("--ema-decay", "1"), ["--ema-decay"]),
    Case("train-stop-timeout-zero", "smolvla-train", _train("--stop-timeout", "0"), ["--stop-timeout"]),
    Case("train-config-bad-yaml", "smolvla-train",
         lambda c: ["--config", str(text_file(c, "cfg.yaml", BAD_YAML))], ["cfg.yaml"]),
    Case("train-config-lr-not-a-number", "smolvla-train",
         lambda c: [*_train()(c), "--config", str(text_file(c, "cfg.yaml", "lr: fast\n"))], ["cfg.yaml", "lr"]),
    Case("train-output-dir-under-file", "smolvla-train",
         lambda c: [*_train()(c), "--output-dir", str(a_file(c) / "run")], ["--output-dir", "a_file"]),
    Case("train-output-dir-unwritable", "smolvla-train", lambda c: [*_train()(c), "--output-dir", UNWRITABLE],
         ["--output-dir", UNWRITABLE]),
    # smolvla-train: data
    Case("train-episode-not-in-dataset", "smolvla-train", _train("--episodes", "999"), ["999"]),
    Case("train-episode-spec-garbage", "smolvla-train", _train("--episodes", "10-"), ["10-"]),
    Case("train-episodes-overlap-val", "smolvla-train", _train("--episodes", "10,20", "--val-episodes", "20"),
         ["--val-episodes"]),
    Case("train-state-map-bad-yaml", "smolvla-train",
         lambda c: [*_train()(c), "--state-map", str(text_file(c, "m.yaml", BAD_YAML))], ["m.yaml"]),
    Case("train-truncated-parquet", "smolvla-train", _train_on(damaged_parquet), ["episode_00000010.parquet"]),
    Case("train-nan-in-state", "smolvla-train", _train_on(nan_state),
         ["episode 10 frame 7", "episode_00000010.parquet", "observation.state dim 5 is nan", "--drop-nonfinite"]),
    Case("train-state-stored-as-strings", "smolvla-train", _train_on(state_as_strings),
         ["episode_00000010.parquet", "'observation.state'", "string", "float32"]),
    Case("train-episodes-stats-random-bytes", "smolvla-train", _train_on(lambda c: random_meta(c, "episodes_stats.jsonl")),
         ["episodes_stats.jsonl"]),
    Case("train-action-reference-random-bytes", "smolvla-train",
         lambda c: [*_train()(c), "--action-reference", str(random_file(c, "ref.yaml"))],
         ["--action-reference", "ref.yaml", "not a UTF-8 text file"]),
    Case("train-config-random-bytes", "smolvla-train",
         lambda c: [*_train()(c), "--config", str(random_file(c, "cfg.yaml"))], ["--config", "cfg.yaml", "UTF-8"]),
    Case("train-tasks-empty", "smolvla-train", _train("--tasks", ""), ["--tasks ''", "empty"]),
    Case("train-episodes-empty", "smolvla-train", _train("--episodes", ""), ["--episodes ''", "empty"]),
    Case("train-val-episodes-empty", "smolvla-train", _train("--val-episodes", " "), ["--val-episodes", "empty"]),
    Case("train-cameras-empty", "smolvla-train", _train("--cameras", ","), ["--cameras", "empty"]),
    Case("train-verify-data-damaged-video", "smolvla-train", _train_on(damaged_video, "--verify-data"),
         ["episode_00000010.mp4", "frame"]),
    Case("train-damaged-video-in-worker", "smolvla-train",
         _train_on(damaged_video, "--num-workers", "1", "--batch-size", "8", "--max-steps", "60"),
         ["episode_00000010.mp4"], slow=True, subprocess=True),
    # smolvla-train: damaged checkpoints (the intact older one must be named)
    Case("resume-model-truncated", "smolvla-train", lambda c: ["--resume", str(damaged_ckpt(c, MODEL))],
         ["model.safetensors", "000001"], subprocess=True),
    Case("resume-optimizer-random-bytes", "smolvla-train",
         lambda c: ["--resume", str(damaged_ckpt(c, OPTIM, "random"))], ["optimizer_state.safetensors", "000001"]),
    Case("resume-train-config-bad-yaml", "smolvla-train",
         lambda c: ["--resume", str(damaged_ckpt(c, TRAIN_CONFIG, BAD_YAML))], ["train_config.yaml", "000001"]),
    Case("resume-last-points-nowhere", "smolvla-train", lambda c: ["--resume", str(last_points_nowhere(c))],
         ["000001"]),
    # smolvla-eval
    Case("eval-model-truncated", "smolvla-eval", _eval(lambda c: damaged_ckpt(c, MODEL)),
         ["model.safetensors", "000001"], subprocess=True),
    Case("eval-model-random-bytes", "smolvla-eval", _eval(lambda c: damaged_ckpt(c, MODEL, "random")),
         ["model.safetensors", "000001"]),
    Case("eval-train-config-bad-yaml", "smolvla-eval", _eval(lambda c: damaged_ckpt(c, TRAIN_CONFIG, BAD_YAML)),
         ["train_config.yaml", "000001"]),
    Case("eval-output-dir-under-file", "smolvla-eval", lambda c: [*_eval()(c), "--output-dir", str(a_file(c) / "x")],
         ["--output-dir", "a_file"]),
    Case("eval-output-dir-unwritable", "smolvla-eval", lambda c: [*_eval()(c), "--output-dir", UNWRITABLE],
         ["--output-dir", UNWRITABLE]),
    Case("eval-episode-not-in-dataset", "smolvla-eval",
         lambda c: [*_eval()(c), "--episodes", "999", "--output-dir", str(c.tmp / "e")], ["999"]),
    Case("eval-tolerance-zero", "smolvla-eval", lambda c: [*_eval()(c), "--tolerance", "0"], ["--tolerance"]),
    Case("eval-output-dir-empty", "smolvla-eval", lambda c: [*_eval()(c), "--output-dir", ""], ["--output-dir", "empty"]),
    Case("eval-episodes-empty", "smolvla-eval", lambda c: [*_eval()(c), "--episodes", ""], ["--episodes", "empty"]),
    # smolvla-serve (its network flags are tested with the server)
    Case("serve-missing-checkpoint", "smolvla-serve", lambda c: ["--checkpoint", str(c.tmp / "nope")], ["nope"],
         subprocess=True),
    Case("serve-model-truncated", "smolvla-serve",
         lambda c: ["--checkpoint", str(damaged_ckpt(c, MODEL)), "--device", "cpu"], ["model.safetensors", "000001"],
         subprocess=True),
    Case("serve-train-config-bad-yaml", "smolvla-serve",
         lambda c: ["--checkpoint", str(damaged_ckpt(c, TRAIN_CONFIG, BAD_YAML)), "--device", "cpu"],
         ["train_config.yaml", "000001"]),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=[pytest.mark.slow] if c.slow else [])
                                  for c in CASES])
def test_bad_input(case: Case, base, tmp_path):
    dataset, vlm, run = base
    ctx = Ctx(dataset=dataset, vlm=vlm, run=run, tmp=tmp_path)
    proc = run_cli(case.command, case.args(ctx), in_process=not case.subprocess)
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-3000:]
    assert proc.returncode == case.code, (proc.returncode, output[-3000:])
    if case.code == 2:
        lines = [line for line in without_cache_builds(proc.stderr).splitlines() if line.strip()]
        errors = [line for line in lines if line.lower().startswith("error")]
        assert len(errors) == 1, proc.stderr[-3000:]
        # A usage error from click also prints its "Usage:" and "Try ... -h" lines; a project error is alone.
        assert len(lines) == 1 or lines[0].startswith("Usage:"), proc.stderr[-3000:]
        text = errors[0]
    else:
        text = proc.stdout
    for needle in case.needles:
        assert needle in text, (needle, text)
    # Nothing half-written: a failed training run leaves no run folder it created.
    if case.command == "smolvla-train" and (tmp_path / "out").exists():
        assert (tmp_path / "out" / "checkpoints").is_dir(), list((tmp_path / "out").iterdir())


@pytest.mark.slow
def test_intact_older_checkpoint_resumes_after_the_named_damage(base, tmp_path):
    """The checkpoint a damage message names really resumes, and the damaged step is rewritten."""
    dataset, vlm, run = base
    ctx = Ctx(dataset=dataset, vlm=vlm, run=run, tmp=tmp_path)
    damaged = damaged_ckpt(ctx, MODEL)
    proc = run_cli("smolvla-train", ["--resume", str(damaged / "checkpoints" / "000001"), "--max-steps", "3"])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    from behavior_smolvla.policy.checkpoint import verify_checkpoint

    for step in ("000002", "000003"):
        verify_checkpoint(damaged / "checkpoints" / step, training_state=True)
    assert (damaged / "checkpoints" / "last").resolve().name == "000003"
    # the resumed run wrote the contract it resumed, unchanged (the same fingerprint in every manifest)
    recorded = {json.loads((damaged / "checkpoints" / step / folder / "manifest.json").read_text())["inputs"]["sha256"]
                for step in ("000001", "000002", "000003") for folder in ("pretrained_model", "training_state")}
    assert len(recorded) == 1, recorded


@pytest.mark.parametrize("command", ["smolvla-inspect", "smolvla-filter-state", "smolvla-train", "smolvla-eval",
                                     "smolvla-serve"])
def test_help_is_readable_at_80_columns(command):
    proc = run_subprocess(command, ["--help"], env={**ENV, "COLUMNS": "80"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "…" not in proc.stdout, proc.stdout
    assert max(len(line) for line in proc.stdout.splitlines()) <= 80, proc.stdout
    assert "--help" in proc.stdout


def test_recompute_stats_replaces_stored_stats_that_disagree(synthetic_2025, tmp_path):
    """Stored per-episode stats with a std of 0 on a moving dim: --verify lists them (above); the reader's
    ``recompute_stats`` (``smolvla-train --recompute-stats``) recomputes them from the rows in a streaming pass."""
    import numpy as np

    from behavior_smolvla.data.dataset import BehaviorDataset
    from behavior_smolvla.data.stats import data_stats

    ds = zero_std(Ctx(dataset=synthetic_2025, vlm=tmp_path, run=tmp_path, tmp=tmp_path))
    stored = BehaviorDataset(ds, cameras=[], chunk_size=4)
    fixed = BehaviorDataset(ds, cameras=[], chunk_size=4, recompute_stats=True)
    assert stored.stats_source == "episode stats" and fixed.stats_source == "recomputed from data"
    exact = data_stats(fixed._action)  # every selected row, in memory
    for key in ("mean", "std", "min", "max"):
        np.testing.assert_allclose(fixed.stats["action"][key], exact[key], rtol=1e-5, atol=1e-6)
    # the damaged std pulled the stored pooled std of dim 3 below the data's
    assert stored.stats["action"]["std"][3] < exact["std"][3] - 1e-4
    # quantiles are count-weighted averages of the episodes' exact ones: close to, not equal to, the pooled ones
    assert np.all(fixed.stats["action"]["q01"] <= fixed.stats["action"]["q99"])
