"""No process outlives a killed training run.

``kill -9`` of a real ``smolvla-train`` with two DataLoader workers, once they have delivered batches: within 10 s
none of the run's processes (the workers, the forkserver they were forked from, multiprocessing's resource tracker)
is left, and no shared-memory file any of them had open or mapped is left in ``/dev/shm``. Processes are read from
``/proc`` (Linux): the tree is listed before the kill, since survivors are re-parented away from it afterwards, and
each is identified by pid and start time so that a reused pid cannot pass for a survivor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from behavior_smolvla.training.tracking import read_metrics

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
SURVIVAL_LIMIT_S = 10.0
"""How long the run's processes may outlive the trainer (the issue's acceptance: none left after 10 s)."""


def _stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, ppid, start time in clock ticks)`` of a process from ``/proc/<pid>/stat``, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) ": the command name may hold spaces
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every live descendant of ``root``: ``{pid: (start time, command line)}``."""
    parent = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            parent[int(entry.name)] = stat[1]
    found, frontier = {}, {root}
    while frontier:
        frontier = {pid for pid, ppid in parent.items() if ppid in frontier and pid not in found}
        for pid in frontier:
            stat = _stat(pid)
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if stat is not None:
                found[pid] = (stat[2], cmdline)
    return found


def _alive(pid: int, start: int) -> bool:
    """The same process (pid and start time) still exists and is not a zombie (a zombie holds no memory)."""
    stat = _stat(pid)
    return stat is not None and stat[2] == start and stat[0] != "Z"


def _shm_files(pids) -> set[str]:
    """``/dev/shm`` files the processes have open or mapped and that still have a name (not unlinked)."""
    names = set()
    for pid in pids:
        try:
            maps = Path(f"/proc/{pid}/maps").read_text().splitlines()
            fds = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
        except OSError:
            continue
        for path in [line.split(maxsplit=5)[5] for line in maps if len(line.split(maxsplit=5)) == 6] + fds:
            if path.startswith("/dev/shm/") and not path.endswith("(deleted)"):
                names.add(path)
    return names


STARTER = """
import time
from behavior_smolvla.data.sampler import worker_context
child = worker_context(preload=()).Process(target=time.sleep, args=(600,))
child.start()
print(child.pid, flush=True)
time.sleep(600)
"""
"""A process that starts one child through :func:`worker_context` (nothing preloaded: cheap) and prints its pid."""


def test_a_worker_context_process_exits_when_its_starter_is_killed():
    """The mechanism alone, in seconds: the starter's child is the forkserver's child, yet it exits when the starter
    is killed, and so do the forkserver and the resource tracker."""
    proc = subprocess.Popen([sys.executable, "-c", STARTER], env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    tree: dict[int, tuple[int, str]] = {}
    try:
        child = int(proc.stdout.readline())
        tree = _descendants(proc.pid)
        assert child in tree and (_stat(child) or ("", 0, 0))[1] != proc.pid, tree  # a grandchild: the server's
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        deadline = time.monotonic() + SURVIVAL_LIMIT_S
        while time.monotonic() < deadline and any(_alive(pid, start) for pid, (start, _) in tree.items()):
            time.sleep(0.1)
        assert not {pid for pid, (start, _) in tree.items() if _alive(pid, start)}, tree
        err = proc.stderr.read()
        assert f"process {child} exits: the process that started it ({proc.pid}) has exited" in err, err
        assert "Traceback" not in err, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_survivors(tree)


@pytest.mark.slow
def test_kill_9_of_training_leaves_no_process_and_no_shared_memory(synthetic_2025, tiny_vlm, tmp_path):
    run_dir = tmp_path / "run"
    log = tmp_path / "train.log"
    args = ["--dataset-path", str(synthetic_2025), "--from-scratch", "--vlm-model", str(tiny_vlm),
            "--output-dir", str(run_dir), "--image-size", "64", "--chunk-size", "8", "--batch-size", "4",
            "--num-workers", "2", "--device", "cpu", "--log-steps", "1", "--wandb-disable", "--max-steps", "100000",
            "--save-steps", "100000"]
    with log.open("w") as out:
        proc = subprocess.Popen([str(BIN / "smolvla-train"), *args], env=ENV, stdout=out, stderr=subprocess.STDOUT)
    tree: dict[int, tuple[int, str]] = {}
    try:
        # Up: two steps taken (so both workers have delivered batches through their shared-memory rings).
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if (run_dir / "metrics.jsonl").is_file() and any(r.get("step", 0) >= 2 for r in read_metrics(run_dir)):
                break
            time.sleep(0.2)
        assert proc.poll() is None, f"smolvla-train exited ({proc.returncode}):\n{log.read_text()[-3000:]}"
        tree = _descendants(proc.pid)
        shm = _shm_files([proc.pid, *tree])
        parent = {pid: (_stat(pid) or ("", 0, 0))[1] for pid in tree}
        # the trainer's children: the forkserver and the resource tracker; the workers are the forkserver's children
        servers = [pid for pid, (_, cmd) in tree.items() if parent[pid] == proc.pid and "forkserver" in cmd]
        assert len(servers) == 1, tree
        assert len([pid for pid in tree if parent[pid] == servers[0]]) == 2, tree
        assert any(parent[pid] == proc.pid and "resource_tracker" in cmd for pid, (_, cmd) in tree.items()), tree

        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=60) == -signal.SIGKILL
        deadline = time.monotonic() + SURVIVAL_LIMIT_S
        while time.monotonic() < deadline and any(_alive(pid, start) for pid, (start, _) in tree.items()):
            time.sleep(0.1)
        survivors = {pid: cmd for pid, (start, cmd) in tree.items() if _alive(pid, start)}
        assert not survivors, f"alive {SURVIVAL_LIMIT_S:g} s after kill -9 of the trainer: {survivors}"
        leaked = sorted(path for path in shm if os.path.exists(path))
        assert not leaked, f"shared memory left in /dev/shm: {leaked}"
        text = log.read_text()
        assert "Traceback" not in text, text[-3000:]
        # each worker said in one line why it exited
        assert text.count(f"the process that started it ({proc.pid}) has exited") == 2, text[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        _kill_survivors(tree)


def _kill_survivors(tree: dict[int, tuple[int, str]]) -> None:
    """Never leave a survivor behind, whatever failed: kill all but the resource tracker, give that one a few
    seconds to exit by itself (it then unlinks the run's semaphores), then kill it too."""
    def kill(pids) -> None:
        for pid in pids:
            if _alive(pid, tree[pid][0]):
                os.kill(pid, signal.SIGKILL)

    kill([pid for pid, (_, cmd) in tree.items() if "resource_tracker" not in cmd])
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(pid, start) for pid, (start, _) in tree.items()):
        time.sleep(0.1)
    kill(tree)
