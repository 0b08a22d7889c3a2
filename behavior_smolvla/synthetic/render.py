"""What the synthetic cameras show (see the world description in :mod:`.world`): the head camera draws
the episode's target, base command, progress and a timecode; each wrist camera draws its arm's closeness to the
target and its finger opening. Shapes are aligned to even pixels so that yuv420p keeps their colours crisp.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from behavior_smolvla.synthetic.world import (
    _TASK_COLOURS,
    BASE_CMD_LIMIT,
    FINGER_OPEN_M,
    TARGET_LIMIT,
    TIMECODE_BITS,
    SyntheticEpisode,
    camera_role,
)
from behavior_smolvla.errors import ConfigError


def _task_colour(task_index: int) -> np.ndarray:
    return np.array(_TASK_COLOURS[task_index % len(_TASK_COLOURS)][1], dtype=np.uint8)



def render_frame(ep: SyntheticEpisode, role: str, t: int) -> np.ndarray:
    """Frame ``t`` of an episode's camera ``role`` (``head``, ``left_wrist``, ``right_wrist``) as handed to the
    encoder: uint8 [H, W, 3] RGB with ``(H, W) = ep.spec.image_size[role]``."""
    r = ep._render
    h, w = ep.spec.image_size[role]
    canvas = _background(role, h, w).copy()
    colour = _task_colour(ep.task_index)
    if role == "head":
        cx = (ep.target[0] / TARGET_LIMIT * 0.35 + 0.5) * w
        cy = (-ep.target[1] / TARGET_LIMIT * 0.35 + 0.5) * h
        _disc(canvas, cx, cy, max(3.0, min(h, w) / 9), colour)
        side = _even(max(4, min(h, w) // 6))
        cue = np.clip(128 + 100 * ep.base_command / BASE_CMD_LIMIT, 0, 255).astype(np.uint8)
        canvas[:side, :side] = cue
        stripe = _even(max(2, w // 32))
        x0 = _even(round(t / (ep.length - 1) * (w - stripe)))
        canvas[: h - _timecode_height(h), x0:x0 + stripe] = (250, 230, 40)
    else:
        side = "left" if role == "left_wrist" else "right"
        active = (ep.task_index % 2 == 0) == (side == "left")
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


def _even(x: float) -> int:
    """Round to an even pixel coordinate: shapes aligned to yuv420p's 2x2 chroma blocks keep crisp colours."""
    return round(x / 2.0) * 2


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


def episode_frames(ep: SyntheticEpisode, camera: str, indices: Sequence[int] | np.ndarray | None = None
               ) -> np.ndarray:
    """Rendered RGB frames of one camera, as they were handed to the encoder.

    Args:
        camera: a camera key of the layout (e.g. ``observation.images.rgb.head``) or a role (``head``; the
            only way to name a camera written under another key, such as ``image``).
        indices: frame indices within the episode (default: all).

    Returns:
        uint8 ``[N, H, W, 3]``.

    Raises:
        ConfigError: unknown camera or an index outside ``[0, length)``.
    """
    role = camera_role(camera, ep.spec.layout)
    idx = np.arange(ep.length) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= ep.length):
        raise ConfigError(f"frame indices must lie in [0, {ep.length}) for episode {ep.episode_index}")
    return np.stack([render_frame(ep, role, int(t)) for t in idx]) if idx.size else np.zeros(
        (0, *ep.spec.image_size[role], 3), np.uint8)
