"""Task selection (``--tasks``) and task-balanced epochs: which episodes a task spec selects, equal task shares per
epoch, and the order's invariants (same batches for any worker count, exact resume), with real decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from behavior_smolvla.data.dataset import BehaviorDataset
from behavior_smolvla.data.meta import DatasetMeta, select_tasks
from behavior_smolvla.data.sampler import TrainingStream, task_balanced_spans
from behavior_smolvla.errors import ConfigError, DatasetError
from behavior_smolvla.training.build import split_episodes

# tests/ is on sys.path (pytest's rootdir conftest): the sampler tests' batch comparison
from test_sampler import _assert_batches_equal

FORK_OK = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


def test_select_tasks_on_the_2025_layout(synthetic_2025):
    meta = DatasetMeta.load(synthetic_2025)
    assert select_tasks(meta, "1") == [10010, 10020]
    assert select_tasks(meta, "0-1") == [10, 20, 10010, 10020]
    assert select_tasks(meta, [0]) == [10, 20]
    with pytest.raises(DatasetError, match=r"task\(s\) 7 not in the dataset; it has 2 tasks: 0-1"):
        select_tasks(meta, "7")
    with pytest.raises(DatasetError, match="task spec '1-x': cannot read"):
        select_tasks(meta, "1-x")


def test_tasks_combine_with_episodes_and_held_out_ones(synthetic_2025):
    meta = DatasetMeta.load(synthetic_2025)
    assert split_episodes(meta, None, "20", "0") == ([10], [20])
    assert split_episodes(meta, "10,10010", None, "1") == ([10010], [])
    with pytest.raises(ConfigError, match="--tasks 0: none of the training episodes"):
        split_episodes(meta, "10010", None, "0")


def test_task_balanced_spans_give_equal_shares():
    # task 0: 10 spans of 100 samples; task 1: 3 spans of 20 samples (1060 samples, 530 per task)
    spans = np.array([[i * 100, (i + 1) * 100] for i in range(10)] + [[1000 + i * 20, 1020 + i * 20] for i in range(3)])
    task = np.array([0] * 10 + [1] * 3)
    out = task_balanced_spans(spans, task, seed=3, epoch=0)
    sizes = out[:, 1] - out[:, 0]
    of_task = np.where(out[:, 0] < 1000, 0, 1)
    shares = [int(sizes[of_task == t].sum()) for t in (0, 1)]
    assert abs(shares[0] - 530) <= 50 and abs(shares[1] - 530) <= 10
    assert np.array_equal(out, task_balanced_spans(spans, task, seed=3, epoch=0))
    assert not np.array_equal(out, task_balanced_spans(spans, task, seed=3, epoch=1))


@pytest.fixture(scope="module")
def unbalanced(tmp_path_factory):
    """Two tasks of very different sizes (HEVC, 20-frame GOP): task 0 has 150 + 120 frames, task 1 has 30."""
    from behavior_smolvla.synthetic.datasets import write_behavior_2025

    root = write_behavior_2025(tmp_path_factory.mktemp("tasks") / "unbalanced", episodes=3, frames=[150, 30, 120],
                               tasks=2, image_size=32, codec="libx265", gop=20, seed=5)
    return BehaviorDataset(root, chunk_size=3, image_size=(24, 24))


def _stream(ds, **kw):
    return TrainingStream(ds, **{"seed": 11, "batch_size": 5, "streams": 3, "open_spans": 2, "span_frames": 20,
                                 "task_balanced": True, **kw})


def _task_counts(batches) -> dict[str, int]:
    counts: dict[str, int] = {}
    for batch in batches:
        for task in batch["task"]:
            counts[task] = counts.get(task, 0) + 1
    return counts


@FORK_OK
def test_same_batches_for_0_1_and_3_workers_from_the_cache(unbalanced):
    """The reader memory-maps its numeric data (the default): workers map the same files and the batches of 0, 1
    and 3 workers are identical, as is a resume from batch 4."""
    assert not unbalanced.numeric_in_memory
    epoch = list(_stream(unbalanced, task_balanced=False))
    unbalanced.close()
    for workers in (1, 3):
        loader = DataLoader(_stream(unbalanced, task_balanced=False), batch_size=None, num_workers=workers,
                            multiprocessing_context="fork")
        _assert_batches_equal(epoch, list(loader))
    _assert_batches_equal(epoch[4:], list(_stream(unbalanced, task_balanced=False, start_batch=4)))


@FORK_OK
def test_task_balanced_stream_is_balanced_and_deterministic(unbalanced):
    epoch = list(_stream(unbalanced))
    counts = _task_counts(epoch)
    assert len(counts) == 2 and abs(counts[unbalanced.tasks[0]] - counts[unbalanced.tasks[1]]) <= 20
    assert sum(counts.values()) == pytest.approx(len(unbalanced), abs=20)
    # every delivered sample is the dataset's sample, frames included (repeated spans re-read from a keyframe)
    for j in (0, len(epoch) // 2, len(epoch) - 1):
        batch = epoch[j]
        sample = unbalanced[int(batch["index"][0])]
        for camera in unbalanced.cameras:
            assert torch.equal(batch[camera][0], sample[camera])
        assert torch.equal(batch["action"][0], sample["action"])
    unbalanced.close()
    for workers in (1, 3):
        loader = DataLoader(_stream(unbalanced), batch_size=None, num_workers=workers, multiprocessing_context="fork")
        _assert_batches_equal(epoch, list(loader))
    _assert_batches_equal(epoch[4:], list(_stream(unbalanced, start_batch=4)))


def test_a_workers_share_of_the_plan_equals_the_plan():
    """A DataLoader worker keeps only its batches of the plan (compact copy): they equal the plan's."""
    from behavior_smolvla.data.sampler import TrainingPlan, _WorkerShare

    spans = np.stack([np.arange(0, 1003, 37), np.minimum(np.arange(37, 1040, 37), 1003)], axis=1)
    plan = TrainingPlan(spans, batch_size=8, seed=0, streams=3, open_spans=4)
    for workers, first in ((2, 0), (3, 5)):
        for worker in range(workers):
            ks = range(first + worker, len(plan), workers)
            share = _WorkerShare(plan, ks)
            for k in ks:
                a, b = plan.batch(k), share.batch(k)
                assert np.array_equal(a.index, b.index) and a.index.dtype == b.index.dtype == np.int64
                assert np.array_equal(a.slot, b.slot) and a.lane == b.lane
