"""Preemption: SIGTERM to every rank or to one rank of a 2-process DDP run (torchrun, gloo on CPU, real SmolVLA on the
tiny backbone), a rank that cannot stop in time, and DataLoader workers that outlive a cluster's SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_train import ENV, _wait_for_step, base_args, torchrun

from behavior_smolvla.policy.checkpoint import list_checkpoints, resolve_checkpoint, verify_checkpoint
from behavior_smolvla.training.tracking import read_metrics

STOPPED = re.compile(r"rank (\d)/2: stopped by signal \((SIGTERM on ranks? [\d, ]+)\) at step (\d+)")
"""The line every rank prints when it stops: its rank, the signal and the ranks that received it, the step."""


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """``(state, parent pid)`` of process ``pid`` from /proc, None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    state, ppid = stat.rsplit(")", 1)[1].split()[:2]  # the command name in parentheses may hold spaces
    return state, int(ppid)


def _rank_pids(launcher: subprocess.Popen, world: int = 2, timeout: float = 120) -> dict[int, int]:
    """``{rank: pid}`` of the ranks torchrun started (its children, by the ``RANK`` variable torchrun gave them)."""
    deadline = time.time() + timeout
    while time.time() < deadline and launcher.poll() is None:
        ranks = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and (_proc_stat(int(entry.name)) or ("", 0))[1] == launcher.pid:
                try:
                    env = (entry / "environ").read_bytes().split(b"\0")
                except OSError:
                    continue
                rank = next((int(v[5:]) for v in env if v.startswith(b"RANK=")), None)
                if rank is not None:
                    ranks[rank] = int(entry.name)
        if len(ranks) == world:
            return ranks
        time.sleep(0.1)
    raise AssertionError(f"torchrun never showed {world} ranks")


def _wait_gone(pid: int, timeout: float = 120) -> None:
    """Until process ``pid`` has exited (gone, or a zombie its parent has not reaped yet)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        stat = _proc_stat(pid)
        if stat is None or stat[0] == "Z":
            return
        time.sleep(0.05)
    raise AssertionError(f"process {pid} still running after {timeout} s")


def _processes_of(port: int) -> list[int]:
    """Processes of the run whose rendezvous is on ``port`` (ranks, their DataLoader workers and forkservers: all
    inherit ``MASTER_PORT``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (_proc_stat(int(entry.name)) or ("Z",))[0] != "Z":
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"MASTER_PORT={port}".encode() in env:
                found.append(int(entry.name))
    return found


def _assert_nothing_left(port: int, timeout: float = 60) -> None:
    """No process of the run on ``port`` is left (a forkserver ends moments after the last process holding it)."""
    deadline = time.time() + timeout
    while _processes_of(port) and time.time() < deadline:
        time.sleep(0.2)
    assert _processes_of(port) == []


def _launch(port: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen(torchrun(list(args), port, nproc_per_node=2), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT,
                            text=True)


def _finish(proc: subprocess.Popen, ranks: dict[int, int]) -> str:
    """torchrun's output once it exits (SIGKILL for every process this test started if it has not within 300 s)."""
    try:
        return proc.communicate(timeout=300)[0]
    finally:
        if proc.poll() is None:
            for pid in ranks.values():  # each rank leads its own process group (its DataLoader workers)
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            proc.kill()
            proc.communicate()


def _stop_lines(output: str) -> dict[int, tuple[str, int]]:
    found = {int(rank): (signals, int(step)) for rank, signals, step in STOPPED.findall(output)}
    assert len(STOPPED.findall(output)) == 2 and set(found) == {0, 1}, output[-3000:]
    return found


def _assert_one_stop_checkpoint(out: Path, step: int) -> None:
    """``checkpoints/`` holds exactly the stop checkpoint of ``step`` (and ``last`` pointing at it), complete."""
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [f"{step:06d}", "last"]
    assert os.readlink(ckpts / "last") == f"{step:06d}"
    verify_checkpoint(ckpts / "last", training_state=True)
    saved = json.loads((ckpts / "last" / "training_state" / "training_step.json").read_text())
    assert saved["step"] == step and saved["world_size"] == 2
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == list(range(1, step + 1))  # one writer, no gaps


def _digests(checkpoint: Path) -> dict[str, str]:
    return {str(p.relative_to(checkpoint)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(checkpoint.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_sigterm_to_every_rank_stops_all_after_the_same_step(synthetic_2025, tiny_vlm, tmp_path):
    """What SLURM does on preemption: SIGTERM to every process of each rank (the rank, its DataLoader worker and the
    worker's forkserver), one rank after the other. Every rank finishes the same step, rank 0 writes one checkpoint,
    every rank exits 0 (torchrun's exit code is 0 only then)."""
    out = tmp_path / "run"
    proc = _launch(29541, *base_args(synthetic_2025, tiny_vlm, out, "--max-steps", "200", "--save-steps", "100",
                                     "--num-workers", "1"))
    ranks: dict[int, int] = {}
    try:
        _wait_for_step(out, proc, 2)
        ranks = _rank_pids(proc)
        for rank in (1, 0):
            os.killpg(ranks[rank], signal.SIGTERM)
    finally:
        output = _finish(proc, ranks)
    assert proc.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "exited unexpectedly" not in output, output[-3000:]
    stops = _stop_lines(output)
    (step,) = {s for _, s in stops.values()}  # the same step on both ranks
    assert 2 <= step < 200
    _assert_one_stop_checkpoint(out, step)
    _assert_nothing_left(29541)  # the ranks shut their DataLoader workers down; then their forkservers ended


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_all_then_a_rank_that_cannot_join_keeps_last(synthetic_2025, tiny_vlm, tmp_path):
    """SIGTERM to rank 1 only: rank 0, which writes checkpoints, learns of it in the step's all-reduce, and both
    stop after the same step with one checkpoint, exit 0. Resumed from it, rank 0 is frozen (SIGSTOP: a rank that
    cannot join) and rank 1 signalled: rank 1 waits in the step's collective, and --stop-timeout after the signal
    prints one line and exits with 124, its DataLoader worker with it; the checkpoint it resumed from is still
    ``last``, unchanged byte for byte, and no process of the run is left."""
    out = tmp_path / "run"
    proc = _launch(29542, *base_args(synthetic_2025, tiny_vlm, out, "--max-steps", "200", "--save-steps", "100"))
    ranks: dict[int, int] = {}
    try:
        _wait_for_step(out, proc, 2)
        ranks = _rank_pids(proc)
        os.kill(ranks[1], signal.SIGTERM)
    finally:
        output = _finish(proc, ranks)
    assert proc.returncode == 0, output[-3000:]
    stops = _stop_lines(output)
    assert {signals for signals, _ in stops.values()} == {"SIGTERM on rank 1"}
    (step,) = {s for _, s in stops.values()}
    _assert_one_stop_checkpoint(out, step)
    last = out / "checkpoints" / f"{step:06d}"
    before = _digests(last)

    proc = _launch(29543, "--resume", str(out), "--stop-timeout", "3", "--num-workers", "1")
    ranks = {}
    try:
        _wait_for_step(out, proc, step + 2)  # it resumed from the stop checkpoint and trains on
        ranks = _rank_pids(proc)
        os.kill(ranks[0], signal.SIGSTOP)
        os.kill(ranks[1], signal.SIGTERM)
        _wait_gone(ranks[1])
        os.kill(ranks[0], signal.SIGCONT)  # it finds its peer gone (and torchrun's SIGTERM): it fails, writing nothing
    finally:
        output = _finish(proc, ranks)
    assert proc.returncode != 0
    timeout_lines = [line for line in output.splitlines() if "no clean stop" in line]
    assert len(timeout_lines) == 1, output[-3000:]
    assert re.fullmatch(
        rf"rank 1/2: no clean stop within --stop-timeout 3 s of SIGTERM: still .+; exiting with code 124\. "
        rf"checkpoints/last -> {step:06d} is the newest complete checkpoint; `smolvla-train --resume {re.escape(str(out))}` "
        r"continues from it", timeout_lines[0]), timeout_lines[0]
    # torchrun's report: rank 1 exited with 124
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)\s*\n\s*exitcode\s*:\s*124", output), output[-2000:]
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == [f"{step:06d}"]
    assert resolve_checkpoint(out) == last.resolve()
    assert _digests(last) == before
    _assert_nothing_left(29543)  # rank 1 took its DataLoader worker with it; then their forkserver ended


WORKER_CHECK = '''
import functools, json, multiprocessing, os, signal, subprocess, sys
from pathlib import Path

def state(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"

if __name__ == "__main__":
    import torch
    from torch.utils.data import DataLoader, TensorDataset
    from behavior_smolvla.data.sampler import worker_context
    from behavior_smolvla.training.preemption import stop_signals_ignored, worker_stop_signals

    with stop_signals_ignored():
        context = worker_context(preload=("torch",))
    loader = DataLoader(TensorDataset(torch.arange(100)), batch_size=1, num_workers=1, multiprocessing_context=context,
                        worker_init_fn=functools.partial(worker_stop_signals, os.getpid()), persistent_workers=True)
    batches = iter(loader)
    first = [int(next(batches)[0])]
    (worker,) = multiprocessing.active_children()
    server = int(Path(f"/proc/{worker.pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    # Another process signals them, as a cluster does every process of a job, or a terminal its process group.
    for sig, pid in (("TERM", worker.pid), ("INT", worker.pid), ("TERM", server)):
        subprocess.run(["kill", f"-{sig}", str(pid)], check=True)
    after = [int(next(batches)[0]) for _ in range(20)]  # more than the worker had prefetched
    worker_after = state(worker.pid)
    worker.terminate()  # the owner's SIGTERM: what the DataLoader and multiprocessing do at shutdown
    worker.join(timeout=60)
    print(json.dumps({"first": first, "after": after, "worker": worker_after, "server": state(server),
                      "exitcode": worker.exitcode}))
'''


def test_data_workers_ignore_a_strangers_stop_signals_but_obey_the_trainer(tmp_path):
    """A DataLoader worker forked from the training forkserver keeps serving batches after SIGTERM and SIGINT from
    another process (and the forkserver survives SIGTERM); SIGTERM from the process that owns it still ends it, so
    a DataLoader shutdown and multiprocessing's exit never wait on a worker that ignores it."""
    script = tmp_path / "worker_check.py"
    script.write_text(WORKER_CHECK)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["first"] == [0] and result["after"] == list(range(1, 21))
    assert result["worker"] not in ("Z", "gone") and result["server"] not in ("Z", "gone"), result
    # 0: it exited on its owner's SIGTERM (a worker whose forkserver died reports 255)
    assert result["exitcode"] == 0, result
