"""Small BEHAVIOR-shaped LeRobot datasets with learnable content, for tests, the demo and benchmarks.

Two layouts, as the challenge releases store them (facts: ``../shared/reference/behavior_r1pro.md`` and the
BEHAVIOR-1K dataset scripts that wrote the 2025 release):

* :func:`write_behavior_2025`: LeRobot v2.1 customised like ``behavior-1k/2025-challenge-demos``: one parquet and
  one HEVC mp4 per episode and camera under ``task-{episode_chunk:04d}`` folders (``chunks_size`` 10000, so the
  chunk is the task id), episode indices ``task_id * 10000 + instance * 10`` (NOT contiguous), a 256-dim
  ``observation.state`` (``names: null``) that obeys the R1Pro index table, ``observation.cam_rel_poses`` [21],
  a variable-length ``observation.task_info``, ``task_index`` present in the parquet but not declared, no
  ``frame_index`` column, ``timestamp`` float64, a per-episode ``index`` (0..length-1, as the release's writer
  made it), ``meta/{tasks,episodes,episodes_stats}.jsonl`` and ``meta/episodes/task-XXXX/episode_XXXXXXXX.json``.
  Video features are listed in the release's order: left wrist, right wrist, head.
* :func:`write_behavior_2026`: LeRobot v3.0 like ``behavior-1k/2026-challenge-demos``: several episodes per parquet
  and per mp4 (one chunk per task), ``meta/episodes/chunk-000/file-000.parquet`` with the video offsets and
  per-episode ``stats/...`` columns, ``meta/tasks.parquet``, ``meta/stats.json`` (plus the release's
  ``tasks.jsonl``), a 61-dim state per the 2026 table, cameras ``observation.rgb.*_camera_0``,
  ``observation.robot2cam_pose.<camera>`` [7], ``next.reward`` / ``next.terminated`` / ``next.truncated``.
  Each camera groups episodes into mp4 files differently, so its file boundaries and ``from_timestamp``
  offsets differ from the other cameras'. ``lerobot``'s own ``LeRobotDataset`` opens it.

The synthetic world (the same for both layouts; all quantities SI: radians, metres, m/s, rad/s):

* Each episode has a task (``task_index``), a 2-D target ``g`` in [-0.8, 0.8]^2, a constant base command
  ``c = (vx, vy, wz)`` in +-0.3 m/s, +-0.3 m/s, +-0.3 rad/s, and a slightly perturbed home pose.
* The head camera shows ``g`` as a disc of the task's colour (its pixel position is ``g``), ``c`` as the colour of
  a square in the top-left corner (R, G, B = 128 + 100 * c / 0.3), the episode's progress ``t / (T - 1)`` as a
  yellow vertical stripe sweeping left to right, and the frame index as an 8-bit timecode row at the bottom
  (white block = bit set, least significant bit on the left) that makes every frame of an episode distinct.
* The arms' joint targets are a fixed linear function of ``g``: ``q* = home + A g``. The action's arm and torso
  parts are the next joint positions ``q + 0.1 (q* - q)`` and the robot reaches them exactly (``state[t + 1]``
  arm joints equal ``action[t]``). The base command is ``c``; the base velocity follows it with a first-order lag
  (0.2 per frame). The active hand (even task index: left, odd: right) closes its gripper (command -1, else +1 =
  open, the release's convention) from frame ``T // 2`` on, i.e. once the progress stripe passes the middle;
  each finger moves 5 mm per frame towards 0.05 m (open) or 0 m (closed).
* Each wrist camera shows a disc at its centre whose radius grows as that arm nears its target (task colour on
  the active hand, grey on the other), the two fingers as bars whose gap is the finger opening, and the timecode.

So the action is a deterministic function of what a policy sees (state, images, task) and a small policy trained
briefly beats predicting the mean action. End-effector poses come from a fixed smooth stand-in for forward
kinematics (not R1Pro's); ``joint_qeffort`` is noise, as the release's values are unusable.

The spec of a generated dataset is stored in ``meta/synthetic_spec.json``; :func:`load_ground_truth` regenerates
exactly what was written (state, action, extra columns, and every frame before encoding) for round-trip tests.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from behavior_smolvla.errors import ConfigError
from behavior_smolvla.r1pro import ACTION_DIM, CAMERA_ROLES, CAMERAS_2025, CAMERAS_2026

SPEC_FILE = "meta/synthetic_spec.json"
"""Where a generated dataset records the :class:`SyntheticSpec` it was written from."""


FPS = 30
CHUNKS_SIZE_2025 = 10_000  # the 2025 release's chunks_size: episode_chunk = episode_index // 10000 = task id
CHUNKS_SIZE_2026 = 1000  # lerobot's default chunks_size (one chunk per task, far fewer files than this)

# R1Pro proprioception blocks (name, start, stop), from the 2025 and 2026 index tables.
STATE_BLOCKS_2025: tuple[tuple[str, int, int], ...] = (
    ("joint_qpos", 0, 28), ("joint_qpos_sin", 28, 56), ("joint_qpos_cos", 56, 84), ("joint_qvel", 84, 112),
    ("joint_qeffort", 112, 140), ("robot_pos", 140, 143), ("robot_ori_cos", 143, 146),
    ("robot_ori_sin", 146, 149), ("robot_2d_ori", 149, 150), ("robot_2d_ori_cos", 150, 151),
    ("robot_2d_ori_sin", 151, 152), ("robot_lin_vel", 152, 155), ("robot_ang_vel", 155, 158),
    ("arm_left_qpos", 158, 165), ("arm_left_qpos_sin", 165, 172), ("arm_left_qpos_cos", 172, 179),
    ("arm_left_qvel", 179, 186), ("eef_left_pos", 186, 189), ("eef_left_quat", 189, 193),
    ("gripper_left_qpos", 193, 195), ("gripper_left_qvel", 195, 197), ("arm_right_qpos", 197, 204),
    ("arm_right_qpos_sin", 204, 211), ("arm_right_qpos_cos", 211, 218), ("arm_right_qvel", 218, 225),
    ("eef_right_pos", 225, 228), ("eef_right_quat", 228, 232), ("gripper_right_qpos", 232, 234),
    ("gripper_right_qvel", 234, 236), ("trunk_qpos", 236, 240), ("trunk_qvel", 240, 244),
    ("base_qpos", 244, 247), ("base_qpos_sin", 247, 250), ("base_qpos_cos", 250, 253), ("base_qvel", 253, 256),
)
STATE_BLOCKS_2026: tuple[tuple[str, int, int], ...] = (
    ("base_qvel", 0, 3), ("arm_left_qpos", 3, 10), ("arm_left_qvel", 10, 17), ("eef_left_pos", 17, 20),
    ("eef_left_quat", 20, 24), ("gripper_left_qpos", 24, 26), ("gripper_left_qvel", 26, 28),
    ("arm_right_qpos", 28, 35), ("arm_right_qvel", 35, 42), ("eef_right_pos", 42, 45),
    ("eef_right_quat", 45, 49), ("gripper_right_qpos", 49, 51), ("gripper_right_qvel", 51, 53),
    ("trunk_qpos", 53, 57), ("trunk_qvel", 57, 61),
)
# Action groups (name, start, stop): base velocity, torso / arm joint positions, gripper commands.
ACTION_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("base", 0, 3), ("torso", 3, 7), ("left_arm", 7, 14), ("left_gripper", 14, 15), ("right_arm", 15, 22),
    ("right_gripper", 22, 23),
)

# Dynamics of the synthetic world (see the module docstring).
APPROACH_RATE = 0.1  # fraction of the remaining joint distance covered per frame
BASE_LAG = 0.2  # fraction of the base velocity error closed per frame
FINGER_OPEN_M = 0.05  # R1Pro finger travel: 0..0.05 m each
FINGER_STEP_M = 0.005  # finger speed, metres per frame
BASE_CMD_LIMIT = 0.3  # |vx|, |vy| in m/s and |wz| in rad/s of the per-episode base command
TARGET_LIMIT = 0.8  # |g| per axis
TIMECODE_BITS = 8

_TASK_COLOURS = (
    ("red", (220, 50, 40)), ("blue", (40, 110, 230)), ("green", (50, 190, 70)), ("yellow", (230, 200, 30)),
    ("purple", (160, 70, 210)), ("cyan", (30, 200, 210)), ("orange", (240, 130, 20)), ("pink", (240, 110, 180)),
)

_SUPPORTED_CODECS = ("libx265", "libx264")
# Measured here (PyAV 15.1's libx265): encoding frames 34..48 pixels wide aborts the process ("free(): invalid next
# size") or segfaults, most of the time; 16..32 and >= 50 never did in repeated runs.
_X265_BAD_WIDTHS = (33, 49)


# ------------------------------------------------------------------------------------------------------------
# Spec


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a generated dataset (stored as ``meta/synthetic_spec.json``).

    Attributes:
        layout: ``"behavior-2025"`` (v2.1 custom) or ``"behavior-2026"`` (v3.0).
        lengths: frames per episode, in episode order.
        tasks: number of distinct tasks (episodes are split into contiguous, balanced task groups).
        image_size: ``{"head": (H, W), "left_wrist": (H, W), "right_wrist": (H, W)}`` in pixels (even, >= 16).
        codec: ``"libx265"`` (HEVC, as the releases) or ``"libx264"``; pixel format yuv420p.
        gop: keyframe interval in frames (closed GOPs, no scene-cut keyframes).
        fps: frames per second.
        seed: seed of every random choice; the same spec writes the same data.
        crf: encoder constant rate factor (lower = closer to the rendered frames).
        preset: encoder speed preset.
        episodes_per_file: v3.0 only: episodes per parquet file (and per head-camera mp4; the wrist cameras
            group episodes differently so that offsets differ between cameras).
    """

    layout: str
    lengths: tuple[int, ...]
    tasks: int
    image_size: Mapping[str, tuple[int, int]]
    codec: str = "libx265"
    gop: int = 250
    fps: int = FPS
    seed: int = 0
    crf: int = 18
    preset: str = "ultrafast"
    episodes_per_file: int = 2

    def to_json(self) -> dict:
        """JSON-serialisable dict (tuples become lists)."""
        data = dataclasses.asdict(self)
        data["lengths"] = list(self.lengths)
        data["image_size"] = {k: list(v) for k, v in self.image_size.items()}
        return data

    @classmethod
    def from_json(cls, data: Mapping) -> SyntheticSpec:
        """Inverse of :meth:`to_json`."""
        data = dict(data)
        data["lengths"] = tuple(int(n) for n in data["lengths"])
        data["image_size"] = {k: (int(v[0]), int(v[1])) for k, v in data["image_size"].items()}
        return cls(**data)


def _make_spec(layout: str, episodes: int, frames: int | Sequence[int], tasks: int,
               image_size: int | Mapping[str, Sequence[int]] | None, codec: str, gop: int, fps: int, seed: int,
               crf: int, preset: str, episodes_per_file: int) -> SyntheticSpec:
    if isinstance(frames, int | np.integer):
        lengths = (int(frames),) * int(episodes)
    else:
        lengths = tuple(int(n) for n in frames)
        if len(lengths) != episodes:
            raise ConfigError(f"frames has {len(lengths)} lengths but episodes={episodes}; give one length per "
                              "episode or a single int")
    if episodes < 1:
        raise ConfigError(f"episodes={episodes} must be >= 1")
    if min(lengths) < 2:
        raise ConfigError(f"frames={frames!r}: every episode needs at least 2 frames")
    if not 1 <= tasks <= episodes:
        raise ConfigError(f"tasks={tasks} must be between 1 and episodes={episodes}")
    if codec not in _SUPPORTED_CODECS:
        raise ConfigError(f"codec={codec!r} is not supported; use one of {', '.join(_SUPPORTED_CODECS)}")
    if gop < 1:
        raise ConfigError(f"gop={gop} must be >= 1 (frames between keyframes)")
    if fps < 1:
        raise ConfigError(f"fps={fps} must be >= 1")
    if episodes_per_file < 1:
        raise ConfigError(f"episodes_per_file={episodes_per_file} must be >= 1")
    return SyntheticSpec(layout=layout, lengths=lengths, tasks=int(tasks), image_size=_image_sizes(image_size, codec),
                         codec=codec, gop=int(gop), fps=int(fps), seed=int(seed), crf=int(crf), preset=preset,
                         episodes_per_file=int(episodes_per_file))


def _image_sizes(image_size: int | Mapping[str, Sequence[int]] | None, codec: str) -> dict[str, tuple[int, int]]:
    if image_size is None:
        sizes = {"head": (64, 64), "left_wrist": (56, 56), "right_wrist": (56, 56)}
    elif isinstance(image_size, int | np.integer):
        sizes = {role: (int(image_size), int(image_size)) for role in CAMERA_ROLES}
    elif isinstance(image_size, Mapping):
        unknown = set(image_size) - set(CAMERA_ROLES)
        missing = set(CAMERA_ROLES) - set(image_size)
        if unknown or missing:
            raise ConfigError(f"image_size keys must be exactly {', '.join(CAMERA_ROLES)} "
                              f"(unknown: {sorted(unknown)}, missing: {sorted(missing)})")
        sizes = {role: (int(image_size[role][0]), int(image_size[role][1])) for role in CAMERA_ROLES}
    else:
        raise ConfigError(f"image_size={image_size!r}: give an int (square side) or a dict role -> (H, W)")
    for role, (h, w) in sizes.items():
        # yuv420p halves chroma in both axes (so even sizes); 16 px is the smallest size verified to encode here.
        if h < 16 or w < 16 or h % 2 or w % 2:
            raise ConfigError(f"image_size[{role!r}]=({h}, {w}): height and width must be even and >= 16 pixels")
        if codec == "libx265" and _X265_BAD_WIDTHS[0] <= w <= _X265_BAD_WIDTHS[1]:
            raise ConfigError(
                f"image_size[{role!r}]=({h}, {w}): libx265 (as bundled with PyAV) corrupts memory on frames "
                f"{_X265_BAD_WIDTHS[0] + 1}-{_X265_BAD_WIDTHS[1] - 1} pixels wide; use a width <= 32 or >= 50, or "
                "codec='libx264'")
    return sizes


# ------------------------------------------------------------------------------------------------------------
# The synthetic world


def _world_constants() -> dict[str, np.ndarray]:
    """Fixed constants of the synthetic robot (the same for every seed), drawn once from a fixed generator."""
    rng = np.random.default_rng(20250731)
    return {
        "home_left": np.array([0.0, 0.6, 0.0, -1.3, 0.0, 0.7, 0.0]),
        "home_right": np.array([0.0, -0.6, 0.0, -1.3, 0.0, -0.7, 0.0]),
        "home_trunk": np.array([0.3, -0.6, -0.3, 0.0]),
        "gain_left": rng.uniform(-0.6, 0.6, size=(7, 2)),
        "gain_right": rng.uniform(-0.6, 0.6, size=(7, 2)),
        "gain_trunk": rng.uniform(-0.15, 0.15, size=(4, 2)),
        # Stand-in forward kinematics: eef position = shoulder + fk @ [sin q, cos q].
        "fk_left": rng.uniform(-0.08, 0.08, size=(3, 14)),
        "fk_right": rng.uniform(-0.08, 0.08, size=(3, 14)),
        "shoulder_left": np.array([0.05, 0.25, 1.1]),
        "shoulder_right": np.array([0.05, -0.25, 1.1]),
    }


_WORLD = _world_constants()


def _euler_to_quat_xyzw(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Unit quaternions (x, y, z, w) of intrinsic roll-pitch-yaw angles (radians), shape [..., 4]."""
    cr, sr = np.cos(roll / 2), np.sin(roll / 2)
    cp, sp = np.cos(pitch / 2), np.sin(pitch / 2)
    cy, sy = np.cos(yaw / 2), np.sin(yaw / 2)
    return np.stack([sr * cp * cy - cr * sp * sy, cr * sp * cy + sr * cp * sy,
                     cr * cp * sy - sr * sp * cy, cr * cp * cy + sr * sp * sy], axis=-1)


def task_strings(task_index: int) -> tuple[str, str]:
    """``(task_name, task)`` of a synthetic task: colour and hand follow ``task_index``."""
    colour = _TASK_COLOURS[task_index % len(_TASK_COLOURS)][0]
    hand = "left" if task_index % 2 == 0 else "right"
    variant = task_index // len(_TASK_COLOURS)
    suffix = f"_{variant}" if variant else ""
    return (f"reach_{colour}_target_{hand}{suffix}",
            f"Reach the {colour} target with the {hand} hand and close the {hand} gripper"
            + (f" (variant {variant})." if variant else "."))


def _task_colour(task_index: int) -> np.ndarray:
    return np.array(_TASK_COLOURS[task_index % len(_TASK_COLOURS)][1], dtype=np.uint8)


@dataclass
class SyntheticEpisode:
    """Ground truth of one generated episode, exactly as written (before video encoding).

    Attributes:
        episode_index: the index the layout gave it (2025: ``task * 10000 + instance * 10``; 2026: 0..N-1).
        position: 0-based order of generation (the seed stream of this episode).
        task_index: task id (2025: the chunk / ``task-XXXX`` folder).
        task: the task's natural-language instruction.
        length: number of frames ``T``.
        state: float32 ``[T, 256]`` (2025) or ``[T, 61]`` (2026), see the index tables.
        action: float32 ``[T, 23]``: base velocity (m/s, m/s, rad/s), torso (rad), left arm (rad), left gripper
            command (+1 open, -1 closed), right arm (rad), right gripper command.
        columns: other per-frame columns as written (``observation.cam_rel_poses`` float32 [T, 21] and
            ``observation.task_info`` float32 [T, K] for 2025; ``observation.robot2cam_pose.<camera>`` [T, 7],
            ``next.reward`` float32 [T], ``next.terminated`` / ``next.truncated`` bool [T] for 2026).
        target: float64 [2], the episode's target ``g``; ``base_command``: float64 [3], ``c``.
        spec: the dataset's :class:`SyntheticSpec`.
    """

    episode_index: int
    position: int
    task_index: int
    task: str
    length: int
    state: np.ndarray
    action: np.ndarray
    columns: dict[str, np.ndarray]
    target: np.ndarray
    base_command: np.ndarray
    spec: SyntheticSpec
    _render: dict = field(repr=False, default_factory=dict)

    def frames(self, camera: str, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Rendered RGB frames of one camera, as they were handed to the encoder.

        Args:
            camera: a camera key of the layout (e.g. ``observation.images.rgb.head``) or a role (``head``).
            indices: frame indices within the episode (default: all).

        Returns:
            uint8 ``[N, H, W, 3]``.

        Raises:
            ConfigError: unknown camera or an index outside ``[0, length)``.
        """
        role = camera_role(camera, self.spec.layout)
        idx = np.arange(self.length) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.length):
            raise ConfigError(f"frame indices must lie in [0, {self.length}) for episode {self.episode_index}")
        return np.stack([self._render_frame(role, int(t)) for t in idx]) if idx.size else np.zeros(
            (0, *self.spec.image_size[role], 3), np.uint8)

    def _render_frame(self, role: str, t: int) -> np.ndarray:
        r = self._render
        h, w = self.spec.image_size[role]
        canvas = _background(role, h, w).copy()
        colour = _task_colour(self.task_index)
        if role == "head":
            cx = (self.target[0] / TARGET_LIMIT * 0.35 + 0.5) * w
            cy = (-self.target[1] / TARGET_LIMIT * 0.35 + 0.5) * h
            _disc(canvas, cx, cy, max(3.0, min(h, w) / 9), colour)
            side = _even(max(4, min(h, w) // 6))
            cue = np.clip(128 + 100 * self.base_command / BASE_CMD_LIMIT, 0, 255).astype(np.uint8)
            canvas[:side, :side] = cue
            stripe = _even(max(2, w // 32))
            x0 = _even(round(t / (self.length - 1) * (w - stripe)))
            canvas[: h - _timecode_height(h), x0:x0 + stripe] = (250, 230, 40)
        else:
            side = "left" if role == "left_wrist" else "right"
            active = (self.task_index % 2 == 0) == (side == "left")
            closeness = r[f"closeness_{side}"][t]
            radius = min(h, w) * (0.12 + 0.22 * closeness)
            _disc(canvas, w / 2, h / 2, radius, colour if active else np.array([128, 128, 128], np.uint8))
            fingers = r[f"fingers_{side}"][t]  # [2] metres
            bar_w, bar_h = _even(max(2, w // 16)), _even(max(4, h // 5))
            for sign, opening in ((-1, fingers[0]), (1, fingers[1])):
                x = _even(w / 2 + sign * (bar_w + opening / FINGER_OPEN_M * w * 0.3)) - (bar_w if sign < 0 else 0)
                x = min(max(x, 0), w - bar_w)
                canvas[2:2 + bar_h, x:x + bar_w] = (235, 235, 235)
        _timecode(canvas, t)
        return canvas


def camera_role(camera: str, layout: str) -> str:
    """The role (``head``, ``left_wrist``, ``right_wrist``) of a camera key of a layout (``"behavior-2025"`` or
    ``"behavior-2026"``); a role is returned as is. Raises ConfigError for an unknown key."""
    if camera in CAMERA_ROLES:
        return camera
    table = CAMERAS_2025 if layout == "behavior-2025" else CAMERAS_2026
    for role, key in table.items():
        if key == camera:
            return role
    raise ConfigError(f"unknown camera {camera!r} for the {layout} layout; use one of {', '.join(table.values())}")


def _even(x: float) -> int:
    """Round to an even pixel coordinate: shapes aligned to yuv420p's 2x2 chroma blocks keep crisp colours."""
    return int(round(x / 2.0)) * 2


_BACKGROUNDS: dict[tuple[str, int, int], np.ndarray] = {}


def _background(role: str, h: int, w: int) -> np.ndarray:
    key = (role, h, w)
    if key not in _BACKGROUNDS:
        tint = {"head": (40, 45, 60), "left_wrist": (35, 60, 40), "right_wrist": (60, 38, 38)}[role]
        ramp = np.linspace(0.8, 1.2, h)[:, None, None]
        _BACKGROUNDS[key] = np.broadcast_to(np.clip(ramp * np.array(tint), 0, 255), (h, w, 3)).astype(np.uint8)
    return _BACKGROUNDS[key]


def _disc(canvas: np.ndarray, cx: float, cy: float, radius: float, colour: np.ndarray) -> None:
    h, w = canvas.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    canvas[(xx + 0.5 - cx) ** 2 + (yy + 0.5 - cy) ** 2 <= radius**2] = colour


def _timecode_height(h: int) -> int:
    return _even(max(4, h // 8))


def _timecode(canvas: np.ndarray, t: int) -> None:
    h, w = canvas.shape[:2]
    th = _timecode_height(h)
    canvas[h - th:] = (0, 0, 0)
    edges = [_even(i * w / TIMECODE_BITS) for i in range(TIMECODE_BITS + 1)]
    for bit in range(TIMECODE_BITS):
        if (t >> bit) & 1:
            canvas[h - th:, edges[bit]:edges[bit + 1]] = (255, 255, 255)


def _simulate(spec: SyntheticSpec, position: int, task_index: int, length: int) -> dict[str, np.ndarray]:
    """Roll out one episode of the synthetic world; float64 arrays over ``T = length`` frames."""
    rng = np.random.default_rng([spec.seed, position])
    target = rng.uniform(-TARGET_LIMIT, TARGET_LIMIT, size=2)
    command = rng.uniform(-BASE_CMD_LIMIT, BASE_CMD_LIMIT, size=3)
    q_target = {side: _WORLD[f"home_{side}"] + _WORLD[f"gain_{side}"] @ target for side in ("left", "right")}
    trunk_target = _WORLD["home_trunk"] + _WORLD["gain_trunk"] @ target
    q = {side: _WORLD[f"home_{side}"] + rng.uniform(-0.2, 0.2, size=7) for side in ("left", "right")}
    trunk = _WORLD["home_trunk"] + rng.uniform(-0.05, 0.05, size=4)
    fingers = {side: np.full(2, FINGER_OPEN_M) for side in ("left", "right")}
    pose = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), rng.uniform(-math.pi, math.pi)])  # x, y (m), yaw
    vel = np.zeros(3)  # robot frame vx, vy (m/s), wz (rad/s)
    active = "left" if task_index % 2 == 0 else "right"
    close_from = length // 2
    dt = 1.0 / spec.fps

    out = {k: np.zeros((length, n)) for k, n in (
        ("q_left", 7), ("q_right", 7), ("trunk", 4), ("fingers_left", 2), ("fingers_right", 2), ("pose", 3),
        ("vel", 3), ("action", ACTION_DIM))}
    for t in range(length):
        out["q_left"][t], out["q_right"][t], out["trunk"][t] = q["left"], q["right"], trunk
        out["fingers_left"][t], out["fingers_right"][t] = fingers["left"], fingers["right"]
        out["pose"][t], out["vel"][t] = pose, vel
        grip = {side: (-1.0 if side == active and t >= close_from else 1.0) for side in ("left", "right")}
        next_q = {side: q[side] + APPROACH_RATE * (q_target[side] - q[side]) for side in ("left", "right")}
        next_trunk = trunk + APPROACH_RATE * (trunk_target - trunk)
        out["action"][t] = np.concatenate([command, next_trunk, next_q["left"], [grip["left"]], next_q["right"],
                                           [grip["right"]]])
        # Advance: joints reach their commanded positions, fingers and base velocity lag behind their commands.
        q, trunk = next_q, next_trunk
        for side in ("left", "right"):
            goal = FINGER_OPEN_M if grip[side] > 0 else 0.0
            fingers[side] = fingers[side] + np.clip(goal - fingers[side], -FINGER_STEP_M, FINGER_STEP_M)
        vel = vel + BASE_LAG * (command - vel)
        yaw = pose[2] + vel[2] * dt
        world_v = np.array([math.cos(yaw) * vel[0] - math.sin(yaw) * vel[1],
                            math.sin(yaw) * vel[0] + math.cos(yaw) * vel[1]])
        pose = np.array([pose[0] + world_v[0] * dt, pose[1] + world_v[1] * dt, yaw])
    for side in ("left", "right"):
        start = np.linalg.norm(out[f"q_{side}"][0] - q_target[side]) + 1e-9
        dist = np.linalg.norm(out[f"q_{side}"] - q_target[side], axis=1)
        out[f"closeness_{side}"] = np.clip(1.0 - dist / start, 0.0, 1.0)
    out["target"], out["command"] = target, command
    out["effort"] = rng.normal(0.0, 5.0, size=(length, 28))
    return out


def _derivative(x: np.ndarray, fps: int) -> np.ndarray:
    """Backward difference times fps (units per second), zero at the first frame."""
    d = np.zeros_like(x)
    d[1:] = (x[1:] - x[:-1]) * fps
    return d


def _eef(q: np.ndarray, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in forward kinematics: position (m) [T, 3] and orientation quaternion xyzw [T, 4] of an arm."""
    pos = _WORLD[f"shoulder_{side}"] + np.concatenate([np.sin(q), np.cos(q)], axis=1) @ _WORLD[f"fk_{side}"].T
    return pos, _euler_to_quat_xyzw(q[:, 4], q[:, 5], q[:, 6])


def _state_blocks(sim: dict[str, np.ndarray], fps: int) -> dict[str, np.ndarray]:
    """Every named R1Pro proprioception block (float64 [T, n]) from a rollout, consistent with each other."""
    T = sim["q_left"].shape[0]
    x, y, yaw = sim["pose"][:, 0], sim["pose"][:, 1], sim["pose"][:, 2]
    zeros = np.zeros(T)
    joint_qpos = np.zeros((T, 28))
    joint_qpos[:, 0:6] = np.stack([x, y, zeros, zeros, zeros, yaw], axis=1)  # virtual base joints x,y,z,rx,ry,rz
    joint_qpos[:, 6:10] = sim["trunk"]
    joint_qpos[:, 10:24:2] = sim["q_left"]
    joint_qpos[:, 11:24:2] = sim["q_right"]
    joint_qpos[:, 24:26] = sim["fingers_left"]
    joint_qpos[:, 26:28] = sim["fingers_right"]
    joint_qvel = _derivative(joint_qpos, fps)
    wrapped_yaw = np.arctan2(np.sin(yaw), np.cos(yaw))
    ori = np.stack([zeros, zeros, yaw], axis=1)
    vel = sim["vel"]
    blocks = {
        "joint_qpos": joint_qpos, "joint_qpos_sin": np.sin(joint_qpos), "joint_qpos_cos": np.cos(joint_qpos),
        "joint_qvel": joint_qvel, "joint_qeffort": sim["effort"],
        "robot_pos": np.stack([x, y, zeros], axis=1), "robot_ori_cos": np.cos(ori), "robot_ori_sin": np.sin(ori),
        "robot_2d_ori": wrapped_yaw[:, None], "robot_2d_ori_cos": np.cos(yaw)[:, None],
        "robot_2d_ori_sin": np.sin(yaw)[:, None],
        "robot_lin_vel": np.stack([vel[:, 0], vel[:, 1], zeros], axis=1),
        "robot_ang_vel": np.stack([zeros, zeros, vel[:, 2]], axis=1),
        "trunk_qpos": sim["trunk"], "trunk_qvel": joint_qvel[:, 6:10],
        "base_qpos": np.stack([x, y, yaw], axis=1), "base_qvel": vel,
    }
    blocks["base_qpos_sin"], blocks["base_qpos_cos"] = np.sin(blocks["base_qpos"]), np.cos(blocks["base_qpos"])
    for side, sl, fingers in (("left", slice(10, 24, 2), slice(24, 26)), ("right", slice(11, 24, 2), slice(26, 28))):
        q = joint_qpos[:, sl]
        blocks[f"arm_{side}_qpos"] = q
        blocks[f"arm_{side}_qpos_sin"], blocks[f"arm_{side}_qpos_cos"] = np.sin(q), np.cos(q)
        blocks[f"arm_{side}_qvel"] = joint_qvel[:, sl]
        blocks[f"eef_{side}_pos"], blocks[f"eef_{side}_quat"] = _eef(q, side)
        blocks[f"gripper_{side}_qpos"] = joint_qpos[:, fingers]
        blocks[f"gripper_{side}_qvel"] = joint_qvel[:, fingers]
    return blocks


def _assemble(blocks: dict[str, np.ndarray], table: tuple[tuple[str, int, int], ...]) -> np.ndarray:
    dim = table[-1][2]
    state = np.zeros((next(iter(blocks.values())).shape[0], dim))
    for name, start, stop in table:
        state[:, start:stop] = blocks[name]
    return state.astype(np.float32)


def _camera_poses(blocks: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Robot-frame camera poses (position m, quaternion xyzw) [T, 7] by role: head above the torso, wrists at the
    end effectors."""
    T = blocks["trunk_qpos"].shape[0]
    head_pos = np.stack([np.full(T, 0.1), np.zeros(T), 1.4 + 0.1 * np.cos(blocks["trunk_qpos"][:, 1])], axis=1)
    head_quat = _euler_to_quat_xyzw(np.zeros(T), 0.4 + 0.1 * blocks["trunk_qpos"][:, 2], np.zeros(T))
    return {"head": np.concatenate([head_pos, head_quat], axis=1),
            "left_wrist": np.concatenate([blocks["eef_left_pos"], blocks["eef_left_quat"]], axis=1),
            "right_wrist": np.concatenate([blocks["eef_right_pos"], blocks["eef_right_quat"]], axis=1)}


def _episode_plan(spec: SyntheticSpec) -> list[tuple[int, int, int]]:
    """``(position, task_index, episode_index)`` of every episode, sorted by episode index."""
    n = len(spec.lengths)
    plan = []
    instance: dict[int, int] = {}
    for position in range(n):
        task = position * spec.tasks // n  # contiguous, balanced task groups
        k = instance.get(task, 0)
        instance[task] = k + 1
        index = task * CHUNKS_SIZE_2025 + (k + 1) * 10 if spec.layout == "behavior-2025" else position
        plan.append((position, task, index))
    return sorted(plan, key=lambda p: p[2])


def synthesize(spec: SyntheticSpec) -> list[SyntheticEpisode]:
    """The episodes a spec describes (cheap: frames are rendered on demand by :meth:`SyntheticEpisode.frames`).

    Returns:
        list of :class:`SyntheticEpisode` sorted by episode index.
    """
    episodes = []
    for position, task_index, episode_index in _episode_plan(spec):
        length = spec.lengths[position]
        sim = _simulate(spec, position, task_index, length)
        blocks = _state_blocks(sim, spec.fps)
        poses = _camera_poses(blocks)
        if spec.layout == "behavior-2025":
            state = _assemble(blocks, STATE_BLOCKS_2025)
            n_objects = 1 + task_index % 2
            obj = np.concatenate([np.ones(1), [*sim["target"], 0.8], np.cos([0, 0, sim["target"][0]]),
                                  np.sin([0, 0, sim["target"][0]])])  # real, pos (m), ori cos, ori sin
            task_info = np.tile(np.concatenate([obj] * n_objects), (length, 1)).astype(np.float32)
            columns = {"observation.cam_rel_poses": np.concatenate(
                [poses["head"], poses["left_wrist"], poses["right_wrist"]], axis=1).astype(np.float32),
                "observation.task_info": task_info}
        elif spec.layout == "behavior-2026":
            state = _assemble(blocks, STATE_BLOCKS_2026)
            reward = np.zeros(length, np.float32)
            reward[-1] = 1.0
            terminated = np.zeros(length, bool)
            terminated[-1] = True
            columns = {f"observation.robot2cam_pose.{CAMERAS_2026[role].split('.')[-1]}":
                       poses[role].astype(np.float32) for role in CAMERA_ROLES}
            columns.update({"next.reward": reward, "next.terminated": terminated,
                            "next.truncated": np.zeros(length, bool)})
        else:
            raise ConfigError(f"unknown synthetic layout {spec.layout!r}; use behavior-2025 or behavior-2026")
        render = {k: sim[k] for k in ("closeness_left", "closeness_right", "fingers_left", "fingers_right")}
        episodes.append(SyntheticEpisode(
            episode_index=episode_index, position=position, task_index=task_index, task=task_strings(task_index)[1],
            length=length, state=state, action=sim["action"].astype(np.float32), columns=columns,
            target=sim["target"], base_command=sim["command"], spec=spec, _render=render))
    return episodes


def load_ground_truth(root: str | Path) -> dict[int, SyntheticEpisode]:
    """Regenerate what :func:`write_behavior_2025` / :func:`write_behavior_2026` wrote into ``root``.

    Returns:
        ``{episode_index: SyntheticEpisode}``.

    Raises:
        ConfigError: ``root`` has no ``meta/synthetic_spec.json`` (it was not generated by this module).
    """
    path = Path(root) / SPEC_FILE
    if not path.is_file():
        raise ConfigError(f"{path} does not exist: {root} was not written by behavior_smolvla.data.synthetic")
    spec = SyntheticSpec.from_json(json.loads(path.read_text()))
    return {ep.episode_index: ep for ep in synthesize(spec)}


# ------------------------------------------------------------------------------------------------------------
# Writing


class _Mp4Writer:
    """One mp4 file with one yuv420p video stream; frames get consecutive pts on a 1/fps grid."""

    def __init__(self, path: Path, spec: SyntheticSpec, height: int, width: int):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.container = av.open(str(path), mode="w")
        if spec.codec == "libx265":
            # Closed GOPs of exactly `gop` frames (no scene-cut keyframes), so every keyframe is an IDR frame a
            # decoder can start from and the keyframe interval equals `gop`.
            options = {"crf": str(spec.crf), "preset": spec.preset, "x265-params":
                       f"keyint={spec.gop}:min-keyint={spec.gop}:scenecut=0:open-gop=0:log-level=error"}
        else:
            options = {"crf": str(spec.crf), "preset": spec.preset, "g": str(spec.gop),
                       "keyint_min": str(spec.gop), "sc_threshold": "0"}
        self.stream = self.container.add_stream(spec.codec, rate=spec.fps, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, "yuv420p"
        self.time_base = Fraction(1, spec.fps)
        self.pts = 0

    def write(self, rgb: np.ndarray) -> None:
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        # Explicit pts on the 1/fps grid: frame i of the file is presented at i / fps seconds.
        frame.pts = self.pts
        frame.time_base = self.time_base
        self.pts += 1
        self.container.mux(self.stream.encode(frame))

    def close(self) -> None:
        self.container.mux(self.stream.encode(None))
        self.container.close()


class _ImageStats:
    """Per-channel image statistics in [0, 1] over a subsample of frames (as lerobot samples them)."""

    def __init__(self, length: int):
        self.keep = set(np.linspace(0, length - 1, min(length, 40)).round().astype(int).tolist())
        self.samples: list[np.ndarray] = []

    def add(self, t: int, rgb: np.ndarray) -> None:
        if t in self.keep:
            step = max(1, max(rgb.shape[:2]) // 150)  # lerobot also downsamples large frames for stats
            self.samples.append(rgb[::step, ::step].reshape(-1, 3).astype(np.float64) / 255.0)

    def pixels(self) -> np.ndarray:
        return np.concatenate(self.samples)


_QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}


def _vector_stats(values: np.ndarray, quantiles: Sequence[str]) -> dict[str, list]:
    """min, max, mean, std, the named quantiles and count of ``values`` [N, D] (or [N]) along axis 0."""
    v = np.asarray(values, dtype=np.float64)
    v = v[:, None] if v.ndim == 1 else v
    stats = {"min": v.min(0), "max": v.max(0), "mean": v.mean(0), "std": v.std(0)}
    stats.update({q: np.quantile(v, _QUANTILES[q], axis=0) for q in quantiles})
    out = {k: val.tolist() for k, val in stats.items()}
    out["count"] = [int(v.shape[0])]
    return out


def _image_stats(pixels: np.ndarray, frames: int) -> dict[str, list]:
    """lerobot's image stats layout: each value [3][1][1] (per channel), count = frames sampled."""
    stats = _vector_stats(pixels, list(_QUANTILES))
    out = {k: [[[c]] for c in v] for k, v in stats.items() if k != "count"}
    out["count"] = [frames]
    return out


def _prepare_root(root: str | Path, overwrite: bool) -> Path:
    root = Path(root)
    if root.exists() and any(root.iterdir()):
        if not overwrite:
            raise ConfigError(f"{root} exists and is not empty; choose a new folder or pass overwrite=True")
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    return root


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n")


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def _list_array(values: np.ndarray) -> pa.Array:
    """A float32 [N, D] array as a variable-length ``list<float>`` column, as pandas (2025 release) and lerobot's
    v3.0 writer (see g1_inspire_v30) store vectors."""
    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), type=pa.float32())
    offsets = pa.array(np.arange(0, values.size + 1, values.shape[1], dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, flat)


def _video_feature(height: int, width: int, spec: SyntheticSpec, names: list[str], codec_name: str) -> dict:
    return {"dtype": "video", "shape": [height, width, 3], "names": names, "info": {
        "video.fps": float(spec.fps), "video.height": height, "video.width": width, "video.channels": 3,
        "video.codec": codec_name, "video.pix_fmt": "yuv420p", "video.is_depth_map": False, "has_audio": False}}


def write_behavior_2025(root: str | Path, *, episodes: int = 4, frames: int | Sequence[int] = 60, tasks: int = 2,
                        image_size: int | Mapping[str, Sequence[int]] | None = None, codec: str = "libx265",
                        gop: int = 250, fps: int = FPS, seed: int = 0, crf: int = 18, preset: str = "ultrafast",
                        overwrite: bool = False) -> Path:
    """Write a BEHAVIOR-2025-shaped dataset (LeRobot v2.1 customised like the release; see the module docstring).

    Args:
        root: output folder (created; must be empty unless ``overwrite``).
        episodes: number of episodes.
        frames: frames per episode (an int for all, or one length per episode).
        tasks: number of tasks (task ids ``0..tasks-1``, also the ``task-XXXX`` chunk folders).
        image_size: an int (square side, pixels) or ``{"head": (H, W), "left_wrist": ..., "right_wrist": ...}``;
            sizes must be even and >= 16 (libx265: not 34-48 wide). Default head 64x64, wrists 56x56 (the
            release: 720x720, 480x480).
        codec: ``"libx265"`` (HEVC, as the release) or ``"libx264"``.
        gop: keyframe interval in frames (the release: 250).
        fps: frames per second (the release: 30).
        seed: random seed; the same arguments write identical data.
        crf, preset: encoder quality and speed.
        overwrite: replace a non-empty ``root``.

    Returns:
        ``root`` as a Path.

    Raises:
        ConfigError: invalid arguments, or a non-empty ``root`` without ``overwrite``.
    """
    spec = _make_spec("behavior-2025", episodes, frames, tasks, image_size, codec, gop, fps, seed, crf, preset, 1)
    root = _prepare_root(root, overwrite)
    eps = synthesize(spec)
    data_tpl = "data/task-{episode_chunk:04d}/episode_{episode_index:08d}.parquet"
    video_tpl = "videos/task-{episode_chunk:04d}/{video_key}/episode_{episode_index:08d}.mp4"
    episodes_rows, stats_rows = [], []
    for ep in eps:
        chunk = ep.episode_index // CHUNKS_SIZE_2025
        T = ep.length
        table = pa.table({
            "index": pa.array(np.arange(T, dtype=np.int64)),
            "episode_index": pa.array(np.full(T, ep.episode_index, dtype=np.int64)),
            "task_index": pa.array(np.full(T, ep.task_index, dtype=np.int64)),
            "timestamp": pa.array(np.arange(T, dtype=np.float64) / spec.fps),
            "observation.state": _list_array(ep.state),
            "observation.cam_rel_poses": _list_array(ep.columns["observation.cam_rel_poses"]),
            "action": _list_array(ep.action),
            "observation.task_info": _list_array(ep.columns["observation.task_info"]),
        })
        path = root / data_tpl.format(episode_chunk=chunk, episode_index=ep.episode_index)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        for role, key in CAMERAS_2025.items():
            h, w = spec.image_size[role]
            writer = _Mp4Writer(root / video_tpl.format(episode_chunk=chunk, video_key=key,
                                                        episode_index=ep.episode_index), spec, h, w)
            for t in range(T):
                writer.write(ep._render_frame(role, t))
            writer.close()
        state = ep.state.astype(np.float64)
        episodes_rows.append({
            "episode_index": ep.episode_index, "tasks": [ep.task], "length": T,
            "distance_traveled": round(float(np.linalg.norm(np.diff(state[:, 140:143], axis=0), axis=1).sum()), 4),
            "left_eef_displacement": round(float(np.linalg.norm(np.diff(state[:, 186:189], axis=0), axis=1).sum()), 4),
            "right_eef_displacement": round(float(np.linalg.norm(np.diff(state[:, 225:228], axis=0), axis=1).sum()),
                                            4)})
        stats_rows.append({"episode_index": ep.episode_index, "stats": {
            key: _vector_stats(values, ("q01", "q99")) for key, values in (
                ("action", ep.action), ("observation.state", ep.state),
                ("observation.cam_rel_poses", ep.columns["observation.cam_rel_poses"]))}})
        _write_json(root / f"meta/episodes/task-{chunk:04d}/episode_{ep.episode_index:08d}.json",
                    {"num_samples": T, "task_name": task_strings(ep.task_index)[0], "synthetic": True})

    features = {key: _video_feature(*spec.image_size[role], spec, ["height", "width", "rgb"], spec.codec)
                for role, key in CAMERAS_2025.items()}
    features.update({
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
        "timestamp": {"dtype": "float64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "observation.cam_rel_poses": {"dtype": "float32", "shape": [21], "names": None},
        "observation.state": {"dtype": "float32", "shape": [256], "names": None},
        "observation.task_info": {"dtype": "float32", "shape": [None], "names": None},
    })
    _write_json(root / "meta/info.json", {
        "codebase_version": "v2.1", "robot_type": "R1Pro", "total_episodes": len(eps),
        "total_frames": int(sum(spec.lengths)), "total_tasks": spec.tasks, "total_videos": len(eps) * 3,
        "chunks_size": CHUNKS_SIZE_2025, "fps": spec.fps, "splits": {"train": f"0:{len(eps)}"},
        "data_path": data_tpl, "video_path": video_tpl,
        "metainfo_path": "meta/episodes/task-{episode_chunk:04d}/episode_{episode_index:08d}.json",
        "annotation_path": "annotations/task-{episode_chunk:04d}/episode_{episode_index:08d}.json",
        "features": features})
    _write_jsonl(root / "meta/tasks.jsonl", [
        {"task_index": k, "task_name": task_strings(k)[0], "task": task_strings(k)[1]} for k in range(spec.tasks)])
    _write_jsonl(root / "meta/episodes.jsonl", episodes_rows)
    _write_jsonl(root / "meta/episodes_stats.jsonl", stats_rows)
    _write_json(root / SPEC_FILE, spec.to_json())
    return root


def _video_groups(group: list, role: str, per_file: int) -> list[list]:
    """Split one task's episodes into mp4 files, differently per camera so that file boundaries and
    ``from_timestamp`` offsets differ between cameras (as in real v3.0 data, where files roll over by size):
    head: ``per_file`` episodes per file; left wrist: the first episode alone, then ``per_file`` per file;
    right wrist: ``per_file + 1`` per file."""
    if role == "left_wrist":
        return [group[:1]] + [group[i:i + per_file] for i in range(1, len(group), per_file)]
    size = per_file + 1 if role == "right_wrist" else per_file
    return [group[i:i + size] for i in range(0, len(group), size)]


def write_behavior_2026(root: str | Path, *, episodes: int = 4, frames: int | Sequence[int] = 60, tasks: int = 2,
                        image_size: int | Mapping[str, Sequence[int]] | None = None, codec: str = "libx265",
                        gop: int = 8, fps: int = FPS, seed: int = 0, episodes_per_file: int = 2, crf: int = 18,
                        preset: str = "ultrafast", overwrite: bool = False) -> Path:
    """Write a BEHAVIOR-2026-shaped dataset (LeRobot v3.0; see the module docstring).

    Episodes are numbered 0..N-1 grouped by task; task ``k``'s episodes live in chunk ``k``. Parquet files hold
    ``episodes_per_file`` episodes; mp4 files hold several episodes, grouped differently per camera (head:
    ``episodes_per_file``; left wrist: the first episode alone, then ``episodes_per_file``; right wrist:
    ``episodes_per_file + 1``), so ``videos/<key>/from_timestamp`` is non-zero and differs between cameras.

    Args:
        root, episodes, frames, tasks, image_size, codec, fps, seed, crf, preset, overwrite: as
            :func:`write_behavior_2025`.
        gop: keyframe interval in frames (the 2026 writer's: 8).
        episodes_per_file: episodes per parquet file (>= 1).

    Returns:
        ``root`` as a Path.

    Raises:
        ConfigError: invalid arguments, or a non-empty ``root`` without ``overwrite``.
    """
    spec = _make_spec("behavior-2026", episodes, frames, tasks, image_size, codec, gop, fps, seed, crf, preset,
                      episodes_per_file)
    root = _prepare_root(root, overwrite)
    eps = synthesize(spec)
    data_tpl = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    video_tpl = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    codec_name = "hevc" if spec.codec == "libx265" else "h264"
    by_task: dict[int, list[SyntheticEpisode]] = {}
    for ep in eps:
        by_task.setdefault(ep.task_index, []).append(ep)

    rows: dict[int, dict] = {ep.episode_index: {} for ep in eps}
    starts, total = {}, 0
    for ep in eps:
        starts[ep.episode_index] = total
        total += ep.length

    # Data files: per task chunk, `episodes_per_file` episodes per parquet.
    for task, group in by_task.items():
        for file_index in range(math.ceil(len(group) / spec.episodes_per_file)):
            members = group[file_index * spec.episodes_per_file:(file_index + 1) * spec.episodes_per_file]
            cols: dict[str, list] = {}
            for ep in members:
                T = ep.length
                rows[ep.episode_index].update({"data/chunk_index": task, "data/file_index": file_index})
                part = {
                    "observation.state": ep.state, "action": ep.action,
                    "timestamp": np.arange(T, dtype=np.float32) / np.float32(spec.fps),
                    "frame_index": np.arange(T, dtype=np.int64),
                    "episode_index": np.full(T, ep.episode_index, dtype=np.int64),
                    "index": starts[ep.episode_index] + np.arange(T, dtype=np.int64),
                    "task_index": np.full(T, ep.task_index, dtype=np.int64), **ep.columns}
                for k, v in part.items():
                    cols.setdefault(k, []).append(v)
            arrays = {}
            for k, parts in cols.items():
                v = np.concatenate(parts)
                arrays[k] = _list_array(v) if v.ndim == 2 else pa.array(v)
            path = root / data_tpl.format(chunk_index=task, file_index=file_index)
            path.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.table(arrays), path)

    # Video files: each camera groups a task's episodes into mp4 files its own way (see _video_groups).
    image_stats: dict[str, dict[int, tuple[np.ndarray, int]]] = {}
    for role in CAMERA_ROLES:
        key = CAMERAS_2026[role]
        h, w = spec.image_size[role]
        image_stats[key] = {}
        for task, group in by_task.items():
            for file_index, members in enumerate(_video_groups(group, role, spec.episodes_per_file)):
                writer = _Mp4Writer(root / video_tpl.format(video_key=key, chunk_index=task, file_index=file_index),
                                    spec, h, w)
                for ep in members:
                    start = writer.pts / spec.fps
                    rows[ep.episode_index].update({
                        f"videos/{key}/chunk_index": task, f"videos/{key}/file_index": file_index,
                        f"videos/{key}/from_timestamp": start,
                        f"videos/{key}/to_timestamp": start + ep.length / spec.fps})
                    collector = _ImageStats(ep.length)
                    for t in range(ep.length):
                        rgb = ep._render_frame(role, t)
                        collector.add(t, rgb)
                        writer.write(rgb)
                    image_stats[key][ep.episode_index] = (collector.pixels(), len(collector.samples))
                writer.close()

    # Per-episode metadata and stats (lerobot v3.0 column names).
    quantiles = list(_QUANTILES)
    meta_cols: dict[str, list] = {}
    for ep in eps:
        start = starts[ep.episode_index]
        row = {"episode_index": ep.episode_index, **rows[ep.episode_index], "tasks": [ep.task],
               "length": ep.length, "dataset_from_index": start, "dataset_to_index": start + ep.length}
        numeric = {"observation.state": ep.state, "action": ep.action,
                   "timestamp": np.arange(ep.length) / spec.fps, "frame_index": np.arange(ep.length),
                   "episode_index": np.full(ep.length, ep.episode_index), "index": start + np.arange(ep.length),
                   "task_index": np.full(ep.length, ep.task_index),
                   **{k: v for k, v in ep.columns.items() if v.dtype != bool}}
        for feat, values in numeric.items():
            for stat, val in _vector_stats(values, quantiles).items():
                row[f"stats/{feat}/{stat}"] = val
        for key in CAMERAS_2026.values():
            pixels, n = image_stats[key][ep.episode_index]
            for stat, val in _image_stats(pixels, n).items():
                row[f"stats/{key}/{stat}"] = val
        row["meta/episodes/chunk_index"], row["meta/episodes/file_index"] = 0, 0
        for k, v in row.items():
            meta_cols.setdefault(k, []).append(v)
    meta_path = root / "meta/episodes/chunk-000/file-000.parquet"
    meta_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(meta_cols), meta_path)

    # Aggregate stats over every frame (images: over the sampled frames).
    all_numeric = {
        "observation.state": np.concatenate([ep.state for ep in eps]),
        "action": np.concatenate([ep.action for ep in eps]),
        "timestamp": np.concatenate([np.arange(ep.length) / spec.fps for ep in eps]),
        "frame_index": np.concatenate([np.arange(ep.length) for ep in eps]),
        "episode_index": np.concatenate([np.full(ep.length, ep.episode_index) for ep in eps]),
        "index": np.arange(total), "task_index": np.concatenate([np.full(ep.length, ep.task_index) for ep in eps]),
        **{k: np.concatenate([ep.columns[k] for ep in eps]) for k in eps[0].columns
           if eps[0].columns[k].dtype != bool}}
    stats = {feat: _vector_stats(v, quantiles) for feat, v in all_numeric.items()}
    for key in CAMERAS_2026.values():
        per_ep = image_stats[key].values()
        stats[key] = _image_stats(np.concatenate([p for p, _ in per_ep]), sum(n for _, n in per_ep))
    _write_json(root / "meta/stats.json", stats)

    task_names = [task_strings(k) for k in range(spec.tasks)]
    tasks_table = pa.table({"task_index": pa.array(range(spec.tasks), pa.int64()),
                            "task": pa.array([t for _, t in task_names], pa.string())})
    # pandas metadata makes `task` the DataFrame index, which is how lerobot's load_tasks expects tasks.parquet.
    tasks_table = tasks_table.replace_schema_metadata({b"pandas": json.dumps({
        "index_columns": ["task"], "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode",
                                                       "numpy_type": "object", "metadata": {"encoding": "UTF-8"}}],
        "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                     "numpy_type": "int64", "metadata": None},
                    {"name": "task", "field_name": "task", "pandas_type": "unicode", "numpy_type": "object",
                     "metadata": None}],
        "attributes": {}, "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.3.3"}).encode()})
    pq.write_table(tasks_table, root / "meta/tasks.parquet")
    _write_jsonl(root / "meta/tasks.jsonl", [
        {"task_index": k, "task_name": name, "task": task} for k, (name, task) in enumerate(task_names)])

    features = {
        "observation.state": {"dtype": "float32", "shape": [61], "names": None},
        "action": {"dtype": "float32", "shape": [ACTION_DIM], "names": None},
        **{CAMERAS_2026[role]: _video_feature(*spec.image_size[role], spec, ["height", "width", "channels"],
                                              codec_name) for role in CAMERA_ROLES},
        **{f"observation.robot2cam_pose.{CAMERAS_2026[role].split('.')[-1]}":
           {"dtype": "float32", "shape": [7], "names": None} for role in CAMERA_ROLES},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.terminated": {"dtype": "bool", "shape": [1], "names": None},
        "next.truncated": {"dtype": "bool", "shape": [1], "names": None},
        "timestamp": {"dtype": "float32", "shape": [1], "names": None},
        "frame_index": {"dtype": "int64", "shape": [1], "names": None},
        "episode_index": {"dtype": "int64", "shape": [1], "names": None},
        "index": {"dtype": "int64", "shape": [1], "names": None},
        "task_index": {"dtype": "int64", "shape": [1], "names": None},
    }
    _write_json(root / "meta/info.json", {
        "codebase_version": "v3.0", "robot_type": "R1Pro", "fps": spec.fps, "total_episodes": len(eps),
        "total_frames": total, "total_tasks": spec.tasks, "chunks_size": CHUNKS_SIZE_2026,
        "data_files_size_in_mb": 100, "video_files_size_in_mb": 200, "data_path": data_tpl,
        "video_path": video_tpl, "splits": {"train": f"0:{len(eps)}"}, "features": features})
    _write_json(root / SPEC_FILE, spec.to_json())
    return root


def write_demo_dataset(root: str | Path, *, overwrite: bool = False) -> Path:
    """A BEHAVIOR-2025-shaped dataset sized for a CPU demo: 24 episodes x 60 frames, 2 tasks, head 96x96,
    wrists 64x64, HEVC with the release's 250-frame GOP. Many short episodes rather than a few long ones: each
    episode draws a new target, and held-out targets are only predicted well after seeing many.

    Raises:
        ConfigError: a non-empty ``root`` without ``overwrite``.
    """
    return write_behavior_2025(root, episodes=24, frames=60, tasks=2,
                               image_size={"head": (96, 96), "left_wrist": (64, 64), "right_wrist": (64, 64)},
                               gop=250, seed=0, overwrite=overwrite)
