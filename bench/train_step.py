"""Training-step benchmark (issue 4): the trainer's per-step time against a bare loop. Prints a table; not a test.

Everything is built once per run by ``behavior_smolvla.training.build.build_training(cfg)``, the function
``train()`` starts with: the input contract (``Training.inputs``), the training reader, the data order
(``Training.stream``) and DataLoader (``Training.loader``), the policy, the pre-processing (``Training.model_batch``),
the optimizer and schedule (``build_optimizer``: SmolVLA's AdamW preset, cosine with warm-up). The bare loops take
these objects as they are (their policy is ``create_policy`` on the same contract, options and floored statistics
with the same seed: the trainer's initial weights, in a copy of their own); nothing is resolved a second time here.
Five rows, same model, batch size, optimizer, grad-norm clipping, precision, seed and number of measured steps:

* ``bare (preprocessed once)``: ``policy.forward`` -> ``loss.backward()`` -> clip -> ``optimizer.step()`` ->
  ``zero_grad`` -> ``scheduler.step()`` on the trainer's first batches (``Training.stream(0, 0)``), passed through
  ``Training.model_batch`` once and kept in memory (cycled when there are more steps than ``--preload-batches``).
  The floor: no data loading, no pre-processing, no logging.
* ``bare + preprocessor``: the same loop running ``Training.model_batch`` (tokenise the task, normalise state and
  action, move to the device, uint8 frames to float) inside the step on the kept raw batches: per-step work any
  SmolVLA loop does (lerobot's own training loop included).
* ``bare + preprocessor, DataLoader busy alongside``: the previous loop while a DataLoader of its own made by
  ``Training.loader()`` (the trainer's settings: ``--num-workers`` spawned persistent workers, prefetch 4, same data
  order) keeps producing batches: each step fetches one (its time is the data wait) and discards it. What the data
  pipeline running next to the step costs the step, on a machine where workers and the step share cores.
* ``bare + preprocessor + DataLoader``: the same loop computing on the batches that DataLoader hands it: the minimal
  hand-written training loop. Its data wait includes fetching a ready batch from a worker (one shared-memory
  storage per batch), which is not zero even when the workers are ahead.
* ``trainer``: ``behavior_smolvla.training.loop.Trainer`` on the built run, stepped **in this process** exactly as
  ``train()`` steps it (``with Trainer(training) as t: t.step()``): accelerate, its DataLoader workers,
  ``metrics.jsonl`` every ``--log-steps``, checkpoints every ``--save-steps``, its rich progress display rendered to
  a discarded terminal-like console so that it costs what it costs a user watching a terminal; wandb off; no
  held-out episodes, so no validation.

**Interleaving.** On a shared or small machine the speed of the CPU drifts by tens of percent over seconds (other
tenants, frequency), more than the 5% to be resolved, so runs measured one after the other cannot be compared. Here
every row is measured in windows of ``--log-steps`` steps that take turns: the script calls ``Trainer.step()``
``--log-steps`` times (one trainer window, ending with its metrics record), then runs one window of each bare loop,
then the next trainer window, and so on; the bare loops' order rotates from window to window. Each overhead is the
**median over windows of the ratio to the bare window run next to it** (paired), so drift cancels; the columns of
milliseconds are medians over windows. While the bare windows run, the trainer's DataLoader workers keep
prefetching (and the bare loader's workers while the trainer runs): data is not the bottleneck, the target's
condition.

Per row: total wall time per step (this script's clock around the window's steps, ``Trainer.step()`` calls for the
trainer, so it includes everything: data, compute, logging, checkpoint writes, progress display); the split into
data wait / forward+backward / optimizer / logging+checkpoint (the trainer's own, ``Trainer.step_times`` after each
step, summed over the window); CPU time of this process per step (``time.process_time``: all its threads, not the
DataLoader worker processes). Overheads are given on the total, on the total without the data wait (what the
target measures: no data wait is what "data is not the bottleneck" means) and on CPU time.

Every run is warmed up first (``--warmup`` steps of each loop, rounded up to a multiple of ``--log-steps``: the
trainer's first steps include spawning its DataLoader workers and the first allocations). The run has
``warmup + steps + 1`` steps: the checkpoint written at the last step is outside the measured steps (lower
``--save-steps`` to put checkpoint writes inside the measurement). Both loops run with ``--threads`` torch threads
(``OMP_NUM_THREADS`` is set, so the trainer keeps its own CPU rule out).

On CUDA the per-phase split is host-side time (kernels run asynchronously; ``loss.item()`` in the trainer
synchronises once per step); windows start and end with a device synchronisation, so totals are device-true.

Default: the tiny SmolVLM backbone (``policy/backbone.py``) from scratch at 64 px on a small generated
BEHAVIOR-2025-shaped dataset, CPU, one torch thread, one DataLoader worker (a 2-core machine: one core computes, one
decodes). Both are built once and cached under ``--root``. ``--dataset-path`` takes any LeRobot dataset instead
(it needs at least ``2 * (warmup + steps) * batch_size`` samples, so that no run crosses an epoch boundary).

    python bench/train_step.py                                   # tiny backbone, CPU, ~2-4 minutes on 2 cores
    python bench/train_step.py --steps 200 --repeat 2 --markdown
    python bench/train_step.py --smoke --json                    # the script itself in seconds
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


SMOKE = {"steps": 2, "warmup": 1, "log_steps": 1, "repeat": 1, "batch_size": 2, "preload_batches": 2,
         "num_workers": 0}
"""``--smoke``: the smallest run that goes through every row (windows of one step, no DataLoader workers)."""


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
    p.add_argument("--json", action="store_true", help="print one JSON object (the rows' figures) instead of the table")
    p.add_argument("--smoke", action="store_true",
                   help="try the script in seconds: " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in
                                                                 SMOKE.items()) + " (figures meaningless)")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(**SMOKE)  # flags given explicitly still win
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


# -- sources -----------------------------------------------------------------------------------------------------


def prepare_sources(args: argparse.Namespace) -> dict[str, Any]:
    """Dataset path and policy source, generating the dataset and tiny VLM under ``--root`` when not given.

    The generated dataset holds enough frames that one run never crosses an epoch boundary (a new epoch starts new
    DataLoader workers, a data stall that is not a per-step cost).
    """
    from behavior_smolvla.synthetic.datasets import write_behavior_2025
    from behavior_smolvla.policy.backbone import build_tiny_vlm

    dataset = args.dataset_path
    if dataset is None:
        needed = bare_batches_needed(args) * args.batch_size
        frames = max(120, math.ceil(1.25 * needed / SYNTHETIC_EPISODES / 50) * 50)
        dataset = args.root / f"behavior2025_e{SYNTHETIC_EPISODES}_f{frames}_{args.image_size}px_gop{SYNTHETIC_GOP}"
        if not (dataset / ".complete").is_file():
            print(f"generating {dataset} ({SYNTHETIC_EPISODES} episodes x {frames} frames, "
                  f"{args.image_size} px HEVC) ...", flush=True, file=sys.stderr if args.json else sys.stdout)
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


def train_config(args: argparse.Namespace, sources: dict[str, Any], output_dir: Path):
    """The config of one measured run, as a user would train: a checkpoint every ``--save-steps`` and at the last
    step, a metrics record every ``--log-steps``, no held-out episodes (so no validation, as without
    ``--val-episodes``), wandb off. ``build_training`` builds the trainer from it, and the bare loops from that."""
    from behavior_smolvla.config import TrainConfig, apply_overrides

    cfg = TrainConfig()
    values = {
        **sources,
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


def bare_batches_needed(args: argparse.Namespace) -> int:
    """Batches of one epoch that one run needs: the bare DataLoader feeds two rows (warm-up and measured steps each);
    the trainer's own DataLoader needs ``warmup + steps + 1``."""
    return max(2 * (args.warmup + args.steps), args.warmup + args.steps + 1)


class BareLoops:
    """Bare training loops on the objects ``build_training`` built for the trainer, run one window at a time (see the
    module docstring).

    From the built :class:`~behavior_smolvla.training.build.Training`: its input contract and training reader (the
    policy is made by ``create_policy`` from the same contract, policy options and floored dataset statistics, with
    the same seed, so it starts from the trainer's weights but is its own copy), its pre-processing
    (``Training.model_batch``), its data order (``Training.stream``) and DataLoader (``Training.loader``), and
    ``build_optimizer`` (the trainer's optimizer and schedule, not wrapped by accelerate).
    """

    MODES = ("plain", "pre", "alongside", "loader")

    def __init__(self, args: argparse.Namespace, training) -> None:
        import torch
        from torch.utils.data import DataLoader

        from behavior_smolvla.errors import ConfigError
        from behavior_smolvla.policy.smolvla import create_policy
        from behavior_smolvla.training.build import build_optimizer, floor_std

        self.args, self.training = args, training
        cfg = training.cfg
        self.grad_clip_norm = cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm > 0 else float("inf")
        self.device = next(training.bundle.policy.parameters()).device
        needed = bare_batches_needed(args)
        if training.batches_per_epoch < needed:
            raise ConfigError(
                f"--dataset-path {cfg.data.dataset_path}: {training.batches_per_epoch} batches of {args.batch_size} "
                f"per epoch, fewer than the {needed} batches one run takes (an epoch boundary would stall the loops); "
                "lower --steps, --warmup or --batch-size"
            )
        torch.manual_seed(cfg.optim.seed)  # the trainer's initial weights (build_training seeds the same way)
        bundle = create_policy(training.inputs, cfg.policy, floor_std(training.dataset.stats),
                               device="cpu" if self.device.type == "cpu" else str(self.device))
        self.policy = bundle.policy
        self.optimizer, self.scheduler = build_optimizer(cfg, self.policy, training.total_steps)
        # accelerate's rule, which the trainer follows through accelerator.autocast(): bf16 autocast or none.
        self.precision = "bf16" if training.accelerator.mixed_precision == "bf16" else "fp32"
        self.raw: list[dict] = []
        # The trainer's first batches, read in this process (a DataLoader without workers converts as its workers do).
        for batch in DataLoader(training.stream(0, 0), batch_size=None, num_workers=0):
            self.raw.append(batch)
            if len(self.raw) == min(args.preload_batches, needed):
                break
        self.ready = [training.model_batch(dict(b)) for b in self.raw]
        # A DataLoader of its own with the trainer's settings, on the same data order from the start.
        self.live = iter(training.loader())
        self.i = 0
        self.policy.train()
        for _ in range(args.warmup):
            for mode in self.MODES:
                self._step(mode)
        torch.manual_seed(cfg.optim.seed)  # leave the trainer the RNG stream a normal run starts with
        self.facts = {
            "params": sum(p.numel() for p in self.policy.parameters()),
            "trainable": sum(p.numel() for p in self.policy.parameters() if p.requires_grad),
            "cameras": list(training.inputs.cameras), "state_map": training.inputs.state_map.name,
            "device": str(self.device), "precision": self.precision,
        }

    def _step(self, mode: str) -> tuple[float, float, float]:
        import torch

        t_wait = time.perf_counter()
        fetched = next(self.live) if mode in ("alongside", "loader") else None
        t0 = time.perf_counter()
        if mode == "plain":
            batch = self.ready[self.i % len(self.ready)]
        elif mode == "loader":
            batch = self.training.model_batch(fetched)
        else:  # "alongside" computes on a kept batch: the DataLoader's work shows, fresh data does not
            batch = self.training.model_batch(dict(self.raw[self.i % len(self.raw)]))
        self.i += 1
        if self.precision == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                loss, _ = self.policy.forward(batch)
        else:
            loss, _ = self.policy.forward(batch)
        loss.backward()
        t1 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return t0 - t_wait, t1 - t0, time.perf_counter() - t1

    def window(self, mode: str, out: Windows) -> None:
        """Run ``--log-steps`` steps of ``mode`` and add their per-step figures to ``out``."""
        n = self.args.log_steps
        _sync(self.device)
        t0, c0 = time.perf_counter(), time.process_time()
        data = fb = opt = 0.0
        for _ in range(n):
            d, f, o = self._step(mode)
            data, fb, opt = data + d, fb + f, opt + o
        _sync(self.device)
        out.add(n, (time.perf_counter() - t0) / n, data / n, fb / n, opt / n, 0.0, (time.process_time() - c0) / n)

    def close(self) -> None:
        del self.live  # stops the workers


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


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


def interleaved_run(args: argparse.Namespace, prepared: dict[str, Any], run_dir: Path, rows: dict[str, Windows],
                    trainer_row: Windows) -> dict:
    """One run: ``build_training``, the bare loops on what it built, then a :class:`Trainer` stepped window by
    window in this process, one window of each bare loop after each of its measured windows."""
    from rich.console import Console

    from behavior_smolvla.training.build import build_training
    from behavior_smolvla.training.loop import Trainer

    shutil.rmtree(run_dir, ignore_errors=True)
    console = Console(file=_NullTerminal(args.verbose), force_terminal=True, width=150)
    t_build = time.perf_counter()
    training = build_training(train_config(args, prepared, run_dir), given=set(), console=console)
    build_s = time.perf_counter() - t_build
    bare = BareLoops(args, training)
    n, order = args.log_steps, list(BareLoops.MODES)
    wait_fracs: list[float] = []
    with Trainer(training, console) as trainer:
        t_enter = time.perf_counter()
        for _ in range(args.warmup):  # the first steps spawn the DataLoader workers
            trainer.step()
        setup_s = build_s + time.perf_counter() - t_enter
        for _ in range(args.steps // n):
            split = dict.fromkeys(("data", "forward_backward", "optimizer", "log_checkpoint"), 0.0)
            _sync(bare.device)
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(n):
                trainer.step()
                for key, value in trainer.step_times.items():
                    split[key] += value
            _sync(bare.device)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            trainer_row.add(n, wall / n, split["data"] / n, split["forward_backward"] / n, split["optimizer"] / n,
                            split["log_checkpoint"] / n, cpu / n)
            wait_fracs.append(split["data"] / wall)
            for mode in order:
                bare.window(mode, rows[mode])
            order.append(order.pop(0))  # each bare loop takes each place in turn
        while not trainer.done:  # the last step writes the final checkpoint, outside the measured steps
            trainer.step()
    bare.close()
    return {"setup_s": setup_s, "data_wait_frac": wait_fracs, "facts": bare.facts}


# -- report ------------------------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _paired(row: list[float], base: list[float]) -> float:
    """Median over windows of row/base - 1, in percent (windows run next to each other)."""
    return 100.0 * (_median([r / b for r, b in zip(row, base, strict=True)]) - 1.0)


def _paired_spread(row: list[float], base: list[float]) -> str:
    """``median [q1, q3]`` of the per-window ratios row/base - 1, in percent: how far one window's overhead strays."""
    ratios = [100.0 * (r / b - 1.0) for r, b in zip(row, base, strict=True)]
    if len(ratios) < 2:
        return f"{_median(ratios):+.1f}%"
    q1, q2, q3 = statistics.quantiles(ratios, n=4)
    return f"{q2:+.1f}% [{q1:+.1f}, {q3:+.1f}]"


def report(args: argparse.Namespace, rows: list[tuple[str, Windows]], facts: dict, trainer_facts: list[dict]) -> None:
    """Print the comparison table and the notes under it."""
    base, with_pre = rows[0][1], rows[1][1]
    header = ["run", "steps", "ms/step total", "data wait", "forward+backward", "optimizer", "log/ckpt",
              "samples/s", "CPU ms/step", "vs bare: total", "vs bare: without data wait", "vs bare: CPU",
              "vs bare+pre: without data wait"]
    table, records = [], []
    for name, w in rows:
        total = _median(w.total)
        records.append({
            "run": name, "steps": w.steps, "ms_per_step": total, "data_wait_ms": _median(w.data),
            "forward_backward_ms": _median(w.fb), "optimizer_ms": _median(w.optim),
            "log_checkpoint_ms": _median(w.other), "samples_per_s": 1000.0 * args.batch_size / total,
            "cpu_ms_per_step": _median(w.cpu),
            "vs_bare_total_pct": None if w is base else _paired(w.total, base.total),
            "vs_bare_without_data_wait_pct": None if w is base else _paired(w.without_data(), base.total),
            "vs_bare_cpu_pct": None if w is base else _paired(w.cpu, base.cpu),
        })
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
    fracs = [f for tf in trainer_facts for f in tf["data_wait_frac"]]
    setup = _median([tf["setup_s"] for tf in trainer_facts])
    if args.json:
        import json

        print(json.dumps({
            "device": facts["device"], "precision": facts["precision"], "threads": args.threads,
            "batch_size": args.batch_size, "chunk_size": args.chunk_size, "image_size": args.image_size,
            "cameras": len(facts["cameras"]), "params": facts["params"], "params_trainable": facts["trainable"],
            "num_workers": args.num_workers, "log_steps": args.log_steps, "repeat": args.repeat, "rows": records,
            "trainer_data_wait_frac": _median(fracs), "trainer_setup_s": setup,
            "load_before": facts["load_before"], "load_after": facts["load_after"],
        }))
        return
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
    print(f"trainer vs the same loop fed by the same DataLoader (its own machinery only; median [quartiles] over "
          f"{len(trained.total)} paired windows): total {_paired_spread(trained.total, loop.total)}, without data "
          f"wait {_paired_spread(trained.without_data(), loop.without_data())}, CPU "
          f"{_paired_spread(trained.cpu, loop.cpu)}; vs the loop with the DataLoader busy alongside, without data "
          f"wait: {_paired_spread(trained.without_data(), alongside.without_data())}")
    print(f"trainer data wait / window wall time: median {_median(fracs):.3f} "
          f"(max {max(fracs, default=float('nan')):.3f}); "
          f"trainer set-up (build_training, then its warm-up steps) {setup:.1f} s")
    print(f"load average (1 min) before/after: {facts['load_before']:.2f} / {facts['load_after']:.2f} "
          f"on {os.cpu_count()} CPUs")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # Both loops run with --threads torch threads: train() keeps its own CPU thread rule out when this is set.
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    args.root.mkdir(parents=True, exist_ok=True)
    prepared = prepare_sources(args)
    load_before = os.getloadavg()[0]
    rows = {mode: Windows() for mode in BareLoops.MODES}
    trainer = Windows()
    trainer_facts: list[dict] = []
    for r in range(args.repeat):
        t0 = time.perf_counter()
        trainer_facts.append(interleaved_run(args, prepared, args.root / "runs" / f"trainer_{r}", rows, trainer))
        print(f"run {r + 1}/{args.repeat}: {time.perf_counter() - t0:.0f} s", flush=True,
              file=sys.stderr if args.json else sys.stdout)
    facts = dict(trainer_facts[-1]["facts"])
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
