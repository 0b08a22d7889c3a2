"""Beyond one machine: two torchrun "nodes" (and two ``accelerate launch`` "machines") on 127.0.0.1, gloo on CPU,
each node with its own numeric cache; the elastic resume that continues an epoch on another number of processes
(``training.build.resume_position``, ``data.sampler.EpochOrigin``) and each rank's random state. The property test
over plans is ``tests/test_sampler.py::test_elastic_resume_reads_the_epoch_once_property``."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import CliResult, run_in_process
from test_train import ENV, _one_line_error, base_args, run_train, torchrun

from behavior_smolvla.errors import ConfigError
from behavior_smolvla.policy import checkpoint as ckpt
from behavior_smolvla.training.build import rank_seed, resume_position, seed_rank
from behavior_smolvla.training.tracking import read_data_order, read_metrics

EPISODES = (10, 20)
"""Two episodes of the synthetic 2025 dataset (40 + 52 frames, one span each): a 2 x 4 epoch is 10 steps, so the
runs cross into a second epoch in a few steps."""


def _free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the suite may run beside other torchrun jobs on this machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_all(procs: list[subprocess.Popen], timeout: float = 600) -> list[int]:
    """The exit codes of ``procs`` (the launchers of one run's nodes); whatever still runs after ``timeout`` s, or
    when waiting fails, is killed so that no node outlives its test."""
    try:
        return [p.wait(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _train_args(dataset: Path, vlm: Path, out: Path, *extra: str) -> list[str]:
    """:func:`test_train.base_args` on :data:`EPISODES`, with the data order logged and wandb offline (files)."""
    args = [a for a in base_args(dataset, vlm, out, *extra) if a != "--wandb-disable"]
    return [*args, "--episodes", ",".join(map(str, EPISODES)), "--log-data-order", "--wandb-mode", "offline"]


def _train_here(*args: str) -> CliResult:
    """``smolvla-train ARGS`` in this process (no interpreter start, no torch import) on one torch thread, as the
    subprocess runs (``ENV``): two threads on a busy 2-core machine spin-wait and made these runs ~3x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = run_in_process("smolvla-train", list(args), env={"COLUMNS": "200", "OMP_NUM_THREADS": "1"})
    finally:
        torch.set_num_threads(threads)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _batches(run: Path, name: str) -> list[dict]:
    return [r for r in read_data_order(run)[name] if r["record"] == "batch"]


def _epoch_records(run: Path, name: str) -> dict[int, dict]:
    return {r["epoch"]: r for r in read_data_order(run)[name] if r["record"] == "epoch"}


def _samples(dataset: Path) -> int:
    from behavior_smolvla.data.meta import DatasetMeta

    meta = DatasetMeta.load(dataset)
    return sum(meta.episodes[e].length for e in EPISODES)


# -- resume positions and random states (no training) -----------------------------------------------------------


def _state(world: int, batch_size: int, accum: int = 1, **kw) -> ckpt.TrainingState:
    """A saved state at step 4, epoch 3, batch 4 of ``world`` x ``batch_size`` x ``accum``."""
    return ckpt.TrainingState(**{"step": 4, "epoch": 3, "batch": 4, "world_size": world, "batch_size": batch_size,
                                 "grad_accum_steps": accum, **kw})


def test_resume_position_keeps_the_effective_batch_or_refuses_naming_the_flags():
    said: list[str] = []
    # the saved shape: the saved position, untouched
    same = resume_position(_state(2, 4), 2, 4, 1, False, "RUN", said.append)
    assert (same.epoch, same.batch, same.epoch_world_size, same.epoch_offset) == (3, 4, None, 0) and not said
    # 2 x 4 x 1 -> 1 x 8 x 1: epoch 3 continues at sample 4 * 2 * 4 = 32 of its 2 x 4 order, re-dealt
    one = resume_position(_state(2, 4), 1, 8, 1, False, "RUN", said.append)
    assert (one.world_size, one.batch_size, one.epoch, one.batch) == (1, 8, 3, 0)
    assert (one.epoch_world_size, one.epoch_batch_size, one.epoch_offset) == (2, 4, 32)
    assert said[-1] == ("resume: 2 processes x batch 4 x accumulation 1 -> 1 process x batch 8 x accumulation 1 "
                        "(effective batch 8 kept): epoch 3 continues at sample 32 of its order, re-dealt to 1 process")
    # ... two batches later, to 1 x 4 x 2: the same epoch sequence, 16 samples further
    later = resume_position(ckpt.TrainingState(**{**one.__dict__, "batch": 2}), 1, 4, 2, False, "RUN", said.append)
    assert (later.epoch_world_size, later.epoch_batch_size, later.epoch_offset, later.batch) == (2, 4, 48, 0)
    # ... and back on 2 x 4 at a whole round: the epoch's own plan, from its batch 6
    back = resume_position(ckpt.TrainingState(**{**one.__dict__, "batch": 2}), 2, 4, 1, False, "RUN", said.append)
    assert (back.epoch, back.batch, back.epoch_world_size, back.epoch_offset) == (3, 6, None, 0)
    # another effective batch: one line naming the flags that keep it, and --reshard
    with pytest.raises(ConfigError) as refused:
        resume_position(_state(2, 4), 1, 4, 1, False, "RUN", said.append)
    assert str(refused.value) == (
        "--resume RUN: saved with effective batch 8 (2 processes x batch 4 x accumulation 1), now 4 (1 process x "
        "batch 4 x accumulation 1); pass --batch-size 8 or --grad-accum-steps 2 to keep it and continue epoch 3 "
        "where it stopped, or pass --reshard to start epoch 4 with effective batch 4")
    with pytest.raises(ConfigError, match="no batch size gives it on 3 processes"):
        resume_position(_state(2, 4), 3, 4, 1, False, "RUN", said.append)
    resharded = resume_position(_state(2, 4), 1, 4, 1, True, "RUN", said.append)
    assert (resharded.epoch, resharded.batch, resharded.world_size, resharded.epoch_world_size) == (4, 0, 1, None)
    assert said[-1].startswith("resume: --reshard: effective batch 8 (2 processes x batch 4 x accumulation 1) -> 4 ")
    assert said[-1].endswith("the rest of epoch 3 is not read; epoch 4 starts with the new shape at step 5")
    # nothing of the epoch read yet: --reshard starts that epoch itself
    assert resume_position(_state(2, 4, batch=0), 1, 4, 1, True, "RUN", said.append).epoch == 3


def test_each_rank_resumes_its_own_random_state_and_new_ranks_are_seeded(tmp_path):
    from lerobot.utils.random_utils import serialize_rng_state

    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    optimizer.zero_grad()
    param.sum().backward()
    optimizer.step()

    def next_draws() -> torch.Tensor:
        return torch.rand(4)

    seed_rank(7, 1)
    rank1 = serialize_rng_state()
    rank1_next = next_draws()
    seed_rank(7, 0)
    assert torch.equal(torch.get_rng_state(), torch.manual_seed(7).get_state())  # rank 0: the run's seed, as ever
    saved = ckpt.save_checkpoint(tmp_path, _state(2, 4), write_pretrained=lambda folder: None, train_config={},
                                 optimizer=optimizer, scheduler=scheduler, rank_rng_states=[rank1])
    rank0_next = next_draws()
    assert (saved / ckpt.TRAINING_STATE_DIR / "rng_state_rank1.safetensors").is_file()
    for rank, expected in ((0, rank0_next), (1, rank1_next)):
        torch.manual_seed(12345)
        state, restored = ckpt.load_training_state(saved, optimizer, scheduler, rank=rank)
        assert restored and state.world_size == 2 and torch.equal(next_draws(), expected), rank
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    _, restored = ckpt.load_training_state(saved, optimizer, scheduler, rank=2)  # a rank the saved run did not have
    assert not restored and torch.equal(torch.get_rng_state(), before)
    assert len({rank_seed(7, r) for r in range(4)}) == 4 and rank_seed(7, 2) == rank_seed(7, 2)


def test_every_rank_of_a_demo_run_holds_out_the_same_episodes(synthetic_2025, tmp_path):
    """``--demo`` under DDP: rank 0 writes the files, every other rank points its config at them with the same
    held-out episodes (before, the other ranks trained on the held-out episodes too, so the ranks' plans dealt
    different sample sets)."""
    from behavior_smolvla.config import TrainConfig
    from behavior_smolvla.training.demo import use_demo_files

    cfg = TrainConfig()
    cfg.data.episodes = "0-3"  # given episodes: nothing held out, nothing read
    use_demo_files(cfg, tmp_path)
    assert (cfg.data.dataset_path, cfg.policy.vlm_model) == (str(tmp_path / "demo_data"), str(tmp_path / "tiny_vlm"))
    assert cfg.data.val_episodes is None
    cfg = TrainConfig()
    cfg.data.dataset_path = str(synthetic_2025)
    use_demo_files(cfg, tmp_path)
    assert cfg.data.val_episodes == "20,10020"  # the last episode of each task


# -- two torchrun nodes, resumed on one process ------------------------------------------------------------------


@dataclass
class TwoNodes:
    run: Path
    caches: list[Path]
    stdout: list[str]
    stderr: list[str]


@pytest.fixture(scope="module")
def two_node_run(synthetic_2025, tiny_vlm, tmp_path_factory) -> TwoNodes:
    """Two torchrun nodes of one process each (batch 4, effective batch 8) on 127.0.0.1, each with its own
    ``--cache-dir``: 14 steps (epoch 0 is steps 1-10), checkpoints every 4 (read-only)."""
    root = tmp_path_factory.mktemp("two_nodes")
    run, port = root / "run", _free_port()
    caches = [root / f"cache_node{node}" for node in (0, 1)]
    procs, logs = [], []
    for node in (0, 1):
        args = _train_args(synthetic_2025, tiny_vlm, run, "--max-steps", "14", "--save-steps", "4",
                           "--cache-dir", str(caches[node]))
        out, err = root / f"node{node}.out", root / f"node{node}.err"
        logs.append((out, err))
        with out.open("w") as o, err.open("w") as e:
            procs.append(subprocess.Popen(torchrun(args, port, nnodes=2, node_rank=node), stdout=o, stderr=e,
                                          env=ENV, text=True))
    codes = _wait_all(procs)
    stdout, stderr = [o.read_text() for o, _ in logs], [e.read_text() for _, e in logs]
    assert codes == [0, 0], "\n".join(s[-3000:] for s in stdout + stderr)
    return TwoNodes(run, caches, stdout, stderr)


@pytest.mark.slow
def test_two_torchrun_nodes_build_their_caches_and_only_rank_0_writes(two_node_run, synthetic_2025):
    run = two_node_run.run
    for node, cache in enumerate(two_node_run.caches):
        entries = [p for p in cache.iterdir() if p.is_dir()]
        assert len(entries) == 1 and (entries[0] / "manifest.json").is_file(), node
        builds = re.findall(r"numeric cache: built (\S+)", two_node_run.stderr[node])
        assert builds == [str(entries[0])], (node, builds)  # built once, by this node, in its own folder
    assert "effective batch 8 = 4 per process x 2 processes x 1 accumulation" in two_node_run.stdout[0]
    assert "effective batch" not in two_node_run.stdout[1]  # global rank 0 talks, not node 1's local rank 0
    # one writer: checkpoints, metrics and wandb files of rank 0 only
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000004", "000008", "000012", "000014",
                                                                       "last"]
    assert [r["step"] for r in read_metrics(run)] == list(range(1, 15))
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1
    assert sorted(read_data_order(run)) == ["from-000000.rank0.jsonl", "from-000000.rank1.jsonl"]
    # every rank saved its own random state (rank 1's was seeded apart from rank 0's)
    training = run / "checkpoints" / "000004" / ckpt.TRAINING_STATE_DIR
    from safetensors.torch import load_file

    rng = [load_file(str(training / name))["torch_rng_state"] for name in ("rng_state.safetensors",
                                                                          "rng_state_rank1.safetensors")]
    assert not torch.equal(*rng)

    # epoch 0's shards, as the ranks read them (the dump of what the loader delivered): disjoint, and with the
    # samples each rank was dealt but cut (equal batch counts) they are every sample of the training episodes
    read, unread = [], []
    for rank in (0, 1):
        name = f"from-000000.rank{rank}.jsonl"
        header = _epoch_records(run, name)[0]
        assert (header["world_size"], header["batch_size"], header["batches"], header["dealt_from"]) == (2, 4, 10, None)
        mine = [i for b in _batches(run, name) if b["epoch"] == 0 for i in b["index"]]
        assert len(mine) == len(set(mine)) == 40  # 10 batches of 4, nothing read twice
        read.append(set(mine))
        unread += header["unread"]
    assert not read[0] & read[1]
    assert sorted([*read[0], *read[1], *unread]) == list(range(_samples(synthetic_2025)))
    steps = [[b["step"] for b in _batches(run, f"from-000000.rank{rank}.jsonl")] for rank in (0, 1)]
    assert steps[0] == steps[1] == list(range(1, 15))  # the ranks stepped together


@pytest.mark.slow
def test_resume_on_one_process_continues_the_two_node_epoch(two_node_run, synthetic_2025, tiny_vlm, tmp_path):
    """The 2 x 4 run's step-4 checkpoint resumed on 1 process: with batch 4 (effective batch 4) it is refused in one
    line; with batch 8 (to step 12) it reads the rest of epoch 0 exactly as the two ranks would have (their rounds,
    in order), the lr continues by step, and epoch 1 is an uninterrupted one-process run's epoch 1."""
    nodes = two_node_run.run
    run = tmp_path / "run"
    shutil.copytree(nodes, run, symlinks=True)
    checkpoint = run / "checkpoints" / "000004"
    refused = run_train("--resume", str(checkpoint), "--batch-size", "4", check=False, in_process=True)
    _one_line_error(refused, "effective batch 8 (2 processes x batch 4 x accumulation 1), now 4",
                    "pass --batch-size 8 or --grad-accum-steps 2", "--reshard")
    resumed = _train_here("--resume", str(checkpoint), "--batch-size", "8", "--max-steps", "12")
    assert ("resume: 2 processes x batch 4 x accumulation 1 -> 1 process x batch 8 x accumulation 1 (effective "
            "batch 8 kept): epoch 0 continues at sample 32 of its order") in resumed.stdout

    two = [_batches(nodes, f"from-000000.rank{rank}.jsonl") for rank in (0, 1)]
    one = _batches(run, "from-000004.rank0.jsonl")
    assert _epoch_records(run, "from-000004.rank0.jsonl")[0]["dealt_from"] == {"world_size": 2, "batch_size": 4,
                                                                              "offset": 32}
    # epoch 0 after the resume: each step reads the round the two ranks would have read at that step
    rest = [b for b in one if b["epoch"] == 0]
    assert [b["step"] for b in rest] == list(range(5, 11))
    for b in rest:
        r0, r1 = (next(x for x in rank if x["step"] == b["step"]) for rank in two)
        assert b["index"] == r0["index"] + r1["index"], b["step"]
    # so the epoch was read once: the two ranks' first 4 steps and the one process's rest are the two-node epoch
    before = [i for rank in two for b in rank if b["step"] <= 4 for i in b["index"]]
    after = [i for b in rest for i in b["index"]]
    whole = [i for rank in two for b in rank if b["epoch"] == 0 for i in b["index"]]
    assert len(before + after) == len(set(before + after)) and sorted(before + after) == sorted(whole)
    # steps and the lr schedule (built for the two-node run's 14 steps) continue
    lr = [{r["step"]: r["lr"] for r in read_metrics(folder) if "lr" in r} for folder in (nodes, run)]
    assert sorted(lr[1]) == list(range(1, 13)) and all(lr[1][s] == lr[0][s] for s in lr[1])
    last = json.loads((run / "checkpoints" / "last" / ckpt.TRAINING_STATE_DIR / ckpt.TRAINING_STEP_FILE).read_text())
    assert (last["step"], last["world_size"], last["batch_size"], last["epoch_world_size"]) == (12, 1, 8, None)

    # epoch 1 is dealt with the new shape: an uninterrupted one-process run's epoch 1 (after its 12 batches of 8,
    # the last one 4 samples), batch for batch
    alone = tmp_path / "alone"
    _train_here(*_train_args(synthetic_2025, tiny_vlm, alone, "--batch-size", "8", "--max-steps", "14",
                             "--save-steps", "100"))
    reference = {b["batch"]: b["index"] for b in _batches(alone, "from-000000.rank0.jsonl") if b["epoch"] == 1}
    after_epoch = [b for b in one if b["epoch"] == 1]
    assert [b["batch"] for b in after_epoch] == [0, 1] and sorted(reference) == [0, 1]
    assert all(b["index"] == reference[b["batch"]] for b in after_epoch)


@pytest.mark.slow
def test_reshard_starts_the_next_epoch_with_another_effective_batch(two_node_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(two_node_run.run, run, symlinks=True)
    result = _train_here("--resume", str(run / "checkpoints" / "000004"), "--batch-size", "4", "--reshard",
                         "--max-steps", "6")
    assert ("resume: --reshard: effective batch 8 (2 processes x batch 4 x accumulation 1) -> 4 (1 process x batch 4 "
            "x accumulation 1); the rest of epoch 0 is not read; epoch 1 starts with the new shape at step 5"
            ) in result.stdout
    batches = _batches(run, "from-000004.rank0.jsonl")
    assert [(b["step"], b["epoch"], b["batch"], len(b["index"])) for b in batches] == [(5, 1, 0, 4), (6, 1, 1, 4)]
    saved = json.loads((run / "checkpoints" / "last" / ckpt.TRAINING_STATE_DIR / ckpt.TRAINING_STEP_FILE).read_text())
    assert (saved["step"], saved["epoch"], saved["batch"], saved["world_size"]) == (6, 1, 2, 1)


# -- accelerate launch on two "machines" -----------------------------------------------------------------------


@pytest.mark.slow
def test_accelerate_launch_two_machines_on_cpu(synthetic_2025, tiny_vlm, tmp_path):
    """``accelerate launch --multi_gpu --num_machines 2`` runs torchrun underneath, which works on CPU with the
    trainer's ``--device cpu`` (gloo). (``--cpu`` with ``--num_machines 2`` is accelerate's MPI path: without
    ``--mpirun_hostfile`` it starts two unrelated one-process runs; see README.)"""
    run, port = tmp_path / "run", _free_port()
    procs, logs = [], []
    for machine in (0, 1):
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
               "--machine_rank", str(machine), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
               "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "behavior_smolvla.cli", "train",
               *_train_args(synthetic_2025, tiny_vlm, run, "--max-steps", "2", "--save-steps", "2",
                            "--cache-dir", str(tmp_path / f"cache{machine}"))]
        out = tmp_path / f"machine{machine}.log"
        logs.append(out)
        with out.open("w") as o:
            procs.append(subprocess.Popen(cmd, stdout=o, stderr=subprocess.STDOUT, env=ENV, text=True))
    codes = _wait_all(procs)
    output = [log.read_text() for log in logs]
    assert codes == [0, 0], "\n".join(o[-3000:] for o in output)
    assert "effective batch 8 = 4 per process x 2 processes" in output[0] and "effective batch" not in output[1]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000002", "last"]
    shards = []
    for rank in (0, 1):
        name = f"from-000000.rank{rank}.jsonl"
        assert _epoch_records(run, name)[0]["world_size"] == 2
        shards.append({i for b in _batches(run, name) for i in b["index"]})
    assert len(shards[0]) == len(shards[1]) == 8 and not shards[0] & shards[1]
    assert np.all(np.array(sorted(shards[0] | shards[1])) < _samples(synthetic_2025))
