"""The training order: a seeded, locality-aware plan of batches and the ``IterableDataset`` that executes it.

Why not a shuffled ``Dataset``: BEHAVIOR 2025 video is HEVC with one keyframe every 250 frames, so reading one
random frame decodes ~125 frames per camera (see ``../shared/reference/lerobot_smolvla.md``), i.e. two orders of
magnitude below sequential decoding. The plan below keeps the order random at the level of *spans* (short runs of
consecutive samples, aligned to keyframe intervals) and reads every span strictly forward, once, while each batch
mixes several spans:

1. Cut every selected episode's samples into spans at frame indices that are multiples of ``span_frames`` (by
   default the measured keyframe interval, or a multiple of it of at least 120 frames, so a span starts at a
   keyframe and entering it costs no wasted decode).
2. Shuffle the spans with the epoch's RNG (``seed``, ``epoch``); give each rank a contiguous, sample-balanced share
   of the shuffled list, each of the rank's ``streams`` lanes a share of that, and each of a lane's ``open_spans``
   slots a share of the lane's.
3. A lane's sample sequence is a uniformly random interleaving of its slots' sequences (a random permutation of
   slot labels), so each slot advances forward through its spans while consecutive samples come from different
   spans. Batch ``k`` is the next ``batch_size`` samples of lane ``k % streams`` while every lane has a full batch;
   the remaining samples (the tail, at most about one span per lane) are dealt lane by lane and may mix lanes.

The price of locality is correlation: samples of one span are close in time and a slot hands them out in order,
spread over the batches its lane produces; ``open_spans`` (spans mixed per batch) and ``span_frames`` set the trade.
Every sample of the rank's share appears exactly once per epoch; with ``world_size`` 1 the last batch may be short.
With ``world_size`` > 1 only full batches are kept and every rank's batch count is cut to the minimum over the ranks,
so all ranks step together (DDP); the few samples cut differ from epoch to epoch because the spans are reshuffled.

The epoch's *global sequence* is the ranks' batches in rounds: batch 0 of rank 0, of rank 1, ..., then batch 1 of
each rank, and so on. A step (a micro-batch on every rank) reads one round, so after ``k`` batches per rank the run
has read exactly the first ``k * world_size * batch_size`` samples of it. A resume on another number of processes
(or another per-process batch: an *elastic* resume, :class:`EpochOrigin`) deals the rest of that sequence to the new
ranks round by round; what has been read stays a prefix of the same sequence, so no sample of the epoch is read
twice or skipped, however often the shape changes within the epoch. The next epoch is planned with the new shape.
A re-dealt epoch keeps the spans' forward reading (a decoding slot's samples keep their order) but a rank may read
the slots of several former ranks, or share one with another rank, and so open more decoders or skip frames.
"""

from __future__ import annotations

import dataclasses
import gc
import os
import pickle
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from multiprocessing.context import ForkServerContext, ForkServerProcess
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from behavior_smolvla.data.collate import BatchRing, batch_layout, collate_into, collate_one_storage
from behavior_smolvla.data.video import VideoFile, probe_video
from behavior_smolvla.errors import ConfigError

DEFAULT_SPAN_FRAMES = 250
"""Fallback span length in frames: the keyframe interval of the BEHAVIOR 2025 release (libx265, one keyframe per 250
frames; ``../shared/reference/behavior_r1pro.md``), used when the videos' own interval cannot be measured."""


def make_spans(episode_index: np.ndarray, frame_index: np.ndarray, span_frames: int) -> np.ndarray:
    """Cut samples into contiguous spans that never cross an episode or a multiple of ``span_frames``.

    Args:
        episode_index: int [N], the episode of each dataset sample, samples of one episode adjacent.
        frame_index: int [N], the frame of each sample inside its episode, increasing within an episode.
        span_frames: span length in video frames (> 0); span boundaries fall on frame indices that are multiples
            of it, i.e. on keyframes when it is the videos' keyframe interval.

    Returns:
        int64 [S, 2]: ``start, stop`` dataset sample indices of each span (half-open), in dataset order.

    Raises:
        ConfigError: ``span_frames`` < 1, or the samples are not grouped by episode in increasing frame order.
    """
    if span_frames < 1:
        raise ConfigError(f"span_frames={span_frames}: must be a positive number of frames (e.g. the keyframe "
                          "interval)")
    episode_index = np.asarray(episode_index, dtype=np.int64)
    frame_index = np.asarray(frame_index, dtype=np.int64)
    if episode_index.shape != frame_index.shape or episode_index.ndim != 1:
        raise ConfigError("make_spans: episode_index and frame_index must be 1-D arrays of the same length")
    n = len(episode_index)
    if n == 0:
        return np.zeros((0, 2), dtype=np.int64)
    same_episode = episode_index[1:] == episode_index[:-1]
    if np.any(same_episode & (frame_index[1:] <= frame_index[:-1])):
        raise ConfigError("make_spans: frame indices must increase within each episode (dataset order)")
    block = frame_index // span_frames
    new_span = ~same_episode | (block[1:] != block[:-1])
    starts = np.concatenate([[0], np.flatnonzero(new_span) + 1])
    if int((~same_episode).sum()) + 1 != len(np.unique(episode_index)):
        raise ConfigError("make_spans: the samples of an episode must be adjacent (dataset order)")
    stops = np.concatenate([starts[1:], [n]])
    return np.stack([starts, stops], axis=1)


def _balanced_groups(sizes: np.ndarray, groups: int) -> np.ndarray:
    """Group id (int64 [len(sizes)]) of each item when a list is cut into ``groups`` contiguous runs of near-equal
    total size: an item goes to the group its midpoint falls in, so group totals differ by at most the largest item."""
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(len(sizes), dtype=np.int64)
    midpoints = np.cumsum(sizes) - sizes / 2.0
    return np.minimum((midpoints * groups / total).astype(np.int64), groups - 1)


def _expand(spans: np.ndarray) -> np.ndarray:
    """Concatenate ``arange(start, stop)`` of every span (int64 [sum of lengths]), vectorised."""
    lengths = spans[:, 1] - spans[:, 0]
    if lengths.sum() == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(spans[:, 0] - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    return np.arange(int(lengths.sum()), dtype=np.int64) + offsets


@dataclass(frozen=True)
class PlanBatch:
    """One planned batch.

    Attributes:
        index: int64 [B], dataset sample indices, B = batch_size (the last batch of an epoch may be shorter; in a
            re-dealt epoch the last batch may also be one sample longer, see :class:`EpochOrigin`).
        slot: int64 [B], the decoding slot of each sample (``lane * open_spans + slot_in_lane``, plus
            ``rank * streams * open_spans`` of the dealing rank in a re-dealt epoch): over the epoch a slot reads its
            spans one after another, each one sample after the next, so one decoder per slot and camera only moves
            forward within a span.
        lane: the lane this batch was drawn from, or -1 for a tail batch that mixes lanes (and in a re-dealt epoch).
        position: where the batch's first sample stands in the epoch's global sequence (see the module docstring);
            its samples are ``position, position + 1, ...`` of it. Seeds the batch's augmentation.
    """

    index: np.ndarray
    slot: np.ndarray
    lane: int
    position: int


@dataclass(frozen=True)
class EpochOrigin:
    """How an epoch's order was first dealt and how much of it was read: what a resume on another number of
    processes (or another per-process batch) continues from.

    Attributes:
        world_size, batch_size: the shape the epoch's plans were built with (processes, samples per batch); with
            the seed, the epoch, the spans and ``streams`` / ``open_spans`` they define the epoch's global sequence.
        offset: samples of that global sequence read before the new deal (0 <= offset <= its length).
        open_spans: the ``open_spans`` of the epoch's plans; None: the same as the re-dealt plan's.
    """

    world_size: int
    batch_size: int
    offset: int
    open_spans: int | None = None


class TrainingPlan:
    """A deterministic, locality-aware list of batches over one epoch of one rank (pure numpy).

    The order is a function of ``(spans, seed, epoch, rank, world_size, batch_size, streams, open_spans)`` only;
    see the module docstring for the construction. Building it is vectorised (O(N) numpy for N samples).

    With ``origin`` the plan is the rest of an epoch that was dealt with another shape: the epoch's global
    sequence under ``origin`` (its ``world_size``, ``batch_size`` and ``open_spans``; the same seed, epoch, spans
    and streams), from ``origin.offset`` on, dealt to this plan's ``world_size`` ranks in rounds of
    ``world_size * batch_size`` consecutive samples, rank ``r`` taking the ``r``-th ``batch_size`` of each round.
    So every sample of the epoch is read once across the resume, and what has been read is still a prefix of the
    same sequence (a later resume continues it again). The rounds' remainder: with one rank it is a short last
    batch; with ``W`` ranks a last round of at least ``W`` samples is split evenly (batches differ by at most one
    sample), and fewer than ``W`` join the previous round (some ranks' last batch is one sample longer); when fewer
    than ``W`` samples are left in all, they cannot be shared by ``W`` ranks and are not read (:meth:`unread`).

    Args:
        spans: int64 [S, 2], contiguous ``start, stop`` sample-index ranges (see :func:`make_spans`); together they
            must cover the dataset's samples without overlap.
        batch_size: samples per batch (>= 1).
        seed: non-negative int; with ``epoch`` it seeds the span shuffle and the interleaving.
        epoch: epoch number (>= 0); each epoch has its own order.
        rank, world_size: this process's data-parallel rank and the number of ranks.
        streams: number of lanes; batch ``k`` is drawn from lane ``k % streams`` (a DataLoader worker that owns a
            lane then decodes it strictly forward).
        open_spans: spans read concurrently by one lane, i.e. the number of spans one batch mixes.
        origin: see above; None: the epoch is dealt with this plan's own shape.

    Raises:
        ConfigError: a non-positive ``batch_size``/``streams``/``open_spans``/``world_size``, a negative seed or
            epoch, ``rank`` outside ``[0, world_size)``, or an ``origin`` with non-positive numbers or an offset
            past the end of the epoch.
    """

    def __init__(
        self,
        spans: np.ndarray,
        *,
        batch_size: int,
        seed: int,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        streams: int = 8,
        open_spans: int = 8,
        origin: EpochOrigin | None = None,
    ) -> None:
        for name, value in (("batch_size", batch_size), ("streams", streams), ("open_spans", open_spans),
                            ("world_size", world_size)):
            if int(value) < 1:
                raise ConfigError(f"{name}={value}: must be >= 1")
        if seed < 0 or epoch < 0:
            raise ConfigError(f"seed={seed}, epoch={epoch}: both must be >= 0")
        if not 0 <= rank < world_size:
            raise ConfigError(f"rank={rank}: must be in [0, world_size={world_size})")
        if origin is not None:
            if origin.open_spans is None:
                origin = dataclasses.replace(origin, open_spans=int(open_spans))
            if min(origin.world_size, origin.batch_size, origin.open_spans) < 1 or origin.offset < 0:
                raise ConfigError(f"{origin}: world_size, batch_size and open_spans must be >= 1, offset >= 0")
        spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
        self.spans = spans
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = int(epoch)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.streams = int(streams)
        self.open_spans = int(open_spans)
        self.origin = origin
        if origin is None:
            self._build()
        else:
            self._build_redealt(origin)

    def _rank_sequences(self, world_size: int, batch_size: int, open_spans: int, ranks: Sequence[int]
                        ) -> tuple[list[tuple[np.ndarray, np.ndarray, int]], np.ndarray, int]:
        """The epoch dealt to ``world_size`` ranks: for each rank of ``ranks`` its sample order and decoding slots
        (int64 [n_r] each, batches concatenated, nothing cut yet) and its number of lane batches; the samples dealt
        to every rank (int64 [world_size]); the batches every rank reads."""
        rng = np.random.default_rng([self.seed, self.epoch])
        shuffled = self.spans[rng.permutation(len(self.spans))]
        sizes = shuffled[:, 1] - shuffled[:, 0]
        rank_of = _balanced_groups(sizes, world_size)
        rank_samples = np.bincount(rank_of, weights=sizes, minlength=world_size).astype(np.int64)
        b = batch_size
        out = []
        for rank in ranks:
            mine = shuffled[rank_of == rank]
            lane_of = _balanced_groups(mine[:, 1] - mine[:, 0], self.streams)
            lane_index: list[np.ndarray] = []
            lane_slot: list[np.ndarray] = []
            for lane in range(self.streams):
                lane_spans = mine[lane_of == lane]
                slot_of = _balanced_groups(lane_spans[:, 1] - lane_spans[:, 0], open_spans)
                lane_rng = np.random.default_rng([self.seed, self.epoch, rank, lane])
                # slots are stored one after another; a random permutation of the slot labels decides which slot
                # each position of the lane's sequence reads from, and a stable sort hands each slot its samples in
                # order.
                per_slot = [_expand(lane_spans[slot_of == s]) for s in range(open_spans)]
                labels = np.repeat(np.arange(open_spans), [len(p) for p in per_slot])
                labels = lane_rng.permutation(labels)
                positions = np.argsort(labels, kind="stable")
                index = np.empty(len(labels), dtype=np.int64)
                index[positions] = np.concatenate(per_slot) if per_slot else np.zeros(0, dtype=np.int64)
                lane_index.append(index)
                lane_slot.append(labels.astype(np.int64) + lane * open_spans)

            full_rounds = min(len(x) // b for x in lane_index)
            head = full_rounds * b
            # main part: round r, lane l -> batch r * streams + l, i.e. lane (k % streams)
            main_index = np.stack([x[:head].reshape(full_rounds, b) for x in lane_index], axis=1).reshape(-1)
            main_slot = np.stack([x[:head].reshape(full_rounds, b) for x in lane_slot], axis=1).reshape(-1)
            # tail: each lane's rest dealt in batch-sized chunks, lane by lane, round by round
            tail_index: list[np.ndarray] = []
            tail_slot: list[np.ndarray] = []
            rests = [(x[head:], s[head:]) for x, s in zip(lane_index, lane_slot)]
            longest = max((len(x) for x, _ in rests), default=0)
            for start in range(0, longest, b):
                for x, s in rests:
                    tail_index.append(x[start : start + b])
                    tail_slot.append(s[start : start + b])
            order = np.concatenate([main_index, *tail_index]) if tail_index else main_index
            slots = np.concatenate([main_slot, *tail_slot]) if tail_slot else main_slot
            out.append((order, slots, full_rounds * self.streams))
        if world_size == 1:
            num_batches = -(-int(rank_samples[0]) // b)
        else:
            num_batches = int(rank_samples.min() // b)
        return out, rank_samples, num_batches

    def _build(self) -> None:
        b, w = self.batch_size, self.world_size
        ((order, slots, main_batches),), rank_samples, num_batches = self._rank_sequences(
            w, b, self.open_spans, [self.rank])
        num_batches = min(num_batches, -(-len(order) // b))
        bounds = np.minimum(np.arange(num_batches + 1, dtype=np.int64) * b, len(order))
        # every batch of a rank is full when there are several ranks: round k of the global sequence holds batch k
        # of rank 0, then of rank 1, ...
        starts = np.arange(num_batches, dtype=np.int64) * (w * b) + self.rank * b
        self._store(order, slots, bounds, starts, main_batches)
        self.rank_samples = rank_samples
        """int64 [world_size]: samples dealt to each rank this epoch (before truncation to equal batch counts)."""

    def global_sequence(self, origin: EpochOrigin | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The epoch's global sequence as dealt by ``origin``'s shape (default: this plan's): every rank's batches
        in rounds (batch 0 of rank 0, of rank 1, ..., then batch 1 of each rank, ...), the samples each rank's
        plan cuts left out. Returns its sample indices and decoding slots (int64 [G] each; a slot is numbered
        ``rank * streams * open_spans + slot`` so that the ranks' slots stay apart)."""
        w = origin.world_size if origin is not None else self.world_size
        b = origin.batch_size if origin is not None else self.batch_size
        open_spans = origin.open_spans if origin is not None and origin.open_spans else self.open_spans
        ranks, _, num_batches = self._rank_sequences(w, b, open_spans, range(w))
        if w == 1:
            order, slots, _ = ranks[0]
            return order, slots
        read = num_batches * b
        index = np.stack([o[:read].reshape(num_batches, b) for o, _, _ in ranks], axis=1).reshape(-1)
        slot = np.stack([(s[:read] + r * self.streams * open_spans).reshape(num_batches, b)
                         for r, (_, s, _) in enumerate(ranks)], axis=1).reshape(-1)
        return index, slot

    def _build_redealt(self, origin: EpochOrigin) -> None:
        seq_index, seq_slot = self.global_sequence(origin)
        if origin.offset > len(seq_index):
            raise ConfigError(f"offset {origin.offset}: past the end of epoch {self.epoch}'s {len(seq_index)} samples")
        w, b = self.world_size, self.batch_size
        left = len(seq_index) - origin.offset
        full, rest = divmod(left, w * b)
        rounds = [w * b] * full
        dropped = 0
        if 0 < rest < w:  # too few for one sample per rank: they join the last full round, or are left unread
            if rounds:
                rounds[-1] += rest
            else:
                dropped = rest
        elif rest:
            rounds.append(rest)
        sizes = np.asarray(rounds, dtype=np.int64)
        round_start = origin.offset + np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        # rank r's piece of a round of S samples: np.array_split's, the first S % w ranks one sample more
        length = sizes // w + (self.rank < sizes % w)
        starts = round_start + self.rank * (sizes // w) + np.minimum(self.rank, sizes % w)
        take = _expand(np.stack([starts, starts + length], axis=1)) if len(sizes) else np.zeros(0, dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(length)]).astype(np.int64)
        self._store(seq_index[take], seq_slot[take], bounds, starts, main_batches=0)
        self._unread = seq_index[len(seq_index) - dropped:] if self.rank == 0 else np.zeros(0, dtype=np.int64)
        self.rank_samples = np.asarray([int((sizes // w + (r < sizes % w)).sum()) for r in range(w)], dtype=np.int64)

    def _store(self, order: np.ndarray, slots: np.ndarray, bounds: np.ndarray, starts: np.ndarray,
               main_batches: int) -> None:
        # int32 when it fits: a plan is O(samples) and every DataLoader worker builds its own (2 M samples: 16 MB
        # instead of 32); batches hand out int64 as documented
        compact = np.int32 if len(self.spans) == 0 or int(self.spans[:, 1].max()) < 2**31 else np.int64
        num_samples = int(bounds[-1])
        self._unread = order[num_samples:].astype(np.int64)
        self._order = order[:num_samples].astype(compact)
        self._slots = slots[:num_samples].astype(np.int32)
        self._bounds = bounds.astype(np.int64)
        self._starts = starts.astype(np.int64)
        self._main_batches = main_batches
        self._num_batches = len(starts)

    def __getstate__(self) -> dict[str, Any]:
        # The O(samples) order travels to DataLoader workers as shared memory (torch's multiprocessing pickler sends
        # a handle; a plain pickle copies the values), so workers neither rebuild nor copy it.
        state = self.__dict__.copy()
        if "_shared" not in state:
            self._shared = state["_shared"] = tuple(torch.from_numpy(a).share_memory_() for a in (
                self._order, self._slots, self._bounds, self._starts))
        state["_order"] = state["_slots"] = state["_bounds"] = state["_starts"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._order, self._slots, self._bounds, self._starts = (t.numpy() for t in state["_shared"])

    def __len__(self) -> int:
        """Number of batches of this rank in this epoch."""
        return self._num_batches

    @property
    def num_samples(self) -> int:
        """Samples this rank reads in this epoch (after truncation to whole, equal batch counts with DDP)."""
        return len(self._order)

    def batch(self, k: int) -> PlanBatch:
        """The ``k``-th batch (0 <= k < len(self)); raises ``IndexError`` outside."""
        if not 0 <= k < self._num_batches:
            raise IndexError(f"batch {k} outside [0, {self._num_batches})")
        lo, hi = self._bounds[k], self._bounds[k + 1]
        lane = k % self.streams if k < self._main_batches else -1
        return PlanBatch(index=self._order[lo:hi].astype(np.int64), slot=self._slots[lo:hi].astype(np.int64),
                         lane=lane, position=int(self._starts[k]))

    def sample_order(self) -> np.ndarray:
        """int64 [num_samples]: every sample index of this rank's epoch in plan order (batches concatenated)."""
        return self._order.astype(np.int64)

    def unread(self) -> np.ndarray:
        """int64: samples of the epoch dealt to this rank that it does not read. With several ranks: the end of
        the rank's share, cut so that all ranks read the same number of whole batches. In a re-dealt epoch: on
        rank 0, the fewer than ``world_size`` samples at the end of the sequence that cannot be shared (else
        none); the original plans' cut samples are not part of the sequence."""
        return self._unread.copy()


# ------------------------------------------------------------------------------------------------------------
# Executing a plan in DataLoader workers

MIN_SPAN_FRAMES = 120
"""Shortest default span in frames (4 s at 30 fps). With short keyframe intervals (the 2026 writer's 8 frames) a
one-GOP span would reopen every camera's file every few samples; default spans are whole multiples of the
keyframe interval of at least this length."""

_KEYFRAME_INTERVALS: dict[tuple[str, int, int], int] = {}
"""Per-process cache of measured keyframe intervals, keyed by (path, size, mtime_ns): probing demuxes a whole file."""


def _keyframe_interval(path: Path) -> int:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _KEYFRAME_INTERVALS:
        _KEYFRAME_INTERVALS[key] = max(1, probe_video(path).keyframe_interval)
    return _KEYFRAME_INTERVALS[key]


def measured_keyframe_interval(dataset: Any) -> int | None:
    """Keyframe interval (frames) of ``dataset``'s videos, measured from the packets of the first selected
    episode's files (the largest over the selected cameras); None without cameras or episodes.

    Raises:
        VideoError: a video of the first episode is missing or unreadable.
    """
    if not dataset.cameras or not dataset.episodes:
        return None
    videos = dataset.meta.episodes[dataset.episodes[0]].videos
    return max(_keyframe_interval(Path(videos[camera][0])) for camera in dataset.cameras)


def default_span_frames(keyframe_interval: int | None) -> int:
    """Span length (frames): the keyframe interval times the smallest factor that makes it >=
    :data:`MIN_SPAN_FRAMES`, or :data:`DEFAULT_SPAN_FRAMES` when the interval is unknown."""
    if not keyframe_interval:
        return DEFAULT_SPAN_FRAMES
    return keyframe_interval * max(1, -(-MIN_SPAN_FRAMES // keyframe_interval))


TASK_BALANCE_SEED = 0x7A5C
"""Extra seed word of the task-balanced span draw, keeping it independent of the plan's own shuffles."""


def task_balanced_spans(spans: np.ndarray, span_task: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The spans of one task-balanced epoch: each task's spans repeated (whole passes) and then drawn without
    replacement, in an order seeded by ``(seed, epoch)``, until the task holds ``total samples / tasks`` samples
    (rounded to whole spans, so shares differ by at most one span).

    Args:
        spans: int64 [S, 2] from :func:`make_spans`.
        span_task: int [S], the task index of each span.
        seed, epoch: the stream's seed and the epoch.

    Returns:
        int64 [S', 2], sorted by start (duplicates adjacent); :class:`TrainingPlan` shuffles them.
    """
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    span_task = np.asarray(span_task, dtype=np.int64)
    if len(spans) == 0:
        return spans
    rng = np.random.default_rng([int(seed), int(epoch), TASK_BALANCE_SEED])
    sizes = spans[:, 1] - spans[:, 0]
    tasks = np.unique(span_task)
    quota = sizes.sum() / len(tasks)
    chosen = []
    for task in tasks:
        mine = np.flatnonzero(span_task == task)
        total = int(sizes[mine].sum())
        passes = int(quota // total)
        rest = quota - passes * total
        order = rng.permutation(mine)
        covered = np.cumsum(sizes[order])
        # the fewest spans whose samples come nearest the rest of the quota
        take = int(np.searchsorted(covered, rest)) if rest > 0 else 0
        if 0 < rest and take < len(order) and (take == 0 or covered[take] - rest < rest - covered[take - 1]):
            take += 1
        chosen.extend([mine] * passes + [order[:take]])
    return spans[np.sort(np.concatenate(chosen), kind="stable")]


READAHEAD_BUDGET_BYTES = 256 * 2**20
"""Decoded frames one process holds ahead across all its decoding slots, when ``readahead`` is left to the stream."""


def default_open_spans(batch_size: int) -> int:
    """Spans one lane of a :class:`TrainingStream` reads at once when not given: ``min(batch_size, 16)`` (a batch
    mixes up to 16 spans; more would open more decoders for little less correlation)."""
    return min(int(batch_size), 16)


def default_readahead(slots: int, sample_bytes: int) -> int:
    """Samples a slot decodes in a row when not given: as many as :data:`READAHEAD_BUDGET_BYTES` allows ``slots``
    slots of ``sample_bytes`` (all cameras' frames of one sample) each, between 8 and 32.

    Why: every switch to another decoder refills the CPU caches with its reference frames. On the
    ``bench/loader.py`` data (720/480/480 px HEVC, 224 px output, 2 workers) 32 in a row instead of 8 cost ~6%
    less CPU per sample; beyond 32 nothing was measured to improve. At 224 px and 16 slots per worker, 32 samples
    ahead hold ~230 MB; at 512 px the budget gives the floor, 8.
    """
    if slots < 1 or sample_bytes < 1:
        return 8
    return int(min(32, max(8, READAHEAD_BUDGET_BYTES // (slots * sample_bytes))))


class _Readahead:
    """The readahead of one process's slots: the given number, or :func:`default_readahead` once the first decoded
    frames show their size (8 until then). Only how frames are grouped for decoding depends on it, never a batch."""

    def __init__(self, given: int | None, slots: int):
        self.value = int(given) if given is not None else 8
        self._learnt = given is not None
        self._slots = slots

    def learn(self, frames: list[np.ndarray]) -> None:
        if not self._learnt:
            self.value = default_readahead(self._slots, sum(int(np.prod(f.shape)) for f in frames))
            self._learnt = True


class _SlotReader:
    """Decodes the frames of one decoding slot: one forward-moving :class:`VideoFile` per camera of its span.

    A slot reads each span strictly forward. Frames are decoded a few samples ahead (``readahead`` samples of the
    current span, camera by camera), so a decoder runs several frames in a row instead of alternating with the
    other cameras' and slots' decoders on every sample (which costs CPU caches, measured ~25%). Entering a span that
    does not continue the previous one closes the files: they reopen at the span's first frame (a keyframe), while
    decoding forward from the old position could cross whole GOPs that the seek skips.
    """

    def __init__(self, dataset: Any, keyframe_interval: int | None, threads: int, readahead: _Readahead,
                 stats: dict[str, int]):
        self.files: dict[Path, VideoFile] = {}
        self.span = -2
        self.last_index = -1
        self._buffer: dict[int, list[np.ndarray]] = {}
        self._dataset = dataset
        self._keyframe_interval = keyframe_interval
        self._threads = threads
        self._readahead = readahead
        self._stats = stats

    def frames(self, index: int, span: int, span_stop: int) -> list[np.ndarray]:
        """uint8 ``[H, W, 3]`` frames of sample ``index`` (one per camera, in the dataset's camera order)."""
        # a task-balanced plan may hand one slot the same span twice in a row: going back is entering a new span
        if span != self.span or index <= self.last_index:
            continues = span == self.span + 1
            self.span = span
            self._buffer = {}
            if not continues:
                self.close()
        self.last_index = index
        if index not in self._buffer:
            self._read_ahead(index, span_stop)
        return self._buffer.pop(index)

    def _read_ahead(self, index: int, span_stop: int) -> None:
        ds = self._dataset
        upcoming = np.arange(index, max(index + 1, min(index + self._readahead.value, span_stop)), dtype=np.int64)
        per_camera, used = [], set()
        for camera in ds.cameras:
            path, seconds = ds.video_times(upcoming, camera)  # a span lies inside one episode: one file per camera
            used.add(path)
            video = self.files.get(path)
            if video is None:
                video = self.files[path] = VideoFile(path, ds.image_size, keyframe_interval=self._keyframe_interval,
                                                     threads=self._threads)
                self._stats["files_opened"] += 1
            # views of the converted frames, copied once, into the batch's shared storage (collate_one_storage)
            per_camera.append(video.frames(video.frame_indices_for(seconds)))
        self._buffer = {i: [frames[n] for frames in per_camera] for n, i in enumerate(upcoming.tolist())}
        self._readahead.learn(self._buffer[index])
        for path in [p for p in self.files if p not in used]:
            self._retire(self.files.pop(path))

    def _retire(self, video: VideoFile) -> None:
        self._stats["decoded_frames"] += video.decoded_frames
        self._stats["seeks"] += video.seeks
        video.close()

    def live_counts(self) -> tuple[int, int]:
        return (sum(v.decoded_frames for v in self.files.values()), sum(v.seeks for v in self.files.values()))

    def close(self) -> None:
        for video in self.files.values():
            self._retire(video)
        self.files = {}
        self._buffer = {}


def worker_context(preload: Sequence[str] = ("torch", "av", "pyarrow.parquet", "behavior_smolvla.data.dataset",
                                              "behavior_smolvla.data.sampler")) -> Any:
    """A ``forkserver`` multiprocessing context for DataLoader workers, preloading ``preload`` in the server; every
    process started from it exits when the process that started it (the trainer) exits, however that one dies.

    Why a forkserver: a spawned worker imports torch, PyAV and pyarrow itself (~3 s of CPU each, so 4 workers on 2
    cores delayed the first batch by ~6 s); a forkserver worker is forked from a server process that imported them
    once. The server is a fresh interpreter (started by exec, not forked from the trainer), so it holds no CUDA
    context, FFmpeg decoder or running thread that a fork would copy: the reasons training used ``spawn`` still hold.
    Decoders are opened inside each worker as before. The server starts (and imports) at once, in the background:
    call this early.

    Why the exit watch (:func:`exit_with_parent`): a forkserver worker is the server's child, not the trainer's, and
    holds the server's keep-alive pipe (so that it could start processes itself); torch's worker watchdog checks the
    worker's parent, i.e. the server. After a ``kill -9`` of the trainer each kept the other alive: the workers, the
    server and multiprocessing's resource tracker stayed for minutes (1.2 GB in one trial). With the watch, the
    workers exit within milliseconds of the trainer, then the server (its keep-alive pipe reaches end-of-file once
    they are gone), then the resource tracker (likewise; it unlinks the queues' named semaphores in ``/dev/shm``).
    Batch memory needs no cleanup: torch's ``file_descriptor`` sharing and :class:`BatchRing` unlink each segment at
    creation, so it is freed with its last process.
    """
    from multiprocessing import forkserver

    context = _ParentBoundForkServerContext()
    context.set_forkserver_preload(list(preload))
    # start the server now: it imports ``preload`` while the caller goes on building its dataset and model
    forkserver.ensure_running()
    return context


PARENT_POLL_S = 1.0
"""Seconds between liveness checks of the parent where Linux's ``pidfd_open`` (kernel >= 5.3) is unavailable."""


def exit_with_parent() -> None:
    """Make this process exit (``os._exit(1)``, after one line on stderr) as soon as the process that started it
    exits; a daemon thread waits for that. Called first thing in every process of :func:`worker_context`.

    "The process that started it" is ``multiprocessing.parent_process()`` (the trainer for a DataLoader worker; for a
    forkserver child that is not the OS parent, so ``prctl(PR_SET_PDEATHSIG)`` cannot express it). Linux: the thread
    blocks on a pidfd of that process (readable when it exits; immune to pid reuse once opened). Elsewhere: it checks
    every :data:`PARENT_POLL_S` seconds that the pid still exists. Does nothing outside a multiprocessing child.
    """
    import multiprocessing
    import select
    import signal
    import sys
    import threading
    import time

    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    pid = parent.pid

    def gone() -> None:
        try:
            print(f"behavior_smolvla: process {os.getpid()} exits: the process that started it ({pid}) has exited",
                  file=sys.stderr, flush=True)
        except Exception:  # stderr may be a pipe nobody reads any more
            pass
        os._exit(1)

    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        gone()  # it died between starting this process and now
    except (AttributeError, OSError):
        pidfd = None

    def watch() -> None:
        # No signal may be delivered to this thread: with SIGTERM blocked in the worker's main thread (the DataLoader
        # worker_init_fn of training.preemption), a process-directed SIGTERM would otherwise land here and take the
        # default action, killing the worker.
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        if pidfd is not None:
            waiter = select.poll()  # not select(): no FD_SETSIZE limit
            waiter.register(pidfd, select.POLLIN)
            while not waiter.poll():
                pass
        else:
            while True:
                time.sleep(PARENT_POLL_S)
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                except PermissionError:
                    pass
        gone()

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


class _ParentBoundProcess(ForkServerProcess):
    """A forkserver process that runs :func:`exit_with_parent` before its target (module level: it is pickled to the
    child by name)."""

    def run(self) -> None:
        exit_with_parent()
        super().run()


class _ParentBoundForkServerContext(ForkServerContext):
    """The ``forkserver`` context whose processes are :class:`_ParentBoundProcess` (see :func:`worker_context`)."""

    Process = _ParentBoundProcess


class _Pickled:
    """An object already pickled: unpickles to it (lets one set of bytes serve every DataLoader worker)."""

    def __init__(self, data: bytes):
        self.data = data

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        return pickle.loads, (self.data,)


class _WorkerShare:
    """The batches ``ks`` (a ``range``) of a :class:`TrainingPlan`, copied out compactly with vectorised numpy (no
    per-batch Python objects); ``batch(k)`` returns what the plan's does."""

    def __init__(self, plan: TrainingPlan, ks: range):
        self._ks = ks
        self._streams, self._main = plan.streams, plan._main_batches
        k = np.arange(ks.start, ks.stop, ks.step, dtype=np.int64)
        lo, hi = plan._bounds[k], plan._bounds[k + 1]
        positions = _expand(np.stack([lo, hi], axis=1)) if len(k) else np.zeros(0, dtype=np.int64)
        self._index = plan._order[positions]
        self._slot = plan._slots[positions]
        self._bounds = np.concatenate([[0], np.cumsum(hi - lo)])
        self._starts = plan._starts[k]

    def batch(self, k: int) -> PlanBatch:
        j = (k - self._ks.start) // self._ks.step
        lo, hi = self._bounds[j], self._bounds[j + 1]
        return PlanBatch(index=self._index[lo:hi].astype(np.int64), slot=self._slot[lo:hi].astype(np.int64),
                         lane=k % self._streams if k < self._main else -1, position=int(self._starts[j]))


class TrainingStream(IterableDataset):
    """Executes :class:`TrainingPlan` epochs over a :class:`~behavior_smolvla.data.dataset.BehaviorDataset`, yielding
    collated batches; use it as ``DataLoader(stream, batch_size=None, num_workers=W)``.

    A batch is a dict: each camera key -> float32 ``[B, 3, H, W]`` in [0, 1] (``torch.channels_last`` memory format:
    frames stay as the decoder wrote them; call ``.contiguous()`` on the device); ``observation.state`` float32
    ``[B, D]``; ``action`` float32 ``[B, chunk, A]``; ``action_is_pad`` bool ``[B, chunk]``; ``task`` list of B str;
    ``episode_index``, ``frame_index``, ``index`` int64 ``[B]``; ``timestamp`` float32 ``[B]`` (seconds). Sample ``j``
    of a batch equals ``dataset[batch["index"][j]]`` (same decoded values; random access stays available there).

    Determinism: DataLoader worker ``w`` of ``W`` executes plan batches ``k = start_batch + w + j * W`` and torch
    collects worker outputs round-robin, so the batches arrive in plan order and are identical for any ``W``
    (0 included) given the same seed, streams and open_spans. Decoding is fastest when ``W`` divides ``streams``:
    each lane then lives in one worker and every frame is decoded once; otherwise every worker decodes the lanes it
    shares (a warning says so once per worker process).

    Decoders are opened lazily inside the process that reads (fork- and spawn-safe): one :class:`VideoFile` per
    decoding slot and camera, closed when the slot moves to another file and at the end of the epoch. A worker
    holds at most ``ceil(streams / W) * open_spans * len(cameras)`` open decoders (measured ~10 MB each for a
    720x720 HEVC stream, ~5 MB at 480x480, one thread) plus ``readahead`` decoded frames per slot and camera; the
    last few (tail) batches may open a few more. Batches built in a worker are written into shared memory (a
    reused ring of buffers, see ``batch_ring``), so handing them to the main process copies nothing.

    Epochs: iteration ``n`` of this object (counting from 0) runs epoch ``start_epoch + n``, the first one from batch
    ``start_batch``, later ones from batch 0; :meth:`set_epoch` overrides this (with non-persistent workers, call it
    before each epoch, as with ``DistributedSampler``; persistent workers keep their own count, so use consecutive
    epochs). For an exact resume build a new stream with the checkpoint's ``(epoch, batch)`` as ``start_epoch,
    start_batch``: it yields exactly the remaining batches of that epoch. To continue an epoch on another number of
    processes (or with another per-process batch), pass ``origin``: ``start_epoch`` is then the rest of the epoch
    re-dealt to this stream's shape (see :class:`TrainingPlan`), and ``start_batch`` counts batches of that plan.

    Args:
        dataset: a ``BehaviorDataset`` (uses ``frame_table``, ``cameras``, ``image_size``, ``episodes``, ``meta``,
            ``numeric_sample``, ``video_source``; frames are decoded with :class:`VideoFile` exactly as its
            ``load_sample`` does).
        seed: non-negative int; the whole order (and the augmentation's randomness) follows from it.
        batch_size: samples per batch.
        rank, world_size: data-parallel position; each rank gets a disjoint share of the spans and all ranks get
            the same number of (full) batches. Pass them explicitly and do not hand the DataLoader to
            ``accelerate.prepare`` (it would shard the batches a second time).
        start_epoch, start_batch: where the first iteration starts.
        origin: how ``start_epoch`` was dealt and how much of it was read (an elastic resume), or None; its
            ``open_spans``, when None, is the one this stream would use at ``origin.batch_size``.
        streams: lanes of the plan (see :class:`TrainingPlan`); choose a multiple of the worker count (the
            default 4 suits 1, 2 and 4 workers).
        open_spans: spans one lane reads at once, i.e. how many spans one batch mixes; default
            ``min(batch_size, 16)``.
        span_frames: span length in frames; default :func:`default_span_frames` of the measured keyframe interval.
        transform: optional ``Tensor[3, H, W] -> Tensor[3, H, W]`` (e.g. lerobot's ``ImageTransforms``) applied to
            every camera image of a sample in the worker; torch's global RNG is seeded from ``(seed, epoch, the
            sample's position in the epoch's global sequence)`` inside ``torch.random.fork_rng``, so a sample's
            augmentation is the same for any worker count, process count or elastic resume, and the caller's RNG
            is left untouched.
        decoder_threads: FFmpeg threads per decoder; default ``max(1, min(4, cpus // max(W, 1)))``.
        readahead: samples of a span decoded in one go per camera (>= 1); decoding several frames in a row per
            decoder instead of alternating between all of a worker's decoders on every sample saves CPU cache
            misses. Default: :func:`default_readahead` (8 to 32, from a 256 MiB budget of decoded frames per
            process).
        task_balanced: every task gets an equal share of each epoch's samples (see :func:`task_balanced_spans`;
            uses ``dataset.task_indices``); the epoch keeps the dataset's number of samples, so a task with fewer
            frames than its share is read more than once per epoch and a larger one in part. Still a function of
            ``(seed, epoch)`` only: the same batches for any ``W`` and an exact resume.
        uint8_images: yield camera images as uint8 ``[B, 3, H, W]`` (0-255) instead of float32 in [0, 1]: a quarter
            of the bytes to build, hand from the workers to the main process and copy to the GPU, where
            ``x.float().div_(255)`` gives exactly the float32 batch. Not combinable with ``transform``.
        batch_ring: in a DataLoader worker, write batches into a ring of reused shared-memory buffers and hand over
            only their layout (:class:`~behavior_smolvla.data.collate.BatchRing`: ~1 ms less CPU per sample at batch
            8); a buffer is reused only once every tensor of its batch is freed. False: one new storage per batch.

    Attributes:
        stats: per-process counters (``batches``, ``samples``, ``decoded_frames``, ``seeks``, ``files_opened``);
            with ``num_workers=0`` they describe the whole run, see :meth:`decode_stats`.

    Raises:
        ConfigError: invalid numbers (see :class:`TrainingPlan`), a negative ``start_batch``, ``readahead`` < 1,
            ``uint8_images`` with a ``transform``.
        VideoError: (while iterating) a missing, truncated or undecodable video.
    """

    def __init__(
        self,
        dataset: Any,
        *,
        seed: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        start_epoch: int = 0,
        start_batch: int = 0,
        streams: int = 4,
        open_spans: int | None = None,
        span_frames: int | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        decoder_threads: int | None = None,
        readahead: int | None = None,
        uint8_images: bool = False,
        task_balanced: bool = False,
        batch_ring: bool = True,
        origin: EpochOrigin | None = None,
    ) -> None:
        super().__init__()
        if int(start_batch) < 0:
            raise ConfigError(f"start_batch={start_batch}: must be >= 0")
        if int(batch_size) < 1:
            raise ConfigError(f"batch_size={batch_size}: must be >= 1")
        if readahead is not None and int(readahead) < 1:
            raise ConfigError(f"readahead={readahead}: must be >= 1 sample")
        if uint8_images and transform is not None:
            raise ConfigError("uint8_images=True cannot be combined with a transform (it works on float32 images); "
                              "augment on the device after converting, or keep float32 images")
        self.dataset = dataset
        self.seed = int(seed)
        self.batch_size = int(batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.streams = int(streams)
        self.open_spans = int(open_spans) if open_spans is not None else default_open_spans(self.batch_size)
        if origin is not None and origin.open_spans is None:
            origin = dataclasses.replace(origin, open_spans=int(open_spans) if open_spans is not None
                                         else default_open_spans(origin.batch_size))
        self.origin = origin
        """How ``start_epoch`` was dealt (an elastic resume), or None."""
        self._origin_epoch = int(start_epoch)
        self.keyframe_interval = measured_keyframe_interval(dataset)
        self.span_frames = int(span_frames) if span_frames is not None else default_span_frames(self.keyframe_interval)
        self.transform = transform
        self.decoder_threads = decoder_threads
        self.readahead = int(readahead) if readahead is not None else None
        self.uint8_images = bool(uint8_images)
        self.batch_ring = bool(batch_ring)
        self._ring: BatchRing | None = None  # made in the worker process that uses it
        table = dataset.frame_table
        self.spans = make_spans(table["episode_index"], table["frame_index"], self.span_frames)
        self.task_balanced = bool(task_balanced)
        self.span_task = dataset.task_indices(self.spans[:, 0]) if self.task_balanced else None
        self._epoch = int(start_epoch)
        self._start_batch = int(start_batch)
        self._plan: TrainingPlan | None = None
        self._warned = False
        self.stats = {"batches": 0, "samples": 0, "decoded_frames": 0, "seeks": 0, "files_opened": 0}
        self._live: dict[int, _SlotReader] = {}
        self._dataset_bytes: bytes | None = None
        self.plan(self._epoch)  # validates the numbers now rather than in a worker

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        # The dataset is pickled once and the bytes reused for every worker (10,000 episodes: ~1 s each time).
        if state.get("_dataset_bytes") is None:
            self._dataset_bytes = pickle.dumps(self.dataset, protocol=pickle.HIGHEST_PROTOCOL)
        state["dataset"] = _Pickled(self._dataset_bytes)
        state["_dataset_bytes"] = None
        if self._plan is not None and self._plan.epoch != self._epoch:
            state["_plan"] = None  # not the epoch the worker starts with: it builds its own
        state["_live"] = {}
        state["_ring"] = None
        return state

    def plan(self, epoch: int | None = None) -> TrainingPlan:
        """The :class:`TrainingPlan` of ``epoch`` (default: the epoch the next iteration runs) for this rank (the
        re-dealt rest of the epoch for ``start_epoch`` with an ``origin``)."""
        epoch = self._epoch if epoch is None else int(epoch)
        if self._plan is None or self._plan.epoch != epoch:
            spans = (task_balanced_spans(self.spans, self.span_task, self.seed, epoch) if self.task_balanced
                     else self.spans)
            self._plan = TrainingPlan(
                spans, batch_size=self.batch_size, seed=self.seed, epoch=epoch, rank=self.rank,
                world_size=self.world_size, streams=self.streams, open_spans=self.open_spans,
                origin=self.origin if epoch == self._origin_epoch else None)
        return self._plan

    @property
    def epoch(self) -> int:
        """The epoch the next iteration runs."""
        return self._epoch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Make the next iteration run ``epoch`` from batch ``start_batch``."""
        if int(epoch) < 0 or int(start_batch) < 0:
            raise ConfigError(f"set_epoch({epoch}, {start_batch}): both must be >= 0")
        self._epoch, self._start_batch = int(epoch), int(start_batch)

    def __len__(self) -> int:
        """Batches per epoch for this rank (of the epoch the next iteration runs, counted from batch 0)."""
        return len(self.plan())

    def decode_stats(self) -> dict[str, int]:
        """:attr:`stats` with the still-open decoders' counts included (this process only)."""
        out = dict(self.stats)
        for reader in self._live.values():
            decoded, seeks = reader.live_counts()
            out["decoded_frames"] += decoded
            out["seeks"] += seeks
        return out

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch, first = self._epoch, self._start_batch
        self._epoch, self._start_batch = epoch + 1, 0
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if worker == 0:
            self._warn_if_lanes_shared(workers)
        return self._run(epoch, first, worker, workers)

    def _warn_if_lanes_shared(self, workers: int) -> None:
        if workers > 1 and self.streams % workers and not self._warned:
            self._warned = True
            suggested = workers * max(1, self.streams // workers)
            warnings.warn(
                f"TrainingStream: {workers} DataLoader workers do not divide streams={self.streams}, so workers share "
                f"lanes and decode their frames more than once; pass streams={suggested} (any worker count gives "
                "the same batches for the same streams)", stacklevel=3)

    def _threads(self, workers: int) -> int:
        if self.decoder_threads is not None:
            return int(self.decoder_threads)
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(4, cpus // max(workers, 1)))

    def _run(self, epoch: int, first: int, worker: int, workers: int) -> Iterator[dict[str, Any]]:
        plan = self.plan(epoch)
        threads = self._threads(workers)
        if get_worker_info() is not None:
            # Everything alive when the worker starts (torch, PyAV, the dataset: hundreds of thousands of objects) is
            # moved out of the collector's reach: its full passes, triggered by the per-frame objects, scanned them
            # all (~2.5% of a worker's CPU in perf). The worker's process is ours; nothing else is affected.
            gc.freeze()
        lanes = -(-self.streams // workers) if self.streams % workers == 0 else self.streams
        self._process_readahead = _Readahead(self.readahead, slots=lanes * self.open_spans)
        batches = range(first + worker, len(plan), workers)
        if workers > 1:
            # keep only this worker's share of the plan: its memory is O(samples / workers), not O(samples)
            plan = _WorkerShare(plan, batches)
            self._plan = None
        try:
            for k in batches:
                yield self._batch(plan, epoch, k, threads)
        finally:
            for reader in self._live.values():
                reader.close()
            self._live = {}

    def _batch(self, plan: TrainingPlan, epoch: int, k: int, threads: int) -> dict[str, Any]:
        ds = self.dataset
        planned = plan.batch(k)
        span_of = np.searchsorted(self.spans[:, 0], planned.index, side="right") - 1
        numeric = []
        frames: dict[str, list[np.ndarray]] = {camera: [] for camera in ds.cameras}
        for index, slot, span in zip(planned.index.tolist(), planned.slot.tolist(), span_of.tolist(), strict=True):
            reader = self._live.get(slot)
            if reader is None:
                reader = self._live[slot] = _SlotReader(ds, self.keyframe_interval, threads,
                                                        self._process_readahead, self.stats)
            numeric.append(ds.numeric_sample(index))
            for camera, frame in zip(ds.cameras, reader.frames(index, span, int(self.spans[span, 1])), strict=True):
                frames[camera].append(frame)
        image_dtype = torch.uint8 if self.uint8_images else torch.float32
        in_worker = get_worker_info() is not None
        ring = slot = None
        if in_worker and self.batch_ring:
            layout, total = batch_layout(numeric, frames, image_dtype)
            if self._ring is None:
                self._ring = BatchRing.fitting(total)
            ring = self._ring
            slot = ring.acquire(total) if ring is not None else None
        if slot is not None:
            batch = collate_into(ring.buffer(slot), numeric, frames, image_dtype, layout)
        else:
            batch = collate_one_storage(numeric, frames, image_dtype, shared=in_worker)
        if self.transform is not None:
            for j in range(len(numeric)):
                self._augment(batch, epoch, planned.position + j, j)
        self.stats["batches"] += 1
        self.stats["samples"] += len(numeric)
        return ring.package(slot, batch) if slot is not None else batch

    def _augment(self, batch: dict[str, Any], epoch: int, position: int, j: int) -> None:
        # keyed by the sample's place in the epoch's global sequence, not by (rank, batch): the ranks of one step
        # draw different augmentations, and a resume on another number of processes draws the same ones
        seed = int(np.random.SeedSequence([self.seed, epoch, position]).generate_state(1)[0])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for camera in self.dataset.cameras:
                batch[camera][j] = self.transform(batch[camera][j])
