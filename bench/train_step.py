"""Training-step benchmark (issue 4): the trainer's per-step time against a bare loop. Prints a table; not a test.

Four rows, same model config, batch size, optimizer (SmolVLA's AdamW preset with grad-norm clipping and the
cosine-with-warmup scheduler, built as ``train()`` builds them), precision, seed and number of measured steps:

* ``bare (preprocessed once)``: ``policy.forward`` -> ``loss.backward()`` -> clip -> ``optimizer.step()`` ->
  ``zero_grad`` -> ``scheduler.step()`` on batches taken once from the same dataset and data order
  (``TrainingStream``, same seed), passed through the same pre-processor once and kept in memory (cycled when there
  are more steps than ``--preload-batches``). The floor: no data loading, no pre-processing, no logging.
* ``bare + preprocessor``: the same loop running the pre-processor (tokenise the task, normalise state and action,
  move to the device) inside the step on the kept raw batches: per-step work any loop must do.
* ``bare + preprocessor + DataLoader``: the same loop fed by a ``DataLoader`` with the trainer's settings
  (``--num-workers`` spawned workers, prefetch 4, same stream): the minimal hand-written training loop. Its data
  wait includes fetching a ready batch from a worker (unpickling its tensors from shared memory), which is not zero
  even when the workers are ahead; on a small CPU machine the workers' decoding also competes with the compute.
* ``trainer``: ``behavior_smolvla.train.train()`` run **in this process** on the same dataset (accelerate,
  DataLoader workers, ``metrics.jsonl``, checkpoints every ``--save-steps``, its rich progress display rendered to
  a discarded terminal-like console so that it costs what it costs a user watching a terminal; wandb off). Its
  data wait / forward+backward / optimizer / logging+checkpoint split is the trainer's own, read from
  ``metrics.jsonl`` (``time_*_s``, host seconds per step averaged over each ``--log-steps`` window); its total wall
  time per step comes from the moments the trainer prints each logged step, so it includes everything the loop does
  (data, compute, logging, checkpoint writes, progress display).

Every run is warmed up first (``--warmup`` steps, rounded up to a multiple of ``--log-steps``: the trainer's first
windows include spawning its DataLoader workers and the first allocations, and are dropped). Each figure is the
median over windows of ``--log-steps`` steps, pooled over ``--repeat`` alternating bare/trainer runs, so a burst of
load from another process moves one window, not the result. The three bare rows take turns window by window on one
policy. Overhead = row / bare - 1, for:

* the total wall time per step (what a user waits for; includes the data wait);
* forward+backward + optimizer + logging/checkpoint (without the data wait, zero when data is not the bottleneck);
* the best (fastest) window of each row: on a shared machine other processes only ever slow a window down, so the
  fastest one is the least disturbed estimate of the intrinsic cost;
* CPU time of this process per step (``time.process_time``: all its threads, e.g. the progress display's refresh
  thread and torch's intra-op pool, but not the DataLoader worker processes). Waiting for a CPU that another process
  holds does not count, so this is the steadiest figure on a loaded machine; it still moves with cache and
  frequency effects, and it misses work that overlaps in other processes.

A line under the table compares the trainer with the DataLoader-fed bare loop: what the trainer's own machinery
costs beyond loading data. The checkpoint written at the last step is outside the measured steps; its time is
printed separately (lower ``--save-steps`` to put checkpoint writes inside the measurement).

On CUDA the per-phase split is host-side time (kernels run asynchronously; ``loss.item()`` in the trainer
synchronises once per step); the bare loops synchronise at window boundaries, so their totals are device-true.

Default: the tiny SmolVLM backbone (``tiny_vlm.py``) from scratch at 64 px on a small generated BEHAVIOR-2025-shaped
dataset, CPU, one torch thread, one DataLoader worker (a 2-core machine: one core computes, one decodes). Both are
built once and cached under ``--root``. ``--dataset-path`` takes any LeRobot dataset instead (it needs at least
``(warmup + steps) * batch_size`` samples, so that no run crosses an epoch boundary).

    python bench/train_step.py                                   # tiny backbone, CPU, ~1.5-3 minutes on 2 cores
    python bench/train_step.py --steps 100 --repeat 5 --markdown
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
import re
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
    p.add_argument("--steps", type=int, default=40, help="measured steps per run (after the warm-up)")
    p.add_argument("--warmup", type=int, default=10, help="steps run before measuring (rounded up to --log-steps)")
    p.add_argument("--repeat", type=int, default=3, help="alternating bare/trainer runs; medians are pooled")
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
    from behavior_smolvla.synthetic import write_behavior_2025
    from behavior_smolvla.tiny_vlm import build_tiny_vlm

    dataset = args.dataset_path
    if dataset is None:
        needed = (args.warmup + args.steps) * args.batch_size
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
        "num_workers": args.num_workers, "max_steps": args.warmup + args.steps, "save_steps": args.save_steps,
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
    """Per-window measurements (milliseconds per step), one entry per ``--log-steps`` window."""

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


def training_data(cfg) -> tuple[Any, Any, list[str], Any]:
    """``(meta, state_map, cameras, dataset)`` exactly as ``train()`` resolves them with no --episodes,
    --val-episodes, --cameras or --state-map given (every episode, default cameras and state map)."""
    from behavior_smolvla.dataset import BehaviorDataset, DatasetMeta
    from behavior_smolvla.state_maps import default_state_map
    from behavior_smolvla.train import default_cameras

    meta = DatasetMeta.load(cfg.data.dataset_path)
    state_map = default_state_map(meta.state_dim).bind(meta.state_dim, meta.state_names)
    cameras = default_cameras(meta.camera_keys)
    dataset = BehaviorDataset(cfg.data.dataset_path, episodes=sorted(meta.episodes), cameras=cameras,
                              chunk_size=cfg.policy.chunk_size, image_size=cfg.data.image_size, state_map=state_map)
    return meta, state_map, cameras, dataset


def bare_loop(args: argparse.Namespace, inputs: dict[str, Any], plain: Windows, with_pre: Windows,
              with_loader: Windows) -> dict:
    """Build the trainer's policy/optimizer/scheduler outside the trainer and time the three bare loops, window by
    window in turn (see the module docstring)."""
    import torch
    from lerobot.optim.optimizers import AdamWConfig
    from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig
    from torch.utils.data import DataLoader

    from behavior_smolvla.policy import PolicySpec, create_policy, policy_camera_keys, resolve_device, to_policy_batch
    from behavior_smolvla.sampler import TrainingStream
    from behavior_smolvla.train import floor_std

    cfg = train_config(args, inputs, args.root / "runs" / "unused")
    device = resolve_device(cfg.optim.device)
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
    policy, pre = bundle.policy, bundle.preprocessor
    optimizer = AdamWConfig(lr=cfg.optim.lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=cfg.optim.weight_decay,
                            grad_clip_norm=cfg.optim.grad_clip_norm).build(policy.get_optim_params())
    scheduler = CosineDecayWithWarmupSchedulerConfig(
        peak_lr=cfg.optim.lr, decay_lr=cfg.optim.decay_lr, num_warmup_steps=cfg.optim.warmup_steps,
        num_decay_steps=cfg.optim.decay_steps,
    ).build(optimizer, cfg.optim.max_steps)
    precision = cfg.optim.precision if cfg.optim.precision != "auto" else ("bf16" if device.type == "cuda" else "fp32")
    autocast = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if precision == "bf16" else None

    camera_map = policy_camera_keys(cameras)

    def stream() -> TrainingStream:
        return TrainingStream(dataset, seed=cfg.optim.seed, batch_size=cfg.optim.batch_size, rank=0, world_size=1)

    if len(stream()) < args.warmup + args.steps:
        from behavior_smolvla.errors import ConfigError

        raise ConfigError(
            f"--dataset-path {cfg.data.dataset_path}: {len(stream())} batches of {args.batch_size} per epoch, fewer than "
            f"the {args.warmup + args.steps} steps of one run (an epoch boundary would stall the trainer); lower "
            "--steps, --warmup or --batch-size"
        )
    raw: list[dict] = []
    for batch in DataLoader(stream(), batch_size=None, num_workers=0):
        raw.append(to_policy_batch(batch, camera_map))
        if len(raw) == min(args.preload_batches, args.warmup + args.steps):
            break
    ready = [pre(dict(b)) for b in raw]
    # The trainer's DataLoader settings (train.loader_for), on the same data order.
    workers = cfg.data.num_workers
    live = iter(DataLoader(stream(), batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                           multiprocessing_context="spawn" if workers > 0 else None,
                           prefetch_factor=4 if workers > 0 else None))

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def step(i: int, mode: str) -> tuple[float, float, float]:
        t_wait = time.perf_counter()
        if mode == "loader":
            fetched = to_policy_batch(next(live), camera_map)
        t0 = time.perf_counter()
        if mode == "loader":
            batch = pre(fetched)
        else:
            batch = pre(dict(raw[i % len(raw)])) if mode == "pre" else ready[i % len(ready)]
        if autocast is None:
            loss, _ = policy.forward(batch)
        else:
            with autocast():
                loss, _ = policy.forward(batch)
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), cfg.optim.grad_clip_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        return t0 - t_wait, t1 - t0, time.perf_counter() - t1

    modes = (("plain", plain), ("pre", with_pre), ("loader", with_loader))
    policy.train()
    for i in range(args.warmup):
        step(i, modes[i % len(modes)][0])
    i = args.warmup
    for _ in range(args.steps // args.log_steps):
        for mode, out in modes:
            sync()
            t0, c0 = time.perf_counter(), time.process_time()
            data = fb = opt = 0.0
            for _ in range(args.log_steps):
                d, f, o = step(i, mode)
                data, fb, opt, i = data + d, fb + f, opt + o, i + 1
            sync()
            n = args.log_steps
            out.add(n, (time.perf_counter() - t0) / n, data / n, fb / n, opt / n, 0.0, (time.process_time() - c0) / n)
    del live  # stops the workers
    params = sum(p.numel() for p in policy.parameters())
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return {"params": params, "trainable": trainable, "cameras": cameras, "state_map": state_map.name,
            "device": str(device), "precision": precision}


class _StampedSink(io.TextIOBase):
    """The trainer console's file: records when each logged step's line ("step N epoch ...") is written."""

    _ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
    _LINE = re.compile(r"step (\d+) epoch \d+ loss")

    def __init__(self, echo: bool) -> None:
        super().__init__()
        self.stamps: dict[int, tuple[float, float]] = {}
        self.echo = echo

    def write(self, s: str) -> int:
        wall = time.perf_counter()
        # The progress display writes here ~10 times a second; read the (costly) process CPU clock only for step lines.
        for m in self._LINE.finditer(self._ANSI.sub("", s)):
            self.stamps.setdefault(int(m.group(1)), (wall, time.process_time()))
        if self.echo:
            sys.stdout.write(s)
        return len(s)

    def isatty(self) -> bool:
        return True


def trainer_run(args: argparse.Namespace, inputs: dict[str, Any], run_dir: Path, out: Windows) -> dict:
    """Run ``train()`` in this process and add its post-warm-up windows to ``out``."""
    from rich.console import Console

    from behavior_smolvla.tracking import read_metrics
    from behavior_smolvla.train import train

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = train_config(args, inputs, run_dir)
    sink = _StampedSink(args.verbose)
    console = Console(file=sink, force_terminal=True, width=150)
    t0 = time.perf_counter()
    train(cfg, given=set(), console=console)
    t_end = time.perf_counter()
    records = [r for r in read_metrics(run_dir) if "time_data_s" in r]
    total = args.warmup + args.steps
    previous = args.warmup
    missing = [s for s in range(args.warmup, total + 1, args.log_steps) if s not in sink.stamps]
    if missing:
        raise RuntimeError(f"the trainer printed no line for logged step(s) {missing}; its console format changed?")
    wait_fracs = []
    for r in records:
        if r["step"] <= args.warmup:
            continue
        n = r["step"] - previous
        (wall1, cpu1), (wall0, cpu0) = sink.stamps[r["step"]], sink.stamps[previous]
        out.add(n, (wall1 - wall0) / n, r["time_data_s"], r["time_forward_backward_s"], r["time_optimizer_s"],
                r["time_log_checkpoint_s"], (cpu1 - cpu0) / n)
        wait_fracs.append(r["data_wait_frac"])
        previous = r["step"]
    return {"setup_s": sink.stamps[args.log_steps][0] - t0, "final_s": t_end - sink.stamps[total][0],
            "data_wait_frac": wait_fracs}


# -- report ------------------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def report(args: argparse.Namespace, rows: list[tuple[str, Windows]], facts: dict, trainer_facts: list[dict]) -> None:
    """Print the comparison table and the notes under it."""
    base = rows[0][1]
    base_total, base_cpu = _median(base.total), _median(base.cpu)
    base_best = min(base.total)
    header = ["run", "steps", "ms/step total", "best window", "data wait", "forward+backward", "optimizer",
              "log/ckpt", "samples/s", "overhead vs bare (total)", "overhead vs bare (fb+opt+log/ckpt)",
              "overhead vs bare (best windows)", "CPU ms/step", "overhead vs bare (CPU)"]
    table = []
    for name, w in rows:
        total, cpu = _median(w.total), _median(w.cpu)
        compute = _median([f + o + c for f, o, c in zip(w.fb, w.optim, w.other)])
        table.append([
            name, str(w.steps), f"{total:.1f}", f"{min(w.total):.1f}", f"{_median(w.data):.2f}", f"{_median(w.fb):.1f}",
            f"{_median(w.optim):.1f}", f"{_median(w.other):.2f}", f"{1000.0 * args.batch_size / total:.1f}",
            "-" if w is base else f"{100.0 * (total / base_total - 1):+.1f}%",
            "-" if w is base else f"{100.0 * (compute / base_total - 1):+.1f}%",
            "-" if w is base else f"{100.0 * (min(w.total) / base_best - 1):+.1f}%",
            f"{cpu:.1f}", "-" if w is base else f"{100.0 * (cpu / base_cpu - 1):+.1f}%",
        ])
    title = (f"train step: {facts['device']} {facts['precision']}, {args.threads} thread(s), batch {args.batch_size}, "
             f"chunk {args.chunk_size}, {args.image_size} px x {len(facts['cameras'])} cameras, "
             f"{facts['trainable'] / 1e6:.2f} M of {facts['params'] / 1e6:.2f} M params trained; "
             f"trainer: {args.num_workers} worker(s), log every {args.log_steps}, save every {args.save_steps}")
    subtitle = (f"ms per step, medians over {args.log_steps}-step windows of {args.repeat} run(s); best window = the "
                "fastest window (least disturbed by other processes); CPU = this process's CPU time per step (all its "
                "threads, not the DataLoader workers)")
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
    loop, trained = rows[-2][1], rows[-1][1]

    def vs_loop(metric) -> str:
        return f"{100.0 * (_median(metric(trained)) / _median(metric(loop)) - 1):+.1f}%"

    print(f"trainer vs the same loop fed by the same DataLoader (its own machinery only): total "
          f"{vs_loop(lambda w: w.total)}, fb+opt+log/ckpt "
          f"{vs_loop(lambda w: [f + o + c for f, o, c in zip(w.fb, w.optim, w.other)])}, "
          f"best window {100.0 * (min(trained.total) / min(loop.total) - 1):+.1f}%, CPU {vs_loop(lambda w: w.cpu)}")
    fracs = [f for tf in trainer_facts for f in tf["data_wait_frac"]]
    final_s = _median([tf["final_s"] for tf in trainer_facts])
    print(f"trainer data_wait_frac: median {_median(fracs):.3f} (max {max(fracs, default=float('nan')):.3f}); "
          f"set-up to first log {_median([tf['setup_s'] for tf in trainer_facts]):.1f} s; final checkpoint + "
          f"shutdown {final_s:.2f} s (= {1000.0 * final_s / args.save_steps:.2f} ms/step at --save-steps "
          f"{args.save_steps})")
    print(f"load average (1 min) before/after: {facts['load_before']:.2f} / {facts['load_after']:.2f} "
          f"on {os.cpu_count()} CPUs")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    args.root.mkdir(parents=True, exist_ok=True)
    inputs = prepare_inputs(args)
    load_before = os.getloadavg()[0]
    plain, with_pre, with_loader, trainer = Windows(), Windows(), Windows(), Windows()
    trainer_facts: list[dict] = []
    facts: dict[str, Any] = {}
    for r in range(args.repeat):
        t0 = time.perf_counter()
        facts = bare_loop(args, inputs, plain, with_pre, with_loader)
        print(f"run {r + 1}/{args.repeat}: bare loops {time.perf_counter() - t0:.0f} s", flush=True)
        t0 = time.perf_counter()
        trainer_facts.append(trainer_run(args, inputs, args.root / "runs" / f"trainer_{r}", trainer))
        print(f"run {r + 1}/{args.repeat}: trainer {time.perf_counter() - t0:.0f} s", flush=True)
    facts["load_before"], facts["load_after"] = load_before, os.getloadavg()[0]
    rows = [("bare (preprocessed once)", plain), ("bare + preprocessor", with_pre),
            (f"bare + preprocessor + DataLoader ({args.num_workers} worker(s))", with_loader), ("trainer", trainer)]
    report(args, rows, facts, trainer_facts)


if __name__ == "__main__":
    from behavior_smolvla.errors import BehaviorSmolVLAError

    try:
        main()
    except BehaviorSmolVLAError as e:
        sys.exit(f"error: {e}")
