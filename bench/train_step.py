"""Training-step benchmark (issue 4): the trainer's per-step time against a bare loop. Prints a table; not a test.

Five rows, same model config, batch size, optimizer (SmolVLA's AdamW preset with grad-norm clipping and the
cosine-with-warmup scheduler, built as ``train()`` builds them), precision, seed and number of measured steps:

* ``bare (preprocessed once)``: ``policy.forward`` -> ``loss.backward()`` -> clip -> ``optimizer.step()`` ->
  ``zero_grad`` -> ``scheduler.step()`` on batches taken once from the same dataset and data order
  (``TrainingStream``, same seed), passed through the same pre-processor once and kept in memory (cycled when there
  are more steps than ``--preload-batches``). The floor: no data loading, no pre-processing, no logging.
* ``bare + preprocessor``: the same loop running the pre-processor (tokenise the task, normalise state and action,
  move to the device) inside the step on the kept raw batches: per-step work any SmolVLA loop does (lerobot's own
  training loop included).
* ``bare + preprocessor, DataLoader busy alongside``: the previous loop while a ``DataLoader`` with the trainer's
  settings (``--num-workers`` spawned workers, prefetch 4, same stream) keeps producing batches: each step fetches
  one (its time is the data wait) and discards it. What the data pipeline running next to the step costs the step,
  on a machine where workers and the step share cores.
* ``bare + preprocessor + DataLoader``: the same loop computing on the batches that ``DataLoader`` hands it: the
  minimal hand-written training loop. Its data wait includes fetching a ready batch from a worker (one
  shared-memory storage per batch), which is not zero even when the workers are ahead.
* ``trainer``: ``behavior_smolvla.training.loop.train()`` run **in this process** on the same dataset (accelerate,
  DataLoader workers, ``metrics.jsonl``, checkpoints every ``--save-steps``, its rich progress display rendered to
  a discarded terminal-like console so that it costs what it costs a user watching a terminal; wandb off).

**Interleaving.** On a shared or small machine the speed of the CPU drifts by tens of percent over seconds (other
tenants, frequency), more than the 5% to be resolved, so runs measured one after the other cannot be compared. Here
every row is measured in windows of ``--log-steps`` steps that take turns: ``train()`` calls this script back after
each step (its ``on_step`` hook, whose time it leaves out of its own figures), and after each trainer window the
script runs one window of each bare loop, on its own copy of the policy, before the trainer goes on. Each overhead is
the **median over windows of the ratio to the bare window run next to it** (paired), so drift cancels; the columns
of milliseconds are medians over windows. While the bare windows run, the trainer's DataLoader workers keep
prefetching (and the bare loader's workers while the trainer runs): data is not the bottleneck, the target's
condition.

Per row: total wall time per step (the trainer's from this script's clock, between its ``on_step`` calls, so it
includes everything: data, compute, logging, checkpoint writes, progress display); the split into data wait /
forward+backward / optimizer / logging+checkpoint (the trainer's own, from ``metrics.jsonl``: ``time_*_s``, host
seconds per step averaged over each window); CPU time of this process per step (``time.process_time``: all its
threads, not the DataLoader worker processes). Overheads are given on the total, on the total without the data wait
(what the target measures: no data wait is what "data is not the bottleneck" means) and on CPU time.

Every run is warmed up first (``--warmup`` steps, rounded up to a multiple of ``--log-steps``: the trainer's first
windows include spawning its DataLoader workers and the first allocations). The checkpoint written at the last step
is outside the measured steps (lower ``--save-steps`` to put checkpoint writes inside the measurement). Both loops
run with ``--threads`` torch threads (``OMP_NUM_THREADS`` is set, so the trainer keeps its own CPU rule out).

On CUDA the per-phase split is host-side time (kernels run asynchronously; ``loss.item()`` in the trainer
synchronises once per step); windows start and end with a device synchronisation, so totals are device-true.

Default: the tiny SmolVLM backbone (``tiny_vlm.py``) from scratch at 64 px on a small generated BEHAVIOR-2025-shaped
dataset, CPU, one torch thread, one DataLoader worker (a 2-core machine: one core computes, one decodes). Both are
built once and cached under ``--root``. ``--dataset-path`` takes any LeRobot dataset instead (it needs at least
``2 * (warmup + steps) * batch_size`` samples, so that no run crosses an epoch boundary).

    python bench/train_step.py                                   # tiny backbone, CPU, ~1-2 minutes on 2 cores
    python bench/train_step.py --steps 200 --repeat 2 --markdown
    python bench/train_step.py --device cuda --threads 8 --num-workers 8 --image-size 512 \\
        --policy-path /path/to/smolvla_base                      # the real model (local pretrained_model folder)
    python bench/train_step.py --device cuda --image-size 512 --from-scratch \\
        --vlm-model /path/to/SmolVLM2-500M-Video-Instruct
"""

from __future__ import annotations

import argparse
import io
import math
import os
import shutil
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SYNTHETIC_EPISODES = 4
"""Episodes of the generated dataset (2 tasks x 2 episodes)."""
SYNTHETIC_GOP = 30
"""Keyframe interval of the generated videos. Shorter than the release's 250 on purpose: this benchmark measures the
training loop where data is not the bottleneck (``bench/loader.py`` measures reading release-like video)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "bench_train",
                   help="cache folder for the generated dataset, the tiny VLM and the trainer's run folders")
    p.add_argument("--dataset-path", type=Path, help="a LeRobot dataset to train on (default: a generated one)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps, auto")
    p.add_argument("--policy-path", help="pretrained SmolVLA (local pretrained_model folder or cached hub id)")
    p.add_argument("--from-scratch", action="store_true", help="build SmolVLA on --vlm-model instead")
    p.add_argument("--vlm-model", help="VLM backbone for --from-scratch (default: the tiny VLM, built under --root)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"],
                   help="auto: bf16 autocast on CUDA, fp32 elsewhere (the trainer's rule)")
    p.add_argument("--steps", type=int, default=60, help="measured steps per run (after the warm-up)")
    p.add_argument("--warmup", type=int, default=10, help="steps run before measuring (rounded up to --log-steps)")
    p.add_argument("--repeat", type=int, default=2, help="trainer runs (each with its bare windows); windows are pooled")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--chunk-size", type=int, default=50, help="action chunk (SmolVLA's default 50)")
    p.add_argument("--num-workers", type=int, default=1, help="the trainer's DataLoader workers")
    p.add_argument("--save-steps", type=int, default=1000,
                   help="trainer checkpoint interval (the trainer's default; lower it to put checkpoint writes "
                        "inside the measured steps)")
    p.add_argument("--log-steps", type=int, default=5, help="trainer logging interval = measuring window")
    p.add_argument("--image-size", type=int, default=64, help="square image side in pixels (decode and model)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (both loops)")
    p.add_argument("--preload-batches", type=int, default=16, help="distinct batches the bare loop keeps in memory")
    p.add_argument("--full-finetune", action="store_true",
                   help="train the whole VLM too (default: the trainer's default, action expert only)")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--markdown", action="store_true", help="print a markdown table instead of a rich one")
    p.add_argument("--verbose", action="store_true", help="show the trainer's own console output")
    args = p.parse_args(argv)
    for flag in ("steps", "repeat", "batch_size", "chunk_size", "save_steps", "log_steps", "image_size", "threads",
                 "preload_batches"):
        if getattr(args, flag) <= 0:
            p.error(f"--{flag.replace('_', '-')} must be positive")
    if args.num_workers < 0 or args.warmup < 0:
        p.error("--num-workers and --warmup must be 0 or more")
    if args.policy_path and args.from_scratch:
        p.error("pass either --policy-path or --from-scratch (with --vlm-model), not both")
    args.warmup = math.ceil(max(args.warmup, 1) / args.log_steps) * args.log_steps
    args.steps = math.ceil(args.steps / args.log_steps) * args.log_steps
    return args


# -- inputs ------------------------------------------------------------------------------------------------------


def prepare_inputs(args: argparse.Namespace) -> dict[str, Any]:
    """Dataset path and policy source, generating the dataset and tiny VLM under ``--root`` when not given.

    The generated dataset holds enough frames that one run never crosses an epoch boundary (a new epoch starts new
    DataLoader workers, a data stall that is not a per-step cost).
    """
    from behavior_smolvla.data.synthetic import write_behavior_2025
    from behavior_smolvla.policy.backbone import build_tiny_vlm

    dataset = args.dataset_path
    if dataset is None:
        needed = bare_batches_needed(args) * args.batch_size
        frames = max(120, math.ceil(1.25 * needed / SYNTHETIC_EPISODES / 50) * 50)
        dataset = args.root / f"behavior2025_e{SYNTHETIC_EPISODES}_f{frames}_{args.image_size}px_gop{SYNTHETIC_GOP}"
        if not (dataset / ".complete").is_file():
            print(f"generating {dataset} ({SYNTHETIC_EPISODES} episodes x {frames} frames, "
                  f"{args.image_size} px HEVC) ...", flush=True)
            write_behavior_2025(dataset, episodes=SYNTHETIC_EPISODES, frames=frames, tasks=2,
                                image_size=args.image_size, gop=SYNTHETIC_GOP, overwrite=True)
            (dataset / ".complete").touch()
    policy: dict[str, Any]
    if args.policy_path:
        policy = {"policy_path": args.policy_path, "from_scratch": False, "vlm_model": args.vlm_model}
    else:
        vlm = args.vlm_model or str(build_tiny_vlm(args.root / f"tiny_vlm_{args.image_size}",
                                                   image_size=args.image_size))
        policy = {"from_scratch": True, "vlm_model": vlm}
    return {"dataset_path": str(dataset), **policy}


def train_config(args: argparse.Namespace, inputs: dict[str, Any], output_dir: Path):
    """The trainer's config for one measured run; the bare loop derives its model and optimizer from it too."""
    from behavior_smolvla.config import TrainConfig, apply_overrides

    cfg = TrainConfig()
    values = {
        **inputs,
        "image_size": args.image_size, "chunk_size": args.chunk_size, "batch_size": args.batch_size,
        "num_workers": args.num_workers, "max_steps": args.warmup + args.steps + 1, "save_steps": args.save_steps,
        "log_steps": args.log_steps, "device": args.device, "precision": args.precision, "seed": args.seed,
        "output_dir": str(output_dir), "wandb_disable": True, "run_name": "bench",
    }
    if args.full_finetune:
        values.update(train_expert_only=False, freeze_vision_encoder=False)
    apply_overrides(cfg, values, "bench/train_step.py")
    return cfg


# -- measurements ------------------------------------------------------------------------------------------------


@dataclass
class Windows:
    """Per-window measurements (milliseconds per step), one entry per ``--log-steps`` window, in the order run."""

    total: list[float] = field(default_factory=list)
    data: list[float] = field(default_factory=list)
    fb: list[float] = field(default_factory=list)
    optim: list[float] = field(default_factory=list)
    other: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    steps: int = 0

    def add(self, n: int, total: float, data: float, fb: float, optim: float, other: float, cpu: float) -> None:
        self.steps += n
        for name, value in (("total", total), ("data", data), ("fb", fb), ("optim", optim), ("other", other),
                            ("cpu", cpu)):
            getattr(self, name).append(1000.0 * value)

    def without_data(self) -> list[float]:
        return [t - d for t, d in zip(self.total, self.data)]


def training_data(cfg) -> tuple[Any, Any, list[str], Any]:
    """``(meta, state_map, cameras, dataset)`` exactly as ``train()`` resolves them with no --episodes,
    --val-episodes, --cameras or --state-map given (every episode, default cameras and state map)."""
    from behavior_smolvla.data.dataset import BehaviorDataset
    from behavior_smolvla.data.meta import DatasetMeta
    from behavior_smolvla.state_maps.maps import default_state_map
    from behavior_smolvla.training.loop import default_cameras

    meta = DatasetMeta.load(cfg.data.dataset_path)
    state_map = default_state_map(meta.state_dim).bind(meta.state_dim, meta.state_names)
    cameras = default_cameras(meta.camera_keys)
    dataset = BehaviorDataset(cfg.data.dataset_path, episodes=sorted(meta.episodes), cameras=cameras,
                              chunk_size=cfg.policy.chunk_size, image_size=cfg.data.image_size, state_map=state_map)
    return meta, state_map, cameras, dataset


def bare_batches_needed(args: argparse.Namespace) -> int:
    """Batches of one epoch that one run needs: the bare DataLoader feeds two rows (warm-up and measured steps each);
    the trainer's own DataLoader needs ``warmup + steps + 1``."""
    return max(2 * (args.warmup + args.steps), args.warmup + args.steps + 1)


class BareLoops:
    """The trainer's policy, optimizer and scheduler built outside the trainer, and the three bare loops on them,
    run one window at a time (see the module docstring)."""

    MODES = ("plain", "pre", "alongside", "loader")

    def __init__(self, args: argparse.Namespace, inputs: dict[str, Any]) -> None:
        import torch
        from lerobot.optim.optimizers import AdamWConfig
        from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig
        from torch.utils.data import DataLoader

        from behavior_smolvla.errors import ConfigError
        from behavior_smolvla.policy.smolvla import PolicySpec, create_policy, policy_camera_keys, resolve_device
        from behavior_smolvla.data.sampler import TrainingStream
        from behavior_smolvla.training.loop import floor_std, worker_decoder_threads

        self.args = args
        cfg = train_config(args, inputs, args.root / "runs" / "unused")
        self.cfg = cfg
        self.device = device = resolve_device(cfg.optim.device)
        meta, state_map, cameras, dataset = training_data(cfg)
        spec = PolicySpec(
            cameras=list(cameras), image_size=cfg.data.image_size, state_dim=state_map.output_dim,
            action_dim=meta.action_dim, chunk_size=cfg.policy.chunk_size, n_action_steps=cfg.policy.chunk_size,
            max_state_dim=cfg.policy.state_dim, policy_path=cfg.policy.policy_path,
            from_scratch=cfg.policy.from_scratch, vlm_model=cfg.policy.vlm_model,
            train_expert_only=cfg.policy.train_expert_only, freeze_vision_encoder=cfg.policy.freeze_vision_encoder,
            device=str(device),
        )
        torch.manual_seed(cfg.optim.seed)
        bundle = create_policy(spec, floor_std(dataset.stats))
        self.policy, self.pre = bundle.policy, bundle.preprocessor
        self.optimizer = AdamWConfig(
            lr=cfg.optim.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.optim.weight_decay,
            grad_clip_norm=cfg.optim.grad_clip_norm,
        ).build(self.policy.get_optim_params())
        self.scheduler = CosineDecayWithWarmupSchedulerConfig(
            peak_lr=cfg.optim.lr, decay_lr=cfg.optim.decay_lr, num_warmup_steps=cfg.optim.warmup_steps,
            num_decay_steps=cfg.optim.decay_steps,
        ).build(self.optimizer, cfg.optim.max_steps)
        precision = cfg.optim.precision
        self.precision = precision if precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
        self.camera_map = policy_camera_keys(cameras)
        # The trainer's stream: uint8 frames when not augmenting (this benchmark does not augment).
        stream_kw = {"seed": cfg.optim.seed, "batch_size": cfg.optim.batch_size, "rank": 0, "world_size": 1,
                     "uint8_images": True,
                     "decoder_threads": worker_decoder_threads(cfg.data.num_workers, 1, device.type)}
        needed = bare_batches_needed(args)
        per_epoch = len(TrainingStream(dataset, **stream_kw))
        if per_epoch < needed:
            raise ConfigError(
                f"--dataset-path {cfg.data.dataset_path}: {per_epoch} batches of {args.batch_size} per epoch, fewer "
                f"than the {needed} batches one run takes (an epoch boundary would stall the loops); lower --steps, "
                "--warmup or --batch-size"
            )
        self.raw: list[dict] = []
        for batch in DataLoader(TrainingStream(dataset, **stream_kw), batch_size=None, num_workers=0):
            self.raw.append(batch)
            if len(self.raw) == min(args.preload_batches, needed):
                break
        self.ready = [self._preprocess(b) for b in self.raw]
        workers = cfg.data.num_workers
        # The trainer's DataLoader settings (train.py), on the same data order.
        self.live = iter(DataLoader(
            TrainingStream(dataset, **stream_kw), batch_size=None, num_workers=workers,
            pin_memory=device.type == "cuda", multiprocessing_context="spawn" if workers > 0 else None,
            prefetch_factor=4 if workers > 0 else None,
        ))
        self.i = 0
        self.policy.train()
        for _ in range(args.warmup):
            for mode in self.MODES:
                self._step(mode)
        self.facts = {
            "params": sum(p.numel() for p in self.policy.parameters()),
            "trainable": sum(p.numel() for p in self.policy.parameters() if p.requires_grad),
            "cameras": cameras, "state_map": state_map.name, "device": str(device), "precision": self.precision,
        }

    def _preprocess(self, batch: dict) -> dict:
        """What the trainer does to a loader batch (``train.policy_inputs``; its frames are uint8)."""
        from behavior_smolvla.training.loop import policy_inputs

        return policy_inputs(self.pre, batch, self.camera_map, uint8_frames=True)

    def _step(self, mode: str) -> tuple[float, float, float]:
        import torch

        t_wait = time.perf_counter()
        fetched = next(self.live) if mode in ("alongside", "loader") else None
        t0 = time.perf_counter()
        if mode == "plain":
            batch = self.ready[self.i % len(self.ready)]
        elif mode == "loader":
            batch = self._preprocess(fetched)
        else:  # "alongside" computes on a kept batch: the DataLoader's work shows, fresh data does not
            batch = self._preprocess(dict(self.raw[self.i % len(self.raw)]))
        self.i += 1
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                loss, _ = self.policy.forward(batch)
        else:
            loss, _ = self.policy.forward(batch)
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.cfg.optim.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return t0 - t_wait, t1 - t0, time.perf_counter() - t1

    def _sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def window(self, mode: str, out: Windows) -> None:
        """Run ``--log-steps`` steps of ``mode`` and add their per-step figures to ``out``."""
        n = self.args.log_steps
        self._sync()
        t0, c0 = time.perf_counter(), time.process_time()
        data = fb = opt = 0.0
        for _ in range(n):
            d, f, o = self._step(mode)
            data, fb, opt = data + d, fb + f, opt + o
        self._sync()
        out.add(n, (time.perf_counter() - t0) / n, data / n, fb / n, opt / n, 0.0, (time.process_time() - c0) / n)

    def close(self) -> None:
        del self.live  # stops the workers


class _NullTerminal(io.TextIOBase):
    """The trainer console's file: a terminal that shows nothing (or echoes with ``--verbose``)."""

    def __init__(self, echo: bool) -> None:
        super().__init__()
        self.echo = echo

    def write(self, s: str) -> int:
        if self.echo:
            sys.stdout.write(s)
        return len(s)

    def isatty(self) -> bool:
        return True


def interleaved_run(args: argparse.Namespace, inputs: dict[str, Any], run_dir: Path, bare: BareLoops,
                    rows: dict[str, Windows], trainer: Windows) -> dict:
    """Run ``train()`` in this process; after each of its measured windows run one window of each bare loop."""
    import torch
    from rich.console import Console

    from behavior_smolvla.training.tracking import read_metrics
    from behavior_smolvla.training.loop import train

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = train_config(args, inputs, run_dir)
    last = args.warmup + args.steps
    marks: dict[int, tuple[float, float, float, float]] = {}  # step -> (wall in, cpu in, wall out, cpu out)
    order = list(BareLoops.MODES)

    def on_step(step: int) -> None:
        if step < args.warmup or step > last or (step - args.warmup) % args.log_steps:
            return
        if bare.device.type == "cuda":
            torch.cuda.synchronize(bare.device)
        wall_in, cpu_in = time.perf_counter(), time.process_time()
        if step < last:
            for mode in order:
                bare.window(mode, rows[mode])
            order.append(order.pop(0))  # each bare loop takes each place in turn
        marks[step] = (wall_in, cpu_in, time.perf_counter(), time.process_time())

    t0 = time.perf_counter()
    # The bare loops built their policy with the same seed; train() seeds itself again.
    train(cfg, given=set(), console=Console(file=_NullTerminal(args.verbose), force_terminal=True, width=150),
          on_step=on_step)
    records = {r["step"]: r for r in read_metrics(run_dir) if "time_data_s" in r}
    n = args.log_steps
    wait_fracs = []
    for start in range(args.warmup, last, n):
        r = records[start + n]
        wall = marks[start + n][0] - marks[start][2]
        cpu = marks[start + n][1] - marks[start][3]
        trainer.add(n, wall / n, r["time_data_s"], r["time_forward_backward_s"], r["time_optimizer_s"],
                    r["time_log_checkpoint_s"], cpu / n)
        wait_fracs.append(r["data_wait_frac"])
    return {"setup_s": marks[args.warmup][0] - t0, "data_wait_frac": wait_fracs}


# -- report ------------------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _paired(row: list[float], base: list[float]) -> float:
    """Median over windows of row/base - 1, in percent (windows run next to each other)."""
    return 100.0 * (_median([r / b for r, b in zip(row, base, strict=True)]) - 1.0)


def report(args: argparse.Namespace, rows: list[tuple[str, Windows]], facts: dict, trainer_facts: list[dict]) -> None:
    """Print the comparison table and the notes under it."""
    base, with_pre = rows[0][1], rows[1][1]
    header = ["run", "steps", "ms/step total", "data wait", "forward+backward", "optimizer", "log/ckpt",
              "samples/s", "CPU ms/step", "vs bare: total", "vs bare: without data wait", "vs bare: CPU",
              "vs bare+pre: without data wait"]
    table = []
    for name, w in rows:
        total = _median(w.total)
        table.append([
            name, str(w.steps), f"{total:.1f}", f"{_median(w.data):.2f}", f"{_median(w.fb):.1f}",
            f"{_median(w.optim):.1f}", f"{_median(w.other):.2f}", f"{1000.0 * args.batch_size / total:.1f}",
            f"{_median(w.cpu):.1f}",
            "-" if w is base else f"{_paired(w.total, base.total):+.1f}%",
            "-" if w is base else f"{_paired(w.without_data(), base.total):+.1f}%",
            "-" if w is base else f"{_paired(w.cpu, base.cpu):+.1f}%",
            "-" if w is base or w is with_pre else f"{_paired(w.without_data(), with_pre.total):+.1f}%",
        ])
    title = (f"train step: {facts['device']} {facts['precision']}, {args.threads} thread(s), batch {args.batch_size}, "
             f"chunk {args.chunk_size}, {args.image_size} px x {len(facts['cameras'])} cameras, "
             f"{facts['trainable'] / 1e6:.2f} M of {facts['params'] / 1e6:.2f} M params trained; "
             f"trainer: {args.num_workers} worker(s), log every {args.log_steps}, save every {args.save_steps}")
    subtitle = (f"ms per step: medians over {args.log_steps}-step windows of {args.repeat} run(s), the rows' windows "
                "interleaved; overheads: median over windows of the ratio to the bare window run next to it")
    if args.markdown:
        print(f"\n**{title}**\n\n{subtitle}\n")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i == 0 else "--:" for i in range(len(header))) + "|")
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"{title}\n{subtitle}")
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right", no_wrap=i == 0)
        for row in table:
            t.add_row(*row)
        console = Console()
        if not console.is_terminal:
            console = Console(width=220)
        console.print(t)
    alongside, loop, trained = rows[-3][1], rows[-2][1], rows[-1][1]
    print(f"trainer vs the same loop fed by the same DataLoader (its own machinery only): total "
          f"{_paired(trained.total, loop.total):+.1f}%, without data wait "
          f"{_paired(trained.without_data(), loop.without_data()):+.1f}%, CPU {_paired(trained.cpu, loop.cpu):+.1f}%; "
          f"vs the loop with the DataLoader busy alongside: without data wait "
          f"{_paired(trained.without_data(), alongside.without_data()):+.1f}%")
    fracs = [f for tf in trainer_facts for f in tf["data_wait_frac"]]
    print(f"trainer data_wait_frac: median {_median(fracs):.3f} (max {max(fracs, default=float('nan')):.3f}); "
          f"set-up to the first measured step {_median([tf['setup_s'] for tf in trainer_facts]):.1f} s")
    print(f"load average (1 min) before/after: {facts['load_before']:.2f} / {facts['load_after']:.2f} "
          f"on {os.cpu_count()} CPUs")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Both loops run with --threads torch threads: train() keeps its own CPU thread rule out when this is set.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    args.root.mkdir(parents=True, exist_ok=True)
    inputs = prepare_inputs(args)
    load_before = os.getloadavg()[0]
    rows = {mode: Windows() for mode in BareLoops.MODES}
    trainer = Windows()
    trainer_facts: list[dict] = []
    facts: dict[str, Any] = {}
    for r in range(args.repeat):
        t0 = time.perf_counter()
        bare = BareLoops(args, inputs)
        facts = bare.facts
        trainer_facts.append(interleaved_run(args, inputs, args.root / "runs" / f"trainer_{r}", bare, rows, trainer))
        bare.close()
        print(f"run {r + 1}/{args.repeat}: {time.perf_counter() - t0:.0f} s", flush=True)
    facts["load_before"], facts["load_after"] = load_before, os.getloadavg()[0]
    report(args, [("bare (preprocessed once)", rows["plain"]), ("bare + preprocessor", rows["pre"]),
                  ("bare + preprocessor, DataLoader busy alongside (batches fetched, not used)", rows["alongside"]),
                  (f"bare + preprocessor + DataLoader ({args.num_workers} worker(s))", rows["loader"]),
                  ("trainer", trainer)], facts, trainer_facts)


if __name__ == "__main__":
    from behavior_smolvla.errors import BehaviorSmolVLAError

    try:
        main()
    except BehaviorSmolVLAError as e:
        sys.exit(f"error: {e}")
