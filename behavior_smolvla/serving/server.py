"""The websocket policy server of a :class:`~behavior_smolvla.serving.policy.BehaviorPolicy` for the BEHAVIOR
challenge evaluator.

* :func:`serve` / :class:`PolicyServer`: the websocket policy server the evaluator drives (OmniGibson ``eval.py``
  with ``policy=websocket``; protocol in ``../shared/reference/behavior_r1pro.md``), on the ``websockets`` asyncio
  server:

  - ``GET /healthz`` -> 200 ``OK``; any other path opens a websocket (no compression, no message size limit);
  - on connect the server sends a metadata map (checkpoint, state map, cameras, action dim, chunk size, ...);
  - each request is a msgpack map of the observation (:mod:`behavior_smolvla.serving.wire`); the reply is
    ``{"action": float32 [23] ([1, 23] when the request was batched), "server_timing": {"infer_ms": ...,
    "prev_total_ms": ...}}``, plus ``"action_chunk"`` [K, 23] ([1, K, 23] batched) whose first row equals
    ``action`` when the request carries ``"__action_chunk_size__": K``;
  - ``{"reset": True}`` clears that connection's action queue and gets no reply;
  - a malformed request gets a text frame ``"error: ..."`` (the evaluator raises it as a server-side error) and
    the connection keeps serving.

  Every connection has its own :meth:`BehaviorPolicy.session` (its own queue); all share one model, whose calls run
  one at a time in worker threads so the event loop keeps answering other connections, pings and health checks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http
import itertools
import logging
import signal
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from behavior_smolvla.errors import ConfigError, ObservationError
from behavior_smolvla.serving.policy import ACTION_CHUNK_REQUEST_KEY, BehaviorPolicy, StepResult, load_policy
from behavior_smolvla.serving.wire import packb, unpackb

__all__ = [
    "ACTION_CHUNK_REQUEST_KEY",
    "BehaviorPolicy",
    "PolicyServer",
    "ServerStats",
    "StepResult",
    "load_policy",
    "serve",
]

logger = logging.getLogger(__name__)

RESET_KEY = "reset"
HEALTH_PATH = "/healthz"
# The evaluator allows a policy 600 s per query (network_utils.POLICY_RESPONSE_TIMEOUT) and its simulator can hold
# the client's GIL for long stretches, so only a peer silent for that long is treated as dead.
PING_INTERVAL_S = 60.0
PING_TIMEOUT_S = 600.0


# -- the websocket server ----------------------------------------------------------------------------------------


@dataclass
class ServerStats:
    """Counters of a server run (all connections).

    Attributes:
        connections: connections opened.
        requests: observation requests answered with actions.
        errors: requests answered with an error string.
        resets: reset messages.
        infer_ms: per answered request, the step's wall time (ms).
        model_ms: per model call, its wall time (ms).
    """

    connections: int = 0
    requests: int = 0
    errors: int = 0
    resets: int = 0
    infer_ms: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)

    def summary(self) -> str:
        """One line: connections, requests, model calls, errors, mean and p95 of the step and model-call times."""
        def mean_p95(values: list[float]) -> str:
            if not values:
                return "n/a"
            return f"mean {float(np.mean(values)):.1f} ms, p95 {float(np.percentile(values, 95)):.1f} ms"

        return (f"{self.connections} connections, {self.requests} requests ({mean_p95(self.infer_ms)}), "
                f"{len(self.model_ms)} model calls ({mean_p95(self.model_ms)}), {self.errors} errors, "
                f"{self.resets} resets")


class PolicyServer:
    """The websocket server of one :class:`BehaviorPolicy` (see the module docstring for the protocol).

    Args:
        policy: the loaded policy; each connection gets ``policy.session()``.
        host, port: where to listen (port 0: any free port, see :attr:`port` once started).
        log: receives one line per connection opened/closed and the start/stop lines.
        workers: threads running steps (model calls among them run one at a time).
    """

    def __init__(self, policy: BehaviorPolicy, host: str = "127.0.0.1", port: int = 8000,
                 log: Callable[[str], None] = print, workers: int = 4) -> None:
        self.policy = policy
        self.host = host
        self.port = port
        self.log = log
        self.stats = ServerStats()
        self.metadata = policy.metadata()
        self._metadata_frame = packb(self.metadata)
        self._ids = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="policy")

    @staticmethod
    def _health(connection: Any, request: Any) -> Any:
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        return None

    async def run(self, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> ServerStats:
        """Serve until ``stop`` is set; then close every connection and return the stats.

        Raises:
            ConfigError: the address cannot be bound (port in use, unknown host).
        """
        from websockets.asyncio.server import serve as ws_serve

        try:
            server = await ws_serve(self._handle, self.host, self.port, compression=None, max_size=None,
                                    process_request=self._health, ping_interval=PING_INTERVAL_S,
                                    ping_timeout=PING_TIMEOUT_S)
        except OSError as exc:
            raise ConfigError(f"cannot listen on --host {self.host} --port {self.port} ({exc.strerror or exc}); "
                              "pick a free port or another host") from None
        try:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            if ready is not None:
                ready(self.port)
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
            self._executor.shutdown(wait=True)
        return self.stats

    async def _handle(self, ws: Any) -> None:
        import websockets

        conn_id = next(self._ids)
        self.stats.connections += 1
        session = self.policy.session()
        peer = ws.remote_address
        peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        requests = errors = 0
        opened = time.monotonic()
        self.log(f"connection {conn_id} from {peer} opened")
        prev_total_ms: float | None = None
        try:
            await ws.send(self._metadata_frame)
            async for message in ws:
                start = time.perf_counter()
                reply = await self._reply(session, message, prev_total_ms)
                if reply is None:
                    continue
                if isinstance(reply, str):
                    errors += 1
                else:
                    requests += 1
                await ws.send(reply)
                prev_total_ms = (time.perf_counter() - start) * 1e3
        except websockets.ConnectionClosed:
            pass
        finally:
            self.log(f"connection {conn_id} from {peer} closed after {time.monotonic() - opened:.1f} s: "
                     f"{requests} requests, {errors} errors")

    async def _reply(self, session: BehaviorPolicy, message: Any, prev_total_ms: float | None) -> bytes | str | None:
        """The frame answering one message: msgpack bytes, an error string, or None (reset: no reply)."""
        try:
            request = unpackb(message)
            if not isinstance(request, dict):
                raise ObservationError(f"a request must be a msgpack map (the observation), got "
                                       f"{type(request).__name__}")
            if RESET_KEY in request:
                session.reset()
                self.stats.resets += 1
                return None
            k = _chunk_request(request.pop(ACTION_CHUNK_REQUEST_KEY, None))
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._executor, session.step, request, k)
        except ObservationError as exc:
            self.stats.errors += 1
            return f"error: {exc}"
        except Exception as exc:  # a bug or a model failure: report it, keep serving the others
            self.stats.errors += 1
            self.log(f"internal error while answering a request:\n{traceback.format_exc().rstrip()}")
            return f"internal error: {type(exc).__name__}: {exc} (see the server log)"
        self.stats.requests += 1
        self.stats.infer_ms.append(result.infer_ms)
        if result.model_ms is not None:
            self.stats.model_ms.append(result.model_ms)
        action, chunk = result.action, result.chunk
        reply: dict[str, Any] = {"action": action[None] if result.batched else action,
                                 "server_timing": {"infer_ms": result.infer_ms}}
        if prev_total_ms is not None:
            reply["server_timing"]["prev_total_ms"] = prev_total_ms
        if chunk is not None:
            reply["action_chunk"] = chunk[None] if result.batched else chunk
        return packb(reply)


def _chunk_request(value: Any) -> int | None:
    """``__action_chunk_size__`` as an int (None when absent); ObservationError when it is not one integer."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iu":
        raise ObservationError(f"{ACTION_CHUNK_REQUEST_KEY} must be one integer K (actions wanted), got {value!r}")
    return int(array.reshape(-1)[0])


def serve(policy: BehaviorPolicy, host: str = "127.0.0.1", port: int = 8000,
          log: Callable[[str], None] = print) -> ServerStats:
    """Run the policy server until SIGINT or SIGTERM; print the summary line and return the stats.

    Args:
        policy: from :func:`load_policy`.
        host, port: where to listen; port 0 picks a free port (the "listening" line names it).
        log: line sink (stdout by default).

    Raises:
        ConfigError: the address cannot be bound.
    """
    server = PolicyServer(policy, host, port, log=log)

    async def main() -> ServerStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(bound: int) -> None:
            meta = server.metadata
            log(f"serving {meta['checkpoint']} on ws://{host}:{bound} (health: http://{host}:{bound}{HEALTH_PATH}); "
                f"device {meta['device']}, proprio [{meta['proprio_dim']}] -> state map {meta['state_map']['name']} "
                f"[{meta['state_dim']}], {len(meta['cameras'])} cameras at {meta['image_size']} px, "
                f"{meta['n_action_steps']} of {meta['chunk_size']} actions per model call")

        try:
            return await server.run(stop, ready)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    stats = asyncio.run(main())
    log(f"stopped: {stats.summary()}")
    return stats
