"""The training loop: lerobot's SmolVLA on a LeRobot/BEHAVIOR dataset, with accelerate, checkpoints and wandb.

``train(cfg)`` is what ``smolvla-train`` runs: build everything (``training.build``), then step until done. It works
the same in one process and under ``accelerate launch --num_processes N`` / ``torchrun`` (DDP): every rank reads its
own shard of the data order, only rank 0 logs and writes checkpoints. Exact resume: weights, optimizer, scheduler, RNG
states (each rank's own) and the position in the data order are restored, so on CPU in fp32 with the same worker count
a resumed run reports the same loss at every step as an uninterrupted one. On another number of processes with the
same effective batch the epoch continues from the same sample (``training.build.resume_position``). SIGTERM or
SIGINT to any rank stops every rank after the same step, with one checkpoint, within ``--stop-timeout``
(``training.preemption``).
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.syntax import Syntax

from behavior_smolvla.config import TrainConfig
from behavior_smolvla.errors import BehaviorSmolVLAError, unwrap_worker_error
from behavior_smolvla.policy import checkpoint as ckpt
from behavior_smolvla.policy.smolvla import save_policy
from behavior_smolvla.training.build import Training, build_training
from behavior_smolvla.training.preemption import StopGuard
from behavior_smolvla.training.tracking import DataOrderLog, MetricsLog, WandbTracker


BEST_METRIC = "chunk_mae"
"""The validation figure ``checkpoints/best`` is chosen by (lowest wins): the held-out whole-chunk MAE in action
units (``evaluation.engine.validate``), since the robot executes chunks, not only their first action."""


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


def _batches(loader, start_epoch: int, start_batch: int) -> Iterator[tuple[int, int, dict]]:
    """Yield ``(epoch, batch_index, batch)`` forever from the resume position.

    Each pass over ``loader`` is the stream's next epoch (``TrainingStream`` counts its iterations, in persistent
    workers too), so the workers and their open decoders live across epochs instead of being re-spawned.
    """
    epoch, first = start_epoch, start_batch
    while True:
        k = first
        try:
            for batch in loader:
                yield epoch, k, batch
                k += 1
        except BehaviorSmolVLAError as exc:  # a worker's error arrives wrapped in its traceback: one line again
            raise unwrap_worker_error(exc) from None
        epoch, first = epoch + 1, 0


def _ranks(signals: list[int]) -> str:
    """``"rank 1"`` / ``"ranks 0, 1"``: the ranks whose slot holds a signal."""
    ranks = [str(i) for i, s in enumerate(signals) if s]
    return f"rank{'s' if len(ranks) > 1 else ''} {', '.join(ranks)}"


def train(cfg: TrainConfig, given: set[str] | None = None, console: Console | None = None) -> TrainResult:
    """Train SmolVLA as ``cfg`` says; return where the checkpoints are.

    Args:
        cfg: the resolved run config (``training.build.config_for_run``).
        given: flat option names set explicitly (flags or config file); ``--demo`` keeps them over its own.
        console: rich console for progress and messages (rank 0 only prints).

    Raises:
        ConfigError, DatasetError, StateMapError, PolicyLoadError, CheckpointError: bad input, one line each.
        TrainingDivergedError: the loss became NaN/inf (the last good checkpoint is kept).
    """
    console = console or Console()
    with Trainer(build_training(cfg, given=given, console=console), console) as trainer:
        while not trainer.done:
            trainer.step()
    return trainer.result()


class Trainer:
    """Runs a built :class:`~behavior_smolvla.training.build.Training` one optimizer step at a time.

    Use it as a context manager (signal handling, progress display, the metrics file and wandb are set up on enter
    and closed on exit, the DataLoader workers stopped) and call :meth:`step` until :attr:`done`. Each step:
    ``grad_accum_steps`` micro-batches (forward, backward), gradient clip, optimizer step, EMA update
    (``--ema-decay``), scheduler step; then logging every ``log_steps``, validation every ``eval_steps``, a checkpoint
    every ``save_steps``, at the end and on SIGTERM/SIGINT.

    Stopping (:class:`~behavior_smolvla.training.preemption.StopGuard`): a SIGTERM or SIGINT to any rank is recorded
    and carried by the all-reduce that ends every step (the step's loss and one slot per rank), so every rank stops
    after the same step, the one in which the first rank to be signalled entered that all-reduce; the validation due
    at it is skipped, rank 0 writes one checkpoint, and every rank prints one ``stopped by signal`` line and exits 0.
    Past ``--stop-timeout`` seconds from the signal (or, on a rank that was not signalled, from the step at which it
    learnt of it) a rank prints one line and exits with code 124, leaving ``checkpoints/last`` as it was.

    Attributes:
        step_times: the last step's time split in seconds (``data``, ``forward_backward``, ``optimizer``,
            ``log_checkpoint``): what ``bench/train_step.py`` compares with a bare loop.
    """

    def __init__(self, training: Training, console: Console | None = None) -> None:
        self.t = training
        self.console = console or Console()
        self.step_times: dict[str, float] = {}
        self.first_loss = self.final_loss = float("nan")
        self.stopped = False
        self._last_path = Path(training.cfg.output.resume) if training.resuming else None
        self.order_log: DataOrderLog | None = None
        self._window: dict[str, float] = {}

    # -- set-up and tear-down ---------------------------------------------------------------------------------

    def __enter__(self) -> Trainer:
        t, cfg = self.t, self.t.cfg
        if t.is_main:
            self.console.print(Panel(Syntax(cfg.to_yaml(), "yaml", theme="ansi_dark"), title="smolvla-train config"))
            t.say(f"data: {len(t.train_episodes)} training episodes ({len(t.dataset)} samples), "
                  f"{len(t.val_episodes)} held out; {t.inputs.describe()}")
            world = t.accelerator.num_processes
            precision = {"no": "fp32"}.get(t.accelerator.mixed_precision, t.accelerator.mixed_precision)
            t.say(f"effective batch {cfg.optim.batch_size * world * cfg.optim.grad_accum_steps} = "
                  f"{cfg.optim.batch_size} per process x {world} processes x {cfg.optim.grad_accum_steps} "
                  f"accumulation; {t.total_steps} steps; device {t.accelerator.device}; precision {precision}")
        self.metrics = MetricsLog(t.run_dir, resume_step=t.state.step if t.resuming else None) if t.is_main else None
        self.tracker = None
        if t.is_main:
            self.tracker = WandbTracker(
                t.run_dir, t.checkpoint_config,
                project=cfg.logging.wandb_project, entity=cfg.logging.wandb_entity,
                name=cfg.logging.wandb_run_name or f"{cfg.output.run_name}-{t.run_dir.name}",
                tags=cfg.logging.wandb_tags,
                mode="disabled" if cfg.logging.wandb_disable else cfg.logging.wandb_mode,
                run_id=t.state.wandb_run_id, say=t.say,
            )
            t.state.wandb_run_id = self.tracker.run_id
        self._stream = _batches(t.loader(), t.state.epoch, t.state.batch)
        self.order_log = (DataOrderLog(t.run_dir, t.accelerator.process_index, t.accelerator.num_processes,
                                       cfg.optim.batch_size, t.state.step) if cfg.logging.log_data_order else None)
        self.progress = Progress(
            TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(), TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, disable=not t.is_main, transient=False,
            refresh_per_second=2,  # redrawing costs ~2 ms of CPU each time: noticeable next to a small model's step
        )
        self._task = self.progress.add_task("train", total=t.total_steps, completed=t.state.step, info="")
        self.progress.start()
        self._reset_window(time.perf_counter())
        t.policy.train()
        world = t.accelerator.num_processes
        self._guard = StopGuard(
            cfg.output.stop_timeout, label=f"rank {t.accelerator.process_index}/{world}: " if world > 1 else "",
            on_timeout=self._on_disk_note,
        ).__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        t = self.t
        self.progress.stop()
        self._guard.phase = f"closing the run after step {t.state.step}"
        try:
            # Stop the DataLoader workers now (closing the generator frees the DataLoader and its iterator), not
            # whenever the garbage collector gets to them.
            self._stream.close()
            self._stream = None
            if self.metrics is not None:
                self.metrics.close()
            if self.tracker is not None:
                self.tracker.finish()
            if self.order_log is not None:
                self.order_log.close()
            t.accelerator.end_training()
        finally:
            self._guard.__exit__(*exc)
        if exc[0] is None and t.is_main:
            t.say(f"done: {t.state.step} steps, loss {self.first_loss:.4f} -> {self.final_loss:.4f}; checkpoints in "
                  f"{t.run_dir / ckpt.CHECKPOINTS_DIR}")

    @property
    def done(self) -> bool:
        return self.stopped or self.t.state.step >= self.t.total_steps

    def result(self) -> TrainResult:
        t = self.t
        return TrainResult(run_dir=t.run_dir, last_checkpoint=t.run_dir / ckpt.CHECKPOINTS_DIR / ckpt.LAST,
                           steps=t.state.step, first_loss=self.first_loss, final_loss=self.final_loss,
                           stopped_by_signal=self.stopped, is_main_process=t.is_main)

    # -- one optimizer step -----------------------------------------------------------------------------------

    def step(self) -> float:
        """One optimizer step and its logging, validation and checkpoint; returns the step's loss (mean over the
        micro-batches and, under DDP, the ranks).

        Raises:
            TrainingDivergedError: a NaN or infinite loss (nothing is written for this step).
        """
        t, cfg, acc, w = self.t, self.t.cfg, self.t.accelerator, self._window
        times = dict.fromkeys(("data", "forward_backward", "optimizer", "log_checkpoint"), 0.0)
        grad_norm = torch.tensor(float("nan"))
        step_loss = 0.0
        self._guard.phase = f"in step {t.state.step + 1} (waiting for its data, or for a rank in a collective)"
        for _ in range(cfg.optim.grad_accum_steps):
            t_wait = time.perf_counter()
            epoch, k, batch = next(self._stream)
            if self.order_log is not None:
                self.order_log.write(t.state.step + 1, epoch, k, batch, t.plan(epoch), t.epoch_origin(epoch))
            t_got = time.perf_counter()
            times["data"] += t_got - t_wait
            w["samples"] += len(batch["task"]) * acc.num_processes
            with acc.accumulate(t.policy):
                with acc.autocast():
                    loss, _ = t.policy(t.model_batch(batch))
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    good = f"; the last good checkpoint is {self._last_path}" if self._last_path else ""
                    raise TrainingDivergedError(
                        f"loss is {loss_value} at step {t.state.step + 1} (epoch {epoch}, batch {k}){good}; "
                        "lower --lr or --grad-clip-norm, or check the data around that batch")
                acc.backward(loss)
                t_optim = time.perf_counter()
                times["forward_backward"] += t_optim - t_got
                if acc.sync_gradients:
                    clip = cfg.optim.grad_clip_norm if cfg.optim.grad_clip_norm > 0 else float("inf")
                    grad_norm = acc.clip_grad_norm_(t.policy.parameters(), clip)
                t.optimizer.step()
                t.optimizer.zero_grad(set_to_none=True)
                times["optimizer"] += time.perf_counter() - t_optim
            step_loss += loss_value / cfg.optim.grad_accum_steps
        if t.ema is not None and not t.optimizer.step_was_skipped:  # fp16 skips steps with inf gradients
            t_ema = time.perf_counter()
            t.ema.update()
            times["optimizer"] += time.perf_counter() - t_ema
        t.scheduler.step()
        state = t.state
        state.step += 1
        t.advance(epoch, k + 1)
        step_loss, signals = self._reduce_step(step_loss)
        stop_now = any(signals)
        if stop_now:  # a rank that was not signalled learns of the stop here: its deadline starts now
            self._guard.arm(f"a stop signal on {_ranks(signals)}")
        if math.isnan(self.first_loss):
            self.first_loss = step_loss
        self.final_loss = step_loss
        for key, value in times.items():
            w[key] += value
        w["loss"] += step_loss
        w["n"] += 1
        if t.is_main:
            self.progress.update(self._task, completed=state.step, info=f"loss {step_loss:.4f}")

        t_after = time.perf_counter()
        if state.step % cfg.logging.log_steps == 0 or state.step == t.total_steps:
            self._log(grad_norm, t_after)
        improved = False
        val_s = 0.0
        # Stopping skips the validation due now: the checkpoint must be written before the deadline, and validation
        # can take longer than the step (only rank 0 validates; the others wait in the all-reduce below).
        if (t.val_dataset is not None and not stop_now
                and (state.step % cfg.eval.eval_steps == 0 or state.step == t.total_steps)):
            self._guard.phase = f"validating at step {state.step}"
            t_val = time.perf_counter()
            improved = self._validate()
            val_s = time.perf_counter() - t_val
            w["paused_s"] += val_s
        if cfg.eval.eval_steps and acc.num_processes > 1:  # rank 0 decides; all ranks take part in a save
            improved = acc.reduce(torch.tensor(float(improved), device=acc.device), "max").item() > 0
        if state.step % cfg.output.save_steps == 0 or state.step == t.total_steps or stop_now or improved:
            t_save = time.perf_counter()
            self._save(improved)
            w["save_s"] += time.perf_counter() - t_save
        times["log_checkpoint"] = time.perf_counter() - t_after - val_s
        w["log_checkpoint"] += times["log_checkpoint"]
        self.step_times = times
        if stop_now:
            self.stopped = True
            self._guard.phase = f"closing the run after the checkpoint of step {state.step}"
            names = ", ".join(sorted({signal.Signals(s).name for s in signals if s}))
            where = f"{names} on {_ranks(signals)}" if acc.num_processes > 1 else names
            done = (f"checkpoint {self._last_path}; continue with `smolvla-train --resume {t.run_dir}`" if t.is_main
                    else "rank 0 wrote the checkpoint")
            # Every rank says it (cluster logs keep each rank's output): the same step on all of them.
            self.console.print(f"{self._guard.label}stopped by signal ({where}) at step {state.step}; {done}",
                               highlight=False, soft_wrap=True)
        return step_loss

    def _reduce_step(self, step_loss: float) -> tuple[float, list[int]]:
        """The step's loss averaged over the ranks, and the stop signal each rank has received (0: none), in one
        all-reduce: a vector ``[loss, signal of rank 0, ..., signal of rank N-1]`` (float32, each rank fills its own
        slot) summed over the ranks. A signal that arrives after a rank entered it counts at the next step."""
        acc = self.t.accelerator
        world = acc.num_processes
        if world == 1:
            return step_loss, [self._guard.signum]
        values = [0.0] * (world + 1)
        values[0], values[1 + acc.process_index] = step_loss, float(self._guard.signum)
        vector = acc.reduce(torch.tensor(values, device=acc.device), "sum")
        mean_loss = (vector[0] / world).item()  # float32, as accelerate's "mean" reduction divides
        return mean_loss, [int(v) for v in vector[1:].tolist()]

    def _on_disk_note(self) -> str:
        """The end of the stop-timeout line: the newest complete checkpoint and how to continue from it (called by the
        watchdog thread: reads one symlink, takes no lock)."""
        run_dir = self.t.run_dir
        last = ckpt.last_checkpoint_name(run_dir)
        if last is None:
            return "No checkpoint was published in this run folder."
        return (f"{ckpt.CHECKPOINTS_DIR}/{ckpt.LAST} -> {last} is the newest complete checkpoint; "
                f"`smolvla-train --resume {run_dir}` continues from it")

    # -- logging, validation, checkpoints ---------------------------------------------------------------------

    def _reset_window(self, t0: float) -> None:
        # paused_s: validation, not training; save_s: checkpoint writes, part of the step time (time_step_s) but left
        # out of the throughput figures.
        self._window.update(loss=0.0, n=0, data=0.0, forward_backward=0.0, optimizer=0.0, log_checkpoint=0.0,
                            samples=0, paused_s=0.0, save_s=0.0, t0=t0)

    def _log(self, grad_norm: torch.Tensor, t_log: float) -> None:
        """One metrics record per ``log_steps``: the window's mean loss, lr, throughput and step-time split."""
        t, w = self.t, self._window
        wall = t_log - w["t0"] - w["paused_s"]
        elapsed = wall - w["save_s"]
        n = w["n"]
        record = {
            "step": t.state.step,
            "epoch": t.state.epoch,
            "loss": w["loss"] / n,
            "lr": t.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "samples_per_s": w["samples"] / elapsed if elapsed > 0 else float("nan"),
            "data_wait_frac": w["data"] / elapsed if elapsed > 0 else float("nan"),
            "time_step_s": wall / n,
            "time_data_s": w["data"] / n,
            "time_forward_backward_s": w["forward_backward"] / n,
            "time_optimizer_s": w["optimizer"] / n,
            "time_log_checkpoint_s": w["log_checkpoint"] / n,
        }
        if t.accelerator.device.type == "cuda":
            record["gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 1024**3
        if t.is_main:
            self.metrics.write(record)
            self.tracker.log({f"train/{k}": v for k, v in record.items() if k != "step"}, step=t.state.step)
            self.progress.console.print(
                " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                         for k, v in record.items() if not k.startswith("time_")),
                highlight=False, soft_wrap=True)
        self._reset_window(t_log)  # writing this record counts in the next window's log_checkpoint time

    def _validate(self) -> bool:
        """Validation loss and offline metrics on the held-out episodes (rank 0), of the weights a checkpoint would
        serve (the EMA's, swapped in and out again, with ``--ema-decay``); True when the best so far by
        :data:`BEST_METRIC` (lower is better)."""
        from behavior_smolvla.evaluation.engine import validate

        t, state = self.t, self.t.state
        step = state.step
        inference = t.cfg.eval.inference
        with t.ema.applied() if t.ema is not None else nullcontext():
            result = validate(t.bundle, t.val_dataset, max_frames=t.cfg.eval.eval_max_frames, seed=t.cfg.optim.seed,
                              inference=inference, output_dir=t.run_dir / "eval" / f"step_{step:06d}")
        plots = result.pop("plots", {})
        names = {k: k.replace("/", "_").removeprefix("val_") for k in result}
        self.metrics.write({"step": step, **{f"val_{names[k]}": v for k, v in result.items()}})
        self.tracker.log({f"val/{names[k]}": v for k, v in result.items()}, step=step)
        self.tracker.log_images({f"val/{name}": path for name, path in plots.items()}, step=step)
        score = float(result[BEST_METRIC])
        weights = " (EMA weights)" if t.ema is not None else ""
        t.say(f"validation at step {step}{weights}: loss {result['val_loss']:.4f}, chunk MAE {score:.4g} (chooses "
              f"best; mean-action predictor {result['mean_action_chunk_mae']:.4g}), first-action MAE "
              f"{result['first_action_mae']:.4g} (mean-action predictor "
              f"{result['mean_action_first_action_mae']:.4g}), percent close {result['percent_close']:.3f}; chunks: {inference.describe()}")
        # A best chosen by another metric (a run started before best was chosen by chunk MAE) is not comparable.
        best = state.best_metric if state.best_metric_name == BEST_METRIC else None
        if best is None or score < best:
            state.best_metric, state.best_metric_name, state.best_step = score, BEST_METRIC, step
            return True
        return False

    def save_checkpoint(self, improved: bool = False) -> Path | None:
        """Checkpoint the current step now, exactly as at a ``save_steps`` boundary (``checkpoints/<step>`` and
        ``last``; ``improved`` also points ``best`` at it; ``--keep-last`` pruning). The trainer's one save path:
        ``bench/real_size.py`` times it. All ranks must call it.

        Returns:
            The written checkpoint folder on rank 0; on other ranks the last one rank 0 reported, or None.
        """
        self._save(improved)
        return self._last_path

    def _save(self, improved: bool) -> None:
        """Checkpoint the current step on rank 0 (all ranks wait); ``improved`` also points ``best`` at it."""
        t, ema = self.t, self.t.ema
        self._guard.phase = (f"writing the checkpoint of step {t.state.step} (left unpublished)" if t.is_main else
                             f"waiting for rank 0 to write the checkpoint of step {t.state.step}")
        t.accelerator.wait_for_everyone()
        rank_rng_states = []
        if t.accelerator.num_processes > 1:  # every rank's random state, so that each resumes its own
            from accelerate.utils import gather_object
            from lerobot.utils.random_utils import serialize_rng_state

            rank_rng_states = gather_object([serialize_rng_state()])[1:]
        if t.is_main:
            t.state.ema_decay, t.state.ema_steps = (ema.decay, ema.updates) if ema is not None else (0.0, 0)

            def write_pretrained(folder: Path) -> None:
                # pretrained_model holds the weights to serve: the average when there is one.
                with ema.applied() if ema is not None else nullcontext():
                    save_policy(t.bundle, folder)

            self._last_path = ckpt.save_checkpoint(
                t.run_dir, t.state,
                # bundle.policy is the module accelerate wrapped (DDP keeps a reference, it does not copy).
                write_pretrained=write_pretrained,
                train_config=t.checkpoint_config, optimizer=t.optimizer, scheduler=t.scheduler,
                keep_last=t.cfg.output.keep_last,
                raw_weights=ema.trained_state_dict() if ema is not None else None,
                rank_rng_states=rank_rng_states,
            )
            if improved:
                ckpt.mark_best(t.run_dir, t.state.step)
        t.accelerator.wait_for_everyone()
