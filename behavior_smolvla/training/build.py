"""Everything a training run needs, built from its config in one place: the run folder, the input contract, the
readers, the data order and its DataLoader, the policy, the optimizer and schedule, and the resume state.

``build_training(cfg)`` is what ``training.loop.train`` starts with and what ``bench/train_step.py`` builds its
comparison loops from, so the benchmark measures exactly the trainer's data and model path.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from behavior_smolvla.actions import REFERENCE_KEY, chunk_action_stats, to_delta
from behavior_smolvla.config import (
    TrainConfig, apply_overrides, load_config_file, validate_against_data, validate_config,
)
from behavior_smolvla.data.dataset import BehaviorDataset
from behavior_smolvla.data.meta import DatasetMeta, parse_episode_spec, select_tasks
from behavior_smolvla.data.sampler import EpochOrigin, TrainingPlan, TrainingStream, worker_context
from behavior_smolvla.errors import ConfigError, DatasetError
from behavior_smolvla.inputs import PolicyInputs
from behavior_smolvla.policy import checkpoint as ckpt
from behavior_smolvla.policy.smolvla import (
    ACTION, PolicyBundle, create_policy, resolve_device, resolve_train_expert_only, to_policy_batch, vlm_is_random,
)
from behavior_smolvla.training.ema import EMA
from behavior_smolvla.training.preemption import stop_signals_ignored, worker_stop_signals

MIN_STD = 1e-3
"""Floor for the normalisation std of state and action dims (in each dim's own units). lerobot divides by
(std + 1e-8): a dim that is constant in the training episodes (a locked joint) would map any later movement to a
huge normalised value at evaluation time."""


def floor_std(stats: dict[str, dict[str, Any]], min_std: float = MIN_STD) -> dict[str, dict[str, Any]]:
    """A copy of ``stats`` with every ``std`` array (float32 [D]) raised to at least ``min_std``."""
    return {key: {k: (np.maximum(v, min_std).astype(np.float32) if k == "std" else v) for k, v in s.items()}
            for key, s in stats.items()}


# --- configuration --------------------------------------------------------------------------------------------


def config_for_run(config_file: str | None, cli_values: dict[str, Any]) -> TrainConfig:
    """Resolve the run config: defaults < checkpoint config (when resuming) < ``config_file`` < flags.

    When ``resume`` is given, the resumed checkpoint's saved config is the base, so a bare ``--resume RUN`` continues
    exactly the run that was interrupted; flags (e.g. a larger ``--max-steps``) still override it.

    Raises:
        ConfigError / CheckpointError: a bad config file, flag or checkpoint (one line each).
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
        ckpt.verify_checkpoint(checkpoint, training_state=True)  # before any work: name an intact one if damaged
        saved = ckpt.load_train_config(checkpoint)
        if not isinstance(saved.get("run"), dict):
            raise ckpt.damaged(checkpoint / ckpt.PRETRAINED_DIR / ckpt.TRAIN_CONFIG_FILE, checkpoint,
                               "no 'run' section with the run's options")
        apply_overrides(cfg, saved["run"], f"{checkpoint}/pretrained_model/{ckpt.TRAIN_CONFIG_FILE}")
        cfg.output.reshard = False  # a decision of one resume, never inherited from the run being resumed
        cfg.output.output_dir = str(checkpoint.parent.parent)
        cfg.output.resume = str(checkpoint)
    if file_values:
        apply_overrides(cfg, file_values, str(config_file))
    apply_overrides(cfg, {k: v for k, v in cli_values.items() if k != "resume"}, "command line")
    if resume:
        cfg.output.resume = str(ckpt.resolve_checkpoint(resume))
    return cfg


def default_run_dir(cfg: TrainConfig) -> Path:
    """``outputs/<YYYY-MM-DD>/<HH-MM-SS>_<run_name>`` (lerobot's convention)."""
    now = datetime.now()
    return Path("outputs") / now.strftime("%Y-%m-%d") / f"{now.strftime('%H-%M-%S')}_{cfg.output.run_name}"


def split_episodes(meta: DatasetMeta, train_spec: str | None, val_spec: str | None, tasks_spec: str | None = None
                   ) -> tuple[list[int], list[int]]:
    """Training and held-out episode indices; the held-out ones are never trained on. ``tasks_spec`` (``--tasks``)
    restricts the training episodes to those tasks' episodes.

    Raises:
        ConfigError: the two overlap, or nothing is left to train on.
        DatasetError: an episode or task the dataset does not have, or a malformed spec.
    """
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


def verify_training_videos(meta: DatasetMeta, episodes: list[int], cameras: list[str], console: Console | None
                           ) -> None:
    """``--verify-data``: decode every frame of the episodes' videos (``data.inspect.verify_videos``) before training.

    Raises:
        VideoError: naming the first damaged file, its first bad frame, and how many files are damaged.
    """
    from behavior_smolvla.data.inspect import verify_videos
    from behavior_smolvla.errors import VideoError

    bad = verify_videos(meta, episodes, cameras, console=console)
    if bad:
        more = f" ({len(bad)} damaged files; smolvla-inspect --verify lists them)" if len(bad) > 1 else ""
        raise VideoError(f"video {bad[0].path} is damaged from frame {bad[0].first_bad_frame} ({bad[0].reason}){more}; "
                         "re-download it or leave its episodes out with --episodes")


def build_image_transform(cfg: TrainConfig):
    """lerobot's image augmentation at its own defaults (``ImageTransformsConfig``: brightness, contrast, saturation,
    hue, sharpness and a small affine shift of +-5 degrees / 5%, at most three per frame), applied per camera frame
    in the DataLoader workers; None without ``--image-aug``. Takes and returns float32 [3, H, W] in [0, 1].

    lerobot's defaults rather than our own list: they are what SmolVLA users already tune and report against."""
    if not cfg.data.image_aug:
        return None
    from lerobot.transforms.transforms import ImageTransforms, ImageTransformsConfig

    return ImageTransforms(ImageTransformsConfig(enable=True))


def resolve_policy_training(cfg: TrainConfig, resuming: bool, say: Callable[[str], None]) -> None:
    """Fix ``policy.train_expert_only`` in ``cfg`` (``policy.smolvla.resolve_train_expert_only``), so that the saved
    config holds the value used and a resumed run keeps it; one line says what a run on a randomly initialised VLM
    trains."""
    p = cfg.policy
    auto = p.train_expert_only is None
    p.train_expert_only = resolve_train_expert_only(p)
    if resuming or not vlm_is_random(p):
        return
    if p.train_expert_only:
        say(f"policy: --from-scratch --train-expert-only on {p.vlm_model} (no weights): only the action expert "
            "learns, on a randomly initialised, frozen VLM")
    elif auto:
        say(f"policy: --from-scratch on {p.vlm_model} (no weights): the randomly initialised VLM trains too "
            f"(vision encoder {'frozen' if p.freeze_vision_encoder else 'trained'}); --train-expert-only freezes it")


# --- resuming: the data position on this run's shape, and each rank's random state ----------------------------


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s random generators: the run's ``--seed`` on rank 0 (a one-process run is seeded
    as it always was), ``SeedSequence([seed, rank])``'s first word on the others, so that the ranks draw different
    flow-matching noise and times."""
    return int(seed) if rank == 0 else int(np.random.SeedSequence([int(seed), int(rank)]).generate_state(1)[0])


def seed_rank(seed: int, rank: int) -> None:
    """Seed python's, numpy's and torch's (CPU and every device's) global generators with :func:`rank_seed`."""
    value = rank_seed(seed, rank)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def _shape(world: int, batch: int, accum: int) -> str:
    return f"{world} process{'es' if world != 1 else ''} x batch {batch} x accumulation {accum}"


def _flags_keeping(effective: int, world: int, batch: int, accum: int) -> list[str]:
    """The flags that give the effective batch ``effective`` on ``world`` processes from ``batch`` x ``accum``."""
    options = []
    if effective % (world * accum) == 0:
        options.append(f"--batch-size {effective // (world * accum)}")
    if effective % (world * batch) == 0:
        options.append(f"--grad-accum-steps {effective // (world * batch)}")
    if not options and effective % world == 0:
        options.append(f"--batch-size {effective // world} --grad-accum-steps 1")
    return options


def resume_position(saved: ckpt.TrainingState, world: int, batch_size: int, accum: int, reshard: bool,
                    where: str, say: Callable[[str], None]) -> ckpt.TrainingState:
    """Where a resumed run continues in the data order on its own shape (``world`` processes x ``batch_size`` x
    ``accum`` micro-batches), as a copy of ``saved`` with the position and shape replaced.

    - The saved shape: the saved position, exactly (an exact resume).
    - Another shape with the same effective batch (processes x batch x accumulation): the epoch continues from the
      same sample of its global sequence (``data.sampler``), the rest re-dealt to this run's ranks
      (``EpochOrigin``); back on the shape the epoch was dealt with at a whole round, that plan itself, from
      its batch. Steps and the lr schedule continue by step count.
    - Another effective batch: refused, unless ``reshard``: the rest of the epoch is not read and the next epoch
      starts with this shape (the epoch itself when none of it was read). One line says which.

    Raises:
        ConfigError: another effective batch without ``reshard``, naming the flags that keep it.
    """
    old = (saved.world_size, saved.batch_size, saved.grad_accum_steps)
    new = (world, batch_size, accum)
    dealt = (saved.epoch_world_size or saved.world_size, saved.epoch_batch_size or saved.batch_size)
    read = saved.epoch_offset + saved.batch * saved.world_size * saved.batch_size  # of the epoch's global sequence
    shape = {"world_size": world, "batch_size": batch_size, "grad_accum_steps": accum}
    if old == new:
        return dataclasses.replace(saved)
    effective, was = world * batch_size * accum, old[0] * old[1] * old[2]
    if effective == was:
        say(f"resume: {_shape(*old)} -> {_shape(*new)} (effective batch {effective} kept): epoch {saved.epoch} "
            f"continues at sample {read} of its order, re-dealt to {world} process{'es' if world != 1 else ''}")
        if read == 0:  # nothing of the epoch read yet: it is simply dealt with the new shape
            return dataclasses.replace(saved, **shape, batch=0, epoch_world_size=None, epoch_batch_size=None,
                                       epoch_offset=0)
        if dealt == (world, batch_size) and read % (world * batch_size) == 0:  # the epoch's own plan
            return dataclasses.replace(saved, **shape, batch=read // (world * batch_size), epoch_world_size=None,
                                       epoch_batch_size=None, epoch_offset=0)
        return dataclasses.replace(saved, **shape, batch=0, epoch_world_size=dealt[0], epoch_batch_size=dealt[1],
                                   epoch_offset=read)
    epoch = saved.epoch if read == 0 else saved.epoch + 1
    if not reshard:
        flags = _flags_keeping(was, world, batch_size, accum)
        keep = (f"pass {' or '.join(flags)} to keep it and continue epoch {saved.epoch} where it stopped" if flags else
                f"no batch size gives it on {world} processes (a process count that divides {was} does)")
        raise ConfigError(f"--resume {where}: saved with effective batch {was} ({_shape(*old)}), now {effective} "
                          f"({_shape(*new)}); {keep}, or pass --reshard to start epoch {epoch} with effective "
                          f"batch {effective}")
    skipped = f"the rest of epoch {saved.epoch} is not read; " if read else ""
    say(f"resume: --reshard: effective batch {was} ({_shape(*old)}) -> {effective} ({_shape(*new)}); {skipped}"
        f"epoch {epoch} starts with the new shape at step {saved.step + 1}")
    return dataclasses.replace(saved, **shape, epoch=epoch, batch=0, epoch_world_size=None, epoch_batch_size=None,
                               epoch_offset=0)


# --- processes, threads, precision ----------------------------------------------------------------------------


def mixed_precision(cfg: TrainConfig, device: torch.device) -> str:
    """accelerate's ``mixed_precision`` for ``--precision`` (``auto``: bf16 on CUDA, none elsewhere)."""
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


def make_accelerator(cfg: TrainConfig):
    """The run's ``accelerate.Accelerator`` (DDP-ready), and on CPU the torch thread budget.

    Raises:
        ConfigError: an unknown or unavailable ``--device``.
    """
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    device = resolve_device(cfg.optim.device)
    accelerator = Accelerator(
        cpu=device.type == "cpu",
        mixed_precision=mixed_precision(cfg, device),
        gradient_accumulation_steps=cfg.optim.grad_accum_steps,
        step_scheduler_with_optimizer=False,
        # Frozen parameters (requires_grad=False) are not DDP's concern, and every trainable SmolVLA parameter takes
        # part in each forward, so the extra autograd-graph walk of find_unused_parameters is not needed.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=False)],
    )
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to each DataLoader worker (and each rank): oversubscribed OpenMP threads spin-wait on a
        # busy core and made CPU steps ~10x slower in measurements on a 2-core machine.
        torch.set_num_threads(max(1, _cores() // accelerator.num_processes - cfg.data.num_workers))
    return accelerator


# --- the learning-rate schedule --------------------------------------------------------------------------------


def scheduled_phases(warmup_steps: int, decay_steps: int, schedule_steps: int) -> tuple[int, int]:
    """(warm-up, decay) steps lerobot 0.6.1's ``CosineDecayWithWarmupSchedulerConfig.build`` actually uses for a
    schedule of ``schedule_steps``: when that is shorter than ``decay_steps`` it scales warm-up by
    ``schedule_steps / decay_steps`` (rounded down) and decays over ``schedule_steps``."""
    if schedule_steps < decay_steps:
        return int(warmup_steps * schedule_steps / decay_steps), schedule_steps
    return warmup_steps, decay_steps


def schedule_length(cfg: TrainConfig, total_steps: int, resuming: bool, say: Callable[[str], None]) -> int:
    """The number of steps the lr schedule is built for, fixed at a run's start and saved (``optim.schedule_steps``).

    A fresh run builds it for its ``total_steps``. A resumed run keeps the saved length, so its lr continues the
    curve it was on and, past the end of that curve, holds the final lr (``decay_lr``); with ``--reschedule`` it is
    rebuilt for the new ``total_steps`` (the lr jumps to the new curve). One line says which, and one line says when
    lerobot shortens ``--decay-steps`` (and the warm-up with it) to fit, with the values used.
    """
    o = cfg.optim
    saved = o.schedule_steps if resuming else None
    length = total_steps
    if saved is not None and saved != total_steps:
        if o.reschedule:
            say(f"schedule: --reschedule: rebuilt for {total_steps} steps (was {saved}); the lr jumps to the new "
                "curve at the resumed step")
        else:
            length = saved
            warm, decay = scheduled_phases(o.warmup_steps, o.decay_steps, saved)
            end = f"then holds lr {o.decay_lr:g} from step {decay} to {total_steps}" if decay < total_steps else \
                f"and stops at step {total_steps}, before its end at step {decay}"
            say(f"schedule: --max-steps {total_steps} differs from the {saved} steps the lr schedule was built for: "
                f"it continues unchanged {end}; pass --reschedule to rebuild it for {total_steps} steps")
    o.schedule_steps = length
    warm, decay = scheduled_phases(o.warmup_steps, o.decay_steps, length)
    if (warm, decay) != (o.warmup_steps, o.decay_steps) and not (resuming and saved == length):
        say(f"schedule: --decay-steps {o.decay_steps} is longer than the schedule's {length} steps: lerobot shortens "
            f"it to warm-up {warm} (from {o.warmup_steps}) and cosine decay {decay} steps (lr {o.lr:g} -> "
            f"{o.decay_lr:g})")
    return length


# --- optimizer and schedule -----------------------------------------------------------------------------------


def build_optimizer(cfg: TrainConfig, policy: Any, total_steps: int) -> tuple[Any, Any]:
    """lerobot's SmolVLA optimizer preset (AdamW, betas (0.9, 0.95), eps 1e-8) on ``policy.get_optim_params()`` and
    its cosine decay with linear warm-up (a ``LambdaLR`` stepped once per optimizer step; lerobot scales warm-up and
    decay down when ``total_steps`` < ``--decay-steps``), from ``--lr``, ``--weight-decay``, ``--grad-clip-norm``,
    ``--decay-lr``, ``--warmup-steps``, ``--decay-steps``. Not prepared by accelerate: ``build_training`` prepares
    them, ``bench/train_step.py`` builds its bare loops' optimizer with this too."""
    from lerobot.optim.optimizers import AdamWConfig
    from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig

    optimizer = AdamWConfig(
        lr=cfg.optim.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.optim.weight_decay,
        grad_clip_norm=cfg.optim.grad_clip_norm,
    ).build(policy.get_optim_params())
    scheduler = CosineDecayWithWarmupSchedulerConfig(
        peak_lr=cfg.optim.lr, decay_lr=cfg.optim.decay_lr,
        num_warmup_steps=cfg.optim.warmup_steps, num_decay_steps=cfg.optim.decay_steps,
    ).build(optimizer, total_steps)
    return optimizer, scheduler


# --- the batch the model takes --------------------------------------------------------------------------------


def model_batch(preprocessor: Any, batch: dict[str, Any], camera_map: dict[str, str], uint8_frames: bool
                ) -> dict[str, Any]:
    """A loader batch as the policy's forward takes it: SmolVLA's keys, the pre-processor (task tokens, normalised
    state and action, moved to the policy's device), then uint8 ``[B, 3, H, W]`` frames -> float32 in [0, 1]
    (on the device: a quarter of the bytes cross from the workers and to the GPU), made contiguous there.

    A batch with ``action.reference`` (float32 [B, A]: the reader gives it in ``delta`` action mode) is trained on
    delta targets: ``action`` [B, chunk, A] minus the reference at every chunk step (``actions.to_delta``), before
    the normaliser sees it."""
    if REFERENCE_KEY in batch and ACTION in batch:
        batch = {**batch, ACTION: to_delta(batch[ACTION], batch[REFERENCE_KEY])}
    inputs = preprocessor(to_policy_batch(batch, camera_map))
    for key in camera_map.values():
        if uint8_frames:
            inputs[key] = inputs[key].float().div_(255)
        # the loader hands frames over channels-last (as decoded, no CPU transposition); the model gets them
        # contiguous, so it computes exactly as on frames from the random-access reader or the server
        inputs[key] = inputs[key].contiguous()
    return inputs


# --- the whole run --------------------------------------------------------------------------------------------


@dataclass
class Training:
    """What :func:`build_training` built; the loop (``training.loop``) only runs it.

    Attributes:
        cfg: the resolved config (``output_dir``, ``state_map``, ``cameras`` filled in).
        accelerator: the run's ``accelerate.Accelerator``.
        run_dir: the run folder.
        meta: the training dataset's metadata.
        inputs: the input contract (what the policy reads); saved in every checkpoint.
        train_episodes, val_episodes: episode indices (the held-out ones are never trained on).
        dataset: the training reader; ``val_dataset``: the held-out episodes' evaluation reader (rank 0, with
            ``--eval-steps``), else None.
        transform: per-camera image augmentation run in the workers, or None.
        uint8_frames: the workers hand frames over as uint8 (no augmentation); they become float on the device.
        batches_per_epoch: batches of this rank per pass over the training episodes (epoch 0's plan; a run ends
            each epoch where that epoch's plan does: :meth:`advance`).
        total_steps: optimizer steps of the whole run.
        bundle: the policy, its processors and its inputs (``bundle.policy`` is the module accelerate wrapped).
        policy: the module to call (DDP-wrapped under several processes).
        optimizer, scheduler: lerobot's AdamW preset and cosine-with-warm-up schedule, prepared.
        state: step and data-order position (restored when resuming).
        checkpoint_config: what ``train_config.yaml`` holds: ``run`` (the config), ``inputs`` (the contract),
            ``dataset`` (path, version, episodes).
        resuming: the run continues a checkpoint.
        say: prints on rank 0 only.
        worker_start: the multiprocessing context DataLoader workers start from (a forkserver that imported torch,
            av and pyarrow while the model was built), or None without workers.
        ema: the average of the trainable weights (``--ema-decay``; on every rank, updated with the synchronised
            weights), or None.
    """

    cfg: TrainConfig
    accelerator: Any
    run_dir: Path
    meta: DatasetMeta
    inputs: PolicyInputs
    train_episodes: list[int]
    val_episodes: list[int]
    dataset: BehaviorDataset
    val_dataset: BehaviorDataset | None
    transform: Any
    uint8_frames: bool
    batches_per_epoch: int
    total_steps: int
    bundle: PolicyBundle
    policy: Any
    optimizer: Any
    scheduler: Any
    state: ckpt.TrainingState
    checkpoint_config: dict[str, Any]
    resuming: bool
    say: Callable[[str], None] = field(repr=False, default=print)
    worker_start: Any = field(repr=False, default=None)
    ema: EMA | None = field(repr=False, default=None)
    _order: TrainingStream | None = field(repr=False, default=None)

    @property
    def is_main(self) -> bool:
        return bool(self.accelerator.is_main_process)

    def epoch_origin(self, epoch: int) -> EpochOrigin | None:
        """How ``epoch`` was dealt when the run was resumed within it on another shape (``state.epoch_*``), else
        None (the epoch's plan on this run's shape)."""
        s = self.state
        if epoch != s.epoch or s.epoch_world_size is None:
            return None
        return EpochOrigin(world_size=s.epoch_world_size, batch_size=s.epoch_batch_size, offset=s.epoch_offset)

    def stream(self, epoch: int, batch: int) -> TrainingStream:
        """The data order of this rank from ``(epoch, batch)`` on (seeded; the same for any worker count); the
        re-dealt rest of the epoch after an elastic resume (:meth:`epoch_origin`)."""
        cfg, acc = self.cfg, self.accelerator
        return TrainingStream(
            self.dataset, seed=cfg.optim.seed, batch_size=cfg.optim.batch_size, rank=acc.process_index,
            world_size=acc.num_processes, start_epoch=epoch, start_batch=batch, transform=self.transform,
            uint8_images=self.uint8_frames, task_balanced=cfg.data.task_balanced,
            decoder_threads=worker_decoder_threads(cfg.data.num_workers, acc.num_processes, acc.device.type),
            origin=self.epoch_origin(epoch),
        )

    def plan(self, epoch: int) -> TrainingPlan:
        """This rank's plan of ``epoch`` as :meth:`loader` executes it (before the loader exists: epoch 0's)."""
        if self._order is None:
            self._order = self.stream(self.state.epoch, self.state.batch)
        return self._order.plan(epoch)

    def advance(self, epoch: int, batch: int) -> None:
        """Record in ``state`` that the next batch to train on is ``batch`` of ``epoch``, or the first of the next
        epoch when ``epoch`` has no more (the number of batches of each epoch comes from its plan)."""
        s = self.state
        if epoch != s.epoch or batch >= len(self.plan(epoch)):
            # a new epoch is dealt with this run's shape
            s.epoch_world_size, s.epoch_batch_size, s.epoch_offset = None, None, 0
        s.epoch, s.batch = epoch, batch
        if batch >= len(self.plan(epoch)):
            s.epoch, s.batch = epoch + 1, 0

    def loader(self):
        """The DataLoader over :meth:`stream` from the resume position: persistent spawned workers."""
        from torch.utils.data import DataLoader

        workers = self.cfg.data.num_workers
        self._order = self.stream(self.state.epoch, self.state.batch)
        return DataLoader(
            self._order, batch_size=None, num_workers=workers,
            pin_memory=self.accelerator.device.type == "cuda",
            # A private generator: creating an iterator must not consume the global RNG (exact resume).
            generator=torch.Generator().manual_seed(self.cfg.optim.seed),
            # SIGINT ignored, SIGTERM obeyed from this process only: the trainer finishes its step on a stop signal.
            worker_init_fn=functools.partial(worker_stop_signals, os.getpid()) if workers > 0 else None,
            # Not fork: PyAV/FFmpeg decoders are not fork-safe, and neither is a process that already ran torch
            # threads. A forkserver (a fresh process that imported torch/av once) starts workers in milliseconds.
            multiprocessing_context=(self.worker_start or worker_context()) if workers > 0 else None,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def model_batch(self, batch: dict[str, Any]) -> dict[str, Any]:
        """:func:`model_batch` with this run's processors and contract."""
        return model_batch(self.bundle.preprocessor, batch, self.inputs.camera_map, self.uint8_frames)


def _prepare_run_dir(cfg: TrainConfig, accelerator: Any, resuming: bool, say: Callable[[str], None]) -> Path:
    """The run folder (rank 0 decides the default's timestamp and broadcasts it); the demo's data is written there."""
    run_dir = Path(cfg.output.output_dir) if cfg.output.output_dir else default_run_dir(cfg)
    if accelerator.num_processes > 1 and cfg.output.output_dir is None:
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
    if accelerator.is_main_process:
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--output-dir {run_dir}: cannot create it ({exc.strerror or exc}); pass a writable "
                              "folder") from None
    if cfg.demo:
        from behavior_smolvla.training.demo import prepare_demo, use_demo_files

        if accelerator.is_main_process:
            prepare_demo(cfg, run_dir, say)
        accelerator.wait_for_everyone()
        if not accelerator.is_main_process:  # the same dataset, backbone and held-out episodes as rank 0
            use_demo_files(cfg, run_dir)
    return run_dir


def build_training(cfg: TrainConfig, accelerator: Any = None, given: set[str] | None = None,
                   console: Console | None = None) -> Training:
    """Build a run from its config: files -> reader -> state map (the input contract) -> policy -> optimizer.

    Args:
        cfg: the run config (``config_for_run``); completed in place (output folder, state map, cameras).
        accelerator: an ``accelerate.Accelerator``; None makes one (:func:`make_accelerator`).
        given: flat option names the user set (``--demo`` keeps them over its own settings).
        console: where rank 0 prints.

    Raises:
        ConfigError, DatasetError, StateMapError, PolicyLoadError, CheckpointError: bad input, one line each.
    """
    console = console or Console()
    given = given or set()
    resuming = cfg.output.resume is not None
    if cfg.demo and not resuming:
        from behavior_smolvla.training.demo import apply_demo_defaults

        apply_demo_defaults(cfg, given)
    validate_config(cfg)
    accelerator = accelerator or make_accelerator(cfg)
    is_main = accelerator.is_main_process
    world = accelerator.num_processes

    def say(msg: str) -> None:
        if is_main:
            console.print(msg, highlight=False, soft_wrap=True)

    if resuming:  # before any work: a resume on a shape that cannot continue the data order is refused here
        saved_state = ckpt.read_training_state(Path(cfg.output.resume))
        position = resume_position(saved_state, world, cfg.optim.batch_size, cfg.optim.grad_accum_steps,
                                   cfg.output.reshard, cfg.output.resume, say)

    run_dir = _prepare_run_dir(cfg, accelerator, resuming, say)

    # DataLoader workers fork from a server that imports torch/av meanwhile (started now, used after the model). The
    # server and its workers ignore a cluster's SIGTERM to every process: the trainer stops them (training.preemption).
    worker_start = None
    if cfg.data.num_workers > 0:
        with stop_signals_ignored():
            worker_start = worker_context()

    # Data: files -> reader -> state map, all through the input contract. Resuming reads the saved contract, so a
    # change of defaults since the run started cannot change what the policy reads.
    dataset_path = Path(cfg.data.dataset_path)
    if not (dataset_path / "meta" / "info.json").is_file():
        raise DatasetError(
            f"--dataset-path {dataset_path}: no meta/info.json there; pass the folder of a LeRobot dataset"
        )
    meta = DatasetMeta.load(dataset_path, state_key=cfg.data.state_key, action_key=cfg.data.action_key)
    train_eps, val_eps = split_episodes(meta, cfg.data.episodes, cfg.data.val_episodes, cfg.data.tasks)
    if resuming:
        saved = ckpt.load_train_config(Path(cfg.output.resume))
        inputs = PolicyInputs.from_train_config(saved, f"{cfg.output.resume}/{ckpt.PRETRAINED_DIR}/"
                                                       f"{ckpt.TRAIN_CONFIG_FILE}")
        inputs.check_dataset(meta)
    else:
        inputs = PolicyInputs.resolve(meta, cfg.data, cfg.policy, train_eps)
    cfg.data.state_map = cfg.data.state_map or inputs.state_map.name
    cfg.data.cameras = list(inputs.cameras)
    if cfg.data.verify_data:
        verify_training_videos(meta, train_eps + val_eps, list(inputs.cameras), console if is_main else None)
    # The numeric cache is checked on every open; --verify-data also checks every file's content checksum.
    reader = {"cache_dir": cfg.data.cache_dir, "drop_nonfinite": cfg.data.drop_nonfinite,
              "verify_cache": cfg.data.verify_data}
    dataset = inputs.dataset(meta, train_eps, recompute_stats=cfg.data.recompute_stats,
                             sample_stride=cfg.data.sample_stride, **reader)
    validate_against_data(cfg, max(dataset.episode_lengths.values()), len(dataset) // accelerator.num_processes)
    val_dataset = (inputs.eval_dataset(meta, val_eps, **reader)
                   if val_eps and cfg.eval.eval_steps and is_main else None)
    transform = build_image_transform(cfg)

    probe = TrainingStream(dataset, seed=cfg.optim.seed, batch_size=cfg.optim.batch_size,
                           rank=accelerator.process_index, world_size=world, task_balanced=cfg.data.task_balanced)
    batches_per_epoch = len(probe)
    if batches_per_epoch == 0:
        raise ConfigError(f"--batch-size {cfg.optim.batch_size}: larger than this rank's share of the data; lower it")
    steps_per_epoch = max(1, batches_per_epoch // cfg.optim.grad_accum_steps)
    total_steps = cfg.optim.max_steps or cfg.optim.num_epochs * steps_per_epoch

    # Policy: lerobot's SmolVLA, built or loaded by policy.smolvla.
    say(inputs.describe_actions())
    if inputs.action_mode == "absolute" and all(d.velocity_lag for d in inputs.state_map.dims):
        # Allowed (the action may not be a position), but an absolute joint target from velocities alone is a guess.
        say(f"warning: --state-map {inputs.state_map.name} holds velocities only, and absolute actions are predicted "
            "without the joints' positions; use --action-mode delta (the state is added back) or a map with positions")
    stats = floor_std(dataset.stats)
    absolute_action_stats = stats[ACTION]
    if (inputs.action_mode, inputs.action_norm) != ("absolute", "global"):
        # The normaliser sees the trained targets (deltas, per chunk step): their statistics, from the training
        # samples themselves (a resumed run recomputes the same ones from the same episodes).
        targets = chunk_action_stats(dataset, inputs.action_norm == "per-step")
        stats = {**stats, ACTION: floor_std({ACTION: targets})[ACTION]}
    torch.manual_seed(cfg.optim.seed)
    # A resumed run loads its own checkpoint like a pretrained policy (from scratch or not).
    resolve_policy_training(cfg, resuming, say)
    options = dataclasses.replace(cfg.policy, from_scratch=cfg.policy.from_scratch and not resuming)
    bundle = create_policy(
        inputs, options, stats,
        # lerobot accepts "cpu" but not "cpu:0" (what accelerate reports under multi-process CPU runs).
        device="cpu" if accelerator.device.type == "cpu" else str(accelerator.device),
        policy_path=str(Path(cfg.output.resume) / ckpt.PRETRAINED_DIR) if resuming else None,
        action_stats=absolute_action_stats,
    )
    if bundle.reinitialised and not resuming:
        say(f"policy: freshly initialised {', '.join(bundle.reinitialised)} (shape changed from the pretrained one)")
    # A resumed run's pretrained_model holds the served weights (the average, with --ema-decay): the average
    # continues from them, then the training weights are restored from training_state (when they differ).
    ema = EMA(bundle.policy, cfg.optim.ema_decay) if cfg.optim.ema_decay > 0 else None
    if resuming:
        ckpt.load_raw_weights(Path(cfg.output.resume), bundle.policy)

    schedule_steps = schedule_length(cfg, total_steps, resuming, say)
    optimizer, scheduler = build_optimizer(cfg, bundle.policy, schedule_steps)
    policy, optimizer = accelerator.prepare(bundle.policy, optimizer)

    state = ckpt.TrainingState(step=0, epoch=0, batch=0, world_size=world, batch_size=cfg.optim.batch_size,
                               grad_accum_steps=cfg.optim.grad_accum_steps)
    if resuming:
        state, restored = ckpt.load_training_state(Path(cfg.output.resume), optimizer, scheduler,
                                                   rank=accelerator.process_index)
        position_fields = ("world_size", "batch_size", "grad_accum_steps", "epoch", "batch", "epoch_world_size",
                           "epoch_batch_size", "epoch_offset")
        state = dataclasses.replace(state, **{k: getattr(position, k) for k in position_fields})
        if not restored:  # a rank the saved run did not have
            seed_rank(cfg.optim.seed, accelerator.process_index)
        if world > saved_state.world_size:
            new = ", ".join(str(r) for r in range(saved_state.world_size, world))
            say(f"resume: rank{'s' if world - saved_state.world_size > 1 else ''} {new} had no saved random state: "
                f"seeded from --seed {cfg.optim.seed} and the rank")
        say(f"resumed from {cfg.output.resume} at step {state.step} (epoch {state.epoch}, batch {state.batch})")
        if ema is not None:
            ema.updates = state.ema_steps
    else:
        # the same RNG stream whatever policy construction consumed; each rank its own (different noise per rank)
        seed_rank(cfg.optim.seed, accelerator.process_index)

    checkpoint_config = {
        "run": cfg.to_dict(),
        "inputs": inputs.to_dict(),
        # The absolute action's statistics (the processors hold those of the trained targets): evaluation's ranges
        # and reference predictors read them whatever the action mode.
        "action_stats": {k: np.asarray(v, dtype=np.float32).tolist() for k, v in absolute_action_stats.items()},
        "dataset": {
            "path": str(dataset_path.resolve()),
            "version": meta.version,
            "train_episodes": train_eps,
            "val_episodes": val_eps,
        },
    }
    return Training(
        cfg=cfg, accelerator=accelerator, run_dir=run_dir, meta=meta, inputs=inputs, train_episodes=train_eps,
        val_episodes=val_eps, dataset=dataset, val_dataset=val_dataset, transform=transform,
        uint8_frames=transform is None, batches_per_epoch=batches_per_epoch, total_steps=total_steps, bundle=bundle,
        policy=policy, optimizer=optimizer, scheduler=scheduler, state=state, checkpoint_config=checkpoint_config,
        resuming=resuming, say=say, worker_start=worker_start, ema=ema,
    )

