"""The locality-aware training order: TrainingPlan (pure numpy) and TrainingStream (real PyAV decoding of HEVC
video, real DataLoader workers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from behavior_smolvla.data.dataset import BehaviorDataset
from behavior_smolvla.errors import ConfigError
from behavior_smolvla.data.sampler import (
    EpochOrigin, TrainingPlan, TrainingStream, _WorkerShare, default_span_frames, make_spans,
)

GOP = 30
"""Keyframe interval of the module's dataset: several GOPs per episode, so spans and seeks matter."""
FRAMES = [130, 100, 75]


@pytest.fixture(scope="module")
def long_gop(tmp_path_factory: pytest.TempPathFactory):
    """BEHAVIOR-2025-layout HEVC dataset with a 30-frame GOP (a scaled-down 250-frame one) and 3 episodes."""
    from behavior_smolvla.synthetic.datasets import write_behavior_2025

    return write_behavior_2025(tmp_path_factory.mktemp("sampler") / "long_gop", episodes=3, frames=FRAMES, tasks=2,
                               image_size={"head": (32, 32), "left_wrist": (24, 32), "right_wrist": (24, 32)},
                               codec="libx265", gop=GOP, seed=3)


@pytest.fixture(scope="module")
def dataset(long_gop):
    return BehaviorDataset(long_gop, chunk_size=4)


def _stream(ds, **kw):
    defaults = {"seed": 7, "batch_size": 4, "streams": 2, "open_spans": 3, "span_frames": GOP}
    return TrainingStream(ds, **{**defaults, **kw})


def _assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            if isinstance(x[key], torch.Tensor):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


def _indices(batches: list[dict]) -> list[int]:
    return torch.cat([b["index"] for b in batches]).tolist()


# -- the plan (pure numpy) --------------------------------------------------------------------------------------


def _table(lengths, stride=1):
    episode = np.concatenate([np.full(len(range(0, n, stride)), e) for e, n in enumerate(lengths)])
    frame = np.concatenate([np.arange(0, n, stride) for n in lengths])
    return episode, frame


def test_spans_align_to_keyframe_intervals_and_never_cross_episodes():
    episode, frame = _table([130, 100, 75], stride=4)
    spans = make_spans(episode, frame, 30)
    assert spans[0, 0] == 0 and spans[-1, 1] == len(episode)
    assert np.array_equal(spans[1:, 0], spans[:-1, 1])  # contiguous, covering
    for start, stop in spans:
        assert len(set(episode[start:stop])) == 1
        assert len(set(frame[start:stop] // 30)) == 1
    # a new span exactly where the 30-frame block or the episode changes: ceil(n / 30) spans per episode
    assert len(spans) == 5 + 4 + 3


@pytest.mark.parametrize("stride", [1, 3])
@pytest.mark.parametrize("streams,open_spans,batch", [(1, 1, 5), (4, 3, 8), (3, 8, 7), (8, 16, 16)])
def test_plan_covers_every_sample_exactly_once(stride, streams, open_spans, batch):
    episode, frame = _table([1500, 730, 40, 999], stride)
    spans = make_spans(episode, frame, 250)
    plan = TrainingPlan(spans, batch_size=batch, seed=3, epoch=2, streams=streams, open_spans=open_spans)
    order = np.concatenate([plan.batch(k).index for k in range(len(plan))])
    assert np.array_equal(np.sort(order), np.arange(len(episode)))
    assert len(plan) == -(-len(episode) // batch)
    assert all(len(plan.batch(k).index) == batch for k in range(len(plan) - 1))
    # every slot reads forward: its samples come in increasing dataset order within each span
    slots = np.concatenate([plan.batch(k).slot for k in range(len(plan))])
    span_of = np.searchsorted(spans[:, 0], order, side="right") - 1
    for slot in np.unique(slots):
        mine, their_spans = order[slots == slot], span_of[slots == slot]
        for span in np.unique(their_spans):
            run = mine[their_spans == span]
            assert np.all(np.diff(run) == 1)  # consecutive samples of the span, none skipped, none repeated
            assert np.ptp(np.flatnonzero(their_spans == span)) == len(run) - 1  # a span is finished before the next


def test_plan_batches_come_from_lane_k_mod_streams_and_mix_spans():
    episode, frame = _table([3000, 3000, 3000, 3000])
    spans = make_spans(episode, frame, 250)
    plan = TrainingPlan(spans, batch_size=16, seed=0, streams=4, open_spans=8)
    main = [k for k in range(len(plan)) if plan.batch(k).lane >= 0]
    assert len(main) > 0.9 * len(plan)
    for k in main:
        b = plan.batch(k)
        assert b.lane == k % 4 and np.all(b.slot // 8 == b.lane)
    spans_per_batch = [len(np.unique(np.searchsorted(spans[:, 0], plan.batch(k).index, side="right"))) for k in main]
    assert np.mean(spans_per_batch) > 5  # a batch mixes most of its lane's 8 open spans


def test_plan_is_seeded_by_seed_and_epoch():
    episode, frame = _table([900, 800, 700])
    spans = make_spans(episode, frame, 250)

    def order(seed, epoch):
        return TrainingPlan(spans, batch_size=8, seed=seed, epoch=epoch).sample_order()

    assert np.array_equal(order(1, 0), order(1, 0))
    assert not np.array_equal(order(1, 0), order(2, 0))
    assert not np.array_equal(order(1, 0), order(1, 1))


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_get_disjoint_shards_and_equal_batch_counts(world):
    episode, frame = _table([1500, 1200, 900, 600, 300], stride=3)
    spans = make_spans(episode, frame, 250)
    plans = [TrainingPlan(spans, batch_size=8, seed=5, epoch=1, rank=r, world_size=world) for r in range(world)]
    assert len({len(p) for p in plans}) == 1
    assert all(len(p.batch(k).index) == 8 for p in plans for k in range(len(p)))
    orders = [p.sample_order() for p in plans]
    everything = np.concatenate(orders)
    assert len(np.unique(everything)) == len(everything)  # disjoint
    assert len(everything) >= len(episode) - world * (8 + 2 * 84)  # only the uneven remainder is cut
    # the spans are dealt whole: no span is split between ranks
    span_of = np.searchsorted(spans[:, 0], everything, side="right") - 1
    owner = np.concatenate([np.full(len(o), r) for r, o in enumerate(orders)])
    for span in np.unique(span_of):
        assert len(np.unique(owner[span_of == span])) == 1


def test_bad_plan_arguments_raise_config_errors():
    spans = make_spans(*_table([100]), 30)
    for kwargs in ({"batch_size": 0}, {"streams": 0}, {"open_spans": 0}, {"rank": 2, "world_size": 2},
                   {"seed": -1}):
        with pytest.raises(ConfigError):
            TrainingPlan(spans, **{"batch_size": 4, "seed": 0, **kwargs})
    with pytest.raises(ConfigError, match="increase"):
        make_spans(np.array([0, 0]), np.array([5, 3]), 30)
    with pytest.raises(ConfigError, match="adjacent"):
        make_spans(np.array([0, 1, 0]), np.array([0, 0, 1]), 30)



def _rounds(plans: list[TrainingPlan], first: int = 0, stop: int | None = None) -> list[np.ndarray]:
    """The batches ``first..stop`` of equal-length rank plans in the order the ranks step through them (round by
    round: batch k of rank 0, of rank 1, ...), i.e. the samples read, in the epoch's global order."""
    stop = len(plans[0]) if stop is None else stop
    return [p.batch(k).index for k in range(first, stop) for p in plans]


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def test_elastic_resume_reads_the_epoch_once_property():
    """Random epochs (episodes, spans, seeds), shapes W x B -> W' x B' -> W'' x B'' and cut points: what the ranks
    read before the resume, what the re-dealt ranks read after it (and after a second resume) are the epoch's
    global sequence, in order, without a repeat; only fewer than W' samples at the very end can be left unread
    (named by ``unread``); every rank has the same number of non-empty batches; each sample of a batch stands at the
    batch's ``position``; decoding slots still read their spans forward. With W' x B' = W x B the re-dealt rest
    of the epoch is today's plan from the cut, batch for batch."""
    rng = np.random.default_rng(20260)
    for case in range(200):
        lengths = rng.integers(1, 160, size=rng.integers(1, 6)).tolist()
        spans = make_spans(*_table(lengths, stride=int(rng.integers(1, 3))), int(rng.integers(4, 70)))
        common = {"seed": int(rng.integers(0, 1000)), "epoch": int(rng.integers(0, 4)),
                  "streams": int(rng.integers(1, 4))}
        w0, b0, o0 = int(rng.integers(1, 5)), int(rng.integers(1, 9)), int(rng.integers(1, 5))
        old = [TrainingPlan(spans, batch_size=b0, rank=r, world_size=w0, open_spans=o0, **common) for r in range(w0)]
        epoch = _cat(_rounds(old))  # the epoch's global sequence: what an uninterrupted run reads
        k = int(rng.integers(0, len(old[0]) + 1))
        before = _cat(_rounds(old, stop=k))
        offset = len(before)

        w1, b1 = (w0, b0) if case % 4 == 0 else (int(rng.integers(1, 5)), int(rng.integers(1, 9)))
        origin = EpochOrigin(world_size=w0, batch_size=b0, offset=offset, open_spans=o0)
        new = [TrainingPlan(spans, batch_size=b1, rank=r, world_size=w1, open_spans=int(rng.integers(1, 5)),
                            origin=origin, **common) for r in range(w1)]
        what = (case, lengths, w0, b0, k, w1, b1)
        assert len({len(p) for p in new}) == 1, what  # the ranks step together
        assert all(len(p.batch(j).index) >= 1 for p in new for j in range(len(p))), what
        assert all(len(p.batch(j).index) == b1 for p in new for j in range(len(p) - 1)), what
        assert all(len(p.batch(j).index) <= b1 + 1 for p in new for j in range(len(p))), what
        after = _cat(_rounds(new))
        unread = new[0].unread()
        assert all(len(p.unread()) == 0 for p in new[1:]), what
        assert len(unread) == 0 or len(epoch) - offset < w1, what  # only a remainder too small to share
        read = np.concatenate([before, after, unread])
        assert np.array_equal(read, epoch), what  # exactly the epoch, in its order: nothing twice, nothing skipped
        for p in new:
            batches = [p.batch(j) for j in range(len(p))]
            order = p.sample_order()
            positions = _cat([np.arange(b.position, b.position + len(b.index)) for b in batches])
            assert np.array_equal(epoch[positions], order), what
            # decoding slots still read forward: within a rank, a slot's samples of one span come in increasing order
            key = _cat([b.slot for b in batches]) * (len(spans) + 1) + np.searchsorted(spans[:, 0], order, "right")
            by_key = np.argsort(key, kind="stable")
            same = key[by_key][1:] == key[by_key][:-1]
            assert np.all(np.diff(order[by_key])[same] > 0), what

        if (w1, b1) == (w0, b0):  # the same shape: today's plan from the cut (exact resume unchanged)
            assert [len(p) for p in new] == [len(p) - k for p in old], what
            for p, q in zip(old, new, strict=True):
                for j in range(len(q)):
                    assert np.array_equal(p.batch(k + j).index, q.batch(j).index), what
                    assert p.batch(k + j).position == q.batch(j).position, what

        # a second resume within the same epoch continues the same sequence
        if len(new[0]) > 1 and len(unread) == 0:
            k1 = int(rng.integers(0, len(new[0])))  # whole rounds: every re-dealt round but the last is full
            offset2 = offset + len(_cat(_rounds(new, stop=k1)))
            w2, b2 = int(rng.integers(1, 5)), int(rng.integers(1, 9))
            again = [TrainingPlan(spans, batch_size=b2, rank=r, world_size=w2, open_spans=o0,
                                  origin=EpochOrigin(w0, b0, offset2, open_spans=o0), **common) for r in range(w2)]
            read2 = np.concatenate([before, *_rounds(new, stop=k1), *_rounds(again), again[0].unread()])
            assert np.array_equal(read2, epoch), (*what, k1, w2, b2)


def test_elastic_plan_numbers_and_worker_shares():
    episode, frame = _table([37, 20])
    spans = make_spans(episode, frame, 10)
    # 57 samples, 1 x 4 (15 batches, the last one 1 sample) -> 2 ranks x 2 from sample 4: 53 left = 13 rounds of 4
    # and 1 sample, which joins the last round (rank 0's last batch has 3 samples)
    origin = EpochOrigin(world_size=1, batch_size=4, offset=4)
    plans = [TrainingPlan(spans, batch_size=2, seed=1, rank=r, world_size=2, streams=2, open_spans=3,
                          origin=origin) for r in range(2)]
    assert [len(p) for p in plans] == [13, 13]
    assert [len(plans[0].batch(12).index), len(plans[1].batch(12).index)] == [3, 2]
    assert plans[0].num_samples + plans[1].num_samples == 53
    # a DataLoader worker's compact share hands out the same batches, the longer last one included
    share = _WorkerShare(plans[0], range(1, 13, 2))
    for k in range(1, 13, 2):
        a, b = plans[0].batch(k), share.batch(k)
        assert np.array_equal(a.index, b.index) and np.array_equal(a.slot, b.slot) and a.position == b.position
    # one sample left for two ranks: it cannot be shared, rank 0 names it
    last = [TrainingPlan(spans, batch_size=2, seed=1, rank=r, world_size=2, streams=2, open_spans=3,
                         origin=EpochOrigin(1, 4, offset=56)) for r in range(2)]
    assert [len(p) for p in last] == [0, 0] and len(last[0].unread()) == 1 and len(last[1].unread()) == 0
    with pytest.raises(ConfigError, match="past the end"):
        TrainingPlan(spans, batch_size=2, seed=1, origin=EpochOrigin(1, 4, offset=58))
    with pytest.raises(ConfigError, match="must be >= 1"):
        TrainingPlan(spans, batch_size=2, seed=1, origin=EpochOrigin(0, 4, offset=0))

# -- the stream (real decoding) ---------------------------------------------------------------------------------


def test_batches_equal_random_access_samples(dataset):
    stream = _stream(dataset)
    batches = list(stream)
    assert sorted(_indices(batches)) == list(range(len(dataset)))
    first = batches[0]
    assert first["observation.images.rgb.head"].shape == (4, 3, 32, 32)
    assert first["observation.images.rgb.head"].dtype == torch.float32
    assert first["action"].shape == (4, 4, 23) and first["action_is_pad"].dtype == torch.bool
    assert isinstance(first["task"], list) and all(isinstance(t, str) for t in first["task"])
    for batch in (batches[0], batches[len(batches) // 2], batches[-1]):
        for j, index in enumerate(batch["index"].tolist()):
            sample = dataset[index]
            for key, value in sample.items():
                got = batch[key][j]
                assert torch.equal(got, value) if isinstance(value, torch.Tensor) else got == value, key
    # uint8 frames are the same pixels: converting them on the consumer's side gives the float32 batch exactly
    as_uint8 = list(_stream(dataset, uint8_images=True))
    assert _indices(as_uint8) == _indices(batches)
    for key in dataset.cameras:
        assert as_uint8[0][key].dtype == torch.uint8
        for float_batch, uint8_batch in zip(batches, as_uint8, strict=True):
            assert torch.equal(uint8_batch[key].float().div_(255), float_batch[key])


def test_decoding_is_sequential(dataset):
    """Every frame of a span is decoded once: decodes ~= frames spanned, not ~GOP/2 per sample per camera."""
    stream = _stream(dataset)
    for _ in stream:
        pass
    stats = stream.decode_stats()
    cameras = len(dataset.cameras)
    assert stats["samples"] == len(dataset) == sum(FRAMES)
    spanned = sum(FRAMES) * cameras
    assert spanned <= stats["decoded_frames"] <= spanned + 2 * cameras  # a frame or two past a span's end at most
    assert stats["seeks"] <= stats["files_opened"]  # a file is entered once per span, at its keyframe

    # the same samples read in a shuffled order with random access (what a shuffling DataLoader does)
    decoders: dict = {}
    for index in np.random.default_rng(0).permutation(len(dataset))[:40]:
        dataset.load_sample(int(index), decoders=decoders)
    decoded = sum(v.decoded_frames for v in decoders.values())
    assert decoded / 40 > 5 * stats["decoded_frames"] / stats["samples"]


def test_decoding_with_a_frame_stride_spans_the_frames_once(long_gop):
    ds = BehaviorDataset(long_gop, chunk_size=4, frame_stride=3)
    stream = _stream(ds)
    batches = list(stream)
    assert sorted(_indices(batches)) == list(range(len(ds)))
    assert set(torch.cat([b["frame_index"] for b in batches]).tolist()) <= set(range(0, max(FRAMES), 3))
    last_frames = sum(len(range(0, n, 3)) * 3 - 2 for n in FRAMES)  # frames from 0 to each episode's last sample
    assert stream.decode_stats()["decoded_frames"] <= (last_frames + 2) * len(ds.cameras)


def test_zero_and_two_spawned_workers_give_identical_batches_with_augmentation(dataset):
    from torchvision.transforms import v2

    jitter = v2.ColorJitter(brightness=0.5, contrast=0.5)
    plain = list(_stream(dataset))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    in_process = list(_stream(dataset, transform=jitter))
    assert torch.equal(torch.get_rng_state(), before)  # the augmentation leaves the caller's RNG alone
    loader = DataLoader(_stream(dataset, transform=jitter), batch_size=None, num_workers=2,
                        multiprocessing_context="spawn")
    _assert_batches_equal(in_process, list(loader))
    key = "observation.images.rgb.head"
    assert not torch.equal(plain[0][key], in_process[0][key])  # the transform ran
    assert torch.equal(plain[0]["action"], in_process[0]["action"])


def test_a_worker_batch_crosses_as_one_shared_storage(dataset):
    """Every tensor of a worker's batch is a view of one storage (one hand-over per batch, not one per tensor), with
    the values, dtypes and shapes of the in-process batch, uint8 and float32 frames alike; frames arrive
    channels-last (as decoded: the worker never transposes them). Without the ring, that storage is a new
    shared-memory segment per batch."""
    for uint8, ring in ((True, True), (False, True), (True, False)):
        in_process = list(_stream(dataset, uint8_images=uint8))[:3]
        loader = DataLoader(_stream(dataset, uint8_images=uint8, batch_ring=ring), batch_size=None, num_workers=1,
                            multiprocessing_context="spawn")
        from_worker = [b for _, b in zip(range(3), loader)]
        _assert_batches_equal(in_process, from_worker)
        for batch in from_worker:
            tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
            assert len(tensors) == 10  # state, action, pad, episode/frame/index, timestamp, 3 cameras (task: a list)
            assert len({t.untyped_storage().data_ptr() for t in tensors}) == 1
            assert ring or tensors[0].untyped_storage().is_shared()
            frames = [v for k, v in batch.items() if k.startswith("observation.images.")]
            assert len(frames) == 3 and all(t.is_contiguous(memory_format=torch.channels_last) for t in frames)
            assert all(t.is_contiguous() for t in tensors if not any(t is f for f in frames))
        assert from_worker[0]["observation.images.rgb.head"].dtype == (torch.uint8 if uint8 else torch.float32)


def test_worker_buffers_are_reused_only_once_their_batch_is_freed(dataset):
    """The ring hands batches over in reused buffers, and a buffer is never rewritten while any tensor of its batch
    is alive: batches the consumer keeps hold the same values at the end as when they arrived, next to batches it
    dropped (whose buffers were reused)."""
    expected = list(_stream(dataset, uint8_images=True))
    loader = DataLoader(_stream(dataset, uint8_images=True), batch_size=None, num_workers=1,
                        multiprocessing_context="spawn")
    kept, addresses, via_ring = [], [], []
    for k, batch in enumerate(loader):
        storage = batch["observation.state"].untyped_storage()
        addresses.append(storage.data_ptr())
        via_ring.append(not storage.is_shared())  # a ring batch is a view of the trainer's mapping of the ring
        _assert_batches_equal([expected[k]], [batch])
        if k < 3 or k % 25 == 0:
            kept.append((k, batch))  # e.g. a consumer keeping a few batches; the rest are dropped at once
        del batch
    assert len(addresses) == len(expected)
    assert len(set(addresses)) < len(addresses) // 2  # dropped batches' buffers came back
    assert sum(via_ring) > len(via_ring) // 2
    for k, batch in kept:
        _assert_batches_equal([expected[k]], [batch])  # nothing written over a live batch
    assert len({b["observation.state"].untyped_storage().data_ptr() for _, b in kept}) == len(kept)
    # a consumer keeping every batch: once all buffers are held, batches come in new storages, values intact
    everything = list(DataLoader(_stream(dataset, uint8_images=True), batch_size=None, num_workers=1,
                                 multiprocessing_context="spawn"))
    _assert_batches_equal(expected, everything)
    assert 0 < sum(not b["index"].untyped_storage().is_shared() for b in everything) < len(everything)


# Forked workers (torch's default on Linux) must open their own decoders: the parent closes its files first so no
# FFmpeg thread is alive at the fork; Python's warning about forking a threaded process concerns torch's idle pool.
FORK_OK = pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")


@FORK_OK
def test_worker_count_not_dividing_streams_keeps_the_order(dataset):
    reference = list(_stream(dataset, streams=3))
    dataset.close()
    loader = DataLoader(_stream(dataset, streams=3), batch_size=None, num_workers=2, multiprocessing_context="fork")
    _assert_batches_equal(reference, list(loader))
    with pytest.warns(UserWarning, match="do not divide streams=3"):
        _stream(dataset, streams=3)._warn_if_lanes_shared(2)


@FORK_OK
def test_resume_from_epoch_and_batch_yields_the_tail(dataset):
    stream = _stream(dataset)
    epoch0 = list(stream)
    epoch1 = list(stream)  # the second iteration runs the next epoch
    assert _indices(epoch0) != _indices(epoch1)
    assert sorted(_indices(epoch1)) == list(range(len(dataset)))
    resumed = _stream(dataset, start_epoch=1, start_batch=9)
    _assert_batches_equal(epoch1[9:], list(resumed))
    dataset.close()
    loader = DataLoader(_stream(dataset, start_epoch=1, start_batch=9), batch_size=None, num_workers=2,
                        multiprocessing_context="fork")
    _assert_batches_equal(epoch1[9:], list(loader))
    again = _stream(dataset)
    again.set_epoch(1)
    _assert_batches_equal(epoch1, list(again))


@FORK_OK
def test_persistent_workers_run_consecutive_epochs(dataset):
    """The trainer keeps its workers across epochs: each pass over the loader is the stream's next epoch."""
    stream = _stream(dataset, start_epoch=2, start_batch=5)
    expected = [list(stream), list(stream)]  # epoch 2 from batch 5, then all of epoch 3
    dataset.close()
    loader = DataLoader(_stream(dataset, start_epoch=2, start_batch=5), batch_size=None, num_workers=2,
                        persistent_workers=True, multiprocessing_context="fork")
    for epoch in expected:
        _assert_batches_equal(epoch, list(loader))


def test_seeds_and_epochs_change_the_order(dataset):
    a = _indices(list(_stream(dataset, seed=1)))
    assert a == _indices(list(_stream(dataset, seed=1)))
    assert a != _indices(list(_stream(dataset, seed=2)))
    assert a != _indices(list(_stream(dataset, seed=1, start_epoch=3)))


def test_two_ranks_read_disjoint_shards_with_equal_batch_counts(dataset):
    ranks = [_stream(dataset, rank=r, world_size=2, span_frames=GOP // 2) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    shards = [_indices(list(s)) for s in ranks]
    assert len(shards[0]) == len(shards[1]) == len(ranks[0]) * 4
    assert not set(shards[0]) & set(shards[1])


def test_v30_files_with_several_episodes_match_random_access(synthetic_2026):
    ds = BehaviorDataset(synthetic_2026, chunk_size=3)
    stream = TrainingStream(ds, seed=0, batch_size=5)
    assert stream.keyframe_interval == 8 and stream.span_frames == default_span_frames(8) == 120
    batches = list(stream)
    assert sorted(_indices(batches)) == list(range(len(ds)))
    batch = batches[1]
    for j, index in enumerate(batch["index"].tolist()):
        sample = ds[index]
        for key in ds.cameras:
            assert torch.equal(batch[key][j], sample[key])


def test_stream_rejects_bad_numbers(dataset):
    with pytest.raises(ConfigError, match="start_batch"):
        _stream(dataset, start_batch=-1)
    with pytest.raises(ConfigError, match="batch_size"):
        _stream(dataset, batch_size=0)
    with pytest.raises(ConfigError, match="span_frames"):
        _stream(dataset, span_frames=0)
    with pytest.raises(ConfigError, match="uint8_images"):
        _stream(dataset, uint8_images=True, transform=torch.nn.Identity())
