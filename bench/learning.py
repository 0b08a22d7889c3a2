"""Real-data learning benchmark (issue 14): does the policy learn more than a no-learning predictor? Prints a table.

On a real LeRobot dataset (default: the G1 Inspire v3.0 recordings in ``../shared/data``), two episodes are held
out; the tiny SmolVLM backbone is trained from scratch for a fixed budget (``--steps`` optimizer steps at
``--image-size`` px, same seed, data order and schedule) in each action representation:

* ``absolute``: the action as recorded, one mean/std per dim (lerobot's way);
* ``delta (per-step)``: action minus the same joint's current state, one mean/std per chunk step and dim;
* ``delta (global)``: the same deltas, one mean/std per dim.

Each checkpoint is scored by ``smolvla-eval``'s engine on the held-out episodes (every ``--frame-stride``-th frame,
errors in absolute action units whatever the mode), beside the no-learning predictors of the same frames:

* ``state``: each action dim that has a reference state dim predicts that joint's current state at every chunk
  step (zero delta), the others the training mean: the baseline a policy can match from its inputs;
* ``hold``: the previous frame's RECORDED action repeated (the policy never sees it);
* ``mean_action``: the training data's mean action.

Columns: first-action MAE and whole-chunk MAE (mean over dims, action units: radians for the G1's joints), and the
training loss over the last logged window. Runs are cached under ``--root`` (delete a run folder to redo it).

    python bench/learning.py                                 # 1500 steps per mode on 2 CPU cores: about an hour
    python bench/learning.py --steps 300 --markdown          # a short budget
    python bench/learning.py --smoke --json                  # the script itself in seconds (2 steps, 1 mode)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODES = {"absolute": ("absolute", "global"), "delta (per-step)": ("delta", "per-step"),
         "delta (global)": ("delta", "global")}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset-path", default=str(REPO.parent / "shared" / "data" / "g1_inspire_v30"))
    p.add_argument("--val-episodes", default="6,7", help="held-out episodes (never trained on)")
    p.add_argument("--steps", type=int, default=1500)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--chunk-size", type=int, default=10)
    p.add_argument("--frame-stride", type=int, default=3, help="30 Hz data -> 10 Hz policy steps")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--num-workers", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--train-vlm", action="store_true", help="--no-train-expert-only (default: the VLM stays frozen)")
    p.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of: " + ", ".join(MODES))
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "bench_learning")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="try the script in seconds: 2 steps of batch 2, no workers, the absolute mode only, "
                        "8 evaluated frames, runs under ROOT/smoke (figures meaningless)")
    p.add_argument("--max-frames", type=int, default=None, help="evaluated held-out frames (default: every one)")
    args = p.parse_args()
    if args.smoke:
        args.steps, args.batch_size, args.modes, args.num_workers = 2, 2, "absolute", 0
        args.max_frames = args.max_frames or 8
        args.root = args.root / "smoke"
    return args


def run_folder(args: argparse.Namespace, mode: str) -> Path:
    slug = mode.replace(" ", "_").replace("(", "").replace(")", "")
    return args.root / f"{slug}_s{args.steps}_px{args.image_size}_c{args.chunk_size}_fs{args.frame_stride}" \
                       f"_b{args.batch_size}{'_vlm' if args.train_vlm else ''}"


def train(args: argparse.Namespace, mode: str, vlm: Path) -> Path:
    out = run_folder(args, mode)
    if (out / "checkpoints" / "last").exists():
        return out
    action_mode, action_norm = MODES[mode]
    cmd = [str(Path(sys.executable).parent / "smolvla-train"), "--dataset-path", args.dataset_path,
           "--val-episodes", args.val_episodes, "--from-scratch", "--vlm-model", str(vlm), "--output-dir", str(out),
           "--image-size", str(args.image_size), "--chunk-size", str(args.chunk_size), "--frame-stride",
           str(args.frame_stride), "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
           "--save-steps", str(args.steps), "--lr", str(args.lr), "--warmup-steps", str(max(1, args.steps // 20)),
           "--decay-steps", str(args.steps), "--num-workers", str(args.num_workers), "--device", args.device,
           "--log-steps", "25", "--wandb-disable", "--action-mode", action_mode, "--action-norm", action_norm]
    if args.train_vlm:
        cmd.append("--no-train-expert-only")
    out.parent.mkdir(parents=True, exist_ok=True)
    log = out.parent / f"{out.name}.log"
    with open(log, "w") as f:
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "HF_HUB_OFFLINE": "1"},
                              check=False)
    if proc.returncode != 0:
        raise SystemExit(f"training {mode} failed ({proc.returncode}); see {log}")
    return out


def evaluate(args: argparse.Namespace, run: Path) -> dict:
    from behavior_smolvla.evaluation.engine import evaluate_checkpoints

    return evaluate_checkpoints([run], args.dataset_path, args.val_episodes, output_dir=run / "eval",
                                frame_stride=args.frame_stride, max_frames=args.max_frames, device=args.device,
                                progress=False)


def last_loss(run: Path) -> float | None:
    from behavior_smolvla.training.tracking import read_metrics

    losses = [r["loss"] for r in read_metrics(run) if "loss" in r]
    return losses[-1] if losses else None


def main() -> None:
    args = parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from behavior_smolvla.policy.backbone import build_tiny_vlm

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise SystemExit(f"--modes: unknown {unknown}; use {', '.join(MODES)}")
    vlm = build_tiny_vlm(args.root / f"tiny_vlm_{args.image_size}", image_size=args.image_size)
    rows: list[dict] = []
    reference = None
    for mode in modes:
        run = train(args, mode, vlm)
        report = evaluate(args, run)
        p = report["predictors"]["policy"]
        rows.append({"predictor": f"policy, {mode}", "first_action_mae": p["first_action_mae"]["mean"],
                     "chunk_mae": p["chunk_mae"]["mean"], "final_loss": last_loss(run)})
        reference = reference or report
    for name in ("state", "hold", "mean_action"):
        if name in reference["predictors"]:
            p = reference["predictors"][name]
            label = {"hold": "hold (previous recorded action)", "state": "state (zero delta)"}.get(name, name)
            rows.append({"predictor": label, "first_action_mae": p["first_action_mae"]["mean"],
                         "chunk_mae": p["chunk_mae"]["mean"], "final_loss": None})
    setup = (f"{args.dataset_path}, held out {args.val_episodes} ({reference['frames_evaluated']} frames), "
             f"{args.steps} steps x batch {args.batch_size} at {args.image_size} px, chunk {args.chunk_size} at "
             f"stride {args.frame_stride}, tiny backbone from scratch ({'VLM trained' if args.train_vlm else 'VLM frozen'})")
    if args.json:
        print(json.dumps({"setup": setup, "rows": rows}, indent=2))
        return
    def fmt(v: float | None) -> str:
        return "" if v is None else f"{v:.4g}"

    if args.markdown:
        print(setup + "\n")
        print("| predictor | first-action MAE | chunk MAE | final train loss |\n|---|---:|---:|---:|")
        for r in rows:
            print(f"| {r['predictor']} | {fmt(r['first_action_mae'])} | {fmt(r['chunk_mae'])} | "
                  f"{fmt(r['final_loss'])} |")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title=setup)
    for col in ("predictor", "first-action MAE", "chunk MAE", "final train loss"):
        table.add_column(col, justify="left" if col == "predictor" else "right")
    for r in rows:
        table.add_row(r["predictor"], fmt(r["first_action_mae"]), fmt(r["chunk_mae"]), fmt(r["final_loss"]))
    Console().print(table)


if __name__ == "__main__":
    main()
