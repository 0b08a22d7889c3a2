"""``smolvla-train --demo``: a BEHAVIOR-2025-shaped dataset and a tiny SmolVLM backbone written under the run folder,
and the settings that make the run finish in a couple of minutes on 2 CPU cores with the loss clearly down."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from behavior_smolvla.config import TrainConfig, apply_overrides

DEMO_DEFAULTS: dict[str, Any] = {
    # Sized so that `make demo` finishes in a few minutes on 2 CPU cores with the loss clearly down.
    "image_size": 64,
    "chunk_size": 10,
    "batch_size": 8,
    "max_steps": 600,
    "lr": 1e-3,
    "warmup_steps": 20,
    "decay_steps": 600,
    "decay_lr": 1e-4,
    "save_steps": 300,
    "log_steps": 50,
    "num_workers": 1,
    "freeze_vision_encoder": False,  # the VLM trains from scratch by default; the demo trains its encoder too
    "eval_steps": 150,
}


def apply_demo_defaults(cfg: TrainConfig, given: set[str]) -> None:
    """Fill the demo's built-in settings for every option the user did not set (``given``: flat option names)."""
    apply_overrides(cfg, {k: v for k, v in DEMO_DEFAULTS.items() if k not in given}, "demo defaults")
    if "decay_steps" not in given:
        cfg.optim.decay_steps = cfg.optim.max_steps or cfg.optim.decay_steps
    cfg.policy.from_scratch = True
    if "device" not in given:
        cfg.optim.device = "cpu"
    if "run_name" not in given:
        cfg.output.run_name = "demo"


def prepare_demo(cfg: TrainConfig, run_dir: Path, say: Callable[[str], None]) -> None:
    """Generate the demo's BEHAVIOR-2025-shaped dataset and tiny SmolVLM backbone under ``run_dir`` (reused if
    there), then :func:`use_demo_files`. Rank 0's job under DDP; the other ranks call :func:`use_demo_files`."""
    from behavior_smolvla.synthetic.datasets import write_demo_dataset
    from behavior_smolvla.policy.backbone import build_tiny_vlm

    data_dir = run_dir / "demo_data"
    if cfg.data.dataset_path is None and not (data_dir / "meta" / "info.json").is_file():
        say(f"demo: writing a BEHAVIOR-2025-shaped dataset to {data_dir}")
        write_demo_dataset(data_dir)
    if cfg.policy.vlm_model is None:
        build_tiny_vlm(run_dir / "tiny_vlm", image_size=cfg.data.image_size)
    use_demo_files(cfg, run_dir)


def use_demo_files(cfg: TrainConfig, run_dir: Path) -> None:
    """Point ``cfg`` at the demo's dataset and backbone under ``run_dir`` (unless given) and hold out the last
    episode of every task (unless episodes are given): the same choice on every rank, so that all ranks train on
    the same episodes."""
    if cfg.data.dataset_path is None:
        cfg.data.dataset_path = str(run_dir / "demo_data")
    if cfg.policy.vlm_model is None:
        cfg.policy.vlm_model = str(run_dir / "tiny_vlm")
    if cfg.data.val_episodes is None and cfg.data.episodes is None:
        # Hold out the last episode of every task (BEHAVIOR indices: task_id * 10000 + ...), for smolvla-eval.
        from behavior_smolvla.data.meta import DatasetMeta

        last_per_task: dict[int, int] = {}
        for e in sorted(DatasetMeta.load(cfg.data.dataset_path).episodes):
            last_per_task[e // 10000] = e
        cfg.data.val_episodes = ",".join(str(e) for e in sorted(last_per_task.values()))
