"""The one configuration tree of a training run.

A run is described by :class:`TrainConfig` (sections: data, policy, optim, output, logging, eval). The CLI fills it
from, in increasing priority: the dataclass defaults, a ``--config FILE.yaml``, the command-line flags. The resolved
tree is printed at start and saved as ``train_config.yaml`` in every checkpoint (its ``run`` section), beside the input
contract the run resolved from it (``inputs``: state map, cameras, image size, ... see ``behavior_smolvla.inputs``).
``training.build.config_for_run`` resolves it (defaults < a resumed checkpoint's config < the file < the flags).

A config file may be flat (keys are flag names, ``max_steps`` or ``max-steps``) or nested by section
(``optim: {max_steps: 100}``); an unknown key raises :class:`ConfigError` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from behavior_smolvla.errors import ConfigError, read_text_file
from behavior_smolvla.policy.inference import Inference


@dataclass
class DataConfig:
    """What the policy reads: dataset, episodes, cameras, state map, loader."""

    dataset_path: str | None = None
    """LeRobot dataset folder (v3.0 or v2.1, BEHAVIOR 2025/2026 layouts). Required unless ``--demo``."""
    episodes: str | None = None
    """Training episodes, a spec such as ``0-39,45``; default: every episode not in ``val_episodes``."""
    val_episodes: str | None = None
    """Held-out episodes (never trained on), used for validation loss and metrics."""
    tasks: str | None = None
    """Train on the episodes of these task indices only, e.g. ``0-49`` or ``6`` (``smolvla-inspect`` lists them);
    combined with ``episodes`` it keeps the episodes in both."""
    task_balanced: bool = False
    """Sample every task equally often per epoch (a task's spans are repeated or subsampled to an equal share of
    the epoch's samples), instead of in proportion to its frames."""
    state_key: str = "observation.state"
    """Dataset feature read as the policy's ``observation.state`` (e.g. ``state`` in some third-party uploads)."""
    action_key: str = "action"
    """Dataset feature read as the policy's ``action`` (e.g. ``actions``)."""
    cameras: list[str] | None = None
    """Camera keys in policy order (camera1, camera2, ...); default: the three RGB cameras for BEHAVIOR
    (head, left wrist, right wrist), every video feature otherwise."""
    image_size: int = 512
    """Square side, in pixels, SmolVLA resizes-with-padding to (512 is SmolVLA's); frames are decoded at this size."""
    frame_stride: int = 1
    """Use every n-th frame (3 turns BEHAVIOR's 30 Hz into the baselines' 10 Hz); action chunks follow the stride."""
    sample_stride: int | None = None
    """Training only: frames between consecutive chunk starts of an episode (None: ``frame_stride``). ``1`` starts a
    chunk at every frame, each still at the ``frame_stride`` rate: ``frame_stride`` times the distinct samples per
    epoch. Not part of the input contract: what the policy reads is unchanged."""
    num_workers: int = 2
    """DataLoader worker processes per rank (decoders are opened inside each worker)."""
    state_map: str | None = None
    """State map name or YAML file; default by state dim (256 -> r1pro-2025-top32, 61 -> r1pro-2026-b1k25,
    <= 32 -> identity)."""
    filter_state: bool = False
    """Use the layout's standard-track map (r1pro-2025-standard, 217 dims) instead of the default."""
    image_aug: bool = False
    """lerobot's image augmentation at its defaults (colour, sharpness, a small affine shift; at most three
    transforms per frame), in the DataLoader workers."""
    verify_data: bool = False
    """Before training, decode every frame of the selected episodes' videos and check the content checksum of every
    numeric cache file (not only of the files modified since they were built); stop naming the damaged files."""
    drop_nonfinite: bool = False
    """Leave out each episode's frames from its first one holding a NaN or infinite state or action value (the
    count is printed), instead of refusing the data (the default: one line naming the episode and frame)."""
    recompute_stats: bool = False
    """Recompute the state/action normalisation statistics from the data instead of using the stored ones."""
    action_mode: str = "absolute"
    """``absolute`` (the action as recorded) or ``delta`` (action minus the same joint's current state, for the dims
    that have one: R1Pro torso and arms, or equal action/state names; see ``behavior_smolvla.actions``)."""
    action_norm: str | None = None
    """``global`` (one mean/std per action dim) or ``per-step`` (one per chunk step and dim); default: per-step in
    delta mode, global in absolute mode."""
    action_reference: str | None = None
    """YAML file mapping action dims to the raw-state dims they are deltas of (overrides the R1Pro layouts and the
    equal-names rule)."""
    cache_dir: str | None = None
    """Folder of the numeric cache (state, action, timestamps memory-mapped from ``.npy`` files built once per
    dataset and selection); default ``$SMOLVLA_CACHE_DIR``, else ``behavior_smolvla/`` beside the Hugging Face
    cache. Under DDP give every process of a node the same folder (shared storage works too)."""


@dataclass
class PolicyConfig:
    """Which SmolVLA to train and how (lerobot.policies.smolvla; never re-implemented here)."""

    policy_path: str = "lerobot/smolvla_base"
    """Hub id or a local ``pretrained_model`` folder to fine-tune from."""
    from_scratch: bool = False
    """Build a fresh SmolVLA around ``vlm_model`` instead of loading ``policy_path``."""
    vlm_model: str | None = None
    """VLM backbone (hub id or local folder) for ``from_scratch``."""
    chunk_size: int = 50
    """Actions predicted per model call (SmolVLA's default 50 = 1.67 s at 30 Hz)."""
    n_action_steps: int | None = None
    """Actions executed from each chunk before the next model call; default: chunk_size."""
    state_dim: int | None = None
    """SmolVLA's ``max_state_dim`` (state zero-padded to it); default 32, raised to the mapped state dim if wider."""
    train_expert_only: bool | None = None
    """Freeze the VLM and train the action expert only. Default (None, resolved when the run starts by
    ``policy.smolvla.resolve_train_expert_only``; the saved config holds the result): off when the VLM is randomly
    initialised (``from_scratch`` on a backbone folder without weights), else on (SmolVLA's default)."""
    freeze_vision_encoder: bool = True
    """Freeze the VLM's vision encoder (SmolVLA's default)."""


@dataclass
class OptimConfig:
    """Optimisation: SmolVLA's AdamW preset and cosine-with-warmup schedule unless overridden."""

    batch_size: int = 8
    """Samples per step per process (the effective batch is batch_size * processes * grad_accum_steps)."""
    max_steps: int | None = None
    """Optimizer steps to train for (one of max_steps / num_epochs is required)."""
    num_epochs: int | None = None
    """Passes over the training episodes (converted to steps at start)."""
    lr: float = 1e-4
    """Peak learning rate (SmolVLA preset)."""
    warmup_steps: int = 1000
    """Linear warm-up steps (SmolVLA preset; scaled down with decay_steps when the run is shorter)."""
    decay_steps: int = 30000
    """Cosine decay length in steps (SmolVLA preset)."""
    decay_lr: float = 2.5e-6
    """Learning rate at the end of the cosine decay (SmolVLA preset)."""
    weight_decay: float = 1e-10
    """AdamW weight decay (SmolVLA preset)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    grad_clip_norm: float = 10.0
    """Global gradient-norm clip (SmolVLA preset); 0 disables clipping."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 elsewhere), ``bf16``, ``fp16`` or ``fp32``."""
    seed: int = 1000
    """Seeds the data order, augmentation, model init and flow-matching noise."""
    device: str = "auto"
    """``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps``."""
    schedule_steps: int | None = None
    """Steps the learning-rate schedule was built for, fixed at the start of a run and saved (set by the trainer;
    a resumed run keeps it unless ``reschedule``)."""
    reschedule: bool = False
    """On ``--resume`` with another ``--max-steps``: rebuild the schedule for the new length (default: continue the
    saved schedule, then hold its final lr)."""
    ema_decay: float = 0.0
    """Decay D of an exponential moving average of the trainable weights, updated after every optimizer step
    (warm-up: ``min(D, (1 + k) / (10 + k))`` at the k-th update, see ``training.ema``); checkpoints serve the
    averaged weights. 0 disables it; otherwise 0 < D < 1 (e.g. 0.999 averages over about 1000 steps)."""


@dataclass
class OutputConfig:
    """Where the run lives and how checkpoints are kept."""

    output_dir: str | None = None
    """Run folder; default ``outputs/<YYYY-MM-DD>/<HH-MM-SS>_<run_name>``."""
    run_name: str = "smolvla"
    """Used in the default output folder name and as the default wandb run name."""
    save_steps: int = 1000
    """Checkpoint every n optimizer steps (and always at the end)."""
    keep_last: int | None = None
    """Keep only the newest K step checkpoints (``best`` is never pruned)."""
    resume: str | None = None
    """Run folder or checkpoint folder to resume from (``auto``: the output folder's ``checkpoints/last``)."""
    stop_timeout: float = 60.0
    """Seconds from a SIGTERM/SIGINT within which every rank must have finished its step, the checkpoint must be
    written and the process must have exited (``training.preemption``); past them a rank prints one line and exits
    with code 124 without touching ``checkpoints/last``. Keep it below the time the cluster allows between SIGTERM
    and SIGKILL (SLURM's ``KillWait`` / ``GraceTime``; torchrun's own is 30 s)."""
    reshard: bool = False
    """On ``--resume`` with another effective batch (processes x batch_size x grad_accum_steps): leave the rest of
    the interrupted epoch unread and start the next one with the new shape (without it such a resume is refused;
    the same effective batch on another number of processes continues the epoch where it stopped). Applies to
    this resume only: never taken from a checkpoint's config."""


@dataclass
class LoggingConfig:
    """Console, metrics.jsonl and Weights & Biases."""

    log_steps: int = 10
    """Log every n optimizer steps."""
    wandb_project: str | None = "behavior-smolvla"
    wandb_entity: str | None = None
    wandb_run_name: str | None = None
    wandb_tags: list[str] = field(default_factory=list)
    wandb_mode: str = "online"
    """``online`` (falls back to offline without credentials), ``offline`` or ``disabled``."""
    wandb_disable: bool = False
    log_data_order: bool = False
    """Write what every process trains on to ``<run>/data_order/`` (one JSONL file per process and launch: each
    micro-batch's sample indices, episodes and frames; per epoch the samples dealt to the process but not read), to
    check the data shards and resumes (``training.tracking.DataOrderLog``)."""


@dataclass
class EvalConfig:
    """Validation during training on ``data.val_episodes``."""

    eval_steps: int | None = None
    """Compute validation loss and offline metrics every n steps (needs val_episodes)."""
    eval_max_frames: int = 64
    """Frames per validation pass (spread evenly over the held-out episodes)."""
    eval_noise: str = Inference().noise
    """How validation draws each chunk: ``zero`` initial noise or ``sample`` (see ``policy.inference``)."""
    eval_num_samples: int | None = None
    """Draws averaged per chunk; default: ``Inference``'s with ``eval_noise: sample``, 1 with ``zero``."""

    @property
    def inference(self) -> Inference:
        """The validation's :class:`~behavior_smolvla.policy.inference.Inference` (checked by ``validate_config``)."""
        return Inference.from_flags(self.eval_noise, self.eval_num_samples, "--eval-noise", "--eval-num-samples")


@dataclass
class TrainConfig:
    """A whole training run. ``demo`` replaces the data and policy with built-in tiny ones (see train.demo_config)."""

    data: DataConfig = field(default_factory=DataConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    demo: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON-safe)."""
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        """The resolved config as YAML, sections in declaration order."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _sections(cfg: TrainConfig) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if dataclasses.is_dataclass(getattr(cfg, f.name))}


def field_index(cfg: TrainConfig) -> dict[str, tuple[Any, str]]:
    """Every leaf option name -> (section object or the root config, attribute). Names are unique across sections."""
    index: dict[str, tuple[Any, str]] = {}
    for section in _sections(cfg).values():
        for f in dataclasses.fields(section):
            index[f.name] = (section, f.name)
    for f in dataclasses.fields(cfg):
        if not dataclasses.is_dataclass(getattr(cfg, f.name)):
            index[f.name] = (cfg, f.name)
    return index


def _unknown_key(key: str, known: list[str], source: str) -> ConfigError:
    close = difflib.get_close_matches(key, known, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else f" (known keys: {', '.join(sorted(known))})"
    return ConfigError(f"{source}: unknown key '{key}'{hint}; remove it or fix its spelling")


def apply_overrides(cfg: TrainConfig, values: dict[str, Any], source: str) -> None:
    """Set options from a flat (``max_steps: 10``) or nested (``optim: {max_steps: 10}``) mapping, in place.

    Keys may use dashes or underscores. ``None`` values are skipped (they mean "not given").

    Raises:
        ConfigError: an unknown key or section, naming ``source`` (a file path or "command line").
    """
    index = field_index(cfg)
    sections = _sections(cfg)
    for raw_key, value in values.items():
        key = str(raw_key).replace("-", "_")
        if key in sections and isinstance(value, dict):
            section = sections[key]
            names = [f.name for f in dataclasses.fields(section)]
            for sub_key, sub_value in value.items():
                sub = str(sub_key).replace("-", "_")
                if sub not in names:
                    raise _unknown_key(f"{key}.{sub}", [f"{key}.{n}" for n in names], source)
                if sub_value is not None:
                    setattr(section, sub, _coerce(section, sub, sub_value, source))
            continue
        if key not in index:
            raise _unknown_key(key, list(index) + list(sections), source)
        if value is not None:
            owner, attr = index[key]
            setattr(owner, attr, _coerce(owner, attr, value, source))


def _coerce(owner: Any, attr: str, value: Any, source: str) -> Any:
    """Comma-separated strings become lists for list-typed options (``--cameras a,b``, ``wandb_tags: a,b``)."""
    current = getattr(owner, attr)
    f = next(f for f in dataclasses.fields(owner) if f.name == attr)
    if "list" in str(f.type) and isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if (isinstance(current, bool) or f.type == "bool | None") and not isinstance(value, bool):
        raise ConfigError(f"{source}: '{attr}' must be true or false, got {value!r}")
    kind = str(f.type).split(" | ")[0]
    if kind in ("int", "float") and not isinstance(value, bool):
        # YAML reads "1e-4" (no dot) as a string; a wrong type here would surface later as a TypeError traceback.
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: '{attr}' must be a number, got {value!r}") from None
        if kind == "float":
            return number
        if not math.isfinite(number) or number != int(number):
            raise ConfigError(f"{source}: '{attr}' must be a whole number, got {value!r}")
        return int(number)
    return value


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict.

    Raises:
        ConfigError: missing file, invalid YAML, or a top level that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--config {p}: file not found; pass an existing YAML file")
    try:
        data = yaml.safe_load(read_text_file(p, f"--config {p}", ConfigError)) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"--config {p}: invalid YAML ({str(exc).splitlines()[0]}); fix the file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {p}: the top level must be a mapping of option names to values")
    return data


def validate_config(cfg: TrainConfig) -> None:
    """Check every option value that does not depend on the data, before any work starts.

    Numbers must be finite; counts and the learning rate positive; rates, weight decay and the clip norm
    non-negative. The run folder's parent must be creatable (:func:`check_output_dir`) unless resuming.

    Raises:
        ConfigError: the first bad value, naming its flag and the accepted range.
    """
    o, d, p, out, ev = cfg.optim, cfg.data, cfg.policy, cfg.output, cfg.eval
    check_no_empty_values(cfg)
    if o.max_steps is None and o.num_epochs is None:
        raise ConfigError("neither --max-steps nor --num-epochs is set: pass one (e.g. --max-steps 20000)")
    positive_ints = [("--batch-size", o.batch_size), ("--grad-accum-steps", o.grad_accum_steps),
                     ("--chunk-size", p.chunk_size), ("--frame-stride", d.frame_stride),
                     ("--image-size", d.image_size), ("--save-steps", out.save_steps),
                     ("--log-steps", cfg.logging.log_steps), ("--decay-steps", o.decay_steps),
                     ("--eval-max-frames", ev.eval_max_frames)]
    positive_ints += [(flag, v) for flag, v in (("--max-steps", o.max_steps), ("--num-epochs", o.num_epochs),
                                                ("--keep-last", out.keep_last), ("--eval-steps", ev.eval_steps),
                                                ("--state-dim", p.state_dim), ("--n-action-steps", p.n_action_steps),
                                                ("--sample-stride", d.sample_stride))
                      if v is not None]
    for flag, value in positive_ints:
        if value <= 0:
            raise ConfigError(f"{flag} {value}: must be a positive whole number")
    for flag, value in (("--num-workers", d.num_workers), ("--warmup-steps", o.warmup_steps), ("--seed", o.seed)):
        if value < 0:
            raise ConfigError(f"{flag} {value}: must be 0 or more")
    if not (math.isfinite(o.lr) and o.lr > 0):
        raise ConfigError(f"--lr {o.lr}: must be a finite learning rate above 0 (SmolVLA's preset is 1e-4)")
    for flag, value, hint in (
        ("--decay-lr", o.decay_lr, "the learning rate at the end of the cosine decay, e.g. 2.5e-6"),
        ("--weight-decay", o.weight_decay, "e.g. 1e-10"),
        ("--grad-clip-norm", o.grad_clip_norm, "0 disables clipping, SmolVLA's preset is 10"),
    ):
        if not (math.isfinite(value) and value >= 0):
            raise ConfigError(f"{flag} {value}: must be a finite number >= 0 ({hint})")
    if not (math.isfinite(out.stop_timeout) and out.stop_timeout > 0):
        raise ConfigError(f"--stop-timeout {out.stop_timeout}: must be a finite number of seconds above 0 (default 60; "
                          "below the cluster's grace period between SIGTERM and SIGKILL)")
    if not (math.isfinite(o.ema_decay) and 0 <= o.ema_decay < 1):
        raise ConfigError(f"--ema-decay {o.ema_decay}: must be at least 0 and below 1 (0 disables the weight average, "
                          "e.g. 0.999 averages over about 1000 steps)")
    if p.n_action_steps is not None and p.n_action_steps > p.chunk_size:
        raise ConfigError(f"--n-action-steps {p.n_action_steps}: must be between 1 and --chunk-size ({p.chunk_size})")
    if o.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"--precision {o.precision}: use auto, fp32, bf16 or fp16")
    if p.from_scratch and not p.vlm_model and not cfg.demo:
        raise ConfigError("--from-scratch needs --vlm-model (a hub id or a local SmolVLM folder)")
    if d.dataset_path is None and not cfg.demo:
        raise ConfigError("--dataset-path is required (a LeRobot dataset folder), or use --demo for built-in data")
    ev.inference  # noqa: B018 (checks --eval-noise / --eval-num-samples, naming them)
    if cfg.eval.eval_steps is not None and not d.val_episodes and not cfg.demo:  # the demo picks its own
        raise ConfigError("--eval-steps needs --val-episodes (the held-out episodes to evaluate on)")
    if out.reshard and out.resume is None:
        raise ConfigError("--reshard applies to a resumed run only: pass it with --resume RUN_DIR")
    if out.output_dir is not None and out.resume is None:
        check_output_dir(out.output_dir)


def check_no_empty_values(cfg: TrainConfig) -> None:
    """An option given an empty value (``--tasks ''``, ``cameras: []``) is refused, never read as "not given": an
    empty episode or task spec must not silently mean "everything".

    Raises:
        ConfigError: the first such option, by its flag name.
    """
    for section in [*_sections(cfg).values(), cfg]:
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            empty_list = f.name == "cameras" and isinstance(value, list) and not value
            if (isinstance(value, str) and not value.strip()) or empty_list:
                flag = "--" + f.name.replace("_", "-")
                raise ConfigError(f"{flag} {value if isinstance(value, str) else ''!r}: empty; give it a value or "
                                  "leave the option out")


def early_config(config_file: str | Path | None, cli_values: dict[str, Any]) -> TrainConfig:
    """Defaults < ``config_file`` < ``cli_values``, without reading a resumed checkpoint: enough for the CLI to check
    the flags in half a second, before torch is imported (``training.build.config_for_run`` is the full resolution).
    """
    cfg = TrainConfig()
    if config_file is not None:
        apply_overrides(cfg, load_config_file(config_file), str(config_file))
    apply_overrides(cfg, cli_values, "command line")
    return cfg


def validate_against_data(cfg: TrainConfig, longest_episode: int, samples: int) -> None:
    """Check the options that depend on the selected training data, before the policy is built.

    Args:
        cfg: the run config.
        longest_episode: frames in the longest selected training episode (at the dataset's fps, before the stride).
        samples: training samples this process reads per epoch (its share of the sampled frames).

    Raises:
        ConfigError: ``--chunk-size`` spans more frames than the longest episode has (every chunk would be mostly
            padding, and the policy's attention grows with the square of the chunk), ``--batch-size`` exceeds
            the samples (every step would repeat the same partial batch), or one batch of float32 frames at
            ``--image-size`` would not fit in the machine's physical memory.
    """
    p, o, d = cfg.policy, cfg.optim, cfg.data
    span = (p.chunk_size - 1) * d.frame_stride + 1  # frames one chunk covers at the sampling stride
    if span > longest_episode:
        most = (longest_episode - 1) // d.frame_stride + 1
        stride = f" at --frame-stride {d.frame_stride}" if d.frame_stride > 1 else ""
        raise ConfigError(
            f"--chunk-size {p.chunk_size}: a chunk{stride} spans {span} frames but the longest selected episode has "
            f"{longest_episode}; use at most {most} (SmolVLA's default is 50)")
    if o.batch_size > samples:
        raise ConfigError(
            f"--batch-size {o.batch_size}: larger than the {samples} training samples per process; use at most "
            f"{samples} or select more episodes")
    # One batch of frames as the policy reads them (float32 [B, 3, S, S] per camera) must fit in memory at least once;
    # a huge --image-size would otherwise be found by the kernel's OOM killer minutes later.
    cameras = max(1, len(d.cameras or ()))
    frame_bytes = o.batch_size * cameras * 3 * d.image_size ** 2 * 4
    memory = _physical_memory()
    if memory and frame_bytes > memory:
        raise ConfigError(
            f"--image-size {d.image_size}: one batch of {o.batch_size} x {cameras} camera frames at "
            f"{d.image_size}x{d.image_size} takes {frame_bytes / 1e9:.0f} GB as float32, more than this machine's "
            f"{memory / 1e9:.0f} GB of memory; SmolVLA uses 512")


def _physical_memory() -> int | None:
    """Bytes of physical memory (None where the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def check_output_dir(path: str | os.PathLike, flag: str = "--output-dir") -> None:
    """Fail early, with one line, when the folder ``path`` could not be created or written; create nothing.

    The nearest existing ancestor must be a folder in which a file can be created (checked by creating and
    removing a temporary folder there: permission bits alone miss read-only mounts and root's privileges).

    Raises:
        ConfigError: ``path`` (or an ancestor) is a file, or the nearest existing folder is not writable.
    """
    target = Path(path).expanduser().absolute()
    probe = target
    while not probe.exists() and not probe.is_symlink():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        what = "is a file" if probe == target else f"is under {probe}, which is a file"
        raise ConfigError(f"{flag} {path}: {what}; pass a folder path")
    try:
        tempfile.TemporaryDirectory(dir=probe, prefix=".smolvla-write-check-").cleanup()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot create it in {probe} ({exc.strerror or exc}); pass a writable "
                          "folder") from None
