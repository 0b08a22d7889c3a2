"""Checkpoints: the only place a checkpoint is written, found or pruned.

Layout (lerobot-train's, so lerobot tools load it)::

    <run>/checkpoints/<step:06d>/pretrained_model/   config.json, model.safetensors (the weights to serve: with
                                                     --ema-decay the averaged ones), policy_{pre,post}processor*,
                                                     train_config.yaml (this project's resolved run config)
    <run>/checkpoints/<step:06d>/training_state/     training_step.json (step, epoch, batch position, world size,
                                                     batch size, how the epoch was dealt, wandb run id, EMA decay and update count, best
                                                     validation metric), optimizer_state.safetensors,
                                                     optimizer_param_groups.json, scheduler_state.json,
                                                     rng_state.safetensors (rank 0's python, numpy and torch
                                                     random states), rng_state_rank<R>.safetensors (those of
                                                     every other rank R), raw_weights.safetensors (with
                                                     --ema-decay only: the trained, not averaged, weights of the
                                                     trainable parameters, which --resume continues from)
    <run>/checkpoints/last -> <step:06d>             newest complete checkpoint (relative symlink)
    <run>/checkpoints/best -> <step:06d>             best by held-out whole-chunk MAE (when validation runs)

A checkpoint is written into ``checkpoints/.tmp-<step>-<pid>``, flushed to disk, renamed into place, and only then
is ``last`` re-pointed (a symlink swapped with an atomic rename). A crash or a full disk at any moment leaves the
previous ``last`` complete and loadable; leftovers of an interrupted write are removed by the next write.

Both folders of a checkpoint hold a ``manifest.json`` written inside that atomic write: every other file's size and
SHA-256, and the fingerprint of the input contract (``inputs.ContractFingerprint`` of ``train_config.yaml``'s
``inputs`` section). :func:`verify_checkpoint` checks it, so a file truncated, overwritten (even at the same length)
or edited after the write is refused in one line naming it and the newest intact older checkpoint, and an edited
input contract is refused naming the fields that changed. Checkpoints written before manifests load with one
"unverified" line.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from safetensors import SafetensorError

from behavior_smolvla.errors import CheckpointError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
PRETRAINED_DIR = "pretrained_model"
TRAINING_STATE_DIR = "training_state"
TRAIN_CONFIG_FILE = "train_config.yaml"
TRAINING_STEP_FILE = "training_step.json"
RAW_WEIGHTS_FILE = "raw_weights.safetensors"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
"""Version of ``manifest.json``'s layout (a newer one is refused)."""
DIGEST = "sha256"
"""The manifest's file hash (hashlib; ``sha256sum`` checks the same value by hand); its cost on the full-size
``smolvla_base`` stand-in: :func:`manifest_digests`."""
RANK_RNG_FILE = "rng_state_rank{rank}.safetensors"
"""The random states of rank ``rank`` >= 1 (rank 0's are lerobot's ``rng_state.safetensors``)."""
LAST = "last"
BEST = "best"
_TMP_PREFIX = ".tmp-"


def step_dir_name(step: int) -> str:
    """``000123`` for step 123 (six digits, lerobot's convention; longer when needed)."""
    return f"{step:06d}"


def _fsync_tree(root: Path) -> None:
    """Flush every file and folder under ``root`` so that the rename that publishes it cannot precede the data."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _point_link(link: Path, target_name: str) -> None:
    """Atomically make ``link`` a relative symlink to ``target_name`` (a sibling folder)."""
    tmp = link.with_name(f"{_TMP_PREFIX}{link.name}-{os.getpid()}")
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    tmp.symlink_to(target_name)
    os.replace(tmp, link)
    _fsync_dir(link.parent)


@dataclass
class TrainingState:
    """Everything besides weights that an exact resume needs (stored in ``training_step.json``).

    ``epoch`` and ``batch`` are the position in the data order of the NEXT batch to train on, ``batch`` counting
    this shape's batches (``world_size`` processes x ``batch_size``). ``epoch_world_size``, ``epoch_batch_size`` and
    ``epoch_offset`` say how the epoch's order was dealt (``data.sampler.EpochOrigin``) when the run was resumed
    within it on another shape: ``batch`` then counts from ``epoch_offset`` samples into the epoch's global
    sequence as dealt by ``epoch_world_size`` x ``epoch_batch_size`` (None, None, 0: dealt with this shape).
    ``ema_decay`` and
    ``ema_steps``: the weight average's decay and updates so far (0 and 0 without ``--ema-decay``). ``best_metric``:
    the lowest validation score so far (named by ``best_metric_name``, reached at ``best_step``: the checkpoint
    ``best`` points to).
    """

    step: int
    epoch: int
    batch: int
    world_size: int
    batch_size: int
    grad_accum_steps: int
    wandb_run_id: str | None = None
    best_metric: float | None = None
    best_metric_name: str | None = None
    best_step: int | None = None
    ema_decay: float = 0.0
    ema_steps: int = 0
    epoch_world_size: int | None = None
    epoch_batch_size: int | None = None
    epoch_offset: int = 0


def save_checkpoint(
    run_dir: Path,
    state: TrainingState,
    write_pretrained: Callable[[Path], None],
    train_config: dict[str, Any],
    optimizer: Any,
    scheduler: Any,
    keep_last: int | None = None,
    raw_weights: Mapping[str, torch.Tensor] | None = None,
    rank_rng_states: Sequence[Mapping[str, torch.Tensor]] = (),
) -> Path:
    """Write ``checkpoints/<step>`` atomically and point ``checkpoints/last`` at it.

    Args:
        run_dir: the run folder.
        state: step and data-order position (``TrainingState``).
        write_pretrained: writes lerobot's policy files (the weights to serve) into the folder it is given
            (``policy.save_policy``, with the EMA weights swapped in when there are some).
        train_config: the resolved run config plus the data facts (state map, cameras, tasks); saved as YAML.
        optimizer, scheduler: torch optimizer and LR scheduler (saved with lerobot's safetensors/json helpers).
        keep_last: keep only the newest K step folders (never the ones ``last`` or ``best`` point to).
        raw_weights: ``{parameter name: tensor}``, the training weights when ``pretrained_model`` holds others (the
            EMA's): written to ``training_state/raw_weights.safetensors`` before ``write_pretrained`` runs, for
            :func:`load_raw_weights`.
        rank_rng_states: the random states of ranks 1, 2, ... (lerobot's ``serialize_rng_state()`` of each; the
            caller's own, rank 0's, are always saved), for :func:`load_training_state`.

    Each of the two folders gets a ``manifest.json`` (:func:`write_manifest`) after its other files, before the
    folder is flushed and renamed into place.

    Returns:
        The published checkpoint folder.
    """
    from lerobot.optim.optimizers import save_optimizer_state
    from lerobot.optim.schedulers import save_scheduler_state
    from lerobot.utils.random_utils import save_rng_state

    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    ckpt_root.mkdir(parents=True, exist_ok=True)
    for stale in ckpt_root.glob(f"{_TMP_PREFIX}*"):
        # Leftover of a write that was killed: never published, safe to drop.
        if stale.is_dir() and not stale.is_symlink():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)

    final = ckpt_root / step_dir_name(state.step)
    tmp = ckpt_root / f"{_TMP_PREFIX}{step_dir_name(state.step)}-{os.getpid()}"
    pretrained = tmp / PRETRAINED_DIR
    training = tmp / TRAINING_STATE_DIR
    pretrained.mkdir(parents=True)
    training.mkdir(parents=True)

    if raw_weights is not None:
        from safetensors.torch import save_file

        save_file({name: t.detach().contiguous().cpu() for name, t in raw_weights.items()},
                  str(training / RAW_WEIGHTS_FILE))
    write_pretrained(pretrained)
    (pretrained / TRAIN_CONFIG_FILE).write_text(yaml.safe_dump(train_config, sort_keys=False))
    (training / TRAINING_STEP_FILE).write_text(json.dumps(state.__dict__, indent=2))
    save_optimizer_state(optimizer, training)
    if scheduler is not None:
        save_scheduler_state(scheduler, training)
    save_rng_state(training)
    for rank, states in enumerate(rank_rng_states, start=1):
        from safetensors.torch import save_file

        save_file({k: v.contiguous().cpu() for k, v in states.items()}, str(training / RANK_RNG_FILE.format(rank=rank)))
    # Last, so that they cover every file; inside the temporary folder, so a published checkpoint always has them.
    contract = _contract_fingerprint((pretrained / TRAIN_CONFIG_FILE).read_text())
    write_manifest(pretrained, contract)
    write_manifest(training, contract)
    _fsync_tree(tmp)

    if final.exists():
        # Re-saving a step (a resumed run that reaches it again): move the old one aside first so that a crash
        # between the two renames still leaves a complete folder under one of the names.
        old = ckpt_root / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    _point_link(ckpt_root / LAST, final.name)
    if keep_last is not None:
        prune_checkpoints(ckpt_root, keep_last)
    return final


def mark_best(run_dir: Path, step: int) -> None:
    """Point ``checkpoints/best`` at the (already written) checkpoint of ``step``."""
    ckpt_root = Path(run_dir) / CHECKPOINTS_DIR
    _point_link(ckpt_root / BEST, step_dir_name(step))


def last_checkpoint_name(run_dir: str | Path) -> str | None:
    """The step folder name ``checkpoints/last`` points to (``"000120"``), or None when none was published. Reads the
    link only (safe from any thread: the stop watchdog of ``training.preemption`` names it)."""
    try:
        return os.readlink(Path(run_dir) / CHECKPOINTS_DIR / LAST)
    except OSError:
        return None


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete step folders under ``checkpoints/``, oldest first."""
    if not ckpt_root.is_dir():
        return []
    steps = [p for p in ckpt_root.iterdir() if p.is_dir() and not p.is_symlink() and p.name.isdigit()]
    return sorted(steps, key=lambda p: int(p.name))


def prune_checkpoints(ckpt_root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` step folders, sparing those ``last`` and ``best`` point to."""
    protected = {(ckpt_root / name).resolve() for name in (LAST, BEST) if (ckpt_root / name).is_symlink()}
    steps = list_checkpoints(ckpt_root)
    removed = []
    for path in steps[: max(0, len(steps) - max(keep_last, 1))]:
        if path.resolve() not in protected:
            shutil.rmtree(path)
            removed.append(path)
    return removed


def resolve_checkpoint(path: str | Path) -> Path:
    """Find a checkpoint folder (the one holding ``pretrained_model/``) from what a user typed.

    Accepts a run folder (-> ``checkpoints/last``), a ``checkpoints/`` folder (-> ``last``), a step folder, or a
    ``pretrained_model`` folder (-> its parent).

    Raises:
        CheckpointError: nothing there, or no complete checkpoint inside.
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise CheckpointError(f"{p}: no such checkpoint or run folder; pass a run folder or checkpoints/<step>")
    candidates = [p, p / LAST, p / CHECKPOINTS_DIR / LAST]
    if p.name == PRETRAINED_DIR:
        candidates.insert(0, p.parent)
    for c in candidates:
        if (c / PRETRAINED_DIR / "model.safetensors").is_file():
            found = c.resolve()
            verify_checkpoint(found)
            return found
    run = p if (p / CHECKPOINTS_DIR).is_dir() else p.parent if p.name == CHECKPOINTS_DIR else None
    older = newest_intact_checkpoint(run) if run is not None else None
    hint = f"; the newest intact checkpoint is {older}: pass it instead" if older else \
        "; train first or pass checkpoints/<step>"
    raise CheckpointError(
        f"{p}: no complete checkpoint found (expected {PRETRAINED_DIR}/model.safetensors in it, or in "
        f"checkpoints/last){hint}"
    )


def load_train_config(checkpoint: Path) -> dict[str, Any]:
    """The run config stored with a checkpoint (``pretrained_model/train_config.yaml``).

    Raises:
        CheckpointError: the file is missing (not a checkpoint of this project) or unreadable.
    """
    path = Path(checkpoint) / PRETRAINED_DIR / TRAIN_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path}: missing; this checkpoint was not written by smolvla-train (it needs {TRAIN_CONFIG_FILE} "
            "with the state map, cameras and image size)"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise damaged(path, checkpoint, _first_line(exc)) from None
    if not isinstance(data, dict):
        raise damaged(path, checkpoint, "not a mapping of sections")
    return data


def read_training_state(checkpoint: Path) -> TrainingState:
    """The step and data-order position of a checkpoint (``training_step.json``), nothing loaded.

    Raises:
        CheckpointError: ``training_state/`` is missing or damaged.
    """
    training = Path(checkpoint) / TRAINING_STATE_DIR
    step_file = training / TRAINING_STEP_FILE
    if not step_file.is_file():
        raise CheckpointError(f"{step_file}: missing; cannot resume from {checkpoint} (pick an older checkpoint)")
    verify_checkpoint(checkpoint, training_state=True)
    try:
        return TrainingState(**json.loads(step_file.read_text()))
    except (ValueError, TypeError) as exc:
        raise damaged(step_file, checkpoint, _first_line(exc)) from None


def load_training_state(checkpoint: Path, optimizer: Any, scheduler: Any, rank: int = 0
                        ) -> tuple[TrainingState, bool]:
    """Restore optimizer, scheduler and this rank's random states in place; return the step and data-order position,
    and whether random states were restored for ``rank``.

    Rank 0 restores ``rng_state.safetensors``, rank R >= 1 ``rng_state_rank<R>.safetensors``. A checkpoint written
    before per-rank states were saved holds one set, which every rank of the saving run restored: its ranks still
    do. A rank the saving run did not have restores nothing (False): the caller seeds it.

    Raises:
        CheckpointError: ``training_state/`` is missing or incomplete.
    """
    from lerobot.optim.optimizers import load_optimizer_state
    from lerobot.optim.schedulers import load_scheduler_state
    from lerobot.utils.random_utils import deserialize_rng_state, load_rng_state
    from safetensors.torch import load_file

    training = Path(checkpoint) / TRAINING_STATE_DIR
    state = read_training_state(checkpoint)
    own = training / RANK_RNG_FILE.format(rank=rank)
    legacy = state.world_size > 1 and not (training / RANK_RNG_FILE.format(rank=1)).is_file()
    try:
        load_optimizer_state(optimizer, training)
        if scheduler is not None:
            load_scheduler_state(scheduler, training)
        restored = True
        if rank == 0 or (legacy and rank < state.world_size):
            load_rng_state(training)
        elif own.is_file():
            deserialize_rng_state(load_file(str(own)))
        else:
            restored = False
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as exc:
        # Headers were checked above; this is a file whose tensors do not fit the optimizer it is loaded into.
        raise damaged(training, checkpoint, _first_line(exc)) from None
    return state, restored


def load_raw_weights(checkpoint: Path, module: torch.nn.Module) -> list[str] | None:
    """Copy ``training_state/raw_weights.safetensors`` (the training weights of a run with ``--ema-decay``, whose
    ``pretrained_model`` holds the averaged ones) into ``module``'s parameters of the same names, in place.

    Returns:
        The names loaded, or None when the checkpoint has no such file (its ``pretrained_model`` weights are the
        training weights).

    Raises:
        CheckpointError: the file is unreadable, or names a parameter the model does not have or of another shape.
    """
    import torch
    from safetensors.torch import load_file

    path = Path(checkpoint) / TRAINING_STATE_DIR / RAW_WEIGHTS_FILE
    if not path.is_file():
        return None
    try:
        tensors = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise damaged(path, checkpoint, _first_line(exc)) from None
    params = dict(module.named_parameters())
    for name, tensor in tensors.items():
        if name not in params or params[name].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: holds '{name}' {tuple(tensor.shape)}, which this model "
                f"{'does not have' if name not in params else f'has as {tuple(params[name].shape)}'}; resume with the "
                "run's own policy options (train_config.yaml)")
    with torch.no_grad():
        for name, tensor in tensors.items():
            params[name].copy_(tensor)
    return list(tensors)


# --- integrity ------------------------------------------------------------------------------------------------

_PARSED_SUFFIXES = (".safetensors", ".json", ".yaml", ".yml")
"""Files a loader parses (lerobot's and this project's): their headers are checked, and one of them that a manifest
does not list is refused (it was added after the write, and a loader could read it)."""
_DIGESTS: dict[tuple[int, int, int, int, int], str] = {}
"""File digests computed by verification in this process, keyed by (device, inode, size, mtime, ctime): a resume or
a load verifies a folder several times (resolve, resume checks, load) but hashes each unchanged file once."""
_ANNOUNCED_UNVERIFIED: set[str] = set()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _check_file(path: Path) -> str | None:
    """Why ``path`` cannot be read as what its suffix says, or None when it parses (cheap: headers only)."""
    from safetensors import safe_open

    try:
        if path.suffix == ".safetensors":
            # safetensors checks the header and that the file covers every tensor's byte range: a truncated file,
            # random bytes or an empty file fail here without reading the tensors.
            with safe_open(str(path), framework="numpy") as f:
                f.keys()
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix in (".yaml", ".yml"):
            yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError, yaml.YAMLError, SafetensorError) as exc:
        return _first_line(exc)
    return None


def file_digest(path: str | Path, remember: bool = True) -> str:
    """Hex :data:`DIGEST` (SHA-256) of a file's bytes, read in 256 KiB blocks (``hashlib.file_digest``).

    ``remember``: reuse / keep the result for this process while the file's inode, size, mtime and ctime are
    unchanged (verification; writing a manifest always hashes afresh).
    """
    path = Path(path)
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if remember and key in _DIGESTS:
        return _DIGESTS[key]
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, DIGEST).hexdigest()
    if remember:
        _DIGESTS[key] = digest
    return digest


def manifest_digests(paths: list[Path], remember: bool = True) -> list[str]:
    """:func:`file_digest` of each path, several files at once (hashlib and file reads release the GIL).

    Cost: one read of every byte at SHA-256 speed, 1.43 GB/s on one idle core with the SHA extensions (x86 SHA-NI;
    measured on this project's 2-core VM). The full-size ``smolvla_base`` stand-in's ``pretrained_model`` (1.8 GB,
    from the page cache, each time a fresh process, the VM shared with other jobs at load average 3-8) verified in
    1.7-4.4 s (its manifest written in 1.6 s), where ``SmolVLAPolicy.from_pretrained`` took 37 s to load it; a
    full-size checkpoint (2.5 GB with its training state) costs ~1.8 s at the idle-core rate, less with its two large
    files hashed in parallel.
    """
    if len(paths) <= 1:
        return [file_digest(p, remember) for p in paths]
    with ThreadPoolExecutor(max_workers=min(len(paths), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(lambda p: file_digest(p, remember), paths))


def _contract_fingerprint(train_config_text: str) -> dict[str, Any] | None:
    """The fingerprint (``ContractFingerprint.to_dict()``) of the ``inputs`` section of a ``train_config.yaml``'s
    text as written, or None when it has none (a config that is not a checkpoint's)."""
    from behavior_smolvla.inputs import ContractFingerprint

    data = yaml.safe_load(train_config_text)
    section = data.get("inputs") if isinstance(data, dict) else None
    return ContractFingerprint.of(section).to_dict() if section is not None else None


def write_manifest(folder: Path, inputs: Mapping[str, Any] | None) -> Path:
    """Write ``folder/manifest.json``: every other file under ``folder`` (relative POSIX path -> ``bytes`` and
    ``sha256``) and ``inputs``, the input contract's fingerprint (``ContractFingerprint.to_dict()``, or None).

    Called by :func:`save_checkpoint` on the temporary folder, after every other file is written.
    """
    paths = sorted(p for p in folder.rglob("*") if p.is_file() and p != folder / MANIFEST_FILE)
    digests = manifest_digests(paths, remember=False)
    manifest = {
        "format": MANIFEST_FORMAT,
        "algorithm": DIGEST,
        "inputs": dict(inputs) if inputs is not None else None,
        "files": {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, DIGEST: d}
                  for p, d in zip(paths, digests, strict=True)},
    }
    out = folder / MANIFEST_FILE
    out.write_text(json.dumps(manifest, indent=2))
    return out


def _read_manifest(folder: Path, checkpoint: Path) -> dict[str, Any] | None:
    """``folder``'s manifest, checked for shape, or None when the folder has none.

    Raises:
        CheckpointError: unreadable, not a manifest, or a newer format.
    """
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise damaged(path, checkpoint, _first_line(exc)) from None
    if isinstance(manifest, dict) and isinstance(manifest.get("format"), int) \
            and manifest["format"] > MANIFEST_FORMAT:
        raise CheckpointError(f"{path}: manifest format {manifest['format']}, this behavior-smolvla reads format "
                              f"{MANIFEST_FORMAT}; use the behavior-smolvla version that wrote the checkpoint")
    files = manifest.get("files") if isinstance(manifest, dict) else None
    well_formed = (
        isinstance(files, dict) and manifest.get("format") == MANIFEST_FORMAT and manifest.get("algorithm") == DIGEST
        and all(isinstance(e, dict) and isinstance(e.get("bytes"), int) and isinstance(e.get(DIGEST), str)
                # a listed name leads inside the folder only (never an absolute path or "..")
                and not Path(n).is_absolute() and ".." not in Path(n).parts for n, e in files.items())
        and (manifest.get("inputs") is None or isinstance(manifest.get("inputs"), dict)))
    if not well_formed:
        raise damaged(path, checkpoint, "not a checkpoint manifest (format, algorithm, files, inputs)")
    return manifest


def _check_contract(train_config: Path, manifest: Mapping[str, Any], manifest_path: Path, checkpoint: Path) -> None:
    """Refuse a ``train_config.yaml`` whose ``inputs`` section is not the one the manifest was written for, naming the
    fields that differ."""
    from behavior_smolvla.inputs import ContractFingerprint

    if manifest.get("inputs") is None:
        return
    try:
        saved = ContractFingerprint.from_dict(manifest["inputs"])
    except ValueError as exc:
        raise damaged(manifest_path, checkpoint, str(exc)) from None
    if not train_config.is_file():
        return  # reported as a missing listed file, or by load_train_config
    data = yaml.safe_load(train_config.read_text())  # parses: checked with the other files first
    section = data.get("inputs") if isinstance(data, dict) else None
    current = ContractFingerprint.of(section)
    if current.sha256 == saved.sha256:
        return
    recorded = f"{manifest_path.parent.name}/{MANIFEST_FILE}: inputs {saved.sha256[:12]}"
    if section is None:
        what = f"its 'inputs' section is gone, but the weights and training state were written with one ({recorded})"
    else:
        fields = ", ".join(f"inputs.{f}" for f in saved.differing_fields(current))
        what = (f"its input contract differs in {fields} from the one the weights and training state were written "
                f"with ({recorded}, the file now {current.sha256[:12]})")
    raise CheckpointError(
        f"{train_config}: {what}; a checkpoint's inputs cannot change: restore the section, or train on new inputs "
        f"as a new run from these weights (--policy-path {train_config.parent})")


def _check_listed_files(folder: Path, checkpoint: Path, manifest: Mapping[str, Any],
                        names: tuple[str, ...] | None = None) -> None:
    """Every file the manifest lists (or only ``names`` of them) is there, of its size and digest; no parsed file was
    added after it."""
    listed: dict[str, Any] = manifest["files"]
    if names is None:
        for path in sorted(folder.rglob("*")):
            name = path.relative_to(folder).as_posix()
            if (path.is_file() and path.suffix in _PARSED_SUFFIXES and name != MANIFEST_FILE
                    and name not in listed):
                raise damaged(path, checkpoint, f"added after the checkpoint was written: its {MANIFEST_FILE} does "
                                                "not list it; remove it")
    wanted = sorted(listed) if names is None else sorted(n for n in names if n in listed)
    for name in wanted:
        path, entry = folder / name, listed[name]
        if not path.is_file():
            raise damaged(path, checkpoint, f"missing; {MANIFEST_FILE} lists it")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise damaged(path, checkpoint, f"changed after the checkpoint was written: {size} bytes, "
                                            f"{entry['bytes']} in its {MANIFEST_FILE}")
    digests = manifest_digests([folder / name for name in wanted])
    for name, digest in zip(wanted, digests, strict=True):
        if digest != listed[name][DIGEST]:
            raise damaged(folder / name, checkpoint, f"changed after the checkpoint was written: same size, but "
                                                     f"its {DIGEST} differs from its {MANIFEST_FILE}")


def _announce_unverified(checkpoint: Path) -> None:
    """One warning line per checkpoint and process for a checkpoint written before manifests."""
    key = str(Path(checkpoint).resolve())
    if key not in _ANNOUNCED_UNVERIFIED:
        _ANNOUNCED_UNVERIFIED.add(key)
        logger.warning("%s: unverified: written before checkpoints had a %s (no checksums, no input-contract "
                       "fingerprint); loading it as it is", checkpoint, MANIFEST_FILE)


def verify_checkpoint(checkpoint: str | Path, training_state: bool = False, announce: bool = True) -> None:
    """Check a checkpoint's files against what was written: every file parses (safetensors headers and sizes, JSON,
    YAML); with a manifest (every checkpoint since manifests exist), ``train_config.yaml``'s input contract has the
    recorded fingerprint and every listed file its size and SHA-256.

    Cost: the headers take milliseconds; the checksums one read of every byte (:func:`manifest_digests`), once per
    file and process.

    Args:
        checkpoint: a step folder (holding ``pretrained_model/``).
        training_state: also check ``training_state/`` (what ``--resume`` reads).
        announce: log one "unverified" warning for a checkpoint without a manifest (once per process).

    Raises:
        CheckpointError: naming the first damaged file and the newest intact older checkpoint of the run, or, for an
            edited input contract, ``train_config.yaml`` and the fields that differ.
    """
    root = Path(checkpoint)
    pretrained, training = root / PRETRAINED_DIR, root / TRAINING_STATE_DIR
    _verify_folder(pretrained, root, pretrained / TRAIN_CONFIG_FILE, announce)
    if training_state:
        if (pretrained / MANIFEST_FILE).is_file() and training.is_dir() and not (training / MANIFEST_FILE).is_file():
            raise damaged(training / MANIFEST_FILE, root, f"missing, but {PRETRAINED_DIR} has one")
        _verify_folder(training, root, pretrained / TRAIN_CONFIG_FILE, announce=False)


def verify_policy_folder(folder: str | Path) -> None:
    """:func:`verify_checkpoint` for one ``pretrained_model`` folder (also one outside a run).

    Raises:
        CheckpointError: naming the damaged file (and, inside a run, the newest intact older checkpoint).
    """
    folder = Path(folder)
    _verify_folder(folder, folder.parent if folder.name == PRETRAINED_DIR else folder, folder / TRAIN_CONFIG_FILE)


def verify_weights(folder: str | Path) -> None:
    """Check the weights a new run starts from (``--policy-path``): ``config.json`` and ``model.safetensors``
    against the folder's manifest when it has one (a checkpoint of this project); nothing else, since a new run
    reads nothing else (its input contract is its own). A folder without a manifest (a hub snapshot) passes.

    Raises:
        CheckpointError: naming the damaged file.
    """
    folder = Path(folder)
    checkpoint = folder.parent if folder.name == PRETRAINED_DIR else folder
    manifest = _read_manifest(folder, checkpoint)
    if manifest is not None:
        _check_listed_files(folder, checkpoint, manifest, names=("config.json", "model.safetensors"))


def _verify_folder(folder: Path, checkpoint: Path, train_config: Path, announce: bool = True) -> None:
    if not folder.is_dir():
        return
    # Headers first (milliseconds): a truncated file is named with its parser's complaint before anything is hashed.
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in _PARSED_SUFFIXES:
            reason = _check_file(path)
            if reason is not None:
                raise damaged(path, checkpoint, reason)
    manifest = _read_manifest(folder, checkpoint)
    if manifest is None:
        if announce:
            _announce_unverified(checkpoint)
        return
    # The contract before the checksums: an edited inputs section is named by field, not as a changed file.
    _check_contract(train_config, manifest, folder / MANIFEST_FILE, checkpoint)
    _check_listed_files(folder, checkpoint, manifest)


def _is_intact(checkpoint: Path) -> bool:
    try:
        verify_checkpoint(checkpoint, training_state=True, announce=False)
    except CheckpointError:
        return False
    return (checkpoint / PRETRAINED_DIR / "model.safetensors").is_file() and (
        checkpoint / TRAINING_STATE_DIR / TRAINING_STEP_FILE).is_file()


def newest_intact_checkpoint(run_dir: str | Path, before: int | None = None) -> Path | None:
    """The newest step folder of ``run_dir`` that passes :func:`verify_checkpoint` (with the training state: files
    parse, and match their manifest), among steps below ``before`` (None: all); None when there is none."""
    for path in reversed(list_checkpoints(Path(run_dir) / CHECKPOINTS_DIR)):
        if (before is None or int(path.name) < before) and _is_intact(path):
            return path
    return None


def damaged(path: Path, checkpoint: Path, reason: str) -> CheckpointError:
    """The one-line error for a damaged checkpoint file: the file, why, and the newest intact older checkpoint."""
    checkpoint = Path(checkpoint)
    hint = "; no intact older checkpoint in this run"
    if checkpoint.name.isdigit() and checkpoint.parent.name == CHECKPOINTS_DIR:
        older = newest_intact_checkpoint(checkpoint.parent.parent, before=int(checkpoint.name))
        if older is not None:
            hint = f"; the newest intact older checkpoint is {older}: pass it to --resume or --checkpoint"
    return CheckpointError(f"{path}: damaged ({reason}){hint}")
