"""Shared fixtures: the real G1 datasets beside the checkout and two tiny BEHAVIOR-shaped synthetic datasets.

The session-scoped datasets are shared by every test module: treat them as read-only (copy or mirror one before
deleting or damaging files). Hugging Face and Weights & Biases are kept offline for the whole session; the
variables are set at import time because ``huggingface_hub`` reads them when it is first imported.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from filelock import FileLock

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["WANDB_MODE"] = "offline"
# The numeric cache of every reader built by the tests (and their CLI subprocesses) lives in a fresh temporary
# folder, never in the user's cache.
os.environ["SMOLVLA_CACHE_DIR"] = tempfile.mkdtemp(prefix="smolvla-test-cache-")
atexit.register(shutil.rmtree, os.environ["SMOLVLA_CACHE_DIR"], ignore_errors=True)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
"""``../shared/data`` next to the checkout (the real datasets; see its README.md)."""

# Wrists are 48 x 64 (H x W): non-square frames catch height/width mix-ups, and libx265 cannot encode frames
# 34-48 pixels wide (see behavior_smolvla.synthetic.datasets). Lengths differ per episode on purpose.
SYNTHETIC_IMAGE_SIZE = {"head": (64, 64), "left_wrist": (48, 64), "right_wrist": (48, 64)}
SYNTHETIC_2025 = {"episodes": 4, "frames": [40, 52, 46, 60], "tasks": 2, "image_size": SYNTHETIC_IMAGE_SIZE,
                  "codec": "libx265", "gop": 250, "seed": 0}
SYNTHETIC_2026 = {"episodes": 6, "frames": [30, 42, 36, 48, 34, 40], "tasks": 2, "image_size": SYNTHETIC_IMAGE_SIZE,
                  "codec": "libx265", "gop": 8, "seed": 1, "episodes_per_file": 2}


def built_once(name: str, tmp_path_factory: pytest.TempPathFactory, build: Callable[[Path], None]) -> Path:
    """A session artefact built by ``build(folder)`` once per test run, whatever the number of test processes.

    Under pytest-xdist (``make test``: 2 processes) every process is a pytest session of its own, so a session
    fixture would be built once per process: a minute of CPU per process for the full demo. The first process to
    get here builds it into the run's shared temporary folder under a file lock; the others wait for it and reuse
    it (the folder is complete when ``.complete`` exists, so an interrupted build is redone, not reused).
    """
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    folder = tmp_path_factory.getbasetemp().parent / name  # the run's folder, shared by its worker processes
    with FileLock(f"{folder}.lock"):
        if not (folder / ".complete").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".complete").touch()
    return folder


LONGEST_FILES_FIRST = ("test_bench.py", "test_train.py", "test_real_size.py", "test_checkpoint_integrity.py",
                       "test_preemption.py", "test_multinode.py", "test_serve_security.py", "test_bad_inputs.py")
"""Test files that take a minute or more, longest first (``--durations`` of ``make test``)."""


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the longest test files first. ``make test`` deals whole files to its 2 processes in collection order
    (``--dist loadfile``); a long file dealt last would leave one process working alone at the end."""
    rank = {name: i for i, name in enumerate(LONGEST_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


def _shared_dataset(name: str) -> Path:
    path = SHARED_DATA / name
    if not (path / "meta" / "info.json").is_file():
        pytest.fail(f"{path} is missing: the tests need the shared data folder beside the checkout (../shared/data)")
    return path


@pytest.fixture(scope="session")
def g1_v30() -> Path:
    """The real G1 Inspire dataset in LeRobot v3.0 (8 episodes 0..7 in 3 mp4 files, one AV1 camera)."""
    return _shared_dataset("g1_inspire_v30")


@pytest.fixture(scope="session")
def g1_v21() -> Path:
    """The real G1 Inspire dataset in LeRobot v2.1 (8 episodes, non-contiguous indices 1, 2, 4, 5, 7, 8, 10, 11)."""
    return _shared_dataset("g1_inspire_v21")


@pytest.fixture(scope="session")
def synthetic_2025(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BEHAVIOR-2025-layout dataset (:data:`SYNTHETIC_2025`): episodes 10, 20 (task 0) and 10010, 10020
    (task 1), HEVC with a 250-frame GOP (one keyframe per file). Ground truth: ``synthetic.load_ground_truth``."""
    from behavior_smolvla.synthetic.datasets import write_behavior_2025

    return write_behavior_2025(tmp_path_factory.mktemp("synthetic_2025") / "behavior_2025", **SYNTHETIC_2025)


@pytest.fixture(scope="session")
def synthetic_2026(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BEHAVIOR-2026-layout (v3.0) dataset (:data:`SYNTHETIC_2026`): episodes 0-2 (task 0, chunk 0) and
    3-5 (task 1, chunk 1), several episodes per parquet and per mp4, HEVC with an 8-frame GOP."""
    from behavior_smolvla.synthetic.datasets import write_behavior_2026

    return write_behavior_2026(tmp_path_factory.mktemp("synthetic_2026") / "behavior_2026", **SYNTHETIC_2026)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny local SmolVLM backbone folder (64 px images), built offline (``behavior_smolvla.policy.backbone``)."""
    from behavior_smolvla.policy.backbone import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm") / "tiny_vlm", image_size=64)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished ``smolvla-train --demo`` run folder (the built-in defaults: 600 steps, a minute or two on CPU),
    trained once per test run in a real subprocess (read-only; shared by the test processes: :func:`built_once`).
    Requested directly only by tests of what the full demo learns (the README's promise; marked slow); a test that
    needs any trained checkpoint uses :func:`demo_short_run`, which is this run when the session trains it anyway.

    Its ``demo_data/`` is the BEHAVIOR-2025-shaped training dataset; the held-out episodes are in the checkpoint's
    ``train_config.yaml`` (``dataset.val_episodes``)."""
    import subprocess
    import sys

    def train(folder: Path) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        proc = subprocess.run(
            [str(Path(sys.executable).parent / "smolvla-train"), "--demo", "--output-dir", str(folder / "run"),
             "--wandb-disable"], capture_output=True, text=True, env=env, timeout=1200,
        )
        if proc.returncode != 0:
            pytest.fail(f"smolvla-train --demo failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                        f"{proc.stderr[-3000:]}")

    return built_once("demo", tmp_path_factory, train) / "run"


DEMO_SHORT_ARGS = ["--demo", "--max-steps", "10", "--save-steps", "5", "--eval-max-frames", "4", "--num-workers", "0",
                   "--wandb-disable"]
"""``smolvla-train`` flags of :func:`demo_short_run`: the demo's data, backbone and model, 10 steps; the validation
at the last step on 4 frames (on the demo's 64 it costs more than the training)."""


@pytest.fixture(scope="session")
def demo_short_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A trained run of the demo's shape, shared read-only by the evaluation, serving and input-contract tests that
    need a trained checkpoint (not a well-trained one): the demo's dataset, tiny backbone, model and settings, with at
    least two step checkpoints and ``last``.

    When a selected test also needs the full demo (:func:`demo_run`, e.g. ``make test``), it is that run: one
    training serves both. Otherwise (``make test-fast``, or a selection of fast tests) it is a short run trained once
    per test run (:func:`built_once`) through the ``smolvla-train`` command in this process
    (:data:`DEMO_SHORT_ARGS`: 10 steps, checkpoints
    ``000005`` and ``000010`` = ``last``, validated at step 10 on 4 frames), instead of the full demo's minutes.

    Its ``demo_data/`` is the BEHAVIOR-2025-shaped dataset (24 episodes); the held-out episodes (120 and 10120, the
    last of each task) are in the checkpoint's ``train_config.yaml`` (``dataset.val_episodes``)."""
    if any("demo_run" in item.fixturenames for item in request.session.items):
        return request.getfixturevalue("demo_run")
    from cli_runner import run_in_process

    def train(folder: Path) -> None:
        result = run_in_process("smolvla-train", [*DEMO_SHORT_ARGS, "--output-dir", str(folder / "run")])
        if result.returncode != 0:
            pytest.fail(f"smolvla-train {' '.join(DEMO_SHORT_ARGS)} failed ({result.returncode}):\n"
                        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")

    return built_once("demo_short", tmp_path_factory, train) / "run"
