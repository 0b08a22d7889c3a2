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
    p.add_argument("--json", action="store_true", help="print one JSON object (the rows' figures) after the table")
    p.add_argument("--smoke", action="store_true",
                   help="try the script in seconds: --requests 12 --chunk-requests 2 --warmup 1 (figures meaningless)")
    if p.parse_known_args(argv)[0].smoke:
        p.set_defaults(requests=12, chunk_requests=2, warmup=1)  # flags given explicitly still win
    args = p.parse_args(argv)
    if args.api_key == "":
        args.api_key = secrets.token_urlsafe(32)
    return args


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
    def __init__(self, checkpoint: Path, device: str, n_action_steps: int | None, api_key: str | None = None):
        args = [str(BIN / "smolvla-serve"), "--checkpoint", str(checkpoint), "--port", "0", "--device", device]
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
    server = Server(checkpoint, args.device, args.n_action_steps, args.api_key)
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
        }))


if __name__ == "__main__":
    main()
