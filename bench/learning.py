"""Real-data learning benchmark (issues 14, 18): does the trained policy beat every predictor it can see? Over seeds.

On a real LeRobot dataset (default: the G1 Inspire v3.0 recordings in ``../shared/data``), two episodes are held out;
the tiny SmolVLM backbone is trained from scratch for a fixed budget (``--steps`` optimizer steps at ``--image-size``
px, the same schedule for every run) in each TRAINING variant and each seed:

* action representation: ``absolute`` (the action as recorded, one mean/std per dim: lerobot's way) or ``delta``
  (action minus the same joint's current state, one mean/std per chunk step and dim);
* VLM ``frozen`` (only the action expert learns: lerobot's default for a pretrained SmolVLA) or ``trained``;
* the state map: the dataset's own state (``identity`` on the G1: 26 joint positions), ``motion`` (the state map
  ``identity-motion``: the positions plus their velocities over one policy step, a derived state entry; the G1's
  state holds positions only) or ``motion only`` (the state map ``motion-only``: the velocities without the positions,
  which let a policy trained on a few episodes recognise them instead of generalising);
* ``aug``: lerobot's image augmentation (``--image-aug``); ``wd1``: AdamW weight decay 1 (``--weight-decay 1``).

The default recipe (``DEFAULT_VARIANT``, the one the README recommends for a few episodes of position-only data) is
``delta_trained_motiononly_aug_wd1``.

Every run keeps an exponential moving average of its weights (``--ema-decay``), so one run gives two policies: its raw
weights (``training_state/``) and its EMA weights (``pretrained_model/``, what eval and serve load). Each policy is
scored with each INFERENCE strategy (no retraining): ``one draw`` (one flow-matching noise sample per frame),
``zero noise`` (initial noise 0) and ``mean of K`` draws, by ``smolvla-eval``'s engine on the held-out episodes (every
``--frame-stride``-th frame; errors in absolute action units, radians for the G1's joints, whatever the action mode),
beside the no-learning predictors of the same frames:

* ``state``: each action dim that has a reference state dim predicts that joint's current state at every chunk step
  (zero delta), the others the training mean: the baseline a policy can match from its inputs;
* ``hold``: the previous frame's RECORDED action repeated (the policy never sees it);
* ``mean_action``: the training data's mean action.

The table gives, per row, the mean and [min-max] over seeds of first-action MAE and whole-chunk MAE (mean over the
action dims), and the number of seeds in which the row beats ``state`` on each. Runs are cached under ``--root``
(delete a run folder to redo it); a run's evaluations are cached in its folder too.

    python bench/learning.py --jobs 2         # the full grid: 9 training variants x 3 seeds (~70 min alone on 2 cores)
    python bench/learning.py --quick          # 2 variants x 1 seed at 600 steps: a few minutes
    python bench/learning.py --smoke --json   # the smallest run (the test suite's smoke test)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Variant:
    """One training configuration (the flags that differ between runs)."""

    action: str  # absolute | delta
    vlm: str  # frozen | trained
    state_map: str | None = None  # None: the dataset's default map (identity on the G1)
    image_aug: bool = False  # smolvla-train --image-aug (lerobot's image transforms)
    weight_decay: float | None = None  # smolvla-train --weight-decay (None: the SmolVLA preset's 1e-10)

    @property
    def name(self) -> str:
        return (f"{self.action}, VLM {self.vlm}" + (f", {STATE_MAP_LABELS[self.state_map]}" if self.state_map else "")
                + (", image aug" if self.image_aug else "")
                + (f", weight decay {self.weight_decay:g}" if self.weight_decay is not None else ""))

    @property
    def slug(self) -> str:
        """The variant's name on the command line (``--variants``)."""
        return (self.model_slug + ("_aug" if self.image_aug else "")
                + (f"_wd{self.weight_decay:g}" if self.weight_decay is not None else ""))

    @property
    def model_slug(self) -> str:
        """What the run folder's name starts with (augmentation and weight decay are named with the other data and
        regularisation options after it)."""
        return f"{self.action}_{self.vlm}" + (f"_{STATE_MAP_SLUGS[self.state_map]}" if self.state_map else "")

    def flags(self) -> list[str]:
        norm = "per-step" if self.action == "delta" else "global"
        out = ["--action-mode", self.action, "--action-norm", norm,
               "--train-expert-only" if self.vlm == "frozen" else "--no-train-expert-only"]
        if self.state_map:
            out += ["--state-map", self.state_map]
        return out


STATE_MAP_LABELS = {"identity-motion": "motion", "motion-only": "motion only"}
STATE_MAP_SLUGS = {"identity-motion": "motion", "motion-only": "motiononly"}
"""Short names of the state maps the variants use (the slugs name the cached run folders: keep them stable)."""
RECIPE_WEIGHT_DECAY = 1.0
"""The default recipe's AdamW weight decay: measured best of 0.1, 0.5, 1, 2, 3 (bench/README.md)."""
VARIANTS = {v.slug: v for v in (
    Variant("delta", "trained", "motion-only", image_aug=True, weight_decay=RECIPE_WEIGHT_DECAY),
    Variant("delta", "frozen", "motion-only", image_aug=True, weight_decay=RECIPE_WEIGHT_DECAY),
    Variant("delta", "trained", "motion-only", image_aug=True),
    Variant("delta", "trained", "motion-only"),
    Variant("delta", "trained", "identity-motion"),
    Variant("delta", "trained"),
    Variant("absolute", "trained"),
    Variant("delta", "frozen"),
    Variant("absolute", "frozen"),
)}
DEFAULT_VARIANT = "delta_trained_motiononly_aug_wd1"
"""The recipe the README recommends for this data (the issue's targets are checked on it)."""
INFERENCE = {"one draw": ("sample", 1), "zero noise": ("zero", 1), "mean of K": ("sample", None)}
DEFAULT_INFERENCE = "mean of K"
"""The project's default (``policy.inference.Inference()``: the mean of 8 draws); the targets are checked with it."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--dataset-path", default=str(REPO.parent / "shared" / "data" / "g1_inspire_v30"))
    p.add_argument("--val-episodes", default="6,7", help="held-out episodes (never trained on)")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of: " + ", ".join(VARIANTS))
    p.add_argument("--seeds", default="1000,1001,1002", help="training seeds (data order, init, noise)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=10)
    p.add_argument("--frame-stride", type=int, default=3, help="30 Hz data -> 10 Hz policy steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=None,
                   help="smolvla-train --weight-decay (default: the SmolVLA preset's 1e-10)")
    p.add_argument("--ema-decay", type=float, default=0.999, help="0: no EMA weights (raw only)")
    p.add_argument("--num-samples", type=int, default=8, help="K of the 'mean of K' inference")
    p.add_argument("--train-episodes", default=None,
                   help="smolvla-train --episodes: train on these episodes only (default: every episode not held "
                        "out); a learning curve over the number of training episodes, e.g. 0-2 against the default")
    p.add_argument("--sample-stride", type=int, default=None,
                   help="smolvla-train --sample-stride (1: a chunk starts at every frame; default: the frame stride)")
    p.add_argument("--image-aug", action="store_true", help="smolvla-train --image-aug (lerobot's image transforms)")
    p.add_argument("--inference", default=",".join(INFERENCE),
                   help="inference strategies scored per run, comma-separated (default: all three); e.g. 'mean of K' "
                        "alone to compare training variants at the default strategy in a quarter of the time")
    p.add_argument("--max-frames", type=int, default=None, help="cap on evaluated frames (default: all)")
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1, help="training runs at once (each uses --threads torch threads)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: cores / jobs)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "bench_learning")
    p.add_argument("--quick", action="store_true",
                   help=f"600 steps, seed 1000, variants {DEFAULT_VARIANT} and delta_trained")
    p.add_argument("--smoke", action="store_true", help="the smallest run: 2 steps, 1 seed, 1 variant, 8 frames")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.smoke:
        args.steps, args.seeds, args.variants, args.max_frames, args.num_samples = 2, "1000", DEFAULT_VARIANT, 8, 2
        args.batch_size = 2
        args.root = args.root.parent / f"{args.root.name}_smoke"
    elif args.quick:
        args.steps, args.seeds, args.variants = 600, "1000", f"{DEFAULT_VARIANT},delta_trained"
    args.inference_list = [i.strip() for i in args.inference.split(",") if i.strip()]
    if not args.inference_list or any(i not in INFERENCE for i in args.inference_list):
        p.error(f"--inference {args.inference!r}: use a comma-separated subset of {', '.join(INFERENCE)}")
    args.seed_list = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.variant_list = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variant_list if v not in VARIANTS]
    if unknown or not args.variant_list or not args.seed_list:
        p.error(f"--variants: unknown {unknown}; use a subset of {', '.join(VARIANTS)}" if unknown
                else "--variants and --seeds must not be empty")
    if args.num_samples < 2:
        p.error("--num-samples must be at least 2 (K of the 'mean of K' inference)")
    return args


# --- training ------------------------------------------------------------------------------------------------------


def run_folder(args: argparse.Namespace, variant: Variant, seed: int) -> Path:
    return args.root / (f"{variant.model_slug}_s{args.steps}_px{args.image_size}_c{args.chunk_size}"
                        f"_fs{args.frame_stride}_b{args.batch_size}_lr{args.lr:g}_ema{args.ema_decay:g}"
                        f"{training_data_slug(args, variant)}_seed{seed}")


def image_aug(args: argparse.Namespace, variant: Variant) -> bool:
    """Augmentation is on for a variant that names it and for every variant under ``--image-aug``."""
    return variant.image_aug or args.image_aug


def weight_decay(args: argparse.Namespace, variant: Variant) -> float | None:
    """``--weight-decay`` when given, else the variant's (None: smolvla-train's default)."""
    return args.weight_decay if args.weight_decay is not None else variant.weight_decay


def training_data_slug(args: argparse.Namespace, variant: Variant) -> str:
    """The run-folder suffix of the training-data and regularisation options (empty at their defaults, so older runs
    stay cached)."""
    wd = weight_decay(args, variant)
    return ((f"_wd{wd:g}" if wd is not None else "")
            + (f"_ep{args.train_episodes}" if args.train_episodes is not None else "")
            + (f"_ss{args.sample_stride}" if args.sample_stride is not None else "")
            + ("_aug" if image_aug(args, variant) else ""))


def finished(run: Path, steps: int) -> bool:
    """Whether ``run`` holds a complete training of ``steps`` steps: its ``last`` checkpoint is at that step (a run
    stopped by a signal also leaves a ``last``, at an earlier step)."""
    from behavior_smolvla.errors import CheckpointError
    from behavior_smolvla.policy.checkpoint import read_training_state

    last = run / "checkpoints" / "last"
    try:
        return last.exists() and read_training_state(last).step == steps
    except CheckpointError:
        return False


def train(args: argparse.Namespace, variant: Variant, seed: int, vlm: Path) -> Path:
    """Train one run in a subprocess (``smolvla-train``, the user's command) unless its last checkpoint exists."""
    out = run_folder(args, variant, seed)
    if finished(out, args.steps):
        return out
    if out.exists():  # an interrupted or stopped run (SIGTERM writes a checkpoint early): start it again
        shutil.rmtree(out)
    cmd = [str(Path(sys.executable).parent / "smolvla-train"), "--dataset-path", args.dataset_path,
           "--val-episodes", args.val_episodes, "--from-scratch", "--vlm-model", str(vlm), "--output-dir", str(out),
           "--image-size", str(args.image_size), "--chunk-size", str(args.chunk_size), "--frame-stride",
           str(args.frame_stride), "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
           "--save-steps", str(args.steps), "--lr", str(args.lr), "--warmup-steps", str(max(1, args.steps // 20)),
           "--decay-steps", str(args.steps), "--num-workers", str(args.num_workers), "--device", args.device,
           "--log-steps", str(max(1, min(100, args.steps // 10))), "--wandb-disable", "--seed", str(seed),
           "--ema-decay", str(args.ema_decay), *variant.flags(),
           *(["--weight-decay", str(weight_decay(args, variant))] if weight_decay(args, variant) is not None else []),
           *(["--episodes", args.train_episodes] if args.train_episodes is not None else []),
           *(["--sample-stride", str(args.sample_stride)] if args.sample_stride is not None else []),
           *(["--image-aug"] if image_aug(args, variant) else [])]
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(args.threads),
           "MKL_NUM_THREADS": str(args.threads)}
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"training {variant.name} seed {seed} failed ({proc.returncode}); see {log}")
    return out


# --- evaluation ----------------------------------------------------------------------------------------------------


def weight_sets(args: argparse.Namespace) -> list[str]:
    return ["raw", "EMA"] if args.ema_decay > 0 else ["raw"]


def evaluations(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(weights, inference) pairs scored per run: each strategy of ``--inference`` on the served weights (the EMA's when
    on), and the default inference on the raw weights: EMA on / off compared at the default, which keeps a run's
    evaluation at four passes over the held-out frames instead of six."""
    served = weight_sets(args)[-1]
    pairs = [(served, inference) for inference in INFERENCE if inference in args.inference_list]
    if served != "raw" and DEFAULT_INFERENCE in args.inference_list:
        pairs.append(("raw", DEFAULT_INFERENCE))
    return pairs


def evaluate(args: argparse.Namespace, run: Path, weights: str, inference_name: str) -> dict[str, Any]:
    """The eval report of one run's weights (``raw`` or ``EMA``) with one inference strategy; cached in the run."""
    from behavior_smolvla.evaluation.engine import evaluate_checkpoints
    from behavior_smolvla.policy.inference import Inference

    noise, k = INFERENCE[inference_name]
    k = k or args.num_samples
    slug = f"{weights}_{noise}_k{k}_f{args.max_frames or 'all'}".lower()
    out = run / "bench_eval" / slug
    cached = out / "report.json"
    if cached.is_file():
        return json.loads(cached.read_text())
    checkpoint = run / "checkpoints" / "last"
    if weights == "raw" and args.ema_decay > 0:
        # pretrained_model holds the EMA weights; a sibling checkpoint with the raw ones swapped in
        checkpoint = raw_weights_checkpoint(checkpoint, run / "bench_eval" / "raw_checkpoint")
    return evaluate_checkpoints([checkpoint], args.dataset_path, args.val_episodes, output_dir=out,
                                frame_stride=args.frame_stride, max_frames=args.max_frames, device=args.device,
                                progress=False, inference=Inference(noise=noise, num_samples=k), plots=False)


def raw_weights_checkpoint(checkpoint: Path, dest: Path) -> Path:
    """A copy of ``checkpoint`` whose ``pretrained_model`` holds the run's raw (training) weights instead of the EMA's:
    ``training_state/raw_weights.safetensors`` laid over ``model.safetensors`` (the frozen weights are the same in both).
    """
    from safetensors.torch import load_file, save_file

    from behavior_smolvla.policy.checkpoint import (MANIFEST_FILE, PRETRAINED_DIR, RAW_WEIGHTS_FILE,
                                                    TRAINING_STATE_DIR, write_manifest)

    checkpoint = checkpoint.resolve()
    target = dest / PRETRAINED_DIR
    if (target / "model.safetensors").is_file():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(checkpoint / PRETRAINED_DIR, tmp / PRETRAINED_DIR)
    weights = load_file(str(checkpoint / PRETRAINED_DIR / "model.safetensors"))
    raw = load_file(str(checkpoint / TRAINING_STATE_DIR / RAW_WEIGHTS_FILE))
    missing = sorted(set(raw) - set(weights))
    if missing:
        raise SystemExit(f"{checkpoint}: raw weights {missing[:3]} are not in model.safetensors")
    weights.update(raw)
    save_file(weights, str(tmp / PRETRAINED_DIR / "model.safetensors"), metadata={"format": "pt"})
    manifest = tmp / PRETRAINED_DIR / MANIFEST_FILE
    if manifest.is_file():  # the new weights' checksums, the same input contract
        write_manifest(tmp / PRETRAINED_DIR, json.loads(manifest.read_text())["inputs"])
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(tmp, dest)
    return dest


def last_loss(run: Path) -> float | None:
    from behavior_smolvla.training.tracking import read_metrics

    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    return losses[-1] if losses else None


# --- the table -----------------------------------------------------------------------------------------------------


def _summary(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def build_rows(args: argparse.Namespace, results: dict[tuple[str, int], dict[str, Any]]) -> tuple[list, dict]:
    """Rows (mean/min/max over seeds) from ``results[(variant slug, seed)] = {"loss", "reports": {(w, inf): rep}}``."""
    rows: list[dict[str, Any]] = []
    reference = next(iter(results.values()))["reports"]
    reference = next(iter(reference.values()))
    baselines = {name: reference["predictors"][name] for name in ("state", "hold", "mean_action")
                 if name in reference["predictors"]}
    state = baselines.get("state")
    for slug in args.variant_list:
        for weights, inference in evaluations(args):
            first, chunk, wins_first, wins_chunk = [], [], 0, 0
            for seed in args.seed_list:
                p = results[(slug, seed)]["reports"][(weights, inference)]["predictors"]["policy"]
                first.append(p["first_action_mae"]["mean"])
                chunk.append(p["chunk_mae"]["mean"])
                if state is not None:
                    wins_first += first[-1] < state["first_action_mae"]["mean"]
                    wins_chunk += chunk[-1] < state["chunk_mae"]["mean"]
            label = inference.replace("K", str(args.num_samples))
            rows.append({"predictor": f"policy: {VARIANTS[slug].name}; {weights} weights, {label}",
                         "variant": slug, "weights": weights, "inference": inference,
                         "first_action_mae": _summary(first), "chunk_mae": _summary(chunk),
                         "seeds_beating_state": {"first_action": wins_first, "chunk": wins_chunk},
                         "per_seed": {"first_action_mae": first, "chunk_mae": chunk},
                         "final_loss": _summary([results[(slug, s)]["loss"] for s in args.seed_list
                                                 if results[(slug, s)]["loss"] is not None] or [float("nan")])})
    labels = {"state": "state (zero delta)", "hold": "hold (previous recorded action, not an input)",
              "mean_action": "mean_action"}
    for name, p in baselines.items():
        rows.append({"predictor": labels[name], "variant": None, "weights": None, "inference": None,
                     "first_action_mae": _summary([p["first_action_mae"]["mean"]]),
                     "chunk_mae": _summary([p["chunk_mae"]["mean"]]), "seeds_beating_state": None,
                     "per_seed": None, "final_loss": None})
    return rows, baselines


def check_targets(rows: list[dict[str, Any]], baselines: dict[str, Any], seeds: list[int]) -> dict[str, Any] | None:
    """Issue 18's targets for the default recipe (EMA weights when present, the default inference), every seed
    separately."""
    def pick(variant: str) -> dict[str, Any] | None:
        found = [r for r in rows if r["variant"] == variant and r["inference"] == DEFAULT_INFERENCE]
        served = [r for r in found if r["weights"] == "EMA"] or found  # the weights a checkpoint serves
        return served[0] if served else None

    row, ref = pick(DEFAULT_VARIANT), pick("absolute_trained")
    if row is None or "state" not in baselines:
        return None
    state_first = baselines["state"]["first_action_mae"]["mean"]
    state_chunk = baselines["state"]["chunk_mae"]["mean"]
    hold_chunk = baselines["hold"]["chunk_mae"]["mean"]
    mean_chunk = baselines["mean_action"]["chunk_mae"]["mean"]
    first, chunk = row["per_seed"]["first_action_mae"], row["per_seed"]["chunk_mae"]
    out = {
        "row": row["predictor"],
        "chunk >= 30% better than state": [c <= 0.7 * state_chunk for c in chunk],
        "chunk better than hold": [c < hold_chunk for c in chunk],
        "first action better than state": [f < state_first for f in first],
        "chunk better than mean_action": [c < mean_chunk for c in chunk],
    }
    if ref is not None:
        out["chunk better than absolute (same seed)"] = [
            c < a for c, a in zip(chunk, ref["per_seed"]["chunk_mae"], strict=True)]
    out["seeds"] = seeds
    return out


def fmt(s: dict[str, float] | None) -> str:
    if s is None:
        return ""
    if s["min"] == s["max"]:
        return f"{s['mean']:.4f}"
    return f"{s['mean']:.4f} [{s['min']:.4f}-{s['max']:.4f}]"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.jobs)
    from behavior_smolvla.policy.backbone import build_tiny_vlm

    vlm = build_tiny_vlm(args.root / f"tiny_vlm_{args.image_size}", image_size=args.image_size)
    # Variants in the order given (the default recipe first in the full grid), every seed of one before the next, so
    # an interrupted grid has whole rows. Training runs are subprocesses (up to --jobs at once); each run is evaluated
    # here as soon as it is trained, one evaluation at a time (the engine forks the process's global RNG).
    import torch

    torch.set_num_threads(args.threads)
    jobs = [(VARIANTS[slug], seed) for slug in args.variant_list for seed in args.seed_list]
    lock = threading.Lock()

    def one(job: tuple[Variant, int]) -> dict[str, Any]:
        variant, seed = job
        started = time.perf_counter()
        run = train(args, variant, seed, vlm)
        trained = time.perf_counter()
        with lock:
            reports = {(w, inf): evaluate(args, run, w, inf) for w, inf in evaluations(args)}
        print(f"[learning] {variant.name}, seed {seed}: trained in {trained - started:.0f} s, evaluated in "
              f"{time.perf_counter() - trained:.0f} s ({run})", file=sys.stderr, flush=True)
        return {"loss": last_loss(run), "reports": reports}

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        done = list(pool.map(one, jobs))
    results = {(variant.slug, seed): result for (variant, seed), result in zip(jobs, done, strict=True)}
    rows, baselines = build_rows(args, results)
    first_report = next(iter(next(iter(results.values()))["reports"].values()))
    setup = (f"{args.dataset_path}, held out {args.val_episodes} ({first_report['frames_evaluated']} frames), "
             f"{args.steps} steps x batch {args.batch_size} at {args.image_size} px, lr {args.lr:g}"
             f"{f', weight decay {args.weight_decay:g}' if args.weight_decay is not None else ''}, chunk "
             f"{args.chunk_size} at stride {args.frame_stride}"
             f"{f', trained on episodes {args.train_episodes}' if args.train_episodes is not None else ''}"
             f"{f', a chunk every {args.sample_stride} frames' if args.sample_stride is not None else ''}"
             f"{', image augmentation' if args.image_aug else ''}, EMA decay {args.ema_decay:g}, tiny backbone from "
             f"scratch, seeds {args.seeds}; MAE in action units (rad), mean [min-max] over seeds")
    targets = check_targets(rows, baselines, args.seed_list)
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows, "targets": targets}, indent=2))
        return
    n = len(args.seed_list)
    if args.markdown:
        print(setup + "\n")
        print("| predictor | first-action MAE | chunk MAE | seeds < state (first / chunk) | final train loss |\n"
              "|---|---:|---:|---:|---:|")
        for r in rows:
            wins = r["seeds_beating_state"]
            w = f"{wins['first_action']}/{n} / {wins['chunk']}/{n}" if wins else ""
            print(f"| {r['predictor']} | {fmt(r['first_action_mae'])} | {fmt(r['chunk_mae'])} | {w} | "
                  f"{fmt(r['final_loss'])} |")
        if targets:
            print("\nTargets (default recipe, each seed): " + "; ".join(
                f"{k}: {sum(v)}/{len(v)}" for k, v in targets.items() if isinstance(v, list) and k != "seeds"))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=setup)
    for col in ("predictor", "first-action MAE", "chunk MAE", "seeds < state (first / chunk)", "final train loss"):
        table.add_column(col, justify="left" if col == "predictor" else "right")
    for r in rows:
        wins = r["seeds_beating_state"]
        table.add_row(r["predictor"], fmt(r["first_action_mae"]), fmt(r["chunk_mae"]),
                      f"{wins['first_action']}/{n} / {wins['chunk']}/{n}" if wins else "", fmt(r["final_loss"]))
    console = Console()
    console.print(table)
    if targets:
        console.print("targets (default recipe, each seed): " + "; ".join(
            f"{k}: {sum(v)}/{len(v)}" for k, v in targets.items() if isinstance(v, list) and k != "seeds"))


if __name__ == "__main__":
    main()
