"""The BEHAVIOR evaluator's observation dict -> the batch a checkpoint's policy takes, exactly as in training.

The evaluator (OmniGibson ``eval.py``; ``../shared/reference/behavior_r1pro.md``) sends, per step:

* ``robot_r1::proprio``: the robot's full proprioception, float32 [256] (2025) or [61] (2026);
* ``robot_r1::robot_r1:zed_link:Camera:0::rgb`` (head), ``...:left_realsense_link:...`` and
  ``...:right_realsense_link:...`` (wrists): uint8 RGBA [H, W, 4] (720x720 head, 480x480 wrists in the release);
* ``task_id``: int64 [1], the BEHAVIOR task index (``episode_index // 10000`` in the 2025 release);
* newer evaluators add a leading batch dimension of 1 to every value.

:class:`ObservationSpec` turns that into what :meth:`PolicyBundle.predict_chunk` takes, through the same steps
the training reader (:class:`~behavior_smolvla.data.dataset.BehaviorDataset`) applies to a dataset frame:

* state: the checkpoint's state map applied to the full float32 proprio vector (the same ``StateMap.apply``); a
  map with velocity dims also takes the proprio ``state_map.lag_frames`` evaluator steps earlier, kept per session by
  :class:`ProprioHistory` (the evaluator steps at the dataset's fps, one observation per step: 30 Hz for BEHAVIOR,
  so evaluator steps are dataset frames), clamped at the episode start as the reader clamps it;
* images: RGB (alpha dropped), taken through the colour path of the training videos (yuv420p) and resized by
  FFmpeg's swscale with the reader's filters (area when shrinking, bilinear when enlarging) so the longer side is the
  checkpoint's ``image_size`` and the aspect ratio is kept (``video.output_size``; :func:`training_frame`), then
  ``uint8 HWC -> float32 CHW / 255``. SmolVLA's ``resize_imgs_with_padding`` then
  zero-pads to ``image_size x image_size`` inside the policy, for served and training frames alike;
* cameras: each checkpoint camera takes the evaluator camera of its role (head / left wrist / right wrist, read from
  the camera key: 2025 ``observation.images.rgb.head``, 2026 ``observation.rgb.zed_link_camera_0``, ...), or, for
  keys without a recognisable role, the evaluator cameras in policy order (camera1 = head, camera2 = left wrist,
  camera3 = right wrist);
* task: the instruction saved with the checkpoint for ``task_id`` (``task_map``), or a fixed override.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import av
import numpy as np
import torch

from behavior_smolvla.actions import REFERENCE_KEY, reference_state
from behavior_smolvla.errors import CheckpointError, ObservationError
from behavior_smolvla.r1pro import CAMERA_ROLES, EVALUATOR_RGB_KEYS, camera_role

# The reader's resize policy (video.py): same target-size rule and the same swscale filters.
from behavior_smolvla.data.video import frame_to_rgb, output_size

if TYPE_CHECKING:
    from behavior_smolvla.inputs import PolicyInputs

__all__ = [
    "CAMERA_ROLES",
    "EVALUATOR_RGB_KEYS",
    "PROPRIO_KEY",
    "TASK_ID_KEY",
    "ObservationSpec",
    "ParsedObservation",
    "ProprioHistory",
    "camera_role",
    "evaluator_camera_sources",
    "training_frame",
]

logger = logging.getLogger(__name__)

PROPRIO_KEY = "robot_r1::proprio"
TASK_ID_KEY = "task_id"
def evaluator_camera_sources(cameras: Sequence[str]) -> dict[str, str]:
    """Which evaluator RGB key feeds each checkpoint camera.

    Args:
        cameras: the checkpoint's dataset camera keys in policy order.

    Returns:
        ``{dataset camera key: evaluator observation key}``: by role when every key names a distinct role, else
        by position (camera1 <- head, camera2 <- left wrist, camera3 <- right wrist).

    Raises:
        CheckpointError: more than three cameras without distinct roles (the evaluator sends three RGB images).
    """
    roles = [camera_role(c) for c in cameras]
    if all(roles) and len(set(roles)) == len(roles):
        return {c: EVALUATOR_RGB_KEYS[r] for c, r in zip(cameras, roles, strict=True)}
    if len(cameras) > len(CAMERA_ROLES):
        raise CheckpointError(f"the checkpoint uses {len(cameras)} cameras ({', '.join(cameras)}) but the BEHAVIOR "
                              "evaluator sends 3 RGB images (head, left wrist, right wrist); serve a checkpoint "
                              "trained on at most 3 cameras")
    return {c: EVALUATOR_RGB_KEYS[r] for c, r in zip(cameras, CAMERA_ROLES, strict=False)}


def training_frame(image: np.ndarray, image_size: int | tuple[int, int] | None) -> np.ndarray:
    """The frame the training reader would produce from a BEHAVIOR video of this RGB image.

    Training frames were rendered as RGB, encoded as yuv420p video (the releases' pixel format; 4:2:0 halves the
    colour resolution) and decoded by ``video.py``, whose swscale call converts yuv420p to RGB and resizes at once.
    This replays that colour path on the evaluator's raw RGB: RGB -> yuv420p with PyAV's default conversion (what
    the dataset writers' encoders apply), then the reader's conversion and resize. Without it, sharp colour edges
    differ from what the policy saw in training by up to ~70 of 255 levels; with it only the codec's quantisation
    is left (measured on the synthetic 2025 dataset: mean 1 level, max ~25 levels at a 96 -> 64 px head camera).

    Args:
        image: uint8 [H, W, 3] RGB, C-contiguous or not.
        image_size: as :data:`behavior_smolvla.data.video.ImageSize`: an int scales the longer side to it keeping the
            aspect ratio, ``(H, W)`` is exact, None keeps the size.

    Returns:
        uint8 [h, w, 3] RGB. Shrinking uses swscale's area filter, enlarging bilinear (the reader's choices).
    """
    height, width = image.shape[:2]
    out_h, out_w = output_size(width, height, image_size)
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24").reformat(format="yuv420p")
    return frame_to_rgb(frame, out_h, out_w)


@dataclass
class ParsedObservation:
    """A validated evaluator observation (no resizing done yet).

    Attributes:
        proprio: float32 [D_in], the full proprioception as sent.
        images: evaluator RGB key -> uint8 [H, W, 3] (alpha dropped; a view of the message buffer).
        task: the instruction the policy is given.
        batched: the request carried a leading batch dimension of 1 (the reply mirrors it).
    """

    proprio: np.ndarray
    images: dict[str, np.ndarray]
    task: str
    batched: bool


@dataclass
class ObservationSpec:
    """What a checkpoint needs from an evaluator observation, and how to convert it.

    Attributes:
        state_map: the checkpoint's bound state map (``input_dim`` = the proprio length it takes).
        cameras: the checkpoint's dataset camera keys in policy order.
        camera_sources: ``{dataset camera key: evaluator RGB key}`` (:func:`evaluator_camera_sources`).
        image_size: the reader's ``image_size`` of the training run (int: longer side in pixels).
        task_map: BEHAVIOR task index (as str) -> instruction, saved with the checkpoint.
        tasks: the instructions the checkpoint was trained on.
        task: a fixed instruction overriding ``task_id`` (``--task``), or None.
        action_reference: the contract's delta reference (``PolicyInputs.delta_reference``: raw proprio index or
            None per action dim), or None for an absolute-action policy.
    """

    state_map: Any
    cameras: list[str]
    camera_sources: dict[str, str]
    image_size: int | tuple[int, int] | None
    task_map: dict[str, str]
    tasks: list[str]
    task: str | None = None
    action_reference: tuple[int | None, ...] | None = None

    @classmethod
    def from_inputs(cls, inputs: PolicyInputs, task: str | None = None) -> ObservationSpec:
        """The spec of a policy's input contract (``PolicyBundle.inputs``): its state map, cameras, image size and
        task table, unchanged.

        Raises:
            CheckpointError: the contract's cameras cannot be fed from the evaluator's three RGB images.
        """
        return cls(state_map=inputs.state_map, cameras=list(inputs.cameras),
                   camera_sources=evaluator_camera_sources(inputs.cameras), image_size=inputs.image_size,
                   task_map={str(k): v for k, v in inputs.task_map.items()}, tasks=list(inputs.tasks),
                   task=task.strip() if task and task.strip() else None, action_reference=inputs.delta_reference)

    @property
    def proprio_dim(self) -> int:
        return int(self.state_map.input_dim)

    @property
    def read_dims(self) -> np.ndarray:
        """int64 [K], sorted: the proprio dims the policy reads, i.e. the state map's source dims (also through the
        velocity history) and, for a delta-action policy, each action dim's reference dim."""
        dims = list(self.state_map.source_indices)
        if self.action_reference is not None:
            dims += [r for r in self.action_reference if r is not None]
        return np.unique(np.asarray(dims, dtype=np.int64))

    def parse(self, observation: Mapping[str, Any]) -> ParsedObservation:
        """Validate an evaluator observation (cheap: no resizing, no copies of the images).

        Args:
            observation: ``robot_r1::proprio`` numeric [D_in] or [1, D_in]; each evaluator RGB key the checkpoint
                uses, uint8 [H, W, 3 or 4] or [1, H, W, 3 or 4]; ``task_id`` integer, [1] or [1, 1] (unless a
                fixed task was given, or the checkpoint has a single task). Other keys are ignored.

        Raises:
            ObservationError: a missing key, a batch of more than one observation, a proprio vector of the wrong
                length, an image of the wrong rank, channel count or dtype, or a ``task_id`` the checkpoint does not
                know (with several trained tasks and no fixed task). Proprio values are not checked here:
                :meth:`BehaviorPolicy.step` refuses NaN/inf or wild values in :attr:`read_dims` only
                (:func:`~behavior_smolvla.serving.limits.check_observation_ranges`).
        """
        if not isinstance(observation, Mapping):
            raise ObservationError(f"an observation must be a map of key -> array, got {type(observation).__name__}")
        proprio, batched = self._proprio(observation)
        images = {key: self._image(observation, key) for key in dict.fromkeys(self.camera_sources.values())}
        return ParsedObservation(proprio=proprio, images=images, task=self._task(observation), batched=batched)

    def to_batch(self, parsed: ParsedObservation, previous: np.ndarray | None = None) -> dict[str, Any]:
        """The policy batch of one parsed observation (B = 1), as the training reader would have produced it.

        Args:
            parsed: from :meth:`parse`.
            previous: float32 [D_in], for a state map with velocity dims: the proprio ``state_map.lag_frames``
                evaluator steps earlier in the episode (:meth:`ProprioHistory.observe`); ignored by other maps.

        Returns:
            ``{camera key: float32 tensor [1, 3, h, w] in [0, 1], "observation.state": float32 tensor [1, D_out],
            "task": [str]}`` (camera keys are the checkpoint's dataset keys; ``h, w`` per ``image_size``), plus
            ``"action.reference"`` float32 [1, A] (the raw proprio of each action dim's reference joint) for a
            delta-action policy, which ``predict_chunk`` adds back to its predicted deltas.
        """
        batch: dict[str, Any] = {}
        for camera, source in self.camera_sources.items():
            frame = training_frame(parsed.images[source], self.image_size)
            batch[camera] = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).to(torch.float32) \
                .div_(255.0).unsqueeze(0)
        earlier = None if previous is None else np.asarray(previous, dtype=np.float32)[None, :]
        state = np.ascontiguousarray(self.state_map.apply(parsed.proprio[None, :], earlier), dtype=np.float32)
        batch["observation.state"] = torch.from_numpy(state)
        if self.action_reference is not None:
            batch[REFERENCE_KEY] = torch.from_numpy(reference_state(parsed.proprio[None, :], self.action_reference))
        batch["task"] = [parsed.task]
        return batch

    def __call__(self, observation: Mapping[str, Any]) -> dict[str, Any]:
        """``to_batch(parse(observation))``."""
        return self.to_batch(self.parse(observation))

    # -- validation -------------------------------------------------------------------------------------------

    def _proprio(self, observation: Mapping[str, Any]) -> tuple[np.ndarray, bool]:
        if PROPRIO_KEY not in observation:
            raise ObservationError(f"observation lacks {PROPRIO_KEY!r} (keys: {_keys(observation)}); send the "
                                   f"robot's full proprioception, float32 [{self.proprio_dim}]")
        value = _numeric(observation[PROPRIO_KEY], PROPRIO_KEY)
        batched = value.ndim == 2
        if batched:
            _check_batch_of_one(value, PROPRIO_KEY)
            value = value[0]
        if value.ndim != 1 or value.shape[0] != self.proprio_dim:
            raise ObservationError(
                f"{PROPRIO_KEY} has shape {list(np.shape(observation[PROPRIO_KEY]))}; this checkpoint's state map "
                f"{self.state_map.name!r} takes [{self.proprio_dim}] (or [1, {self.proprio_dim}]): serve a checkpoint "
                "trained on this robot's proprioception")
        # NaN/inf and range: only in the dims the policy reads (read_dims), checked by BehaviorPolicy.step
        return value.astype(np.float32, copy=False), batched

    def _image(self, observation: Mapping[str, Any], key: str) -> np.ndarray:
        if key not in observation:
            raise ObservationError(f"observation lacks camera {key!r} (keys: {_keys(observation)}); the checkpoint "
                                   f"needs {', '.join(dict.fromkeys(self.camera_sources.values()))}")
        value = observation[key]
        if not isinstance(value, np.ndarray):
            raise ObservationError(f"{key} must be a uint8 array [H, W, 3|4], got {type(value).__name__}")
        if value.ndim == 4:
            _check_batch_of_one(value, key)
            value = value[0]
        if value.ndim != 3 or value.shape[-1] not in (3, 4) or min(value.shape[:2]) < 1:
            raise ObservationError(f"{key} has shape {list(observation[key].shape)}; expected an RGB(A) image "
                                   "[H, W, 3|4] or [1, H, W, 3|4]")
        if value.dtype != np.uint8:
            raise ObservationError(f"{key} has dtype {value.dtype}; expected uint8 pixels 0..255 (as the evaluator "
                                   "sends them)")
        return value[..., :3]

    def _task(self, observation: Mapping[str, Any]) -> str:
        if self.task is not None:
            return self.task
        known = ", ".join(f"{k}: {v!r}" for k, v in sorted(self.task_map.items(), key=lambda kv: _int_or(kv[0])))
        single = self.tasks[0] if len(self.tasks) == 1 else None
        if TASK_ID_KEY not in observation:
            if single is not None:
                return single
            raise ObservationError(f"observation lacks {TASK_ID_KEY!r} and the checkpoint knows several tasks "
                                   f"({known}); send task_id or start the server with --task TEXT")
        raw = observation[TASK_ID_KEY]
        ids = np.asarray(raw).reshape(-1)
        if ids.size != 1 or ids.dtype.kind not in "iu":
            raise ObservationError(f"{TASK_ID_KEY} must be one integer ([1] or [1, 1]), got {np.asarray(raw)!r}")
        task_id = str(int(ids[0]))
        if task_id in self.task_map:
            return self.task_map[task_id]
        if single is not None:
            # A checkpoint of one task ignores the id: a converted dataset may number that task differently.
            logger.warning("task_id %s is not in the checkpoint's task map; using its only task %r", task_id, single)
            return single
        raise ObservationError(f"{TASK_ID_KEY} {task_id} is not one of the checkpoint's tasks ({known}); "
                               "start the server with --task TEXT to give the instruction")


class ProprioHistory:
    """The recent proprio of one session (one evaluator episode), for a state map with velocity dims.

    A velocity dim needs the raw state ``lag`` dataset frames earlier (``StateMap.lag_frames``). The evaluator steps
    at the dataset's fps and sends one observation per step, so frames are evaluator steps: the observation at step
    ``f`` (counted from the episode start, :meth:`clear`) is paired with the one at step ``max(0, f - lag)``, which
    is what the training reader pairs (the episode's first state until ``lag`` frames have passed: zero motion at
    the first step). A step that returns ``k`` actions at once (an action-chunk request) is followed by the next
    observation ``k`` steps later; proprio at steps without an observation is linearly interpolated between the
    observations around it (exact for a joint moving at constant speed).

    Args:
        lag: frames between the two states (>= 1).
    """

    def __init__(self, lag: int) -> None:
        if isinstance(lag, bool) or not isinstance(lag, int) or lag < 1:
            raise ValueError(f"ProprioHistory lag {lag!r} must be an integer >= 1 (frames)")
        self.lag = lag
        self.clear()

    def clear(self) -> None:
        """Start of an episode: forget every observation; the next one is step 0."""
        self._steps: collections.deque[int] = collections.deque()
        self._values: collections.deque[np.ndarray] = collections.deque()
        self.step = 0

    def observe(self, proprio: np.ndarray) -> np.ndarray:
        """Record the proprio of the current step; return float32 [D]: the proprio ``lag`` steps earlier (clamped
        at the episode's first observation, interpolated between observations when that step had none).

        Observing again before :meth:`advance` (a step that failed and is retried) replaces the step's proprio.
        """
        value = np.array(proprio, dtype=np.float32)  # a copy: the message buffer is reused
        if self._steps and self._steps[-1] == self.step:
            self._values[-1] = value
        else:
            self._steps.append(self.step)
            self._values.append(value)
        target = self.step - self.lag
        # Keep the newest observation at or before the earliest step still needed (the next observation's target
        # is later than this one's): older ones can never be read again.
        while len(self._steps) > 1 and self._steps[1] <= target:
            self._steps.popleft()
            self._values.popleft()
        if target <= self._steps[0]:
            return self._values[0].copy()  # the episode's first observation, or exactly the step wanted
        after = next(i for i, s in enumerate(self._steps) if s >= target)
        s0, s1 = self._steps[after - 1], self._steps[after]
        w = np.float32((target - s0) / (s1 - s0))
        return (self._values[after - 1] + w * (self._values[after] - self._values[after - 1])).astype(np.float32)

    def advance(self, steps: int = 1) -> None:
        """The current step returned ``steps`` actions: the next observation is that many steps later."""
        self.step += int(steps)


def _numeric(value: Any, key: str) -> np.ndarray:
    array = value if isinstance(value, np.ndarray) else np.asarray(value) if isinstance(value, list) else None
    if array is None or array.dtype.kind not in "biuf":
        raise ObservationError(f"{key} must be a numeric array, got {type(value).__name__}"
                               + (f" of dtype {array.dtype}" if array is not None else ""))
    return array


def _check_batch_of_one(value: np.ndarray, key: str) -> None:
    if value.shape[0] != 1:
        raise ObservationError(f"{key} carries a batch of {value.shape[0]} observations; this server serves one "
                               "environment per connection: send batch size 1 (or open one connection each)")


def _keys(observation: Mapping[str, Any]) -> str:
    keys = [str(k) for k in observation]
    return ", ".join(keys[:12]) + (", ..." if len(keys) > 12 else "") if keys else "none"


def _int_or(text: str) -> tuple[int, str]:
    try:
        return int(text), ""
    except ValueError:
        return 1 << 62, text
