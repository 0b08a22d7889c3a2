"""Full-size SmolVLA benchmark (issue 12): a ``lerobot/smolvla_base``-sized model trained on 512 px BEHAVIOR data.

The model is the offline stand-in of ``behavior_smolvla.policy.standin`` (SmolVLM2-500M-shaped backbone, 450 M
parameters, ~100 M trainable with the VLM frozen; random weights: speed and memory do not depend on the values),
fine-tuned by the trainer itself: ``training.build.build_training`` builds the run as ``smolvla-train
--policy-path`` does (the default top-32 state map, or ``--filter-state`` for 217 dims), ``training.loop.Trainer.step``
steps it and ``Trainer.save_checkpoint`` writes its checkpoints, on a generated BEHAVIOR-2025-shaped dataset: three
512 x 512 HEVC cameras with a 250-frame keyframe interval, like the release. Chunk 50, SmolVLA's AdamW preset, grad
clipping, cosine schedule. Prints a table, or one JSON object with ``--json``. Not a test; asserts nothing.
The serving figures use a 1-step checkpoint of the trainer itself (``cli.py train`` from the stand-in).

Per batch size, each in its own process so that its peak RSS is its own: seconds per ``Trainer.step`` (data wait +
forward/backward + optimizer, median over ``--steps`` after ``--warmup``, with min-max spread), the data wait's
share, samples/s, CPU seconds per step, peak RSS, peak GPU memory. With the first batch size, ``--ckpt-repeat``
checkpoint writes (``Trainer.save_checkpoint``, the trainer's own save: atomic, fsynced, policy + processors + input
contract + optimizer + scheduler + RNG; a change to what a checkpoint holds reaches this benchmark too) and loads
(``load_policy_bundle`` + ``load_training_state``, what ``--resume`` reads), their size on disk.
The load right after a write reads from the page cache: a cold load from a slow disk takes longer.

``--device cuda``: bf16 autocast (the trainer's rule); first a sweep of batch sizes on batches kept on the GPU
(compute only: the trainer's autocast, backward, clipping, optimizer and schedule) up to the first that runs out of
memory or ``--max-batch``, with peak GPU memory each; then the largest batch that fit is trained by ``Trainer.step``
fed by its ``DataLoader`` with ``--num-workers`` (default 8) workers decoding the HEVC data: samples/s and
``data_wait_frac``; then ``--serve-calls`` model calls of the policy server's
``BehaviorPolicy.act`` on evaluator observations (release sizes, ``n_action_steps=1``): p50/p95 latency.

    python bench/real_size.py                          # CPU, batch 1 and 2 (~10 minutes on 2 cores)
    python bench/real_size.py --json
    python bench/real_size.py --device cuda --json     # a GPU: sweep, 8 workers, serve latency
    python bench/real_size.py --smoke --json           # the script itself in seconds (tiny backbone, 64 px)

Generated inputs (the stand-in, ~1.8 GB, and the dataset) are cached under ``--root`` and reused.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 512
CHUNK_SIZE = 50
GOP = 250
SMOKE_SIZE = 64
"""``--smoke``: side of the generated cameras and of the model's input (the tiny backbone's 64 px)."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--image-size", type=int, default=None,
                   help="side SmolVLA resizes the cameras to (512, smolvla_base's; less only to try the script)")
    p.add_argument("--batch-sizes", default=None,
                   help="comma-separated (default: 1,2 on CPU; on CUDA the sweep 8,16,32,... up to --max-batch)")
    p.add_argument("--max-batch", type=int, default=256, help="largest batch the CUDA sweep tries")
    p.add_argument("--steps", type=int, default=None, help="measured steps per batch size (CPU 3, CUDA 10)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured steps first (CPU 1, CUDA 3)")
    p.add_argument("--num-workers", type=int, default=None, help="DataLoader workers (CPU 0, CUDA 8)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores on CPU)")
    p.add_argument("--ckpt-repeat", type=int, default=None, help="checkpoint writes and loads to time (3)")
    p.add_argument("--serve-calls", type=int, default=None, help="timed policy-server model calls (CPU 0, CUDA 30)")
    p.add_argument("--filter-state", action="store_true", help="217-dim standard-track state (state_proj widened)")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"], help="auto: bf16 on CUDA")
    p.add_argument("--episodes", type=int, default=None, help="episodes of the generated data (CPU 4, CUDA 8)")
    p.add_argument("--frames", type=int, default=None,
                   help="frames per episode (CPU 60, CUDA 300; at least the chunk, 50)")
    p.add_argument("--dataset-path", type=Path, help="use this BEHAVIOR 2025 dataset instead of generating one")
    p.add_argument("--standin", type=Path, help="stand-in folder (default: ROOT/standin, built on first use)")
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "bench_real_size", help="cache folder")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--keep-checkpoint", action="store_true",
                   help="keep the last checkpoint written (ROOT/runs/DEVICE; its path is in the output)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    p.add_argument("--smoke", action="store_true",
                   help="try the script in seconds: the tiny backbone from scratch instead of the stand-in, 64 px "
                        "data and model, 2 episodes x 60 frames, batch 1, 1 step, 1 checkpoint (figures meaningless)")
    p.add_argument("--child", help=argparse.SUPPRESS)  # internal: JSON spec of one measuring process
    args = p.parse_args(argv)
    cuda = args.device.startswith("cuda")
    if args.smoke:  # every size at its smallest (flags given explicitly still win)
        smoke = {"image_size": SMOKE_SIZE, "batch_sizes": "1", "steps": 1, "warmup": 0, "episodes": 2, "frames": 60,
                 "ckpt_repeat": 1}
        for name, value in smoke.items():
            if getattr(args, name) is None:
                setattr(args, name, value)
    args.data_size = SMOKE_SIZE if args.smoke else IMAGE_SIZE
    if args.image_size is None:
        args.image_size = IMAGE_SIZE
    if args.ckpt_repeat is None:
        args.ckpt_repeat = 3
    defaults = {"steps": (3, 10), "warmup": (1, 3), "num_workers": (0, 8), "serve_calls": (0, 30),
                "episodes": (4, 8), "frames": (60, 300)}
    for name, (cpu_value, cuda_value) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, cuda_value if cuda else cpu_value)
    if args.precision == "auto":
        args.precision = "bf16" if cuda else "fp32"
    return args


def say(args: argparse.Namespace, text: str) -> None:
    print(text, file=sys.stderr if args.json else sys.stdout, flush=True)


# -- inputs (parent) ---------------------------------------------------------------------------------------------


def ensure_inputs(args: argparse.Namespace) -> tuple[dict[str, str], Path]:
    """The policy to fine-tune and the dataset, built once under ``--root``: ``{"policy_path": the stand-in's
    pretrained_model folder}``, or with ``--smoke`` ``{"vlm_model": the tiny backbone}`` (a SmolVLA from scratch)."""
    if args.smoke:
        from behavior_smolvla.policy.backbone import build_tiny_vlm

        policy = {"vlm_model": str(build_tiny_vlm(args.root / "tiny_vlm", image_size=SMOKE_SIZE))}
    else:
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        standin = args.standin or args.root / "standin"
        if not (standin / "standin.json").is_file():
            say(args, f"building the smolvla_base stand-in in {standin} (~30 s, 1.8 GB) ...")
        # A subprocess: the build's ~3 GB peak must not count in this process (nor stay allocated here).
        proc = subprocess.run([sys.executable, "-m", "behavior_smolvla.policy.standin", str(standin)], check=False,
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            sys.exit(f"building the stand-in failed:\n{proc.stderr[-2000:]}")
        policy = {"policy_path": json.loads(proc.stdout.strip().splitlines()[-1])["policy_path"]}
    if args.dataset_path:
        return policy, args.dataset_path
    size = args.data_size
    data = args.root / f"behavior2025_e{args.episodes}_f{args.frames}_{size}px_gop{GOP}"
    if not (data / ".complete").is_file():
        from behavior_smolvla.synthetic.datasets import write_behavior_2025

        say(args, f"generating {data} ({args.episodes} episodes x {args.frames} frames, 3 cameras "
                  f"{size}x{size} HEVC, GOP {GOP}) ...")
        write_behavior_2025(data, episodes=args.episodes, frames=args.frames, tasks=2, image_size=size,
                            codec="libx265", gop=GOP, overwrite=True)
        (data / ".complete").touch()
    return policy, data


def policy_flags(policy: dict[str, str]) -> list[str]:
    """``smolvla-train`` flags for the policy of :func:`ensure_inputs`."""
    if "vlm_model" in policy:
        return ["--from-scratch", "--vlm-model", policy["vlm_model"]]
    return ["--policy-path", policy["policy_path"]]


def trainer_checkpoint(args: argparse.Namespace, policy: dict[str, str], data: Path) -> Path:
    """A 1-step checkpoint of the trainer itself (``cli.py train``) from the stand-in: what the server loads."""
    kind = "smoke" if args.smoke else "serve"
    run = args.root / "runs" / f"{kind}_{args.device.replace(':', '')}_{args.image_size}px"
    if not (run / "checkpoints" / "last").exists():
        shutil.rmtree(run, ignore_errors=True)
        say(args, f"training a 1-step checkpoint for the serving figures into {run} ...")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled",
               "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.run(
            [sys.executable, str(REPO / "cli.py"), "train", "--dataset-path", str(data), *policy_flags(policy),
             "--image-size", str(args.image_size), "--batch-size", "1", "--max-steps", "1",
             "--save-steps", "1", "--num-workers", "0", "--device", args.device, "--wandb-disable",
             "--output-dir", str(run)] + (["--filter-state"] if args.filter_state else []),
            capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            sys.exit(f"training the serving checkpoint failed:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
    return run / "checkpoints" / "last"


# -- one measuring process (child) -------------------------------------------------------------------------------


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


class Trainee:
    """The stand-in fine-tuned by the trainer itself: ``build_training`` builds the run exactly as ``smolvla-train
    --policy-path`` does (input contract, reader, policy, SmolVLA's AdamW preset and cosine schedule, accelerate's
    precision), fed runs step it with ``Trainer.step`` and checkpoints are ``Trainer.save_checkpoint``: whatever a
    checkpoint holds, the benchmark writes and loads the trainer's own."""

    def __init__(self, spec: dict[str, Any]) -> None:
        import torch
        from rich.console import Console

        from behavior_smolvla.config import TrainConfig
        from behavior_smolvla.training.build import build_training
        from behavior_smolvla.training.loop import Trainer

        self.spec = spec
        cfg = TrainConfig()
        cfg.data.dataset_path, cfg.data.num_workers = spec["dataset"], int(spec["num_workers"])
        cfg.data.filter_state, cfg.data.image_size = bool(spec["filter_state"]), int(spec["image_size"])
        cfg.policy.chunk_size = CHUNK_SIZE
        if "vlm_model" in spec:  # --smoke: the tiny backbone from scratch instead of the stand-in
            cfg.policy.from_scratch, cfg.policy.vlm_model = True, spec["vlm_model"]
        else:
            cfg.policy.policy_path = spec["policy_path"]
        cfg.optim.device, cfg.optim.precision, cfg.optim.seed = spec["device"], spec["precision"], spec["seed"]
        cfg.optim.batch_size = int(spec["batch_sizes"][0])
        # Never stop, log or save on its own: this script decides when to step and when to checkpoint.
        cfg.optim.max_steps = cfg.output.save_steps = cfg.logging.log_steps = 10**9
        cfg.output.output_dir, cfg.output.keep_last = spec["run_dir"], 1
        cfg.logging.wandb_disable = True
        self.console = Console(quiet=True)
        self.t = build_training(cfg, console=self.console)
        if spec.get("threads"):  # over the trainer's CPU rule (all cores minus the workers)
            torch.set_num_threads(spec["threads"])
        self.trainer = Trainer(self.t, self.console)
        self.device = self.t.accelerator.device
        self.policy, self.reinitialised = self.t.bundle.policy, self.t.bundle.reinitialised
        self.state_map = self.t.inputs.state_map

    def sync(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _resize_batch(self, batch_size: int) -> None:
        """The run at another batch size (the CUDA fed run after the sweep), as ``build_training`` sizes it."""
        t = self.t
        if batch_size != t.cfg.optim.batch_size:
            t.cfg.optim.batch_size = batch_size
            t.batches_per_epoch = len(t.stream(0, 0))

    def fed_run(self, batch_size: int, warmup: int, steps: int) -> dict[str, Any]:
        """``Trainer.step`` calls fed by the trainer's DataLoader: per-step wall time, data wait, CPU time."""
        import torch

        self._resize_batch(batch_size)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        total, wait, cpu = [], [], []
        with self.trainer as trainer:
            for i in range(warmup + steps):
                self.sync()
                t0, c0 = time.perf_counter(), time.process_time()
                trainer.step()
                self.sync()
                if i >= warmup:
                    total.append(time.perf_counter() - t0)
                    wait.append(trainer.step_times["data"])
                    cpu.append(time.process_time() - c0)
        return {
            "batch_size": batch_size, "num_workers": self.t.cfg.data.num_workers, "fed_by": "DataLoader",
            "step_s": _spread(total), "data_wait_frac": sum(wait) / sum(total),
            "samples_per_s": batch_size * len(total) / sum(total), "cpu_s_per_step": statistics.median(cpu),
            **self._memory(),
        }

    def kept_run(self, batch_size: int, warmup: int, steps: int) -> dict[str, Any]:
        """Compute only: one preprocessed batch (tiled from a real one) kept on the device, stepped repeatedly with
        the trainer's step (accelerate's autocast and backward, grad clipping, its optimizer and schedule)."""
        import torch

        t = self.t
        small = next(iter(self._stream(min(batch_size, 4))))
        inputs = self._tile(t.model_batch(small), batch_size)
        torch.cuda.reset_peak_memory_stats(self.device) if self.device.type == "cuda" else None
        clip = t.cfg.optim.grad_clip_norm
        total = []
        for i in range(warmup + steps):
            self.sync()
            t0 = time.perf_counter()
            with t.accelerator.autocast():
                loss, _ = t.policy(inputs)
            t.accelerator.backward(loss)
            t.accelerator.clip_grad_norm_(t.policy.parameters(), clip)
            t.optimizer.step()
            t.optimizer.zero_grad(set_to_none=True)
            t.scheduler.step()
            loss.item()  # the host sync the trainer's step has
            self.sync()
            if i >= warmup:
                total.append(time.perf_counter() - t0)
        return {"batch_size": batch_size, "fed_by": "kept batch (compute only)", "step_s": _spread(total),
                "samples_per_s": batch_size * len(total) / sum(total), **self._memory()}

    def _stream(self, batch_size: int):
        from behavior_smolvla.data.sampler import TrainingStream

        t = self.t
        return TrainingStream(t.dataset, seed=t.cfg.optim.seed, batch_size=batch_size, rank=0, world_size=1,
                              uint8_images=t.uint8_frames)

    @staticmethod
    def _tile(inputs: dict, batch_size: int) -> dict:
        import torch

        out = {}
        for key, value in inputs.items():
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                reps = -(-batch_size // value.shape[0])
                out[key] = value.repeat(reps, *([1] * (value.dim() - 1)))[:batch_size].contiguous()
            elif isinstance(value, list):
                out[key] = (value * batch_size)[:batch_size]
            else:
                out[key] = value
        return out

    def _memory(self) -> dict[str, float]:
        import torch

        out = {"peak_rss_mib": _peak_rss_mib()}
        if self.device.type == "cuda":
            out["peak_gpu_mib"] = torch.cuda.max_memory_allocated(self.device) / 2**20
            out["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved(self.device) / 2**20
        return out

    def checkpoints(self, repeat: int) -> dict[str, Any]:
        """``Trainer.save_checkpoint`` ``repeat`` times at the current step (``--keep-last 1``: each write replaces
        the previous folder, as a run's next save prunes it), each followed by what ``--resume`` reads: its
        verification against the manifests (``verify_checkpoint``: every byte hashed once), then ``load_policy_bundle``
        + ``load_training_state`` (which find the digests already checked): seconds and size on disk."""
        from behavior_smolvla.policy import checkpoint as ckpt
        from behavior_smolvla.policy.smolvla import load_policy_bundle

        writes, verifies, loads, sizes = [], [], [], {}
        last = None
        for _ in range(repeat):
            t0 = time.perf_counter()
            last = self.trainer.save_checkpoint()
            writes.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ckpt.verify_checkpoint(last, training_state=True)  # new files: nothing hashed before in this process
            verifies.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            loaded = load_policy_bundle(last / ckpt.PRETRAINED_DIR, device=str(self.device))
            ckpt.load_training_state(last, self.t.optimizer, self.t.scheduler)
            self.sync()
            loads.append(time.perf_counter() - t0)
            del loaded
        for part in (ckpt.PRETRAINED_DIR, ckpt.TRAINING_STATE_DIR):
            sizes[part] = sum(f.stat().st_size for f in (last / part).rglob("*") if f.is_file()) / 2**20
        return {"checkpoint_dir": str(last), "checkpoint_mib": sum(sizes.values()),
                "checkpoint_parts_mib": sizes, "checkpoint_write_s": _spread(writes),
                "checkpoint_verify_s": _spread(verifies), "checkpoint_load_s": _spread(loads)}


def serve_latency(checkpoint: Path, device: str, calls: int) -> dict[str, Any]:
    """``BehaviorPolicy.act`` model calls (``n_action_steps=1``) on release-size evaluator observations."""
    import numpy as np

    from behavior_smolvla.serving.policy import load_policy

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from serve import observations

    policy = load_policy(checkpoint, device=device, n_action_steps=1)
    obs = observations(calls + 2)
    for o in obs[:2]:  # first-call overheads
        policy.act(o)
    times = []
    for o in obs[2:]:
        t0 = time.perf_counter()
        policy.act(o)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"serve_calls": calls, "serve_p50_ms": float(np.percentile(times, 50)),
            "serve_p95_ms": float(np.percentile(times, 95))}


def child(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    t0 = time.perf_counter()
    trainee = Trainee(spec)
    from behavior_smolvla.policy.standin import count_parameters

    out: dict[str, Any] = {**count_parameters(trainee.policy), "model_load_s": time.perf_counter() - t0,
                           "reinitialised": trainee.reinitialised, "state_map": trainee.state_map.name,
                           "state_dim": trainee.state_map.output_dim, "torch_threads": torch.get_num_threads(),
                           "runs": []}
    if spec["sweep"]:
        fits = None
        for b in spec["batch_sizes"]:
            oom = False
            try:
                out["runs"].append(trainee.kept_run(b, spec["warmup"], spec["steps"]))
                fits = b
            except torch.OutOfMemoryError:
                oom = True
            if oom:  # outside the except block: its traceback no longer holds the failed step's tensors
                trainee.t.optimizer.zero_grad(set_to_none=True)
                gc.collect()
                torch.cuda.empty_cache()
                out["runs"].append({"batch_size": b, "fed_by": "kept batch (compute only)", "oom": True})
                break
        out["max_batch_size"] = fits
        if fits:
            out["runs"].append(trainee.fed_run(fits, spec["warmup"], spec["steps"]))
    else:
        for b in spec["batch_sizes"]:
            out["runs"].append(trainee.fed_run(b, spec["warmup"], spec["steps"]))
    if spec["ckpt_repeat"]:
        out.update(trainee.checkpoints(spec["ckpt_repeat"]))
    if spec.get("serve_checkpoint"):
        del trainee
        out.update(serve_latency(Path(spec["serve_checkpoint"]), spec["device"], spec["serve_calls"]))
    out["peak_rss_mib_process"] = _peak_rss_mib()
    return out


# -- parent ------------------------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    with tempfile.NamedTemporaryFile("r", suffix=".json") as result:
        spec = {**spec, "result": result.name}
        proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], env=env, check=False,
                              stdout=sys.stderr if args.json else None)
        if proc.returncode != 0:
            sys.exit(f"measuring process failed ({proc.returncode}) for {spec['batch_sizes']}")
        return json.loads(Path(result.name).read_text())


def summarise(args: argparse.Namespace, children: list[dict[str, Any]]) -> dict[str, Any]:
    first = children[0]
    runs = [r for c in children for r in c["runs"]]
    fed = [r for r in runs if r.get("fed_by") == "DataLoader"]
    main = fed[-1] if args.device.startswith("cuda") else fed[0]
    summary = {
        "model": "tiny backbone from scratch (--smoke)" if args.smoke else "smolvla_base stand-in",
        "device": args.device, "precision": args.precision, "image_size": args.image_size, "cameras": 3,
        "chunk_size": CHUNK_SIZE, "state_map": first["state_map"], "state_dim": first["state_dim"],
        "reinitialised": first["reinitialised"], "torch_threads": first["torch_threads"],
        "params_total": first["params_total"], "params_trainable": first["params_trainable"],
        "batch_size": main["batch_size"], "step_s": main["step_s"]["median"], "samples_per_s": main["samples_per_s"],
        "data_wait_frac": main["data_wait_frac"], "num_workers": main["num_workers"],
        "peak_rss_mib": main["peak_rss_mib"],
        "checkpoint_mib": first["checkpoint_mib"], "checkpoint_parts_mib": first["checkpoint_parts_mib"],
        "checkpoint_write_s": first["checkpoint_write_s"]["median"],
        "checkpoint_verify_s": first["checkpoint_verify_s"]["median"],
        "checkpoint_load_s": first["checkpoint_load_s"]["median"],
        "checkpoint_write_s_spread": first["checkpoint_write_s"], "checkpoint_load_s_spread": first["checkpoint_load_s"],
        "checkpoint_verify_s_spread": first["checkpoint_verify_s"],
        "model_load_s": first["model_load_s"], "runs": runs,
    }
    for key in ("max_batch_size", "serve_calls", "serve_p50_ms", "serve_p95_ms"):
        if key in first:
            summary[key] = first[key]
    if "peak_gpu_mib" in main:
        summary["peak_gpu_mib"] = main["peak_gpu_mib"]
    return summary


def print_table(s: dict[str, Any]) -> None:
    print(f"\n{s['model']} on {s['device']} ({s['precision']}, {s['torch_threads']} torch threads): "
          f"{s['params_total'] / 1e6:.1f} M parameters, {s['params_trainable'] / 1e6:.1f} M trainable; "
          f"3 cameras at {s['image_size']} px, chunk {s['chunk_size']}, state map {s['state_map']} "
          f"({s['state_dim']} dims)\n")
    print("| batch | fed by | s/step (median) | spread | data wait | samples/s | CPU s/step | peak RSS MiB | "
          "peak GPU MiB |")
    print("|--:|---|--:|---|--:|--:|--:|--:|--:|")
    for r in s["runs"]:
        if r.get("oom"):
            print(f"| {r['batch_size']} | {r['fed_by']} | out of memory | | | | | | |")
            continue
        st = r["step_s"]
        wait = f"{r['data_wait_frac']:.1%}" if "data_wait_frac" in r else "-"
        cpu = f"{r['cpu_s_per_step']:.2f}" if "cpu_s_per_step" in r else "-"
        gpu = f"{r['peak_gpu_mib']:.0f}" if "peak_gpu_mib" in r else "-"
        print(f"| {r['batch_size']} | {r['fed_by']} | {st['median']:.3f} | {st['min']:.3f}-{st['max']:.3f} "
              f"(n={st['n']}) | {wait} | {r['samples_per_s']:.2f} | {cpu} | {r['peak_rss_mib']:.0f} | {gpu} |")
    w, v, ld = s["checkpoint_write_s_spread"], s["checkpoint_verify_s_spread"], s["checkpoint_load_s_spread"]
    parts = ", ".join(f"{k} {v:.0f}" for k, v in s["checkpoint_parts_mib"].items())
    print(f"\ncheckpoint: {s['checkpoint_mib']:.0f} MiB on disk ({parts}); write {w['median']:.1f} s "
          f"({w['min']:.1f}-{w['max']:.1f}, n={w['n']}), verify {v['median']:.1f} s ({v['min']:.1f}-{v['max']:.1f}), "
          f"load {ld['median']:.1f} s ({ld['min']:.1f}-{ld['max']:.1f}); "
          f"model build + weight load {s['model_load_s']:.1f} s")
    if "serve_p50_ms" in s:
        print(f"serve (BehaviorPolicy.act, n_action_steps 1, {s['serve_calls']} calls): p50 {s['serve_p50_ms']:.1f} ms, "
              f"p95 {s['serve_p95_ms']:.1f} ms")
    if "max_batch_size" in s:
        print(f"largest batch that fit: {s['max_batch_size']}")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        from behavior_smolvla.errors import BehaviorSmolVLAError

        spec = json.loads(args.child)
        try:
            Path(spec["result"]).write_text(json.dumps(child(spec)))
        except BehaviorSmolVLAError as exc:  # bad input (flags, data): one line, as smolvla-train says it
            sys.exit(f"error: {exc}")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    policy, data = ensure_inputs(args)
    cuda = args.device.startswith("cuda")
    if args.batch_sizes:
        sizes = [int(b) for b in args.batch_sizes.split(",")]
    elif cuda:
        sizes = [b for b in (8, 16, 32, 64, 128, 256, 512) if b <= args.max_batch]
    else:
        sizes = [1, 2]
    serve_ckpt = trainer_checkpoint(args, policy, data) if args.serve_calls else None
    run_dir = args.root / "runs" / f"{args.device.replace(':', '')}"
    shutil.rmtree(run_dir, ignore_errors=True)
    base = {"device": args.device, "image_size": args.image_size, "dataset": str(data),
            **policy, "seed": args.seed,
            "precision": args.precision, "filter_state": args.filter_state, "num_workers": args.num_workers,
            "warmup": args.warmup, "steps": args.steps, "threads": args.threads}
    if cuda:
        groups = [{"batch_sizes": sizes, "sweep": True, "ckpt_repeat": args.ckpt_repeat,
                   "serve_calls": args.serve_calls, "serve_checkpoint": str(serve_ckpt) if serve_ckpt else None}]
    else:  # one process per batch size: each peak RSS is its own
        groups = [{"batch_sizes": [b], "sweep": False, "ckpt_repeat": args.ckpt_repeat if i == 0 else 0,
                   "serve_calls": args.serve_calls if i == 0 else 0,
                   "serve_checkpoint": str(serve_ckpt) if serve_ckpt and i == 0 else None}
                  for i, b in enumerate(sizes)]
    children = []
    for group in groups:
        say(args, f"measuring batch size(s) {group['batch_sizes']} on {args.device} ...")
        # A run folder per process: build_training refuses one that already holds checkpoints.
        group_dir = run_dir / f"batch{group['batch_sizes'][0]}"
        children.append(run_child(args, {**base, **group, "run_dir": str(group_dir)}))
    summary = summarise(args, children)
    if serve_ckpt:
        summary["serve_checkpoint"] = str(serve_ckpt)
    if args.keep_checkpoint:
        summary["checkpoint_dir"] = children[0]["checkpoint_dir"]
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    if args.json:
        print(json.dumps(summary))
    else:
        print_table(summary)


if __name__ == "__main__":
    main()
