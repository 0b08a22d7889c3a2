"""Where a training batch is assembled (one buffer for all its tensors) and handed from a DataLoader worker to the
training process (a ring of shared-memory buffers, reused).

Why a ring: torch hands a worker's tensors over by their shared-memory storage. Every new storage costs a
``shm`` segment whose pages the kernel zeroes on first touch, and, with torch's default ``file_descriptor``
strategy, a socket connection from the training process to the worker's ``resource_sharer`` thread (with an HMAC
handshake) to pass its descriptor. Measured on the ``bench/loader.py`` data (2 cores, 224 px, 3 cameras, uint8
frames): a worker spent ~5.5 ms of CPU and the training process ~2.5 ms per batch on that, whatever the batch size,
i.e. ~1 ms per sample at batch 8, a fifth of a sample's whole cost. A :class:`BatchRing` maps a few batch-sized
buffers once per worker; a batch is written into a free one and only its layout (a few hundred bytes) is pickled.

Lifetime: the training process rebuilds the batch as views of its own mapping of the ring. All of them share one
storage that holds a :class:`_Lease` on the buffer; when the last tensor of the batch is freed (the trainer moved on,
or ``pin_memory`` copied it), the lease marks the buffer free in a flag word the worker reads before reusing it. A
worker that finds no free buffer (the consumer keeps many batches alive, e.g. ``list(loader)``) falls back to a new
storage for that batch, exactly as before: batches are never overwritten while referenced.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import default_collate

STORAGE_ALIGN = 64
"""Byte alignment of each tensor inside a batch's single buffer (a cache line; enough for any dtype's view)."""

RING_SLOTS = 8
"""Buffers per worker ring: the batches a worker may have in flight (the DataLoader's ``prefetch_factor``, 4 in
training) plus the ones the training process still holds (the current batch and its pinned copy), with margin."""

RING_BUDGET_BYTES = 256 * 2**20
"""Largest ring per worker; batches so large that fewer than 2 buffers fit are handed over one storage each."""

_FLAGS_BYTES = STORAGE_ALIGN * 2
"""Head of a ring: int32 flags, one per buffer (1 = in use) and one last word set when the trainer has mapped it."""


# -- assembling -----------------------------------------------------------------------------------------------


def batch_layout(samples: Sequence[dict[str, Any]], frames: dict[str, list[np.ndarray]], image_dtype: torch.dtype
                 ) -> tuple[dict[str, tuple[tuple[int, ...], torch.dtype, int]], int]:
    """Where each tensor of a batch goes in its single buffer.

    Returns:
        ``({key: (shape, dtype, byte offset)}, total bytes)``: the samples' tensor keys stacked to ``[B, ...]``, then
        the camera keys as ``[B, H, W, 3]`` (as decoded; exposed as ``[B, 3, H, W]`` channels-last), each offset a
        multiple of :data:`STORAGE_ALIGN`.
    """
    first = samples[0]
    specs: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
        k: ((len(samples), *v.shape), v.dtype) for k, v in first.items() if isinstance(v, torch.Tensor)
    }
    for camera, images in frames.items():
        h, w, _ = images[0].shape
        specs[camera] = ((len(images), h, w, 3), image_dtype)
    layout, total = {}, 0
    for key, (shape, dtype) in specs.items():
        layout[key] = (shape, dtype, total)
        total += -(-int(np.prod(shape)) * dtype.itemsize // STORAGE_ALIGN) * STORAGE_ALIGN
    return layout, max(total, STORAGE_ALIGN)


def collate_into(buffer: torch.Tensor, samples: Sequence[dict[str, Any]], frames: dict[str, list[np.ndarray]],
                 image_dtype: torch.dtype, layout: dict[str, tuple[tuple[int, ...], torch.dtype, int]]
                 ) -> dict[str, Any]:
    """Write a batch into ``buffer`` (uint8, 1-D, at least the layout's total bytes) and return it as views of it.

    Args:
        buffer: where the batch is written.
        samples, frames, image_dtype: as :func:`collate_one_storage`.
        layout: :func:`batch_layout` of the same arguments.

    Returns:
        As :func:`collate_one_storage`.
    """
    views = {key: buffer[offset:offset + int(np.prod(shape)) * dtype.itemsize].view(dtype).view(shape)
             for key, (shape, dtype, offset) in layout.items()}
    first = samples[0]
    batch: dict[str, Any] = {}
    for key, value in first.items():
        if key in views:
            batch[key] = torch.stack([s[key] for s in samples], out=views[key])
        elif isinstance(value, str):
            batch[key] = [s[key] for s in samples]
        else:
            batch[key] = default_collate([s[key] for s in samples])
    for camera, images in frames.items():
        # The frames are written as swscale left them (rows of RGB pixels): one contiguous copy per frame, no
        # transposition on the CPU (measured: the HWC -> CHW copy cost ~15% of a sample's CPU). The [B, 3, H, W]
        # tensor is a permuted view, i.e. ``torch.channels_last``; the consumer makes it contiguous on its device.
        hwc = views[camera].numpy()
        for j, frame in enumerate(images):
            if image_dtype == torch.uint8:
                np.copyto(hwc[j], frame)
            else:
                np.divide(frame, np.float32(255.0), out=hwc[j])  # the float32 division torch's div does (same bits)
        batch[camera] = views[camera].permute(0, 3, 1, 2)
    return batch


def collate_one_storage(samples: Sequence[dict[str, Any]], frames: dict[str, list[np.ndarray]],
                        image_dtype: torch.dtype, shared: bool) -> dict[str, Any]:
    """Collate samples and their camera frames into a batch whose tensors are views of **one** new storage.

    Why one storage: a DataLoader worker hands every tensor storage to the main process separately (see the module
    docstring); for the 10 tensors of a training batch one storage instead of ten cut the training process's time
    per fetched batch from a median 5.0 to 2.0 ms on a 2-core machine. Workers use a :class:`BatchRing` when one
    fits and this as the fallback; the main process (``num_workers=0``) uses it always.

    Args:
        samples: ``BehaviorDataset.numeric_sample`` dicts (tensors, plus strings such as ``task``), all with the same
            keys and per-key shapes.
        frames: camera key -> one decoded ``uint8 [H, W, 3]`` RGB frame per sample, in sample order (rows may be
            padded, as :func:`~behavior_smolvla.data.video.frame_to_rgb` returns them).
        image_dtype: ``torch.uint8`` (frames kept as 0-255) or ``torch.float32`` (divided by 255, in [0, 1]).
        shared: allocate the storage in shared memory (inside a DataLoader worker, as torch's ``default_collate``
            does there), so the hand-over copies nothing.

    Returns:
        The sample keys in order (tensors stacked to ``[B, ...]`` with their dtype; strings as ``list[str]``; anything
        else through ``default_collate``), then the camera keys as ``[B, 3, H, W]`` ``image_dtype`` in
        ``torch.channels_last`` memory format (the values of ``frame.permute(2, 0, 1)``, divided by 255 for float32).
    """
    layout, total = batch_layout(samples, frames, image_dtype)
    storage = torch.UntypedStorage._new_shared(total) if shared else torch.UntypedStorage(total)
    return collate_into(torch.empty(0, dtype=torch.uint8).set_(storage), samples, frames, image_dtype, layout)


# -- handing over ---------------------------------------------------------------------------------------------


class BatchRing:
    """A worker's reused shared-memory batch buffers (see the module docstring). Built inside the worker.

    Args:
        slot_bytes: bytes of one buffer (a multiple of :data:`STORAGE_ALIGN`).
        slots: number of buffers.
    """

    def __init__(self, slot_bytes: int, slots: int):
        self.slot_bytes = int(slot_bytes)
        self.slots = int(slots)
        self.token = f"{os.getpid()}-{secrets.token_hex(8)}"
        self.storage = torch.UntypedStorage._new_shared(_FLAGS_BYTES + self.slots * self.slot_bytes)
        self._bytes = torch.empty(0, dtype=torch.uint8).set_(self.storage)
        self._flags = self._bytes[:_FLAGS_BYTES].view(torch.int32).numpy()
        self._flags[:] = 0
        self._next = 0

    @classmethod
    def fitting(cls, batch_bytes: int) -> BatchRing | None:
        """A ring for batches of up to ``batch_bytes``, or None when fewer than 2 fit :data:`RING_BUDGET_BYTES`."""
        slot_bytes = -(-int(batch_bytes) // STORAGE_ALIGN) * STORAGE_ALIGN
        slots = min(RING_SLOTS, RING_BUDGET_BYTES // max(slot_bytes, 1))
        return cls(slot_bytes, slots) if slots >= 2 else None

    def acquire(self, batch_bytes: int) -> int | None:
        """A free buffer's index, marked in use, or None (none free, or the batch does not fit one)."""
        if batch_bytes > self.slot_bytes:
            return None
        for step in range(self.slots):
            slot = (self._next + step) % self.slots
            if self._flags[slot] == 0:
                self._flags[slot] = 1
                self._next = slot + 1
                return slot
        return None

    def buffer(self, slot: int) -> torch.Tensor:
        """uint8 ``[slot_bytes]``: buffer ``slot`` as this process sees it, to write a batch into."""
        start = _FLAGS_BYTES + slot * self.slot_bytes
        return self._bytes[start:start + self.slot_bytes]

    def package(self, slot: int, batch: dict[str, Any]) -> RingBatch:
        """The picklable hand-over of ``batch`` (views of :meth:`buffer` ``(slot)``)."""
        base = self.buffer(slot)
        start = base.storage_offset()
        tensors, others = {}, {}
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() == self.storage.data_ptr():
                offset = value.storage_offset() * value.element_size() - start
                tensors[key] = (value.dtype, tuple(value.shape), tuple(value.stride()), offset)
            else:
                others[key] = value
        mapped = bool(self._flags[self.slots])  # the training process has mapped the ring: send it no more
        return RingBatch(self.token, self.slots, self.slot_bytes, slot, list(batch), tensors, others,
                         None if mapped else self.storage)


class RingBatch:
    """A batch written into a :class:`BatchRing` buffer, as a worker yields it: unpickles (in the training process)
    to the plain batch dict, its tensors views of that process's mapping of the ring."""

    def __init__(self, token: str, slots: int, slot_bytes: int, slot: int, keys: list[str],
                 tensors: dict[str, tuple], others: dict[str, Any], storage: torch.UntypedStorage | None):
        self.args = (token, slots, slot_bytes, slot, keys, tensors, others, storage)

    def __reduce__(self) -> tuple[Any, tuple]:
        return _rebuild_batch, self.args


class _MappedRing:
    """The training process's mapping of one worker's ring."""

    def __init__(self, storage: torch.UntypedStorage, slots: int, slot_bytes: int):
        self.storage = storage
        self.bytes = torch.empty(0, dtype=torch.uint8).set_(storage).numpy()
        self.flags = self.bytes[:_FLAGS_BYTES].view(np.int32)
        self.slots, self.slot_bytes = slots, slot_bytes
        self.pid = None


class _Lease:
    """Exports one ring buffer to numpy (Python buffer protocol, PEP 688) and frees it when the last view is gone."""

    def __init__(self, ring: _MappedRing, slot: int):
        self.ring, self.slot = ring, slot
        start = _FLAGS_BYTES + slot * ring.slot_bytes
        self.view = ring.bytes[start:start + ring.slot_bytes]

    def __buffer__(self, flags: int) -> memoryview:
        return memoryview(self.view)

    def __release_buffer__(self, view: memoryview) -> None:
        view.release()

    def __del__(self) -> None:
        self.ring.flags[self.slot] = 0  # the worker may write this buffer again


_RINGS: dict[str, _MappedRing] = {}
"""The training process's mapped rings by token (one per worker process that used one)."""


def _rebuild_batch(token: str, slots: int, slot_bytes: int, slot: int, keys: list[str], tensors: dict[str, tuple],
                   others: dict[str, Any], storage: torch.UntypedStorage | None) -> dict[str, Any]:
    ring = _RINGS.get(token)
    if ring is None:
        if storage is None:
            raise RuntimeError(f"a batch from DataLoader worker ring {token} arrived in a process that never mapped "
                               "the ring (batches of one worker must reach one process)")
        _forget_finished_rings()
        ring = _RINGS[token] = _MappedRing(storage, slots, slot_bytes)
        ring.pid = int(token.split("-")[0])
        ring.flags[slots] = 1  # acknowledged: later batches need not carry the ring
    # one storage for the whole batch, holding the lease: the buffer is free again when its last tensor is freed
    base = torch.from_numpy(np.frombuffer(_Lease(ring, slot), dtype=np.uint8))
    batch: dict[str, Any] = {}
    for key in keys:
        if key in tensors:
            dtype, shape, stride, offset = tensors[key]
            typed = base.view(dtype)
            batch[key] = typed.as_strided(shape, stride, offset // typed.element_size())
        else:
            batch[key] = others[key]
    return batch


def _forget_finished_rings() -> None:
    """Drop the mappings of rings whose worker has exited (batches still alive keep their own reference)."""
    for token, ring in list(_RINGS.items()):
        try:
            os.kill(ring.pid, 0)
        except ProcessLookupError:
            del _RINGS[token]
        except PermissionError:
            pass
