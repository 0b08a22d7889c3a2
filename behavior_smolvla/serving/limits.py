"""What the policy server accepts and answers: value ranges of observations and actions, message, queue and
connection limits, and how fast a client may try API keys.

The checks here are the last line before the model and before the wire:

* :func:`check_observation_ranges`: every proprioception value the policy reads (``ObservationSpec.read_dims``: the
  state map's source dims and, for a delta-action policy, each action dim's reference) finite and within
  ``±PROPRIO_ABS_MAX``; the dims it never reads may hold anything, NaN included, since they cannot reach the model.
  Images are uint8 (:meth:`ObservationSpec.parse` refuses any other dtype), so their range 0..255 holds by type;
* :func:`check_action_chunk`: every predicted action finite, so a client never receives NaN/inf actions.

Both raise one-line project errors that the server answers as an ``"error: ..."`` string (the evaluator raises it
as a server-side error) while the connection keeps serving.

Before any of that, on the HTTP upgrade: :class:`AuthThrottle` slows down one address's repeated wrong API keys,
and ``--max-connections`` (:data:`DEFAULT_MAX_CONNECTIONS`) caps the connections served at once.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from behavior_smolvla.errors import ObservationError, PolicyOutputError

if TYPE_CHECKING:  # observation.py imports torch and PyAV; the CLI reads the defaults here without them
    from behavior_smolvla.serving.observation import ParsedObservation

__all__ = [
    "AUTH_FREE_FAILURES",
    "AUTH_MAX_DELAY_S",
    "AUTH_TRACKED_ADDRESSES",
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_MESSAGE_MB",
    "DEFAULT_MAX_QUEUED_REQUESTS",
    "PROPRIO_ABS_MAX",
    "AuthThrottle",
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


DEFAULT_MAX_CONNECTIONS = 8
"""Default ``--max-connections``: websocket connections served at once (each holds a policy session and up to
``(--max-queued-requests + 2) x --max-message-mb`` of requests, 384 MB at the defaults); one more is answered HTTP
503 until one closes. The evaluator opens one connection per evaluation process."""

AUTH_FREE_FAILURES = 3
"""Wrong API keys from one address answered at once (a client with a mistyped key learns it without waiting)."""

AUTH_FIRST_DELAY_S = 0.25
"""Delay before answering the first wrong key beyond :data:`AUTH_FREE_FAILURES`; it doubles with each further one."""

AUTH_MAX_DELAY_S = 5.0
"""Longest delay before a wrong key is answered: 0.2 guesses per second per address once reached (the 9th failure).
Kept below ``websockets``' 10 s opening-handshake timeout, which would otherwise drop the connection unanswered."""

AUTH_FORGET_S = 900.0
"""An address's failures are forgotten this long (s) after its last one; a right key forgets them at once."""

AUTH_TRACKED_ADDRESSES = 4096
"""Addresses whose failures are remembered (least recently failed dropped first): bounds the table's memory
(~200 bytes each) whatever the number of clients."""


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    pending: bool = False


class AuthThrottle:
    """Repeated wrong API keys from one client address are answered ever more slowly.

    Per address: the first ``free`` wrong keys are answered at once, then failure ``n`` waits ``first_delay_s *
    2 ** (n - free - 1)`` seconds, at most ``max_delay_s``. While a delayed answer is pending, further attempts from
    that address are not checked at all (:meth:`pending`: the server answers 429 at once), so opening connections in
    parallel does not multiply the guesses. Failures are forgotten ``forget_s`` after the last one or at the first
    right key (:meth:`succeeded`). At most ``max_addresses`` addresses are remembered (least recently failed dropped
    first), so memory stays bounded.

    Args:
        free, first_delay_s, max_delay_s, forget_s, max_addresses: defaults :data:`AUTH_FREE_FAILURES`,
            :data:`AUTH_FIRST_DELAY_S`, :data:`AUTH_MAX_DELAY_S`, :data:`AUTH_FORGET_S`, :data:`AUTH_TRACKED_ADDRESSES`.
        clock: seconds, monotonic (``time.monotonic``).
    """

    def __init__(self, free: int = AUTH_FREE_FAILURES, first_delay_s: float = AUTH_FIRST_DELAY_S,
                 max_delay_s: float = AUTH_MAX_DELAY_S, forget_s: float = AUTH_FORGET_S,
                 max_addresses: int = AUTH_TRACKED_ADDRESSES, clock: Callable[[], float] = time.monotonic) -> None:
        self.free, self.first_delay_s, self.max_delay_s = int(free), float(first_delay_s), float(max_delay_s)
        self.forget_s, self.max_addresses, self.clock = float(forget_s), int(max_addresses), clock
        self._table: collections.OrderedDict[str, _Failures] = collections.OrderedDict()

    def __len__(self) -> int:
        """Addresses currently remembered."""
        return len(self._table)

    def delay_s(self, failures: int) -> float:
        """Seconds before the answer to an address's ``failures``-th wrong key (counting from 1)."""
        if failures <= self.free:
            return 0.0
        return min(self.max_delay_s, self.first_delay_s * 2.0 ** min(failures - self.free - 1, 64))

    def _record(self, address: str) -> _Failures | None:
        record = self._table.get(address)
        if record is not None and not record.pending and self.clock() - record.last > self.forget_s:
            del self._table[address]
            return None
        return record

    def pending(self, address: str) -> bool:
        """Whether a wrong key from ``address`` still waits for its delayed answer."""
        record = self._record(address)
        return record is not None and record.pending

    def failed(self, address: str) -> tuple[int, float]:
        """Count a wrong key from ``address``; returns ``(failures so far, seconds to wait before answering)``. With a
        delay, the address is :meth:`pending` until :meth:`answered` is called."""
        record = self._record(address) or _Failures()
        record.count += 1
        record.last = self.clock()
        self._table[address] = record
        self._table.move_to_end(address)
        while len(self._table) > self.max_addresses:
            self._table.popitem(last=False)
        delay = self.delay_s(record.count)
        record.pending = delay > 0
        return record.count, delay

    def answered(self, address: str) -> None:
        """The delayed answer to ``address`` has been sent (or its client went away)."""
        record = self._table.get(address)
        if record is not None:
            record.pending = False

    def succeeded(self, address: str) -> None:
        """A right key from ``address``: forget its failures."""
        self._table.pop(address, None)


def check_observation_ranges(parsed: ParsedObservation, dims: Sequence[int] | None = None) -> None:
    """Refuse an observation whose proprioception has NaN/inf or values beyond ``±PROPRIO_ABS_MAX`` in ``dims``.

    :meth:`BehaviorPolicy.step` passes the dims its checkpoint reads (``ObservationSpec.read_dims``: the state
    map's source dims and, for a delta-action policy, the action dims' reference dims): those reach the model or the
    actions. Dims the policy ignores are not checked at all, neither range nor NaN/inf, so that a wild value in one
    of them (the release's ``joint_qeffort`` is documented as wrong) cannot stop an evaluation episode that the
    policy would have served correctly. Images need no check: :meth:`ObservationSpec.parse` only lets uint8 images
    through (0..255 by type).

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
