"""What the policy server accepts and answers: value ranges of observations and actions, message and queue limits.

The checks here are the last line before the model and before the wire:

* :func:`check_observation_ranges`: every proprioception value the policy reads finite and within
  ``±PROPRIO_ABS_MAX``; images are uint8 (:meth:`ObservationSpec.parse` refuses any other dtype), so their range
  0..255 holds by type;
* :func:`check_action_chunk`: every predicted action finite, so a client never receives NaN/inf actions.

Both raise one-line project errors that the server answers as an ``"error: ..."`` string (the evaluator raises it
as a server-side error) while the connection keeps serving.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from behavior_smolvla.errors import ObservationError, PolicyOutputError

if TYPE_CHECKING:  # observation.py imports torch and PyAV; the CLI reads the defaults here without them
    from behavior_smolvla.serving.observation import ParsedObservation

__all__ = [
    "DEFAULT_MAX_MESSAGE_MB",
    "DEFAULT_MAX_QUEUED_REQUESTS",
    "PROPRIO_ABS_MAX",
    "check_action_chunk",
    "check_observation_ranges",
]

PROPRIO_ABS_MAX = 1e6
"""Largest magnitude accepted in the ``robot_r1::proprio`` dims a policy reads (their units: m, rad, m/s, rad/s,
N, N m; ``state_maps/layout-r1pro-*.yaml``).

A mobile manipulator's positions (a few rad, tens of metres inside a BEHAVIOR scene), velocities and efforts are
orders of magnitude below 1e6 in these units, so a larger value is a client bug (wrong units, uninitialised
memory, bytes of another dtype), not a robot state. The bound is also far below float32's 3.4e38: a value like 1e38
passes ``isfinite`` but overflows to inf once the policy normalises it (``(x - mean) / std``), and the model then
answers with NaN actions."""

DEFAULT_MAX_MESSAGE_MB = 64.0
"""Default ``--max-message-mb`` (1 MB = 1e6 bytes). A release-size observation (720x720 head and two 480x480 wrist
cameras, uint8 RGBA, plus a 256-dim float32 proprio) is ~3.9 MB; three 720x720 RGBA frames are 6.2 MB. 64 MB is
ten times that, and bounds what one message can make the server allocate."""

DEFAULT_MAX_QUEUED_REQUESTS = 4
"""Default ``--max-queued-requests``: websocket frames a connection may have received but not yet answered
(``websockets``' ``max_queue`` high-water mark). Each connection answers one request at a time; beyond this many
waiting, the server stops reading that socket (TCP back-pressure) until it catches up, so one connection holds at
most about ``(this + 2) x --max-message-mb`` of requests in memory. The evaluator sends one request at a time."""


def check_observation_ranges(parsed: ParsedObservation, dims: Sequence[int] | None = None) -> None:
    """Refuse an observation whose proprioception has NaN/inf or values beyond ``±PROPRIO_ABS_MAX`` in ``dims``.

    The server passes the dims its checkpoint's state map reads (``state_map.source_indices``): those reach the
    model. Dims the policy ignores are not range-checked, so that a wild value in one of them (the release's
    ``joint_qeffort`` is documented as wrong) cannot stop an evaluation episode that the policy would have served
    correctly. Images need no check: :meth:`ObservationSpec.parse` only lets uint8 images through (0..255 by type).

    Args:
        parsed: from :meth:`ObservationSpec.parse`; ``parsed.proprio`` is float32 [D_in], the full proprioception.
        dims: indices into ``parsed.proprio`` to check; None checks every dim.

    Raises:
        ObservationError: one line naming ``robot_r1::proprio``, the first offending dims and their values.
    """
    from behavior_smolvla.serving.observation import PROPRIO_KEY as key

    values = np.asarray(parsed.proprio)
    index = np.arange(values.shape[-1]) if dims is None else np.unique(np.asarray(dims, dtype=np.int64))
    picked = values[index]
    bad = index[~np.isfinite(picked) | (np.abs(picked) > PROPRIO_ABS_MAX)]
    if bad.size:
        shown = ", ".join(f"[{i}]={float(values[i]):.3g}" for i in bad[:6]) + (", ..." if bad.size > 6 else "")
        raise ObservationError(f"{key} has {bad.size} values that are NaN/inf or beyond ±{PROPRIO_ABS_MAX:.0e} "
                               f"({shown}); send the robot's proprioception in its own units (m, rad, m/s, N m)")


def check_action_chunk(actions: Any) -> None:
    """Refuse predicted actions that are not all finite, so that NaN/inf never reach a client.

    Args:
        actions: float32 [..., A], the model's unnormalised actions (e.g. [1, chunk_size, 23]).

    Raises:
        PolicyOutputError: one line giving how many values and which action dims are non-finite.
    """
    values = np.asarray(actions)
    bad = ~np.isfinite(values)
    if bad.any():
        dims = np.flatnonzero(bad.reshape(-1, values.shape[-1]).any(axis=0)) if values.ndim else np.array([0])
        raise PolicyOutputError(f"the policy predicted {int(bad.sum())} NaN/inf action values (action dims "
                                f"{dims[:8].tolist()}{', ...' if dims.size > 8 else ''}); no action was sent: the "
                                "checkpoint's weights or normalisation stats are broken (check it with smolvla-eval)")
