"""Command-line entry points. Each function here only parses flags and calls a library function.

Console scripts (pyproject.toml): ``smolvla-inspect``, ``smolvla-filter-state``, ``smolvla-train``, ``smolvla-eval``,
``smolvla-serve``; the top-level ``cli.py`` in a checkout groups them as sub-commands (``python cli.py train ...``).
A :class:`~behavior_smolvla.errors.BehaviorSmolVLAError` is printed as one red line and exits with code 2.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from behavior_smolvla.errors import BehaviorSmolVLAError, unwrap_worker_error
from behavior_smolvla.serving.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MESSAGE_MB,
    DEFAULT_MAX_QUEUED_REQUESTS,
)

err_console = Console(stderr=True)

# The inference strategy's flags (smolvla-eval, smolvla-serve; smolvla-train's --eval-noise / --eval-num-samples).
# Their default is Inference()'s (behavior_smolvla.policy.inference), given there only.
NOISE_HELP = ("Initial flow-matching noise: sample (random draws; the default, averaged over --num-samples) or zero "
              "(one deterministic chunk). One draw is a random sample of the policy's action distribution, not its "
              "typical chunk.")
NUM_SAMPLES_HELP = ("With --noise sample: average this many draws per chunk, in one batched model call (default 8; "
                    "1 = one draw, lerobot's own behaviour).")

# Sub-command name -> Typer app, for ``python cli.py <name>``; each section below registers its own.
_SUBCOMMANDS: dict[str, typer.Typer] = {}


def _friendly_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a project error into a one-line message and exit code 2 (no traceback: the message says the fix)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except BehaviorSmolVLAError as exc:
            # markup=False for the message: paths and shapes such as "[4, 23]" must print as they are.
            err_console.print("[bold red]error:[/] ", end="", highlight=False)
            err_console.print(str(unwrap_worker_error(exc)), highlight=False, soft_wrap=True, markup=False)
            raise typer.Exit(code=2) from None

    return wrapper


def _refuse_empty(flags: dict[str, str | None]) -> None:
    """An option given as an empty string is an error, never "not given" (``smolvla-train`` checks its own in
    ``config.check_no_empty_values``).

    Raises:
        ConfigError: naming the first such flag.
    """
    from behavior_smolvla.errors import ConfigError

    for flag, value in flags.items():
        if value is not None and not value.strip():
            raise ConfigError(f"{flag} {value!r}: empty; give it a value or leave the option out")


def _single_command_app(command: Callable[..., Any], help_text: str) -> typer.Typer:
    # Plain click help (rich_markup_mode=None): rich's option table cut long flag names ("--dataset-path,--d…") at
    # 80 columns, while click puts a long name on its own line and wraps the help under it.
    app = typer.Typer(add_completion=False, help=help_text, rich_markup_mode=None,
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.command()(_friendly_errors(command))
    return app


# --- smolvla-inspect -------------------------------------------------------------------------------------------


def inspect_command(
    dataset: str = typer.Argument(..., help="LeRobot dataset folder (v3.0, v2.1, BEHAVIOR 2025/2026 layouts)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout instead of tables."),
    probe_files: int = typer.Option(
        8, "--probe-files", min=0,
        help="Video files measured per camera (and data files whose rows are counted), spread over the dataset; "
             "0 = every file. Existence is checked for every file."),
    state_key: str = typer.Option(
        None, "--state-key", help="Feature to describe as the state (default: observation.state where present; a key "
                                  "given that the dataset lacks is a problem)."),
    action_key: str = typer.Option(
        None, "--action-key", help="Feature to describe as the action (default: action where present)."),
    verify: bool = typer.Option(
        False, "--verify", help="Decode every frame of every video (parallel over files) and check the stored "
                                "per-episode statistics against the data; lists each damaged file."),
    jobs: int = typer.Option(None, "--jobs", min=1, help="Files decoded in parallel by --verify (default: cores)."),
) -> None:
    """Report a dataset: format, fps, episodes, frames, tasks, state/action features, each camera as measured in
    its mp4 files (size, codec, keyframe interval, frames), and missing or unreadable files (exit code 1)."""
    import json

    from behavior_smolvla.data.inspect import inspect_dataset, print_report

    _refuse_empty({"--state-key": state_key, "--action-key": action_key})

    report = inspect_dataset(dataset, probe_files=probe_files or None, state_key=state_key, action_key=action_key,
                             verify=verify, jobs=jobs, console=err_console)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
    else:
        print_report(report, Console())
    if report["problems"]:
        raise typer.Exit(code=1)


inspect_app = _single_command_app(inspect_command, "Report what a LeRobot dataset holds (smolvla-inspect).")
_SUBCOMMANDS["inspect"] = inspect_app

# --- smolvla-filter-state --------------------------------------------------------------------------------------


def _legal_label(state_map: Any) -> str:
    if state_map.layout == "any":
        return "n/a (layout any)"
    return "yes" if state_map.is_standard_track_legal() else "no"


def _dim_label(dim: int | None) -> str:
    return "= input" if dim is None else str(dim)  # None: a layout-any map, resolved per dataset


def _dim_runs(dims: list[Any]) -> str:
    """``joint_qpos.0..5 (0:6), robot_pos.0..2 (140:143)``: output dims grouped into runs of one block."""
    runs: list[list[Any]] = []
    for d in dims:
        prev = runs[-1][-1] if runs else None
        if (prev is not None and not d.reduce and not prev.reduce and d.sources[0] == prev.sources[0] + 1
                and d.name.rpartition(".")[0] == prev.name.rpartition(".")[0]):
            runs[-1].append(d)
        else:
            runs.append([d])
    parts = []
    for run in runs:
        if len(run) == 1:
            parts.append(f"{run[0].name} ({run[0].source_label})")
        else:
            parts.append(f"{run[0].name}..{run[-1].name.rpartition('.')[2]} "
                         f"({run[0].sources[0]}:{run[-1].sources[0] + 1})")
    return ", ".join(parts)


def _print_state_map_list(as_json: bool) -> None:
    import json
    import textwrap

    from rich.table import Table

    from behavior_smolvla.state_maps.maps import list_state_maps

    maps = list_state_maps()
    if as_json:
        rows = [{"name": m.name, "layout": m.layout, "input_dim": m.input_dim, "output_dim": m.output_dim,
                 "standard_track_legal": m.is_standard_track_legal(), "description": m.description, "path": m.path}
                for m in maps]
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="shipped state maps (use --map NAME, or --map FILE.yaml for your own)")
    for col in ("name", "layout", "in", "out", "std-track legal", "description"):
        table.add_column(col, overflow="fold")
    for m in maps:
        summary = textwrap.shorten(m.description, 110, placeholder=" ...")
        table.add_row(m.name, m.layout, _dim_label(m.input_dim), _dim_label(m.output_dim), _legal_label(m), summary)
    Console(width=max(Console().width, 140)).print(table)


def _print_state_map_report(report: Any) -> None:
    from rich.table import Table

    m = report.state_map
    out = Console(width=max(Console().width, 120))
    out.print(f"[bold]{m.name}[/]  layout {m.layout}, {m.input_dim or 'any'} -> {m.output_dim or '= input'} dims, "
              f"standard-track legal: {_legal_label(m)}\n{m.description}\n[dim]{m.path}[/]", highlight=False)
    if m.has_velocity:
        out.print(m.describe_velocity(), highlight=False, markup=False)
    if not m.is_bound:
        out.print("layout any: the dims are resolved against a dataset's state; pass --dataset PATH to list them")
        return
    title = None
    if report.stats is not None:
        title = (f"{report.dataset}: {len(report.episodes)} episodes, {report.frames} frames "
                 f"(stats: {report.stats_source})")
    table = Table(title=title)
    columns = ["out", "name", "source", "group", "std track", "flags"]
    if report.stats is not None:
        columns[5:5] = ["mean", "std", "min", "max"]
    for col in columns:
        table.add_column(col, justify="right" if col in ("out", "mean", "std", "min", "max") else "left")
    constant = set(report.constant)
    for d in m.dims:
        flags = []
        if d.index in constant:
            flags.append("[yellow]constant[/]")
        if d.unreliable:
            flags.append("[red]unreliable[/]")
        source = m.describe_dim(d)
        legal = {True: "allowed", False: "[red]FORBIDDEN[/]", None: "?"}[d.standard_track]
        row = [str(d.index), d.name, source, d.group, legal]
        if report.stats is not None:
            row += [f"{report.stats[k][d.index]:.4g}" for k in ("mean", "std", "min", "max")]
        table.add_row(*row, " ".join(flags))
    out.print(table)
    unreliable = [d for d in m.dims if d.unreliable]
    if unreliable:
        out.print(f"[red]unreliable[/] ({len(unreliable)} dims): {unreliable[0].unreliable}", highlight=False)
    if report.stats is not None and report.constant:
        out.print(f"[yellow]constant[/] ({len(report.constant)} dims with std < 1e-6 over these episodes): they carry "
                  "no information; consider a map without them", highlight=False)


def filter_state_command(
    state_map: str = typer.Option(
        None, "--map", "-m", help="A shipped state map name (see --list) or a YAML map file."),
    list_maps: bool = typer.Option(
        False, "--list", help="List every shipped map: layout, input/output dims, legality."),
    dataset: str = typer.Option(
        None, "--dataset", "--dataset-path",
        help="LeRobot dataset folder: add per-dim mean/std/min/max of the mapped state (default map: by state dim)."),
    episodes: str = typer.Option(
        None, "--episodes", help="Episodes for the stats, e.g. '0-39,45' (default: all)."),
    state_key: str = typer.Option(
        "observation.state", "--state-key", help="With --dataset: the feature read as the state."),
    action_key: str = typer.Option("action", "--action-key", help="With --dataset: the feature read as the action."),
    frame_stride: int = typer.Option(
        1, "--frame-stride", help="With --dataset: frames per policy step, as in training (a velocity entry's lag "
                                  "of k steps spans k x stride frames)."),
    check_standard_track: bool = typer.Option(
        False, "--check-standard-track",
        help="Exit 1 and list the offending dims if the map reads a dim the BEHAVIOR standard track forbids."),
    as_json: bool = typer.Option(
        False, "--json", help="Print JSON (name, layout, input_dim, output_dim, source_indices, names, "
                              "standard_track_legal, ...) instead of tables."),
) -> None:
    """Choose, inspect and check the R1Pro proprioception a policy sees (state maps)."""
    import json

    from behavior_smolvla.state_maps.report import state_map_report

    if list_maps:
        _print_state_map_list(as_json)
        return
    report = state_map_report(state_map, dataset=dataset, episodes=episodes, state_key=state_key,
                              action_key=action_key, frame_stride=frame_stride)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _print_state_map_report(report)
    if check_standard_track:
        m = report.state_map
        verdict = err_console if as_json else Console()  # keep stdout pure JSON with --json
        if m.is_standard_track_legal():
            verdict.print(f"[green]standard track: {m.name} is legal[/] (reads only allowed dims)", highlight=False)
            return
        if m.layout == "any":
            verdict.print(f"[red]standard track: {m.name} has layout any[/]: legality is only defined against an "
                          "R1Pro layout; use an r1pro-* map", highlight=False)
        else:
            bad = m.standard_track_violations()
            listed = _dim_runs(bad)
            verdict.print(f"[red]standard track: {m.name} reads {len(bad)} forbidden dims[/]: {listed}",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(code=1)


filter_state_app = _single_command_app(
    filter_state_command, "List, inspect and check R1Pro state maps (smolvla-filter-state)."
)
_SUBCOMMANDS["filter-state"] = filter_state_app

# --- smolvla-train ---------------------------------------------------------------------------------------------


def _opt(default: Any, *names: str, help: str, **kw: Any) -> Any:
    """A Typer option. The seed project's snake_case spellings (``--max_steps``) are accepted too: the argument
    list is rewritten to dashes before parsing (:func:`_normalise_argv`), which keeps them out of ``--help``, where
    they made the flag column too wide for 80 columns."""
    return typer.Option(default, *names, help=help, **kw)


def train_command(
    dataset_path: str = _opt(None, "--dataset-path", help="LeRobot dataset folder (v3.0 or v2.1, BEHAVIOR 2025/2026)."),
    episodes: str = _opt(None, "--episodes", help="Training episodes, e.g. '0-39,45' (default: all but --val-episodes)."),
    val_episodes: str = _opt(None, "--val-episodes", help="Held-out episodes, never trained on."),
    tasks: str = _opt(None, "--tasks", help="Train on these task indices only, e.g. '0-49' or '6' (see smolvla-inspect)."),
    task_balanced: bool = _opt(None, "--task-balanced", help="Sample every task equally often per epoch."),
    state_key: str = _opt(None, "--state-key", help="Dataset feature read as the state (observation.state)."),
    action_key: str = _opt(None, "--action-key", help="Dataset feature read as the action (action)."),
    cameras: str = _opt(None, "--cameras", help="Comma-separated camera keys in policy order (default by layout)."),
    image_size: int = _opt(None, "--image-size", help="Square image side SmolVLA resizes-with-padding to (512)."),
    frame_stride: int = _opt(None, "--frame-stride", help="Use every n-th frame (3: 30 Hz -> 10 Hz)."),
    sample_stride: int = _opt(None, "--sample-stride", help="Training: a chunk starts every n frames (default: --frame-stride; 1: every frame)."),
    num_workers: int = _opt(None, "--num-workers", help="DataLoader workers per process (2)."),
    state_map: str = _opt(None, "--state-map", help="State map name or YAML file (default by state dim)."),
    filter_state: bool = _opt(None, "--filter-state", help="Use the standard-track state map (r1pro-2025-standard, 217 dims)."),
    cache_dir: str = _opt(None, "--cache-dir", help="Numeric cache folder (default beside the Hugging Face cache)."),
    state_dim: int = _opt(None, "--state-dim", help="SmolVLA max_state_dim (state zero-padded to it)."),
    policy_path: str = _opt(None, "--policy-path", help="Hub id or local pretrained_model folder (lerobot/smolvla_base)."),
    from_scratch: bool = _opt(None, "--from-scratch", help="Build a fresh SmolVLA around --vlm-model."),
    vlm_model: str = _opt(None, "--vlm-model", help="VLM backbone hub id or local folder (with --from-scratch)."),
    chunk_size: int = _opt(None, "--chunk-size", "--action-horizon", help="Actions per predicted chunk (50)."),
    n_action_steps: int = _opt(None, "--n-action-steps", help="Actions executed per chunk (default: chunk size)."),
    train_expert_only: bool = _opt(None, "--train-expert-only/--no-train-expert-only", help="Freeze the VLM (default: on, off with --from-scratch)."),
    freeze_vision_encoder: bool = _opt(None, "--freeze-vision-encoder/--no-freeze-vision-encoder", help="Freeze the vision encoder (default: on)."),
    batch_size: int = _opt(None, "--batch-size", help="Samples per step per process (8)."),
    max_steps: int = _opt(None, "--max-steps", help="Optimizer steps (this or --num-epochs is required)."),
    num_epochs: int = _opt(None, "--num-epochs", help="Passes over the training episodes."),
    lr: float = _opt(None, "--lr", "--learning-rate", help="Peak learning rate (1e-4)."),
    warmup_steps: int = _opt(None, "--warmup-steps", help="Warm-up steps of the cosine schedule (1000)."),
    decay_steps: int = _opt(None, "--decay-steps", help="Cosine decay length in steps (30000)."),
    decay_lr: float = _opt(None, "--decay-lr", help="Learning rate at the end of the decay (2.5e-6)."),
    weight_decay: float = _opt(None, "--weight-decay", help="AdamW weight decay (1e-10)."),
    grad_accum_steps: int = _opt(None, "--grad-accum-steps", help="Micro-batches per optimizer step (1)."),
    grad_clip_norm: float = _opt(None, "--grad-clip-norm", help="Gradient-norm clip (10; 0 disables)."),
    precision: str = _opt(None, "--precision", help="auto (bf16 on CUDA, fp32 on CPU), bf16, fp16, fp32."),
    seed: int = _opt(None, "--seed", help="Seed for data order, augmentation, init and noise (1000)."),
    device: str = _opt(None, "--device", help="auto, cpu, cuda, cuda:N, mps."),
    image_aug: bool = _opt(None, "--image-aug", help="lerobot's image augmentation (colour, sharpness, small affine; <= 3 per frame)."),
    verify_data: bool = _opt(None, "--verify-data", help="Decode every frame of the selected videos and checksum every numeric cache file first."),
    drop_nonfinite: bool = _opt(None, "--drop-nonfinite", help="Drop episode tails from a NaN/inf state or action (else refused)."),
    recompute_stats: bool = _opt(None, "--recompute-stats", help="Recompute state/action statistics from the data."),
    action_mode: str = _opt(None, "--action-mode", help="absolute (as recorded) or delta (minus the joint's current state)."),
    action_norm: str = _opt(None, "--action-norm", help="global or per-step (default: per-step in delta mode)."),
    action_reference: str = _opt(None, "--action-reference", help="YAML: action dim -> raw-state dim (delta reference)."),
    ema_decay: float = _opt(None, "--ema-decay", help="Average the trained weights (e.g. 0.999); checkpoints serve the average; 0: off."),
    reschedule: bool = _opt(None, "--reschedule", help="On --resume with another --max-steps: rebuild the lr schedule."),
    output_dir: str = _opt(None, "--output-dir", help="Run folder (default outputs/<date>/<time>_<run-name>)."),
    run_name: str = _opt(None, "--run-name", help="Run name for the default folder and wandb."),
    save_steps: int = _opt(None, "--save-steps", help="Checkpoint every n steps (1000) and at the end."),
    keep_last: int = _opt(None, "--keep-last", help="Keep only the newest K checkpoints."),
    resume: str = _opt(None, "--resume", help="Run folder or checkpoint to resume ('--resume' alone: --output-dir)."),
    stop_timeout: float = _opt(None, "--stop-timeout", help="Seconds after SIGTERM/SIGINT to stop, checkpoint and exit (60); past them: exit 124."),
    reshard: bool = _opt(None, "--reshard", help="On --resume with another effective batch: start the next epoch with it."),
    log_steps: int = _opt(None, "--log-steps", help="Log every n steps (10)."),
    eval_steps: int = _opt(None, "--eval-steps", help="Validate on --val-episodes every n steps."),
    eval_max_frames: int = _opt(None, "--eval-max-frames", help="Held-out frames per validation (64)."),
    eval_noise: str = _opt(None, "--eval-noise", help="Validation chunks: sample (default) or zero (see smolvla-eval --noise)."),
    eval_num_samples: int = _opt(None, "--eval-num-samples", help="Validation chunks: with --eval-noise sample, draws averaged (8)."),
    wandb_project: str = _opt(None, "--wandb-project", help="Weights & Biases project (behavior-smolvla)."),
    wandb_entity: str = _opt(None, "--wandb-entity", help="Weights & Biases entity."),
    wandb_run_name: str = _opt(None, "--wandb-run-name", help="Weights & Biases run name."),
    wandb_tags: str = _opt(None, "--wandb-tags", help="Comma-separated tags."),
    wandb_mode: str = _opt(None, "--wandb-mode", help="online (offline without credentials), offline, disabled."),
    wandb_disable: bool = _opt(None, "--wandb-disable", help="Do not use Weights & Biases."),
    log_data_order: bool = _opt(None, "--log-data-order", help="Write each process's samples to <run>/data_order/ (JSONL)."),
    config: str = _opt(None, "--config", help="YAML file of options; command-line flags override it."),
    demo: bool = _opt(None, "--demo", help="Built-in demo: synthetic BEHAVIOR data + tiny backbone, CPU, minutes."),
) -> None:
    """Train lerobot's SmolVLA on a LeRobot / BEHAVIOR dataset, with checkpoints, exact resume and wandb."""
    values = {k: v for k, v in locals().items() if k != "config"}
    from behavior_smolvla.config import early_config, load_config_file, validate_config

    early = early_config(config, values)
    if not early.demo and not early.output.resume:
        # Flag errors in half a second, before torch is imported (build_training validates again, also after the
        # demo's and a resumed run's settings are filled in).
        validate_config(early)
    from behavior_smolvla.training.build import config_for_run
    from behavior_smolvla.training.loop import train

    cfg = config_for_run(config, values)
    given = {k for k, v in values.items() if v is not None}
    if config:
        given |= {str(k).replace("-", "_") for k in load_config_file(config)}
    # The default run folder has a timestamp: new by construction (train() sets output_dir to it).
    default_dir = cfg.output.output_dir is None
    created = None if default_dir else _first_missing(cfg.output.output_dir)
    try:
        result = train(cfg, given=given)
    except BaseException:
        if default_dir and cfg.output.output_dir:
            created = Path(cfg.output.output_dir).absolute()
        _remove_unfinished_run(created, cfg.output.output_dir)
        raise
    if not result.is_main_process:
        return
    out = Console()
    last = result.last_checkpoint
    out.print(f"\n[bold green]checkpoints:[/] {last.parent}  (last -> {last.resolve().name})", highlight=False, soft_wrap=True)
    out.print("[bold]next:[/]", highlight=False)
    out.print(f"  smolvla-train --resume {result.run_dir} --max-steps {result.steps * 2}   # train further", highlight=False, soft_wrap=True)
    held_out = cfg.data.val_episodes or "<held-out episodes>"
    out.print(f"  smolvla-eval --checkpoint {last} --dataset-path {cfg.data.dataset_path} --episodes {held_out}", highlight=False, soft_wrap=True)
    out.print(f"  smolvla-serve --checkpoint {last}   # websocket server for the BEHAVIOR evaluator", highlight=False, soft_wrap=True)


def _first_missing(path: str) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what a run would create), or None."""
    missing = None
    p = Path(path).absolute()
    while not p.exists() and p.parent != p:
        missing, p = p, p.parent
    return missing


def _remove_unfinished_run(created: Path | None, run_dir: str | None) -> None:
    """After a failed run: remove the folders it created when no checkpoint was published in them, so that a run
    that fails before its first checkpoint leaves no empty run folder behind (a folder that existed is kept)."""
    import shutil

    from behavior_smolvla.policy.checkpoint import CHECKPOINTS_DIR, list_checkpoints

    if created is None or run_dir is None or not created.is_dir():
        return
    run = Path(run_dir).absolute()
    if run != created and created not in run.parents:
        return
    if list_checkpoints(run / CHECKPOINTS_DIR):
        return
    shutil.rmtree(created, ignore_errors=True)


def _normalise_resume_flag(argv: list[str]) -> list[str]:
    """``--resume`` with no value means "resume the run in --output-dir": give it the value ``auto``. Flags spelt in
    snake_case (``--max_steps 5``, ``--max_steps=5``) become their dashed names."""
    out = []
    argv = [_dashed(arg) for arg in argv]
    for i, arg in enumerate(argv):
        out.append(arg)
        if arg == "--resume" and (i + 1 == len(argv) or argv[i + 1].startswith("-")):
            out.append("auto")
    return out


def _dashed(arg: str) -> str:
    if not arg.startswith("--") or "_" not in arg.split("=", 1)[0]:
        return arg
    name, sep, value = arg.partition("=")
    return name.replace("_", "-") + sep + value


_train_typer = _single_command_app(train_command, "Train SmolVLA on BEHAVIOR / LeRobot data (smolvla-train).")
_SUBCOMMANDS["train"] = _train_typer


def train_app() -> None:
    """Console script ``smolvla-train``."""
    _train_typer(args=_normalise_resume_flag(sys.argv[1:]), prog_name="smolvla-train")


# --- smolvla-eval ----------------------------------------------------------------------------------------------


def eval_command(
    checkpoint: list[str] = typer.Option(..., "--checkpoint", help="Run folder or checkpoints/<step>; repeat for an ensemble."),
    dataset_path: str = typer.Option(..., "--dataset-path", help="LeRobot dataset folder with the training data's layout."),
    episodes: str = typer.Option(..., "--episodes", help="Held-out episodes, e.g. '0-3,7'."),
    output_dir: str = typer.Option(None, "--output-dir", help="Output folder (default <run>/eval/<date_time>_<step>)."),
    frame_stride: int = typer.Option(None, "--frame-stride", help="Evaluate every n-th frame (default: the training stride)."),
    max_frames: int = typer.Option(None, "--max-frames", help="At most this many frames, spread evenly (default: all)."),
    tolerance: float = typer.Option(0.05, "--tolerance", help="'Percent close' threshold, a fraction of each dim's range."),
    seed: int = typer.Option(0, "--seed", help="Seed of the flow-matching noise (with --noise sample)."),
    noise: str = typer.Option(None, "--noise", help=NOISE_HELP),
    num_samples: int = typer.Option(None, "--num-samples", help=NUM_SAMPLES_HELP),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    state_key: str = typer.Option(None, "--state-key", help="Feature read as the state (default: the checkpoint's)."),
    action_key: str = typer.Option(None, "--action-key", help="Feature read as the action (default: the checkpoint's)."),
    vlm_model: str = typer.Option(None, "--vlm-model", help="Local copy of the checkpoint's VLM backbone."),
) -> None:
    """Evaluate checkpoints offline on held-out episodes: errors in action units beside hold / mean-action baselines."""
    from behavior_smolvla.evaluation.engine import evaluate_checkpoints
    from behavior_smolvla.evaluation.report import summary_table
    from behavior_smolvla.policy.inference import Inference

    _refuse_empty({"--dataset-path": dataset_path, "--episodes": episodes, "--output-dir": output_dir,
                   "--state-key": state_key, "--action-key": action_key, "--vlm-model": vlm_model,
                   "--checkpoint": next((c for c in checkpoint if not c.strip()), None)})
    inference = Inference.from_flags(noise, num_samples)
    report = evaluate_checkpoints(
        checkpoint, dataset_path, episodes, output_dir=output_dir, frame_stride=frame_stride, max_frames=max_frames,
        tolerance=tolerance, seed=seed, inference=inference, device=device, progress=True, console=err_console,
        state_key=state_key, action_key=action_key, vlm_model=vlm_model,
    )
    out = Console(width=max(Console().width, 180))  # 13 columns: the policy and three reference predictors
    out.print(summary_table(report))
    if "ensemble" in report:
        e = report["ensemble"]
        r = e["disagreement_error_correlation"]
        out.print(f"ensemble of {e['size']}: mean disagreement {e['disagreement']['mean']:.4g}, correlation with "
                  f"error r = {'n/a' if r is None else f'{r:.3f}'}", highlight=False)
    out.print(f"[bold green]report:[/] {report['output_dir']}/report.json  (summary.md, "
              f"{len(report['files']['plots'])} plots, predictions.npz in the same folder)", highlight=False, soft_wrap=True)


eval_app = _single_command_app(eval_command, "Offline evaluation of SmolVLA checkpoints on held-out episodes (smolvla-eval).")
_SUBCOMMANDS["eval"] = eval_app

# --- smolvla-serve ---------------------------------------------------------------------------------------------


def serve_command(
    checkpoint: str = typer.Option(..., "--checkpoint", help="Run folder (uses checkpoints/last), checkpoints/<step> or its pretrained_model."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; any non-loopback address needs --api-key)."),
    port: int = typer.Option(8000, "--port", help="TCP port 1..65535 (the evaluator's default is 8000; 0 picks a free one)."),
    n_action_steps: int = typer.Option(None, "--n-action-steps", help="Actions served per model call (default: the checkpoint's)."),
    task: str = typer.Option(None, "--task", help="Instruction to use instead of the one saved for the observation's task_id."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:N, mps."),
    noise: str = typer.Option(None, "--noise", help=NOISE_HELP),
    num_samples: int = typer.Option(None, "--num-samples", help=NUM_SAMPLES_HELP),
    noise_seed: int = typer.Option(None, "--noise-seed", help="With --noise sample: a fixed noise seed per model call (default: fresh noise)."),
    api_key: str = typer.Option(
        None, "--api-key", envvar="SMOLVLA_API_KEY", show_envvar=True,
        help="Clients must send the header 'Authorization: Api-Key KEY' (openpi/OmniGibson WebsocketClientPolicy(api_key=KEY)); "
             "else 401. At least 16 characters. Prefer the environment variable: a flag is visible in ps."),
    insecure_no_auth: bool = typer.Option(
        False, "--insecure-no-auth", help="Listen on a non-loopback --host without an API key (a trusted private network only)."),
    max_message_mb: float = typer.Option(
        DEFAULT_MAX_MESSAGE_MB, "--max-message-mb", help="Largest request in MB (1e6 bytes); a larger one closes its connection unread. "
                                       "A release-size observation is ~3.9 MB."),
    max_queued_requests: int = typer.Option(
        DEFAULT_MAX_QUEUED_REQUESTS, "--max-queued-requests", help="Requests a connection may send ahead of the replies before the server stops reading it."),
    max_connections: int = typer.Option(
        DEFAULT_MAX_CONNECTIONS, "--max-connections", help="Websocket connections served at once; one more is answered 503 (the evaluator opens one per process)."),
    vlm_model: str = typer.Option(None, "--vlm-model", help="Local copy of the checkpoint's VLM backbone."),
) -> None:
    """Serve a checkpoint to the BEHAVIOR challenge evaluator (websocket + msgpack; GET /healthz)."""
    from behavior_smolvla.policy.inference import Inference
    from behavior_smolvla.serving.policy import load_policy
    from behavior_smolvla.serving.server import check_server_options, serve

    options = {"api_key": api_key, "insecure_no_auth": insecure_no_auth, "max_message_mb": max_message_mb,
               "max_queued_requests": max_queued_requests, "max_connections": max_connections}
    check_server_options(host, port, **options)  # before the checkpoint loads: a bad flag fails at once
    inference = Inference.from_flags(noise, num_samples)
    out = Console(soft_wrap=True, highlight=False)
    policy = load_policy(checkpoint, device=device, n_action_steps=n_action_steps, task=task, inference=inference,
                         noise_seed=noise_seed, vlm_model=vlm_model)
    serve(policy, host=host, port=port, log=out.print, **options)


serve_app = _single_command_app(serve_command, "Serve a checkpoint to the BEHAVIOR evaluator (smolvla-serve).")
_SUBCOMMANDS["serve"] = serve_app


def main() -> None:
    """``python cli.py <command> ...``: every console script as a sub-command of one Typer app."""
    app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                      help="behavior-smolvla: SmolVLA on BEHAVIOR data.")
    for name, sub in _SUBCOMMANDS.items():
        # Each console script is a one-command Typer app; re-register its command so it is not nested a level deeper.
        info = sub.registered_commands[0]
        app.command(name=name, help=sub.info.help)(info.callback)
    app(args=_normalise_resume_flag(sys.argv[1:]), prog_name="cli.py")


if __name__ == "__main__":
    main()
