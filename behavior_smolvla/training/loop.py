"""The training loop: lerobot's SmolVLA on a LeRobot/BEHAVIOR dataset, with accelerate, checkpoints and wandb.

``train(cfg)`` is what ``smolvla-train`` runs. It works the same in one process and under ``accelerate launch
--num_processes N`` / ``torchrun`` (DDP): every rank reads its own shard of the data order, only rank 0 logs and
writes checkpoints. Exact resume: weights, optimizer, scheduler, RNG states and the position in the data order are
restored, so on CPU in fp32 with the same worker count a resumed run reports the same loss at every step as an
uninterrupted one.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.syntax import Syntax

from behavior_smolvla.policy import checkpoint as ckpt
from behavior_smolvla.config import TrainConfig, apply_overrides, load_config_file, validate_config
from behavior_smolvla.errors import BehaviorSmolVLAError, ConfigError, DatasetError
from behavior_smolvla.training.tracking import MetricsLog, WandbTracker

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
    "train_expert_only": False,
    "freeze_vision_encoder": False,
    "eval_steps": 150,
}


# Floor for the normalisation std of state and action dims (in each dim's own units). lerobot divides by
# (std + 1e-8): a dim that is constant in the training episodes (a locked joint) would map any later movement
# to a huge normalised value at evaluation time.
MIN_STD = 1e-3


def floor_std(stats: dict[str, dict[str, Any]], min_std: float = MIN_STD) -> dict[str, dict[str, Any]]:
    """A copy of ``stats`` with every ``std`` array raised to at least ``min_std``."""
    import numpy as np

    return {key: {k: (np.maximum(v, min_std).astype(np.float32) if k == "std" else v) for k, v in s.items()}
            for key, s in stats.items()}


class TrainingDivergedError(BehaviorSmolVLAError):
    """The loss became NaN or infinite; the run stops and the last good checkpoint is kept."""


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    last_checkpoint: Path
    steps: int
    first_loss: float
    final_loss: float
    stopped_by_signal: bool = False
    is_main_process: bool = True


# --- configuration --------------------------------------------------------------------------------------------


def config_for_run(config_file: str | None, cli_values: dict[str, Any]) -> TrainConfig:
    """Resolve the run config: defaults < checkpoint config (when resuming) < ``config_file`` < flags.

    When ``resume`` is given, the resumed checkpoint's saved config is the base, so a bare ``--resume RUN`` continues
    exactly the run that was interrupted; flags (e.g. a larger ``--max-steps``) still override it.
    """
    cfg = TrainConfig()
    file_values = load_config_file(config_file) if config_file else {}
    resume = cli_values.get("resume") or file_values.get("resume")
    if resume:
        if resume == "auto":
            out = cli_values.get("output_dir") or file_values.get("output_dir")
            if not out:
                raise ConfigError("--resume given without a folder: pass --resume RUN_DIR or --output-dir RUN_DIR")
            resume = out
        checkpoint = ckpt.resolve_checkpoint(resume)
        saved = ckpt.load_train_config(checkpoint)
        apply_overrides(cfg, saved["run"], f"{checkpoint}/pretrained_model/{ckpt.TRAIN_CONFIG_FILE}")
        cfg.output.output_dir = str(checkpoint.parent.parent)
        cfg.output.resume = str(checkpoint)
    if file_values:
        apply_overrides(cfg, file_values, str(config_file))
    apply_overrides(cfg, {k: v for k, v in cli_values.items() if k != "resume"}, "command line")
    if resume:
        cfg.output.resume = str(ckpt.resolve_checkpoint(resume))
    return cfg


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


def prepare_demo(cfg: TrainConfig, run_dir: Path, say) -> None:
    """Generate the demo's BEHAVIOR-2025-shaped dataset and tiny SmolVLM backbone under ``run_dir`` (reused if there)."""
    from behavior_smolvla.data.synthetic import write_demo_dataset
    from behavior_smolvla.policy.backbone import build_tiny_vlm

    data_dir = run_dir / "demo_data"
    vlm_dir = run_dir / "tiny_vlm"
    if cfg.data.dataset_path is None:
        if not (data_dir / "meta" / "info.json").is_file():
            say(f"demo: writing a BEHAVIOR-2025-shaped dataset to {data_dir}")
            write_demo_dataset(data_dir)
        cfg.data.dataset_path = str(data_dir)
    if cfg.policy.vlm_model is None:
        build_tiny_vlm(vlm_dir, image_size=cfg.data.image_size)
        cfg.policy.vlm_model = str(vlm_dir)
    if cfg.data.val_episodes is None and cfg.data.episodes is None:
        # Hold out the last episode of every task (BEHAVIOR indices: task_id * 10000 + ...), for smolvla-eval.
        from behavior_smolvla.data.meta import DatasetMeta

        last_per_task: dict[int, int] = {}
        for e in sorted(DatasetMeta.load(cfg.data.dataset_path).episodes):
            last_per_task[e // 10000] = e
        cfg.data.val_episodes = ",".join(str(e) for e in sorted(last_per_task.values()))


def default_run_dir(cfg: TrainConfig) -> Path:
    """``outputs/<YYYY-MM-DD>/<HH-MM-SS>_<run_name>`` (lerobot's convention)."""
    now = datetime.now()
    return Path("outputs") / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{cfg.output.run_name}"


# --- data -----------------------------------------------------------------------------------------------------


def default_cameras(camera_keys: list[str]) -> list[str]:
    """The three RGB cameras in SmolVLA's order (head, left wrist, right wrist) for BEHAVIOR data
    (``r1pro.CAMERAS_2025`` / ``CAMERAS_2026``); every camera otherwise."""
    from behavior_smolvla.r1pro import behavior_rgb_cameras

    return behavior_rgb_cameras(camera_keys) or list(camera_keys)


def split_episodes(meta: Any, train_spec: str | None, val_spec: str | None, tasks_spec: str | None = None
                   ) -> tuple[list[int], list[int]]:
    """Training and held-out episode indices; the held-out ones are never trained on. ``tasks_spec`` (``--tasks``)
    restricts the training episodes to those tasks' episodes.

    Raises:
        ConfigError: the two overlap, or nothing is left to train on.
        DatasetError: a malformed or unknown episode or task spec.
    """
    from behavior_smolvla.data.meta import parse_episode_spec, select_tasks

    available = sorted(meta.episodes)
    val = parse_episode_spec(val_spec, available) if val_spec else []
    train = parse_episode_spec(train_spec, available) if train_spec else [e for e in available if e not in set(val)]
    if tasks_spec:
        in_tasks = set(select_tasks(meta, tasks_spec))
        train = [e for e in train if e in in_tasks]
        if not train:
            raise ConfigError(f"--tasks {tasks_spec}: none of the training episodes belongs to these tasks; check "
                              "--episodes / --val-episodes against smolvla-inspect's task table")
    overlap = sorted(set(train) & set(val))
    if overlap:
        raise ConfigError(f"--episodes and --val-episodes overlap on {overlap[:10]}: held-out episodes must not be trained on")
    if not train:
        raise ConfigError("no training episodes left after --val-episodes; hold out fewer episodes")
    return train, val


def build_image_transform(cfg: TrainConfig):
    """Colour jitter from lerobot's ImageTransforms (torchvision v2), at most two per sample, in random order."""
    if not cfg.data.image_aug:
        return None
    from lerobot.transforms.transforms import ImageTransformConfig, ImageTransforms, ImageTransformsConfig

    ranges = {"brightness": (0.8, 1.2), "contrast": (0.8, 1.2), "saturation": (0.5, 1.5), "hue": (-0.05, 0.05)}
    tfs = {name: ImageTransformConfig(weight=1.0, type="ColorJitter", kwargs={name: r}) for name, r in ranges.items()}
    return ImageTransforms(ImageTransformsConfig(enable=True, max_num_transforms=2, random_order=True, tfs=tfs))


# --- the loop -------------------------------------------------------------------------------------------------


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if cfg.optim.precision == "auto":
        return "bf16" if device.type == "cuda" else "no"
    return {"fp32": "no"}.get(cfg.optim.precision, cfg.optim.precision)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def worker_decoder_threads(num_workers: int, world_size: int, device_type: str) -> int | None:
    """FFmpeg threads per decoder in each DataLoader worker: the cores this rank does not use, shared by its workers.

    The training process keeps ``torch.get_num_threads()`` cores on CPU (one on an accelerator, for the Python loop
    and kernel launches); each of ``num_workers`` workers gets an equal share of the rest, 1 to 4 threads, so that
    decoding does not compete with the step for its cores (the sampler's own rule, ``cpus // workers``, gives the
    one worker of a 2-core machine both cores). None when the data is read in the training process.
    """
    if num_workers <= 0:
        return None
    main = torch.get_num_threads() if device_type == "cpu" else 1
    return max(1, min(4, (_cores() // max(world_size, 1) - main) // num_workers))


def policy_inputs(preprocessor, batch: dict[str, Any], camera_map: dict[str, str], uint8_frames: bool
                  ) -> dict[str, Any]:
    """A loader batch as the policy's forward takes it: SmolVLA's keys, the pre-processor (task tokens, normalised
    state and action, moved to the policy's device), then uint8 ``[B, 3, H, W]`` frames -> float32 in [0, 1]
    (on the device: a quarter of the bytes cross from the workers and to the GPU)."""
    from behavior_smolvla.policy.smolvla import to_policy_batch

    inputs = preprocessor(to_policy_batch(batch, camera_map))
    if uint8_frames:
        for key in camera_map.values():
            inputs[key] = inputs[key].float().div_(255)
    return inputs


def _batches(loader, start_epoch: int, start_batch: int) -> Iterator[tuple[int, int, dict]]:
    """Yield ``(epoch, batch_index, batch)`` forever from the resume position.

    Each pass over ``loader`` is the stream's next epoch (``TrainingStream`` counts its iterations, in persistent
    workers too), so the workers and their open decoders live across epochs instead of being re-spawned.
    """
    epoch, first = start_epoch, start_batch
    while True:
        k = first
        for batch in loader:
            yield epoch, k, batch
            k += 1
        epoch, first = epoch + 1, 0


def train(cfg: TrainConfig, given: set[str] | None = None, console: Console | None = None,
          on_step: Callable[[int], None] | None = None) -> TrainResult:
    """Train SmolVLA as ``cfg`` says; return where the checkpoints are.

    Args:
        cfg: the resolved run config (``config_for_run``).
        given: flat option names set explicitly (flags or config file); used by ``--demo`` to keep user overrides.
        console: rich console for progress and messages (rank 0 only prints).
        on_step: called on every rank with the step number after each optimizer step and that step's logging,
            validation and checkpoint. Its time is left out of the logged step times and throughput (like
            validation's), so it can do its own work in between: ``bench/train_step.py`` runs its bare-loop windows
            there, interleaved with the trainer's.

    Raises:
        ConfigError, DatasetError, StateMapError, PolicyLoadError, CheckpointError: bad input, one line each.
        TrainingDivergedError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs
    from torch.utils.data import DataLoader

    from behavior_smolvla.data.dataset import BehaviorDataset

    from behavior_smolvla.data.meta import DatasetMeta
    from behavior_smolvla.policy.smolvla import PolicySpec, create_policy, policy_camera_keys, resolve_device, save_policy
    from behavior_smolvla.data.sampler import TrainingStream, worker_context
    from behavior_smolvla.state_maps.maps import default_state_map, load_state_map, standard_track_map

    console = console or Console()
    given = given or set()
    resuming = cfg.output.resume is not None
    if cfg.demo and not resuming:
        apply_demo_defaults(cfg, given)
    validate_config(cfg)

    device = resolve_device(cfg.optim.device)
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=_precision(cfg, device),
        gradient_accumulation_steps=cfg.optim.grad_accum_steps,
        step_scheduler_with_optimizer=False,
        # Frozen parameters (requires_grad=False) are not DDP's concern, and every trainable SmolVLA parameter takes
        # part in each forward, so the extra autograd-graph walk of find_unused_parameters is not needed.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    is_main = accelerator.is_main_process
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to each DataLoader worker (and each rank): oversubscribed OpenMP threads spin-wait on a
        # busy core and made CPU steps ~10x slower in measurements on a 2-core machine.
        torch.set_num_threads(max(1, _cores() // world - cfg.data.num_workers))
    decoder_threads = worker_decoder_threads(cfg.data.num_workers, world, accelerator.device.type)

    def say(msg: str) -> None:
        if is_main:
            console.print(msg, highlight=False, soft_wrap=True)

    # Run folder. Rank 0 decides (default name has a timestamp) and broadcasts it.
    run_dir = Path(cfg.output.output_dir) if cfg.output.output_dir else default_run_dir(cfg)
    if world > 1 and cfg.output.output_dir is None:
        from accelerate.utils import broadcast_object_list

        holder = [str(run_dir)]
        broadcast_object_list(holder, from_process=0)
        run_dir = Path(holder[0])
    cfg.output.output_dir = str(run_dir)
    if not resuming and (run_dir / ckpt.CHECKPOINTS_DIR).exists():
        raise ConfigError(
            f"--output-dir {run_dir}: already holds a run; pass --resume {run_dir} to continue it or pick a new folder"
        )
    accelerator.wait_for_everyone()
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.demo:
        if is_main:
            prepare_demo(cfg, run_dir, say)
        accelerator.wait_for_everyone()
        if not is_main:
            cfg.data.dataset_path = cfg.data.dataset_path or str(run_dir / "demo_data")
            cfg.policy.vlm_model = cfg.policy.vlm_model or str(run_dir / "tiny_vlm")

    # DataLoader workers fork from a server that imports torch/av meanwhile (started now, used after the model).
    worker_start = worker_context() if cfg.data.num_workers > 0 else None

    # Data: files -> reader -> state map.
    dataset_path = Path(cfg.data.dataset_path)
    if not (dataset_path / "meta" / "info.json").is_file():
        raise DatasetError(
            f"--dataset-path {dataset_path}: no meta/info.json there; pass the folder of a LeRobot dataset"
        )
    meta = DatasetMeta.load(dataset_path, state_key=cfg.data.state_key, action_key=cfg.data.action_key)
    if cfg.data.state_map:
        state_map = load_state_map(cfg.data.state_map)
    elif cfg.data.filter_state:
        state_map = standard_track_map(meta.state_dim)
    else:
        state_map = default_state_map(meta.state_dim)
    state_map = state_map.bind(meta.state_dim, meta.state_names)
    cfg.data.state_map = cfg.data.state_map or state_map.name
    cameras = cfg.data.cameras or default_cameras(meta.camera_keys)
    cfg.data.cameras = list(cameras)
    train_eps, val_eps = split_episodes(meta, cfg.data.episodes, cfg.data.val_episodes, cfg.data.tasks)
    dataset = BehaviorDataset(
        dataset_path,
        episodes=train_eps,
        cameras=cameras,
        chunk_size=cfg.policy.chunk_size,
        image_size=cfg.data.image_size,
        frame_stride=cfg.data.frame_stride,
        state_map=state_map,
        cache_dir=cfg.data.cache_dir,
    )
    transform = build_image_transform(cfg)
    val_dataset = None
    if val_eps and cfg.eval.eval_steps and accelerator.is_main_process:
        val_dataset = BehaviorDataset(
            dataset_path, episodes=val_eps, cameras=cameras, chunk_size=cfg.policy.chunk_size,
            image_size=cfg.data.image_size, frame_stride=cfg.data.frame_stride, state_map=state_map,
            cache_dir=cfg.data.cache_dir,
        )

    # Without augmentation the workers hand frames over as uint8 (a quarter of the bytes through shared memory) and
    # they become float32 in [0, 1] on the training device; augmentation works on float images in the workers.
    uint8_frames = transform is None

    def make_stream(epoch: int, batch: int) -> TrainingStream:
        return TrainingStream(
            dataset, seed=cfg.optim.seed, batch_size=cfg.optim.batch_size, rank=rank, world_size=world,
            start_epoch=epoch, start_batch=batch, transform=transform, uint8_images=uint8_frames,
            decoder_threads=decoder_threads, task_balanced=cfg.data.task_balanced,
        )

    batches_per_epoch = len(make_stream(0, 0))
    if batches_per_epoch == 0:
        raise ConfigError(f"--batch-size {cfg.optim.batch_size}: larger than this rank's share of the data; lower it")
    steps_per_epoch = max(1, batches_per_epoch // cfg.optim.grad_accum_steps)
    total_steps = cfg.optim.max_steps or cfg.optim.num_epochs * steps_per_epoch

    # Policy: lerobot's SmolVLA, built or loaded by policy.py.
    spec = PolicySpec(
        cameras=list(cameras),
        image_size=cfg.data.image_size,
        state_dim=state_map.output_dim,
        action_dim=meta.action_dim,
        chunk_size=cfg.policy.chunk_size,
        n_action_steps=cfg.policy.n_action_steps or cfg.policy.chunk_size,
        max_state_dim=cfg.policy.state_dim,
        policy_path=str(Path(cfg.output.resume) / ckpt.PRETRAINED_DIR) if resuming else cfg.policy.policy_path,
        from_scratch=cfg.policy.from_scratch and not resuming,
        vlm_model=cfg.policy.vlm_model,
        train_expert_only=cfg.policy.train_expert_only,
        freeze_vision_encoder=cfg.policy.freeze_vision_encoder,
        # lerobot accepts "cpu" but not "cpu:0" (what accelerate reports under multi-process CPU runs).
        device="cpu" if accelerator.device.type == "cpu" else str(accelerator.device),
    )
    torch.manual_seed(cfg.optim.seed)
    bundle = create_policy(spec, floor_std(dataset.stats))
    if bundle.reinitialised and not resuming:
        say(f"policy: freshly initialised {', '.join(bundle.reinitialised)} (shape changed from the pretrained one)")
    camera_map = policy_camera_keys(list(cameras))

    from lerobot.optim.optimizers import AdamWConfig
    from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig

    policy = bundle.policy
    optimizer = AdamWConfig(
        lr=cfg.optim.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.optim.weight_decay,
        grad_clip_norm=cfg.optim.grad_clip_norm,
    ).build(policy.get_optim_params())
    scheduler = CosineDecayWithWarmupSchedulerConfig(
        peak_lr=cfg.optim.lr, decay_lr=cfg.optim.decay_lr,
        num_warmup_steps=cfg.optim.warmup_steps, num_decay_steps=cfg.optim.decay_steps,
    ).build(optimizer, total_steps)
    policy, optimizer = accelerator.prepare(policy, optimizer)

    run_facts = {
        "run": cfg.to_dict(),
        "dataset": {
            "path": str(dataset_path.resolve()),
            "version": meta.version,
            "fps": meta.fps,
            "state_dim": meta.state_dim,
            "action_dim": meta.action_dim,
            "action_names": meta.action_names,
            "cameras": list(cameras),
            "camera_map": camera_map,
            "image_size": cfg.data.image_size,
            "frame_stride": cfg.data.frame_stride,
            "train_episodes": train_eps,
            "val_episodes": val_eps,
            "tasks": sorted({t for e in train_eps for t in meta.episodes[e].tasks}),
            "task_map": {str(k): v for k, v in meta.tasks.items()},
        },
        "state_map": state_map.to_dict(),
    }

    state = ckpt.TrainingState(step=0, epoch=0, batch=0, world_size=world, batch_size=cfg.optim.batch_size,
                               grad_accum_steps=cfg.optim.grad_accum_steps)
    if resuming:
        state = ckpt.load_training_state(Path(cfg.output.resume), optimizer, scheduler)
        if (state.world_size, state.batch_size, state.grad_accum_steps) != (world, cfg.optim.batch_size, cfg.optim.grad_accum_steps):
            raise ConfigError(
                f"--resume {cfg.output.resume}: saved with {state.world_size} processes x batch {state.batch_size} x "
                f"accumulation {state.grad_accum_steps}; resume with the same values to keep the data order"
            )
        say(f"resumed from {cfg.output.resume} at step {state.step} (epoch {state.epoch}, batch {state.batch})")
    else:
        torch.manual_seed(cfg.optim.seed)  # the same RNG stream whatever policy construction consumed

    if is_main:
        console.print(Panel(Syntax(cfg.to_yaml(), "yaml", theme="ansi_dark"), title="smolvla-train config"))
        say(
            f"data: {len(train_eps)} training episodes ({len(dataset)} samples), {len(val_eps)} held out; "
            f"state map {state_map.name} ({meta.state_dim} -> {state_map.output_dim} dims); cameras {cameras}"
        )
        say(
            f"effective batch {cfg.optim.batch_size * world * cfg.optim.grad_accum_steps} = "
            f"{cfg.optim.batch_size} per process x {world} processes x {cfg.optim.grad_accum_steps} accumulation; "
            f"{total_steps} steps; device {accelerator.device}; precision {accelerator.mixed_precision}"
        )

    metrics = MetricsLog(run_dir, resume_step=state.step if resuming else None) if is_main else None
    tracker = None
    if is_main:
        tracker = WandbTracker(
            run_dir, run_facts,
            project=cfg.logging.wandb_project, entity=cfg.logging.wandb_entity,
            name=cfg.logging.wandb_run_name or f"{cfg.output.run_name}-{run_dir.name}", tags=cfg.logging.wandb_tags,
            mode="disabled" if cfg.logging.wandb_disable else cfg.logging.wandb_mode,
            run_id=state.wandb_run_id, say=say,
        )
        state.wandb_run_id = tracker.run_id

    loader = DataLoader(
        make_stream(state.epoch, state.batch), batch_size=None, num_workers=cfg.data.num_workers,
        pin_memory=accelerator.device.type == "cuda",
        # A private generator: creating an iterator must not consume the global RNG (exact resume).
        generator=torch.Generator().manual_seed(cfg.optim.seed),
        # Not fork: PyAV/FFmpeg decoders are not fork-safe, and neither is a process that already ran torch threads.
        # A forkserver (a fresh process that imported torch/av once) starts workers in milliseconds, not seconds.
        multiprocessing_context=worker_start,
        persistent_workers=cfg.data.num_workers > 0,
        prefetch_factor=4 if cfg.data.num_workers > 0 else None,
    )

    def save(step_state: ckpt.TrainingState) -> Path | None:
        accelerator.wait_for_everyone()
        path = None
        if is_main:
            path = ckpt.save_checkpoint(
                run_dir, step_state,
                # bundle.policy is the module accelerate wrapped (DDP keeps a reference, it does not copy).
                write_pretrained=lambda d: save_policy(bundle, d),
                train_config=run_facts, optimizer=optimizer, scheduler=scheduler, keep_last=cfg.output.keep_last,
            )
        accelerator.wait_for_everyone()
        return path

    def run_validation(at_step: int) -> bool:
        """Validation loss and offline metrics on the held-out episodes (rank 0); True when the best so far."""
        from behavior_smolvla.evaluation.engine import validate

        result = validate(bundle, val_dataset, max_frames=cfg.eval.eval_max_frames, seed=cfg.optim.seed,
                          output_dir=run_dir / "eval" / f"step_{at_step:06d}")
        plots = result.pop("plots", {})
        names = {k: k.replace("/", "_").removeprefix("val_") for k in result}
        metrics.write({"step": at_step, **{f"val_{names[k]}": v for k, v in result.items()}})
        tracker.log({f"val/{names[k]}": v for k, v in result.items()}, step=at_step)
        tracker.log_images({f"val/{name}": path for name, path in plots.items()}, step=at_step)
        score = float(result["first_action_mae"])
        say(f"validation at step {at_step}: loss {result['val_loss']:.4f}, first-action MAE {score:.4g} "
            f"(mean-action predictor {result['mean_action_first_action_mae']:.4g}), "
            f"percent close {result['percent_close']:.3f}")
        if state.best_metric is None or score < state.best_metric:
            state.best_metric = score
            return True
        return False

    stream = _batches(loader, state.epoch, state.batch)
    step = state.step
    first_loss = final_loss = float("nan")
    # Per-window sums; the step-time split (data wait / forward+backward / optimizer / logging+checkpoints) is logged
    # per step so bench/train_step.py can compare the trainer with a bare loop. On CUDA these are host-side times.
    window: dict[str, float] = {}

    def reset_window(t0: float) -> None:
        # paused_s: validation and on_step time, not training; save_s: checkpoint writes, part of the step time
        # (time_step_s) but left out of the throughput figures.
        window.update(loss=0.0, n=0, data_s=0.0, compute_s=0.0, optim_s=0.0, other_s=0.0, samples=0,
                      paused_s=0.0, save_s=0.0, t0=t0)

    reset_window(time.perf_counter())
    last_path = Path(cfg.output.resume) if resuming else None
    progress = Progress(
        TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not is_main, transient=False,
        refresh_per_second=2,  # redrawing costs ~2 ms of CPU each time: noticeable next to a small model's step
    )
    task = progress.add_task("train", total=total_steps, completed=step, info="")

    # SIGTERM (a cluster's preemption notice) or Ctrl-C: finish the step, checkpoint, stop cleanly.
    stop = {"signal": 0}

    def request_stop(signum, _frame) -> None:
        stop["signal"] = signum

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    stopped = False
    policy.train()
    try:
        with progress:
            while step < total_steps:
                grad_norm = torch.tensor(float("nan"))
                step_loss = 0.0
                for _ in range(cfg.optim.grad_accum_steps):
                    t_wait = time.perf_counter()
                    epoch, k, batch = next(stream)
                    t_got = time.perf_counter()
                    window["data_s"] += t_got - t_wait
                    window["samples"] += len(batch["task"]) * world
                    with accelerator.accumulate(policy):
                        inputs = policy_inputs(bundle.preprocessor, batch, camera_map, uint8_frames)
                        with accelerator.autocast():
                            loss, _ = policy(inputs)
                        loss_value = loss.item()
                        if not math.isfinite(loss_value):
                            good = f"; the last good checkpoint is {last_path}" if last_path else ""
                            raise TrainingDivergedError(
                                f"loss is {loss_value} at step {step + 1} (epoch {epoch}, batch {k}){good}; "
                                "lower --lr or --grad-clip-norm, or check the data around that batch"
                            )
                        accelerator.backward(loss)
                        t_optim = time.perf_counter()
                        window["compute_s"] += t_optim - t_got
                        if accelerator.sync_gradients:
                            clip = cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm > 0 else float("inf")
                            grad_norm = accelerator.clip_grad_norm_(policy.parameters(), clip)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                        window["optim_s"] += time.perf_counter() - t_optim
                    step_loss += loss_value / cfg.optim.grad_accum_steps
                scheduler.step()
                step += 1
                state.step, state.epoch, state.batch = step, epoch, k + 1
                if state.batch >= batches_per_epoch:
                    state.epoch, state.batch = epoch + 1, 0
                if world > 1:
                    step_loss = accelerator.reduce(torch.tensor(step_loss, device=accelerator.device), "mean").item()
                if math.isnan(first_loss):
                    first_loss = step_loss
                final_loss = step_loss
                window["loss"] += step_loss
                window["n"] += 1
                if is_main:
                    progress.update(task, completed=step, info=f"loss {step_loss:.4f}")
                if step % cfg.logging.log_steps == 0 or step == total_steps:
                    t_log = time.perf_counter()
                    wall = t_log - window["t0"] - window["paused_s"]
                    elapsed = wall - window["save_s"]
                    record = {
                        "step": step,
                        "epoch": state.epoch,
                        "loss": window["loss"] / window["n"],
                        "lr": scheduler.get_last_lr()[0],
                        "grad_norm": float(grad_norm),
                        "samples_per_s": window["samples"] / elapsed if elapsed > 0 else float("nan"),
                        "data_wait_frac": window["data_s"] / elapsed if elapsed > 0 else float("nan"),
                        "time_step_s": wall / window["n"],
                        "time_data_s": window["data_s"] / window["n"],
                        "time_forward_backward_s": window["compute_s"] / window["n"],
                        "time_optimizer_s": window["optim_s"] / window["n"],
                        "time_log_checkpoint_s": window["other_s"] / window["n"],
                    }
                    if accelerator.device.type == "cuda":
                        record["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1024**3
                    if is_main:
                        metrics.write(record)
                        tracker.log({f"train/{k_}": v for k_, v in record.items() if k_ != "step"}, step=step)
                        progress.console.print(
                            " ".join(f"{k_} {v:.4g}" if isinstance(v, float) else f"{k_} {v}"
                                     for k_, v in record.items() if not k_.startswith("time_")),
                            highlight=False, soft_wrap=True,
                        )
                    reset_window(t_log)  # writing this record counts in the next window
                    window["other_s"] += time.perf_counter() - t_log
                improved = False
                if val_dataset is not None and (step % cfg.eval.eval_steps == 0 or step == total_steps):
                    t_val = time.perf_counter()
                    improved = run_validation(step)
                    window["paused_s"] += time.perf_counter() - t_val
                if cfg.eval.eval_steps and world > 1:  # rank 0 decides; all ranks take part in a save
                    flag = accelerator.reduce(torch.tensor(float(improved), device=accelerator.device), "max")
                    improved = flag.item() > 0
                stop_now = stop["signal"] != 0
                if world > 1:  # every rank must stop at the same step
                    flag = torch.tensor(float(stop_now), device=accelerator.device)
                    stop_now = accelerator.reduce(flag, "max").item() > 0
                if step % cfg.output.save_steps == 0 or step == total_steps or stop_now or improved:
                    t_save = time.perf_counter()
                    last_path = save(state) or last_path
                    if improved and is_main:
                        ckpt.mark_best(run_dir, step)
                    save_s = time.perf_counter() - t_save
                    window["save_s"] += save_s
                    window["other_s"] += save_s
                if on_step is not None:
                    t_hook = time.perf_counter()
                    on_step(step)
                    window["paused_s"] += time.perf_counter() - t_hook
                if stop_now:
                    stopped = True
                    say(f"stopped by signal at step {step}; checkpoint {last_path}; continue with "
                        f"`smolvla-train --resume {run_dir}`")
                    break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if metrics is not None:
            metrics.close()
        if tracker is not None:
            tracker.finish()
        accelerator.end_training()

    last = run_dir / ckpt.CHECKPOINTS_DIR / ckpt.LAST
    if is_main:
        say(f"done: {step} steps, loss {first_loss:.4f} -> {final_loss:.4f}; checkpoints in {run_dir / ckpt.CHECKPOINTS_DIR}")
    return TrainResult(run_dir=run_dir, last_checkpoint=last, steps=step, first_loss=first_loss, final_loss=final_loss,
                       stopped_by_signal=stopped, is_main_process=is_main)
