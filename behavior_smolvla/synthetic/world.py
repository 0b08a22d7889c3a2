"""The synthetic world behind the small BEHAVIOR-shaped datasets: the spec of a dataset, the simulated R1Pro
episodes (state, action, extra columns) and their ground truth. Writing them to disk is :mod:`.datasets`'s job;
what the cameras show is :mod:`.render`'s (it reads this module, never the other way round).

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

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

_SUPPORTED_CODECS = ("libx265", "libx264", "mpeg4")  # mpeg4: FFmpeg's MPEG-4 part 2 encoder (third-party uploads)
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
        codec: ``"libx265"`` (HEVC, as the releases), ``"libx264"`` or ``"mpeg4"`` (MPEG-4 part 2, as some
            third-party uploads); pixel format yuv420p.
        gop: keyframe interval in frames (closed GOPs, no scene-cut keyframes).
        fps: frames per second.
        seed: seed of every random choice; the same spec writes the same data.
        crf: encoder constant rate factor (lower = closer to the rendered frames); not used by ``mpeg4``.
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
        raise ConfigError(f"{path} does not exist: {root} was not written by behavior_smolvla.synthetic.datasets")
    spec = SyntheticSpec.from_json(json.loads(path.read_text()))
    return {ep.episode_index: ep for ep in synthesize(spec)}
