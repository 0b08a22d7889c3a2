"""Run metrics: ``metrics.jsonl`` in the run folder and Weights & Biases (the real ``wandb`` library); with
``--log-data-order``, what every process trained on (``data_order/``).

Logging must never stop training: with no credentials an ``online`` run falls back to ``offline`` (one line says how
to sync later), and a wandb failure disables wandb with one warning while ``metrics.jsonl`` keeps going. A resumed
run continues the same wandb run (its id is stored in the checkpoint's training state).
"""

from __future__ import annotations

import json
import math
import netrc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
DATA_ORDER_DIR = "data_order"


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        auth = netrc.netrc().authenticators(os.environ.get("WANDB_BASE_URL", "api.wandb.ai").split("//")[-1])
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(auth and auth[2])


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return _jsonable(value.item())
    return value


class MetricsLog:
    """Append-only ``metrics.jsonl``: one JSON object per logged step (``step`` plus scalars).

    On resume from step ``s`` the entries after ``s`` (written by the interrupted run past its last checkpoint) are
    dropped, so the file reads as one uninterrupted run.
    """

    def __init__(self, run_dir: Path, resume_step: int | None = None) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        if resume_step is not None and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, self.path)
        self._fh = self.path.open("a", buffering=1)

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (must hold ``step``); flushed line by line."""
        self._fh.write(json.dumps({k: _jsonable(v) for k, v in record.items()}) + "\n")

    def close(self) -> None:
        self._fh.close()


class DataOrderLog:
    """``--log-data-order``: what one process trains on, one JSON object per line in
    ``<run>/data_order/from-<step:06d>.rank<R>.jsonl`` (a file per process and launch: ``step`` is the step the
    launch started from, 0 or the resumed one; a launch from the same step again rewrites its files). Every rank
    writes its own file, rank 0 included; nothing else is written by ranks other than 0.

    Records (``"record"``):

    - ``"epoch"``, when the process starts (or resumes within) an epoch: ``epoch``, ``rank``, ``world_size``,
      ``batch_size``, ``batches`` (this rank's batches in the epoch), ``first_batch``, ``dealt_from`` (an elastic
      resume's ``{"world_size", "batch_size", "offset"}``: the rest of the epoch dealt by that shape, from that
      sample of its global sequence; else null), ``unread`` (sample indices dealt to this rank that it does not
      read: ``TrainingPlan.unread``).
    - ``"batch"``, for every micro-batch: ``step`` (the optimizer step it counts towards, from 1), ``epoch``,
      ``batch``, ``position`` (its first sample's place in the epoch's global sequence), ``index`` (the training
      reader's sample indices, as the loader delivered them), ``episode_index``, ``frame_index``.
    """

    def __init__(self, run_dir: Path, rank: int, world_size: int, batch_size: int, start_step: int) -> None:
        folder = Path(run_dir) / DATA_ORDER_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"from-{start_step:06d}.rank{rank}.jsonl"
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self._epoch: int | None = None
        self._fh = self.path.open("w", buffering=1)

    def write(self, step: int, epoch: int, k: int, batch: dict[str, Any], plan: Any, origin: Any) -> None:
        """One micro-batch ``k`` of ``epoch`` (the loader's batch dict), after its epoch's record when the epoch is
        new to this launch (``plan``: the rank's ``TrainingPlan`` of the epoch; ``origin``: its ``EpochOrigin`` or
        None)."""
        if epoch != self._epoch:
            self._epoch = epoch
            dealt = None if origin is None else {"world_size": origin.world_size, "batch_size": origin.batch_size,
                                                 "offset": origin.offset}
            self._line({"record": "epoch", "epoch": epoch, "rank": self.rank, "world_size": self.world_size,
                        "batch_size": self.batch_size, "batches": len(plan), "first_batch": k, "dealt_from": dealt,
                        "unread": plan.unread().tolist()})
        self._line({"record": "batch", "step": step, "epoch": epoch, "batch": k, "position": plan.batch(k).position,
                    **{key: batch[key].tolist() for key in ("index", "episode_index", "frame_index")}})

    def _line(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._fh.close()


def read_data_order(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """The records of every ``data_order/`` file of a run, by file name (``from-<step>.rank<R>.jsonl``)."""
    folder = Path(run_dir) / DATA_ORDER_DIR
    return {path.name: [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
            for path in sorted(folder.glob("*.jsonl"))}


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of a run's ``metrics.jsonl``, in order."""
    path = Path(run_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


class WandbTracker:
    """A thin, failure-tolerant wrapper of one wandb run (rank 0 only).

    Args:
        run_dir: run folder; wandb's files go to ``<run_dir>/wandb``.
        config: the resolved run config (logged as the wandb config).
        project, entity, name, tags: wandb run identity.
        mode: ``online`` | ``offline`` | ``disabled``.
        run_id: an existing run id to continue (resume), else a new one is made.
        say: prints one line to the user (the trainer's console).
    """

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        *,
        project: str | None,
        entity: str | None,
        name: str | None,
        tags: list[str],
        mode: str,
        run_id: str | None,
        say: Callable[[str], None],
    ) -> None:
        self.run = None
        self.say = say
        if mode not in ("online", "offline", "disabled"):
            from behavior_smolvla.errors import ConfigError

            raise ConfigError(f"--wandb-mode {mode!r}: use online, offline or disabled")
        if mode == "disabled":
            return
        if mode == "online" and not _has_wandb_credentials():
            mode = "offline"
            say(
                f"wandb: no credentials found, logging offline to {Path(run_dir) / 'wandb'}; "
                f"sync later with `wandb sync {Path(run_dir) / 'wandb'}/offline-run-*` after `wandb login`"
            )
        try:
            import wandb

            self.run = wandb.init(
                project=project,
                entity=entity,
                name=name,
                tags=tags or None,
                config=config,
                dir=str(run_dir),
                id=run_id,
                resume="allow" if run_id else None,
                mode=mode,
                settings=wandb.Settings(init_timeout=60, console="off", silent=True, x_disable_stats=True),
            )
        except Exception as exc:  # noqa: BLE001 - logging must never kill training
            say(f"wandb: could not start ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "continuing with metrics.jsonl only")
            self.run = None

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, record: dict[str, Any], step: int) -> None:
        """Log scalars (and ``wandb.Image``-able values) at ``step``; a failure disables wandb, once."""
        if self.run is None:
            return
        try:
            self.run.log(record, step=step)
        except Exception as exc:  # noqa: BLE001
            self.say(f"wandb: logging failed ({type(exc).__name__}); continuing with metrics.jsonl only")
            self.run = None

    def log_images(self, images: dict[str, Path], step: int) -> None:
        """Log PNG files as wandb images."""
        if self.run is None or not images:
            return
        import wandb

        self.log({k: wandb.Image(str(v)) for k, v in images.items()}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            try:
                self.run.finish()
            except Exception:  # noqa: BLE001
                pass
            self.run = None
