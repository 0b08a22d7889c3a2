"""Checkpoints verified against what was written: each folder's ``manifest.json`` (file sizes and SHA-256, the input
contract's fingerprint), checked by ``--resume``, ``smolvla-eval``, ``smolvla-serve`` and ``load_policy``.

Every failure case copies the newest two checkpoints of the session's trained demo run (conftest's
``demo_short_run``) into a fresh run folder, damages a real file of the newest after it was written (truncation,
random bytes, the same length overwritten, the YAML edited), runs the command (in this process: the same Typer app
and error wrapper, ``tests/cli_runner.py``), and asserts the exit code, ONE error line naming the file or the
contract fields (and, for damaged bytes, the intact older checkpoint), no traceback, and that every file of the
copied run (and an earlier evaluation's report) is byte for byte as before. The commands refuse before any model is
built. A checkpoint without manifests (written before them) loads with one "unverified" line, and an evaluation that
predicts NaN refuses to report a score (a real ``smolvla-eval`` subprocess: what its stderr shows).
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from cli_runner import CliResult, run_in_process, run_subprocess

from behavior_smolvla.errors import CheckpointError
from behavior_smolvla.inputs import ContractFingerprint, PolicyInputs
from behavior_smolvla.policy.checkpoint import (
    MANIFEST_FILE, PRETRAINED_DIR, TRAIN_CONFIG_FILE, TRAINING_STATE_DIR, list_checkpoints, load_train_config,
)

ENV = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
MODEL = f"{PRETRAINED_DIR}/model.safetensors"
OPTIMIZER = f"{TRAINING_STATE_DIR}/optimizer_state.safetensors"
STEP_FILE = f"{TRAINING_STATE_DIR}/training_step.json"
CONFIG = f"{PRETRAINED_DIR}/{TRAIN_CONFIG_FILE}"


# -- a copy of the trained run ------------------------------------------------------------------------------------


@dataclass
class Run:
    """A copy of the demo run's newest two checkpoints: ``last`` (damaged by a case) and ``older`` (intact)."""

    root: Path
    last: Path
    older: Path
    dataset: Path
    val_episodes: list[int]


@pytest.fixture()
def run(demo_short_run: Path, tmp_path: Path) -> Run:
    older, last = list_checkpoints(demo_short_run / "checkpoints")[-2:]
    root = tmp_path / "run"
    for step in (older, last):
        shutil.copytree(step, root / "checkpoints" / step.name)
    (root / "checkpoints" / "last").symlink_to(last.name)
    facts = load_train_config(last)["dataset"]
    return Run(root, root / "checkpoints" / last.name, root / "checkpoints" / older.name, Path(facts["path"]),
               facts["val_episodes"])


def snapshot(root: Path) -> dict[str, str]:
    """Relative path -> SHA-256 (or symlink target) of everything under ``root``."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path.relative_to(root))] = f"-> {path.readlink()}"
        elif path.is_file():
            out[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


# -- damage, as it happens to files after they were written ---------------------------------------------------------


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def random_bytes(path: Path) -> None:
    path.write_bytes(random.Random(1).randbytes(path.stat().st_size))


def overwrite_tensor_bytes(path: Path) -> None:
    """Overwrite 256 bytes in the middle of a safetensors file's tensor data (the header stays valid, the length is
    kept): the file loads, with other values."""
    data = bytearray(path.read_bytes())
    header = 8 + struct.unpack("<Q", data[:8])[0]
    at = header + (len(data) - header) // 2
    data[at:at + 256] = random.Random(2).randbytes(256)
    path.write_bytes(bytes(data))


def same_length_json_edit(path: Path) -> None:
    """``"step": 10`` -> ``"step": 19`` (still valid JSON of the same length)."""
    text = path.read_text()
    step = json.loads(text)["step"]
    edited = text.replace(f'"step": {step}', f'"step": {str(step)[:-1]}9', 1)
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)


def edit_yaml(edit: Callable[[dict], None]) -> Callable[[Path], None]:
    def apply(path: Path) -> None:
        config = yaml.safe_load(path.read_text())
        edit(config)
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return apply


def _swap_first_state_dims(config: dict) -> None:
    state_map = config["inputs"]["state_map"]
    for key in ("dims", "source_indices"):
        state_map[key][0], state_map[key][1] = state_map[key][1], state_map[key][0]


def _set(section: str, key: str, value) -> Callable[[dict], None]:
    return lambda config: config[section].__setitem__(key, value)


def add_file(name: str) -> Callable[[Path], None]:
    return lambda path: shutil.copy(path, path.parent / name)


# -- the commands -----------------------------------------------------------------------------------------------


def resume(r: Run) -> list[str]:
    return ["--resume", str(r.root)]


def new_run(r: Run, *flags: str) -> list[str]:
    """A new run from the newest checkpoint's weights (``--policy-path``), one step, into ``<tmp>/new``."""
    image_size = load_train_config(r.older)["run"]["data"]["image_size"]
    return ["--policy-path", str(r.last / PRETRAINED_DIR), "--dataset-path", str(r.dataset), "--output-dir",
            str(r.root.parent / "new"), "--image-size", str(image_size), "--val-episodes",
            ",".join(map(str, r.val_episodes)), "--max-steps", "1", "--batch-size", "2", "--num-workers", "0",
            "--device", "cpu", "--wandb-disable", *flags]


def evaluate(r: Run) -> list[str]:
    return ["--checkpoint", str(r.root), "--dataset-path", str(r.dataset), "--episodes",
            ",".join(map(str, r.val_episodes)), "--max-frames", "2", "--device", "cpu",
            "--output-dir", str(r.root.parent / "eval")]


def serve(r: Run) -> list[str]:
    return ["--checkpoint", str(r.root), "--device", "cpu", "--port", "0"]


COMMANDS = {"resume": ("smolvla-train", resume), "policy-path": ("smolvla-train", new_run),
            "eval": ("smolvla-eval", evaluate), "serve": ("smolvla-serve", serve)}


@dataclass
class Case:
    id: str
    file: str
    """The damaged file, relative to the newest checkpoint."""
    damage: Callable[[Path], None]
    commands: tuple[str, ...]
    """``resume`` (smolvla-train --resume), ``policy-path`` (a new run from the weights), ``eval``, ``serve``,
    ``load_policy`` (the Python API)."""
    needles: tuple[str, ...]
    """Substrings of the error line; ``{older}`` is the intact older checkpoint, ``{file}`` the damaged path."""


BYTES_CHANGED = ("{file}", "sha256 differs", "{older}")
CASES = [
    Case("model-same-length-overwrite", MODEL, overwrite_tensor_bytes,
         ("resume", "eval", "serve", "load_policy", "policy-path"), BYTES_CHANGED),
    Case("model-truncated", MODEL, truncate, ("eval", "load_policy"), ("{file}", "{older}")),
    Case("model-random-bytes", MODEL, random_bytes, ("serve",), ("{file}", "{older}")),
    Case("normalizer-stats-same-length-overwrite",
         f"{PRETRAINED_DIR}/policy_preprocessor_step_5_normalizer_processor.safetensors", overwrite_tensor_bytes,
         ("eval",), BYTES_CHANGED),
    Case("optimizer-same-length-overwrite", OPTIMIZER, overwrite_tensor_bytes, ("resume",), BYTES_CHANGED),
    Case("training-step-same-length-edit", STEP_FILE, same_length_json_edit, ("resume",), BYTES_CHANGED),
    Case("manifest-random-bytes", f"{PRETRAINED_DIR}/{MANIFEST_FILE}", random_bytes, ("eval",),
         ("{file}", "{older}")),
    Case("listed-file-deleted", f"{PRETRAINED_DIR}/policy_postprocessor_step_0_unnormalizer_processor.safetensors",
         Path.unlink, ("serve",), ("{file}", "missing", "{older}")),
    Case("weights-file-added", OPTIMIZER, add_file("raw_weights.safetensors"), ("resume",),
         ("raw_weights.safetensors", "does not list it", "{older}")),
    Case("run-options-edited", CONFIG, edit_yaml(lambda c: c["run"]["optim"].__setitem__("lr", 0.5)),
         ("resume",), ("{file}", "changed after the checkpoint was written", "{older}")),
    Case("inputs-chunk-size-edited", CONFIG, edit_yaml(_set("inputs", "chunk_size", 5)), ("resume",),
         ("{file}", "inputs.chunk_size", "--policy-path")),
    Case("inputs-cameras-swapped", CONFIG, edit_yaml(lambda c: c["inputs"]["cameras"].reverse()),
         ("resume", "serve"), ("{file}", "inputs.cameras", "--policy-path")),
    Case("inputs-delta-instead-of-absolute", CONFIG,
         edit_yaml(lambda c: c["inputs"].update(action_mode="delta", action_norm="per-step")),
         ("eval", "load_policy"), ("{file}", "inputs.action_mode, inputs.action_norm", "--policy-path")),
    Case("inputs-another-state-map", CONFIG, edit_yaml(_swap_first_state_dims), ("serve", "resume"),
         ("{file}", "inputs.state_map", "--policy-path")),
    Case("inputs-section-removed", CONFIG, edit_yaml(lambda c: c.pop("inputs")), ("eval",),
         ("{file}", "'inputs' section is gone")),
]


def _load_policy(r: Run) -> CliResult:
    """The Python API as a command: exit 2 and the message on stderr for a project error."""
    from behavior_smolvla.serving.policy import load_policy

    try:
        load_policy(r.root, device="cpu")
    except CheckpointError as exc:
        return CliResult(2, "", f"error: {exc}\n")
    return CliResult(0, "", "")


@pytest.mark.parametrize(("case", "command"), [pytest.param(c, cmd, id=f"{c.id}-{cmd}") for c in CASES
                                               for cmd in c.commands])
def test_damaged_checkpoint_is_refused_in_one_line_and_nothing_is_lost(case: Case, command: str, run: Run):
    case.damage(run.last / case.file)
    earlier_eval = run.root.parent / "eval"
    earlier_eval.mkdir()
    (earlier_eval / "report.json").write_text('{"an": "earlier report"}')
    before = snapshot(run.root.parent)

    if command == "load_policy":
        proc = _load_policy(run)
    else:
        script, args = COMMANDS[command]
        proc = run_in_process(script, args(run), env=ENV)

    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output[-3000:]
    assert proc.returncode == 2, (proc.returncode, output[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and [line for line in proc.stderr.splitlines() if line.strip()] == errors, proc.stderr
    for needle in case.needles:
        needle = needle.format(file=run.last / case.file, older=run.older)
        assert needle in errors[0], (needle, errors[0])
    assert snapshot(run.root.parent) == before  # nothing written, nothing removed, no checkpoint re-pointed


# -- what a checkpoint records --------------------------------------------------------------------------------------


def test_manifests_list_every_file_and_the_contract_fingerprint(demo_short_run: Path):
    last = (demo_short_run / "checkpoints" / "last").resolve()
    contract = PolicyInputs.from_train_config(load_train_config(last), "train_config.yaml")
    for folder in (last / PRETRAINED_DIR, last / TRAINING_STATE_DIR):
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        assert manifest["format"] == 1 and manifest["algorithm"] == "sha256"
        files = sorted(p.name for p in folder.iterdir() if p.name != MANIFEST_FILE)
        assert sorted(manifest["files"]) == files
        for name, entry in manifest["files"].items():
            data = (folder / name).read_bytes()
            assert entry == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}, name
        # the fingerprint of the contract as it is in memory equals the one recorded from the YAML written
        assert manifest["inputs"] == contract.fingerprint().to_dict()
    assert (last / PRETRAINED_DIR / MANIFEST_FILE).read_text().count(contract.fingerprint().sha256) == 1


def test_fingerprint_is_canonical_and_names_the_changed_fields(synthetic_2025, synthetic_2026):
    from behavior_smolvla.config import DataConfig, PolicyConfig
    from behavior_smolvla.data.meta import DatasetMeta

    for root in (synthetic_2025, synthetic_2026):
        inputs = PolicyInputs.resolve(DatasetMeta.load(root), DataConfig(), PolicyConfig())
        section = inputs.to_dict()
        fingerprint = inputs.fingerprint()
        # through YAML (the task map's int keys, floats, lists) and in another key order: the same fingerprint
        reread = yaml.safe_load(yaml.safe_dump(dict(reversed(list(section.items()))), sort_keys=False))
        assert ContractFingerprint.of(reread) == fingerprint
        assert PolicyInputs.from_dict(reread, "x").fingerprint() == fingerprint
        assert len(fingerprint.sha256) == 64 and set(fingerprint.fields) == set(section)
        edited = {**section, "chunk_size": section["chunk_size"] + 1, "cameras": section["cameras"][::-1]}
        assert ContractFingerprint.of(edited).differing_fields(fingerprint) == ["cameras", "chunk_size"]
        assert ContractFingerprint.of({**section, "extra": 1}).differing_fields(fingerprint) == ["extra"]
        assert ContractFingerprint.of(edited).sha256 != fingerprint.sha256


# -- older checkpoints, and policies that predict NaN ---------------------------------------------------------------


def _drop_manifests(checkpoint: Path) -> None:
    for folder in (PRETRAINED_DIR, TRAINING_STATE_DIR):
        (checkpoint / folder / MANIFEST_FILE).unlink()


def test_checkpoint_without_manifest_loads_with_one_unverified_line(run: Run, caplog):
    from behavior_smolvla.policy.smolvla import load_policy_bundle

    _drop_manifests(run.last)
    with caplog.at_level("WARNING"):
        bundle = load_policy_bundle(run.root, device="cpu")
    lines = [r.getMessage() for r in caplog.records if "unverified" in r.getMessage()]
    assert len(lines) == 1 and str(run.last) in lines[0], lines
    assert bundle.checkpoint == run.last.resolve()


def test_eval_refuses_to_score_nan_predictions(run: Run):
    """Weights overwritten with NaN at the same length in a checkpoint without manifests (as written before them):
    it loads, unverified, and predicts NaN everywhere; smolvla-eval says so instead of reporting a score."""
    _drop_manifests(run.last)
    path = run.last / MODEL
    data = bytearray(path.read_bytes())
    header_len = 8 + struct.unpack("<Q", data[:8])[0]  # safetensors: u64 header size, JSON header, tensor bytes
    start, end = json.loads(data[8:header_len])["model.action_out_proj.weight"]["data_offsets"]
    data[header_len + start:header_len + end] = b"\xff" * (end - start)  # float32 0xffffffff is NaN
    path.write_bytes(bytes(data))
    out = run.root.parent / "eval"
    proc = run_subprocess("smolvla-eval", evaluate(run), env=ENV, timeout=600)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, (proc.returncode, proc.stdout[-2000:], proc.stderr[-3000:])
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    assert str(run.root) in errors[0] and "100.0% of its predicted action values are NaN" in errors[0], errors[0]
    assert len([line for line in proc.stderr.splitlines() if "unverified" in line]) == 1, proc.stderr
    assert not (out / "report.json").exists() and not (out / "summary.md").exists()


def test_other_inputs_are_a_new_run_from_the_weights(run: Run):
    """What the contract refusal says to do: ``--policy-path <pretrained_model>`` with other inputs trains (the
    edited YAML of the source is not read), and the new run records its own contract."""
    edit_yaml(_set("inputs", "chunk_size", 5))(run.last / CONFIG)
    refused = run_in_process("smolvla-train", resume(run), env=ENV)
    assert refused.returncode == 2 and "--policy-path" in refused.stderr, refused.stderr
    proc = run_in_process("smolvla-train", new_run(run, "--chunk-size", "5"), env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    ckpt = (run.root.parent / "new" / "checkpoints" / "last").resolve()
    contract = PolicyInputs.from_train_config(load_train_config(ckpt), "new")
    assert contract.chunk_size == 5
    manifest = json.loads((ckpt / PRETRAINED_DIR / MANIFEST_FILE).read_text())
    assert manifest["inputs"]["sha256"] == contract.fingerprint().sha256
    assert manifest["inputs"]["sha256"] != json.loads(
        (run.older / PRETRAINED_DIR / MANIFEST_FILE).read_text())["inputs"]["sha256"]
