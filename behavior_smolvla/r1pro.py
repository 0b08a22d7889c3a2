"""Facts about the Galaxea R1Pro in the BEHAVIOR challenge that several modules need: camera keys by role in each
data release and in the evaluator's observations, and the action layout.

Source: ``shared/reference/behavior_r1pro.md`` (from the BEHAVIOR-1K repository, its challenge docs and the dataset
cards). The proprioception layouts live as data in ``state_maps/layout-r1pro-*.yaml`` (see ``state_maps.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

CAMERA_ROLES: tuple[str, ...] = ("head", "left_wrist", "right_wrist")
"""The three RGB cameras, in SmolVLA's order for BEHAVIOR: camera1 = head, camera2 = left wrist, camera3 = right
wrist."""

CAMERAS_2025: dict[str, str] = {
    "left_wrist": "observation.images.rgb.left_wrist",
    "right_wrist": "observation.images.rgb.right_wrist",
    "head": "observation.images.rgb.head",
}
"""2025 release RGB video keys by role, in the order its ``info.json`` lists them (head 720x720, wrists 480x480)."""

CAMERAS_2026: dict[str, str] = {
    "head": "observation.rgb.zed_link_camera_0",
    "left_wrist": "observation.rgb.left_realsense_link_camera_0",
    "right_wrist": "observation.rgb.right_realsense_link_camera_0",
}
"""2026 release RGB video keys by role."""

EVALUATOR_RGB_KEYS: dict[str, str] = {
    "head": "robot_r1::robot_r1:zed_link:Camera:0::rgb",
    "left_wrist": "robot_r1::robot_r1:left_realsense_link:Camera:0::rgb",
    "right_wrist": "robot_r1::robot_r1:right_realsense_link:Camera:0::rgb",
}
"""Evaluator observation key of each camera role (OmniGibson ``eval.py``, uint8 RGBA images)."""

# Substrings that name a role in a camera key: 2025 ``rgb.head`` / ``rgb.left_wrist``; 2026 and the evaluator
# ``zed_link`` / ``left_realsense_link``.
_ROLE_MARKERS: dict[str, tuple[str, ...]] = {
    "head": ("head", "zed_link"),
    "left_wrist": ("left_wrist", "left_realsense"),
    "right_wrist": ("right_wrist", "right_realsense"),
}

ACTION_DIM = 23
ACTION_GROUPS: tuple[tuple[str, int, int], ...] = (
    ("base", 0, 3), ("torso", 3, 7), ("left_arm", 7, 14), ("left_gripper", 14, 15), ("right_arm", 15, 22),
    ("right_gripper", 22, 23),
)
"""Action groups ``(name, start, stop)`` of the 23-dim action (both years): base velocity command (vx, vy in m/s,
wz in rad/s), torso and arm absolute joint positions (radians), 1-d gripper commands."""

ACTION_NAMES: tuple[str, ...] = (
    "base.vx", "base.vy", "base.wz", *(f"torso.{i}" for i in range(4)), *(f"left_arm.{i}" for i in range(7)),
    "left_gripper", *(f"right_arm.{i}" for i in range(7)), "right_gripper",
)
"""Names for the 23 action dims (the releases declare none)."""


def camera_role(camera_key: str) -> str | None:
    """``"head"``, ``"left_wrist"`` or ``"right_wrist"`` when the key names exactly one of them, else None."""
    roles = [role for role, marks in _ROLE_MARKERS.items() if any(m in camera_key for m in marks)]
    return roles[0] if len(roles) == 1 else None


def behavior_rgb_cameras(camera_keys: Sequence[str]) -> list[str] | None:
    """The 2025 or 2026 release's three RGB camera keys in policy order (head, left wrist, right wrist) when the
    dataset has all three of either release, else None."""
    for table in (CAMERAS_2025, CAMERAS_2026):
        if all(table[role] in camera_keys for role in CAMERA_ROLES):
            return [table[role] for role in CAMERA_ROLES]
    return None
