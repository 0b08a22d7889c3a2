"""Policy-server benchmark (issue 6): requests/s and p50/p95 latency over loopback. Prints a table; not a test.

``smolvla-serve`` runs in its own process on 127.0.0.1; one client in this process, built like the BEHAVIOR
evaluator's (``websockets`` sync client, msgpack with bytes-keyed array maps, no compression), sends evaluator
observations at the release's sizes (head 720x720, wrists 480x480, RGBA, 256-dim proprio: ~3.9 MB per request)
back to back and times each request from send to reply. With ``n_action_steps = N`` (the checkpoint's, or
``--n-action-steps``), requests ``0, N, 2N, ...`` of a fresh connection call the model and the others are served
from the action queue, so one run measures both kinds of step:

* queue-served step: decode + validate the observation, pop an action, reply;
* model-call step: the same plus the frames' conversion (yuv420p, resize) and one SmolVLA chunk prediction.

Rows also give the server-side ``infer_ms`` (the step inside the server, without transport) and, last, a
``__action_chunk_size__ = N`` run (one model call per request, N actions per reply; the 2026 evaluator's
action-chunk replay). Without ``--checkpoint`` a 1-step demo checkpoint (tiny backbone, 64 px; speed does not
depend on training) is trained into ``--root`` first.

A last table times one model call per inference strategy (``--strategies``, default zero noise and the mean of
1, 4 and 8 draws: ``smolvla-serve --noise sample --num-samples K``), each in a server of its own, from
``--chunk-requests`` action-chunk requests; the single-step rows above use the first strategy. On a busy machine
those rows drift with the other load, so a second table times the model call alone in this process
(``PolicyBundle.predict_chunk`` on one served observation, the strategies interleaved in each of
``--model-repeats`` rounds; min and median), beside K separate one-draw calls: what the batched call saves.

With ``--api-key`` the server requires a key (given through ``SMOLVLA_API_KEY``) and every connection sends
``Authorization: Api-Key KEY``, as openpi's ``WebsocketClientPolicy(api_key=KEY)`` does. The key is checked once,
in the HTTP upgrade, so the rows should match a run without it.

    python bench/serve.py                                  # tiny demo backbone on CPU
    python bench/serve.py --api-key                        # the same with a (random) API key
    python bench/serve.py --checkpoint RUN --device cuda   # a real checkpoint on a GPU
    python bench/serve.py --smoke --json                   # the script itself in seconds
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SIZES = {"head": (720, 720), "left_wrist": (480, 480), "right_wrist": (480, 480)}
"""Camera resolutions of the BEHAVIOR release (``../shared/reference/behavior_r1pro.md``)."""
KEYS = {
    "head": "robot_r1::robot_r1:zed_link:Camera:0::rgb",
    "left_wrist": "robot_r1::robot_r1:left_realsense_link:Camera:0::rgb",
    "right_wrist": "robot_r1::robot_r1:right_realsense_link:Camera:0::rgb",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--checkpoint", type=Path, help="checkpoint or run folder (default: train a 1-step demo)")
    p.add_argument("--root", type=Path, default=REPO / "outputs" / "bench_serve", help="where the demo is trained")
    p.add_argument("--device", default="cpu", help="server device: cpu, cuda, auto")
    p.add_argument("--n-action-steps", type=int, help="actions per model call (default: the checkpoint's)")
    p.add_argument("--requests", type=int, default=200, help="requests of the single-step run")
    p.add_argument("--chunk-requests", type=int, default=10, help="requests of the action-chunk run")
    p.add_argument("--warmup", type=int, default=2, help="model calls before timing (first-call overheads)")
    p.add_argument("--api-key", nargs="?", const="", default=None,
                   help="serve with this API key (no value: a random one); clients send Authorization: Api-Key KEY")
    p.add_argument("--strategies", default="zero,1,4,8",
                   help="inference strategies to time, comma-separated: zero (zero noise) or K (mean of K draws)")
    p.add_argument("--model-repeats", type=int, default=5,
                   help="rounds of the in-process model-call timing (0 skips it)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the rows' figures) after the table")
    p.add_argument("--smoke", action="store_true",
                   help="try the script in seconds: --requests 12 --chunk-requests 2 --warmup 1 --strategies zero,2 "
                        "--model-repeats 1 (figures meaningless)")
    if p.parse_known_args(argv)[0].smoke:
        # Each strategy starts its own server (~8 s on 2 cores): two exercise both paths (zero noise, mean of K).
        p.set_defaults(requests=12, chunk_requests=2, warmup=1, strategies="zero,2", model_repeats=1)  # flags win
    args = p.parse_args(argv)
    try:
        args.strategies = [strategy_flags(s) for s in args.strategies.split(",") if s.strip()]
    except ValueError:
        p.error(f"--strategies {args.strategies!r}: use zero or a number of draws, e.g. zero,1,4,8")
    if args.api_key == "":
        args.api_key = secrets.token_urlsafe(32)
    return args


def strategy_flags(name: str) -> list[str]:
    """``zero`` -> ``--noise zero``; ``K`` -> ``--noise sample --num-samples K`` (``smolvla-serve``'s flags)."""
    name = name.strip()
    if name == "zero":
        return ["--noise", "zero"]
    if not name.isdigit() or int(name) < 1:
        raise ValueError(name)
    return ["--noise", "sample", "--num-samples", name, "--noise-seed", "0"]


def model_call_ms(checkpoint: Path, device: str, strategies: list[list[str]], repeats: int) -> list[dict]:
    """Milliseconds of ``predict_chunk`` on one served observation per strategy (min, median over ``repeats``
    rounds, strategies interleaved per round) and, for K draws, of K one-draw calls in a row: wall time, and the
    process's CPU time (all threads; waiting for a core on a shared machine does not count)."""
    from behavior_smolvla.policy.inference import Inference
    from behavior_smolvla.policy.smolvla import load_policy_bundle
    from behavior_smolvla.serving.observation import ObservationSpec

    bundle = load_policy_bundle(checkpoint, device=device)
    batch = ObservationSpec.from_inputs(bundle.inputs)(observations(1, seed=3)[0])
    inferences = [Inference.from_flags(f[1], int(f[3]) if len(f) > 2 else None) for f in strategies]
    one_draw = Inference("sample", 1)
    calls = {i.describe(): (lambda i=i: bundle.predict_chunk(batch, i, noise_seed=0)) for i in inferences}
    calls.update({f"{i.num_samples} x one draw": (lambda i=i: [bundle.predict_chunk(batch, one_draw, noise_seed=k)
                                                               for k in range(i.num_samples)])
                  for i in inferences if i.num_samples > 1})
    wall: dict[str, list[float]] = {name: [] for name in calls}
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    for call in calls.values():
        call()  # first-call overheads
    for _ in range(repeats):
        for name, call in calls.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            call()
            wall[name].append((time.perf_counter() - start) * 1e3)
            cpu[name].append((time.process_time() - start_cpu) * 1e3)
    return [{"call": name, "min_ms": min(wall[name]), "median_ms": float(np.median(wall[name])),
             "cpu_median_ms": float(np.median(cpu[name]))} for name in calls]


def _headers(api_key: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Api-Key {api_key}"} if api_key else None


def _encode(obj):
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    return obj


def _decode(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    return obj


def demo_checkpoint(root: Path) -> Path:
    run = root / "demo_run"
    if not (run / "checkpoints" / "last").exists():
        print(f"training a 1-step demo checkpoint into {run} ...", flush=True)
        subprocess.run([str(BIN / "smolvla-train"), "--demo", "--output-dir", str(run), "--max-steps", "1",
                        "--save-steps", "1", "--wandb-disable"], check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return run


def observations(count: int, seed: int = 0) -> list[bytes]:
    """``count`` distinct evaluator observations, packed (packing is the client's cost, not the server's)."""
    rng = np.random.default_rng(seed)
    base = {k: rng.integers(0, 256, (*SIZES[r], 4), dtype=np.uint8) for r, k in KEYS.items()}
    out = []
    for i in range(count):
        obs = {KEYS[r]: np.roll(img, i, axis=1) for r, img in zip(KEYS, base.values(), strict=True)}
        obs["robot_r1::proprio"] = rng.normal(0, 0.3, 256).astype(np.float32)
        obs["task_id"] = np.array([0], dtype=np.int64)
        out.append(obs)
    return out


class Server:
    def __init__(self, checkpoint: Path, device: str, n_action_steps: int | None, api_key: str | None = None,
                 strategy: list[str] = ()):
        args = [str(BIN / "smolvla-serve"), "--checkpoint", str(checkpoint), "--port", "0", "--device", device,
                *strategy]
        if n_action_steps:
            args += ["--n-action-steps", str(n_action_steps)]
        env = {k: v for k, v in os.environ.items() if k != "SMOLVLA_API_KEY"}
        env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        if api_key:
            env["SMOLVLA_API_KEY"] = api_key  # not --api-key: a flag would show in ps
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        self.lines: list[str] = []
        self.port = None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if m := re.search(r"ws://127\.0\.0\.1:(\d+)", line):
                self.port = int(m.group(1))
                break
        if self.port is None:
            raise SystemExit("smolvla-serve did not start:\n" + "\n".join(self.lines[-20:]))
        threading.Thread(target=lambda: [self.lines.append(x.rstrip()) for x in self.proc.stdout], daemon=True).start()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=60)


def cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux ``/proc``; None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(port: int, messages: list[dict], chunk: int | None,
        api_key: str | None = None) -> tuple[list[float], list[float], dict]:
    """Send ``messages`` back to back on one fresh connection; per request: round trip (ms) and server infer_ms."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=60,
                 additional_headers=_headers(api_key)) as ws:
        metadata = msgpack.unpackb(ws.recv(timeout=60), object_hook=_decode)
        ws.send(msgpack.packb({"reset": True}, default=_encode))
        packed = [msgpack.packb({**m, "__action_chunk_size__": chunk} if chunk else m, default=_encode)
                  for m in messages]
        rtt, infer = [], []
        for data in packed:
            start = time.perf_counter()
            ws.send(data)
            raw = ws.recv(timeout=600)
            rtt.append((time.perf_counter() - start) * 1e3)
            if isinstance(raw, str):
                raise SystemExit(f"server error: {raw}")
            infer.append(float(msgpack.unpackb(raw, object_hook=_decode)["server_timing"]["infer_ms"]))
    return rtt, infer, metadata


def row(name: str, rtt: list[float], infer: list[float], actions_per_request: int = 1) -> str:
    rtt_a = np.asarray(rtt)
    per_s = len(rtt_a) / (rtt_a.sum() / 1e3)
    return (f"| {name} | {len(rtt_a)} | {per_s:.1f} | {per_s * actions_per_request:.1f} | "
            f"{np.percentile(rtt_a, 50):.1f} | {np.percentile(rtt_a, 95):.1f} | {np.percentile(infer, 50):.1f} |")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    checkpoint = args.checkpoint or demo_checkpoint(args.root)
    server = Server(checkpoint, args.device, args.n_action_steps, args.api_key, args.strategies[0])
    try:
        print(next(line for line in server.lines if "ws://" in line), flush=True)
        from websockets.sync.client import connect

        with connect(f"ws://127.0.0.1:{server.port}", compression=None, max_size=None,
                     additional_headers=_headers(args.api_key)) as ws:
            meta = msgpack.unpackb(ws.recv(timeout=60), object_hook=_decode)
        n = int(meta["n_action_steps"])
        warm = observations(args.warmup * n, seed=1)
        run(server.port, warm, None, args.api_key)
        msgs = observations(args.requests)
        cpu_before = cpu_s(server.proc.pid)
        rtt, infer, _ = run(server.port, msgs, None, args.api_key)
        cpu_after = cpu_s(server.proc.pid)
        model = [i for i in range(len(rtt)) if i % n == 0]
        queue = [i for i in range(len(rtt)) if i % n != 0]
        chunk_rtt, chunk_infer, _ = run(server.port, observations(args.chunk_requests, seed=2), n, args.api_key)
        size_mb = len(msgpack.packb(msgs[0], default=_encode)) / 1e6
    finally:
        server.stop()
    # One model call per request under each strategy, each in its own server (the first one's figures are above).
    by_strategy = [(meta["inference"]["label"], chunk_rtt, chunk_infer)]
    for strategy in args.strategies[1:]:
        other = Server(checkpoint, args.device, args.n_action_steps, args.api_key, strategy)
        try:
            run(other.port, observations(args.warmup, seed=1), n, args.api_key)
            rtt_k, infer_k, meta_k = run(other.port, observations(args.chunk_requests, seed=2), n, args.api_key)
        finally:
            other.stop()
        by_strategy.append((meta_k["inference"]["label"], rtt_k, infer_k))
    direct = model_call_ms(checkpoint, args.device, args.strategies, args.model_repeats) if args.model_repeats else []
    summary = next((line for line in server.lines if "stopped:" in line), "")
    print(f"\nsmolvla-serve on {meta['device']}, image size {meta['image_size']} px, chunk {meta['chunk_size']}, "
          f"n_action_steps {n}; request {size_mb:.2f} MB (release-size RGBA cameras); loopback, one client; "
          f"API key {'on' if args.api_key else 'off'}\n")
    print("| step | requests | requests/s | actions/s | p50 ms | p95 ms | server infer p50 ms |")
    print("|---|---|---|---|---|---|---|")
    print(row("queue-served step", [rtt[i] for i in queue], [infer[i] for i in queue]))
    print(row("model-call step", [rtt[i] for i in model], [infer[i] for i in model]))
    print(row(f"all steps (1 model call per {n})", rtt, infer))
    print(row(f"action chunk K={n} (1 model call each)", chunk_rtt, chunk_infer, actions_per_request=n))
    print(f"\none model call per request ({n} actions each) by inference strategy (--noise, --num-samples):\n")
    print("| chunks | requests | p50 ms | p95 ms | server infer p50 ms | infer vs first |")
    print("|---|---|---|---|---|---|")
    base = float(np.percentile(by_strategy[0][2], 50))
    for label, rtt_k, infer_k in by_strategy:
        infer_p50 = float(np.percentile(infer_k, 50))
        print(f"| {label} | {len(rtt_k)} | {np.percentile(rtt_k, 50):.1f} | {np.percentile(rtt_k, 95):.1f} | "
              f"{infer_p50:.1f} | {infer_p50 / base:.2f}x |")
    if direct:
        print(f"\nthe model call alone (predict_chunk in this process, one observation; {args.model_repeats} rounds):\n")
        print("| call | min ms | median ms | CPU median ms |")
        print("|---|---|---|---|")
        for d in direct:
            print(f"| {d['call']} | {d['min_ms']:.1f} | {d['median_ms']:.1f} | {d['cpu_median_ms']:.1f} |")
    if cpu_before is not None and cpu_after is not None:
        print(f"\nserver CPU time over the {len(rtt)} single-step requests: {(cpu_after - cpu_before) * 1e3 / len(rtt):.1f} "
              "ms per request (user + system, all threads)")
    if summary:
        print(f"\nserver: {summary.strip()}")
    if args.json:
        import json

        def figures(rtt_ms: list[float], infer_ms: list[float], per_request: int = 1) -> dict | None:
            if not rtt_ms:
                return None
            a = np.asarray(rtt_ms)
            return {"requests": len(a), "requests_per_s": len(a) / (a.sum() / 1e3),
                    "actions_per_s": per_request * len(a) / (a.sum() / 1e3), "p50_ms": float(np.percentile(a, 50)),
                    "p95_ms": float(np.percentile(a, 95)), "server_infer_p50_ms": float(np.percentile(infer_ms, 50))}

        print(json.dumps({
            "device": meta["device"], "image_size": meta["image_size"], "chunk_size": meta["chunk_size"],
            "n_action_steps": n, "request_mb": size_mb,
            "queue_served": figures([rtt[i] for i in queue], [infer[i] for i in queue]),
            "model_call": figures([rtt[i] for i in model], [infer[i] for i in model]),
            "all_steps": figures(rtt, infer),
            "action_chunk": figures(chunk_rtt, chunk_infer, n),
            "inference": meta["inference"],
            "model_call_alone": direct,
            "by_inference": [{"inference": label, **figures(rtt_k, infer_k, n)} for label, rtt_k, infer_k in by_strategy],
        }))


if __name__ == "__main__":
    main()
