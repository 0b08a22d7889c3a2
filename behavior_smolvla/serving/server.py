"""The websocket policy server of a :class:`~behavior_smolvla.serving.policy.BehaviorPolicy` for the BEHAVIOR
challenge evaluator.

* :func:`serve` / :class:`PolicyServer`: the websocket policy server the evaluator drives (OmniGibson ``eval.py``
  with ``policy=websocket``; protocol in ``../shared/reference/behavior_r1pro.md``), on the ``websockets`` asyncio
  server:

  - ``GET /healthz`` -> 200 ``OK`` (never needs a key: the evaluator polls it without one); any other path opens
    a websocket (no compression);
  - with an API key (``--api-key`` / ``SMOLVLA_API_KEY``) the upgrade needs the header ``Authorization: Api-Key
    KEY`` (what openpi's and OmniGibson's ``WebsocketClientPolicy(api_key=KEY)`` send), else it is answered 401 and
    nothing else; without a key the server only listens on a loopback address unless ``--insecure-no-auth``;
  - wrong keys from one address are answered ever more slowly after the first few (:class:`.limits.AuthThrottle`:
    0.25 s doubling to 5 s), and while one such answer is pending, that address's other attempts get 429 unchecked;
  - beyond ``--max-connections`` connections at once, an upgrade is answered 503 (retry later);
  - a message over ``--max-message-mb`` closes that connection (code 1009, "message too big") as soon as its frame
    header announces the size, before the payload is read; a connection answers one request at a time and the
    server stops reading its socket while ``--max-queued-requests`` more are waiting (:mod:`.limits`);
  - on connect the server sends a metadata map (checkpoint, state map, cameras, action dim, chunk size, ...) that
    carries no absolute filesystem path (:func:`public_metadata`);
  - each request is a msgpack map of the observation (:mod:`behavior_smolvla.serving.wire`); the reply is
    ``{"action": float32 [23] ([1, 23] when the request was batched), "server_timing": {"infer_ms": ...,
    "prev_total_ms": ...}}``, plus ``"action_chunk"`` [K, 23] ([1, K, 23] batched) whose first row equals
    ``action`` when the request carries ``"__action_chunk_size__": K``;
  - ``{"reset": True}`` clears that connection's action queue and gets no reply;
  - a malformed request, NaN/inf or a value beyond ±1e6 in a proprio dim the policy reads (the others may hold
    anything), or a model output with NaN/inf gets a text frame ``"error: ..."`` (the evaluator raises it as a
    server-side error), never an action, and the connection keeps serving.

  Every connection has its own :meth:`BehaviorPolicy.session` (its own queue); all share one model, whose calls run
  one at a time in worker threads so the event loop keeps answering other connections, pings and health checks.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import hmac
import http
import ipaddress
import itertools
import logging
import math
import re
import signal
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import PurePath
from typing import Any

import numpy as np

from behavior_smolvla.errors import BehaviorSmolVLAError, ConfigError, ObservationError, PolicyOutputError
from behavior_smolvla.serving.limits import (
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_MESSAGE_MB,
    DEFAULT_MAX_QUEUED_REQUESTS,
    AuthThrottle,
)
from behavior_smolvla.serving.policy import ACTION_CHUNK_REQUEST_KEY, BehaviorPolicy, StepResult, load_policy
from behavior_smolvla.serving.wire import packb, unpackb

__all__ = [
    "ACTION_CHUNK_REQUEST_KEY",
    "API_KEY_ENV",
    "BehaviorPolicy",
    "PolicyServer",
    "ServerStats",
    "StepResult",
    "check_server_options",
    "is_loopback",
    "load_policy",
    "public_metadata",
    "serve",
]

logger = logging.getLogger(__name__)

RESET_KEY = "reset"
HEALTH_PATH = "/healthz"
# The evaluator allows a policy 600 s per query (network_utils.POLICY_RESPONSE_TIMEOUT) and its simulator can hold
# the client's GIL for long stretches, so only a peer silent for that long is treated as dead.
PING_INTERVAL_S = 60.0
PING_TIMEOUT_S = 600.0
API_KEY_ENV = "SMOLVLA_API_KEY"
"""Environment variable read by ``smolvla-serve`` when ``--api-key`` is not given (a flag shows in ``ps``)."""
API_KEY_SCHEME = "Api-Key"
"""Authorization scheme of openpi's ``WebsocketClientPolicy(api_key=...)`` (also OmniGibson's network_utils): the
client sends the header ``Authorization: Api-Key <key>``."""
MIN_API_KEY_CHARS = 16
"""Shortest key accepted: 16 random URL-safe characters are ~96 bits, out of reach of guessing over a network."""
MAKE_KEY_HINT = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


# -- the websocket server ----------------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine: ``localhost`` or a loopback IP (127.0.0.0/8,
    ::1). Any other name counts as reachable from elsewhere (a hostname may resolve to a public interface)."""
    name = host.strip().strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_server_options(host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                         insecure_no_auth: bool = False, max_message_mb: float = DEFAULT_MAX_MESSAGE_MB,
                         max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
                         max_connections: int = DEFAULT_MAX_CONNECTIONS) -> None:
    """Validate the server's options before anything is loaded or bound (see :class:`PolicyServer` for each).

    Raises:
        ConfigError: one line naming the flag: a port outside 0..65535, an empty host, a key shorter than
            ``MIN_API_KEY_CHARS`` or with spaces / non-ASCII characters, ``--insecure-no-auth`` together with a
            key, a non-loopback host without a key and without ``--insecure-no-auth``, ``--max-message-mb`` not
            in (0, 4096], ``--max-queued-requests`` or ``--max-connections`` not in 1..1024.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"--port {port!r} is not a TCP port: use 1..65535 (the evaluator's default is 8000), or "
                          "0 for any free port")
    if not isinstance(host, str) or not host.strip():
        raise ConfigError("--host is empty: use 127.0.0.1 (this machine only) or an address of this machine")
    if api_key is not None:
        if insecure_no_auth:
            raise ConfigError(f"--insecure-no-auth contradicts --api-key / {API_KEY_ENV}: drop one of them")
        if len(api_key) < MIN_API_KEY_CHARS or not all(33 <= ord(c) <= 126 for c in api_key):
            raise ConfigError(f"--api-key / {API_KEY_ENV} must be at least {MIN_API_KEY_CHARS} printable ASCII "
                              f"characters without spaces (it travels in an HTTP header); make one with: "
                              f"{MAKE_KEY_HINT}")
    elif not insecure_no_auth and not is_loopback(host):
        raise ConfigError(f"--host {host} accepts connections from other machines, so clients must send a key: "
                          f"export {API_KEY_ENV}=$({MAKE_KEY_HINT}) (or pass --api-key KEY) and give the same key to "
                          "the client (WebsocketClientPolicy(api_key=KEY)); or pass --insecure-no-auth on a trusted "
                          "private network")
    if isinstance(max_message_mb, bool) or not isinstance(max_message_mb, int | float) \
            or not math.isfinite(max_message_mb) or not 0 < max_message_mb <= 4096:
        raise ConfigError(f"--max-message-mb {max_message_mb!r} must be a size in MB in (0, 4096] (default "
                          f"{DEFAULT_MAX_MESSAGE_MB:g}; a release-size observation is ~3.9 MB)")
    if isinstance(max_queued_requests, bool) or not isinstance(max_queued_requests, int) \
            or not 1 <= max_queued_requests <= 1024:
        raise ConfigError(f"--max-queued-requests {max_queued_requests!r} must be an integer in 1..1024 (default "
                          f"{DEFAULT_MAX_QUEUED_REQUESTS})")
    if isinstance(max_connections, bool) or not isinstance(max_connections, int) or not 1 <= max_connections <= 1024:
        raise ConfigError(f"--max-connections {max_connections!r} must be an integer in 1..1024 (default "
                          f"{DEFAULT_MAX_CONNECTIONS}; the evaluator opens one per evaluation process)")


# An absolute path inside a string: "/...", "~/..." or "C:\..." not preceded by a path or URL character (so the
# "//host/path" of a URL and the "/s" of "m/s" are left alone).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~:/\\-])(?:/|~/|[A-Za-z]:[\\/])[^\s'\"<>|,;()\[\]{}]+")


def public_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata as sent to clients: the same map without any absolute filesystem path.

    ``checkpoint`` becomes its last three parts (``<run>/checkpoints/<step>``, the checkpoint's identity in this
    project's run layout); any other absolute path inside a string, at any depth, becomes its last component.
    Where the server's files live is the operator's business, not the client's.
    """
    def scrub(value: Any) -> Any:
        if isinstance(value, str):
            return _ABSOLUTE_PATH.sub(lambda m: re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1], value)
        if isinstance(value, Mapping):
            return {k: scrub(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [scrub(v) for v in value]
        return value

    out = dict(metadata)
    checkpoint = out.get("checkpoint")
    if isinstance(checkpoint, str | PurePath) and PurePath(checkpoint).is_absolute():
        out["checkpoint"] = "/".join(PurePath(checkpoint).parts[-3:])
    return scrub(out)


@dataclass
class ServerStats:
    """Counters of a server run (all connections).

    Attributes:
        connections: connections opened.
        requests: observation requests answered with actions.
        errors: requests answered with an error string.
        resets: reset messages.
        refused: websocket upgrades refused for the API key: 401 (no or a wrong key) or 429 (attempted while a
            delayed 401 to the same address was pending).
        busy: websocket upgrades refused with 503 (``max_connections`` already open).
        oversized: connections closed for a message over ``max_message_mb``.
        infer_ms: per answered request, the step's wall time (ms).
        model_ms: per model call, its wall time (ms).
    """

    connections: int = 0
    requests: int = 0
    errors: int = 0
    resets: int = 0
    refused: int = 0
    busy: int = 0
    oversized: int = 0
    infer_ms: list[float] = field(default_factory=list)
    model_ms: list[float] = field(default_factory=list)

    def summary(self) -> str:
        """One line: connections, requests, model calls, errors, mean and p95 of the step and model-call times
        (and the refused upgrades and oversized messages, when any)."""
        def mean_p95(values: list[float]) -> str:
            if not values:
                return "n/a"
            return f"mean {float(np.mean(values)):.1f} ms, p95 {float(np.percentile(values, 95)):.1f} ms"

        line = (f"{self.connections} connections, {self.requests} requests ({mean_p95(self.infer_ms)}), "
                f"{len(self.model_ms)} model calls ({mean_p95(self.model_ms)}), {self.errors} errors, "
                f"{self.resets} resets")
        if self.refused:
            line += f", {self.refused} refused without a valid API key"
        if self.busy:
            line += f", {self.busy} refused over --max-connections"
        if self.oversized:
            line += f", {self.oversized} messages over the size limit"
        return line


class PolicyServer:
    """The websocket server of one :class:`BehaviorPolicy` (see the module docstring for the protocol).

    Args:
        policy: the loaded policy; each connection gets ``policy.session()``.
        host, port: where to listen (port 0: any free port, see :attr:`port` once started).
        log: receives one line per connection opened/closed/refused and the start/stop lines.
        workers: threads running steps (model calls among them run one at a time).
        api_key: when set, a websocket upgrade needs ``Authorization: Api-Key <api_key>`` (compared in constant
            time) and is answered 401 otherwise; ``GET /healthz`` stays open.
        insecure_no_auth: allow a non-loopback ``host`` without a key (a trusted private network only).
        max_message_mb: largest request accepted, in MB (1e6 bytes); a larger one closes its connection with code
            1009 before its payload is read (``websockets``' ``max_size``).
        max_queued_requests: frames a connection may have waiting while one request is answered; beyond that the
            server stops reading its socket until it catches up (``websockets``' ``max_queue``).
        max_connections: websocket connections served at once; one more upgrade is answered 503 (counted from the
            accepted upgrade until its TCP connection is closed).
        auth_throttle: how wrong keys are slowed down (:class:`~behavior_smolvla.serving.limits.AuthThrottle`,
            default: its defaults); only used with ``api_key``.

    Raises:
        ConfigError: as :func:`check_server_options` (checked here, before anything is bound).
    """

    def __init__(self, policy: BehaviorPolicy, host: str = "127.0.0.1", port: int = 8000,
                 log: Callable[[str], None] = print, workers: int = 4, *, api_key: str | None = None,
                 insecure_no_auth: bool = False, max_message_mb: float = DEFAULT_MAX_MESSAGE_MB,
                 max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, auth_throttle: AuthThrottle | None = None) -> None:
        check_server_options(host, port, api_key, insecure_no_auth, max_message_mb, max_queued_requests,
                             max_connections)
        self.policy = policy
        self.host = host
        self.port = port
        self.log = log
        self.stats = ServerStats()
        self.max_message_mb = float(max_message_mb)
        self.max_message_bytes = max(1, int(max_message_mb * 1e6))
        self.max_queued_requests = max_queued_requests
        self.max_connections = max_connections
        self.auth_throttle = auth_throttle if auth_throttle is not None else AuthThrottle()
        self._admitted = 0  # upgrades accepted whose TCP connection is not closed yet
        self._closing: set[asyncio.Task] = set()
        self.requires_key = api_key is not None
        self.insecure_no_auth = insecure_no_auth
        # Only a digest of the expected header is kept; comparing digests of equal length in constant time also
        # hides the key's length.
        self._auth_digest = hashlib.sha256(f"{API_KEY_SCHEME} {api_key}".encode()).digest() if api_key else None
        local = policy.metadata()
        self.checkpoint_path = str(local.get("checkpoint", ""))
        """The served checkpoint's local path (for the operator's log; clients get :attr:`metadata`)."""
        self.metadata = public_metadata(local)
        self._metadata_frame = packb(self.metadata)
        self._ids = itertools.count(1)
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="policy")

    def _authorized(self, request: Any) -> bool:
        values = request.headers.get_all("Authorization")
        if len(values) != 1 or self._auth_digest is None:
            return False
        given = hashlib.sha256(values[0].encode("utf-8", "surrogateescape")).digest()
        return hmac.compare_digest(given, self._auth_digest)

    async def _process_request(self, connection: Any, request: Any) -> Any:
        """Before the websocket handshake: answer ``/healthz``, refuse an upgrade without the API key (slowed down
        for an address that keeps sending wrong ones) or beyond ``max_connections``."""
        if request.path == HEALTH_PATH:
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        peer = _peer(connection.remote_address)
        if self._auth_digest is not None:
            address = _host(connection.remote_address)
            if self.auth_throttle.pending(address):
                # not checked: a pending delayed refusal means this address is guessing keys, maybe in parallel
                self.stats.refused += 1
                self.log(f"refused a connection from {peer}: a refused attempt from this address is still pending "
                         "(429, key not checked)")
                response = connection.respond(http.HTTPStatus.TOO_MANY_REQUESTS,
                                              "429 Too Many Requests: wait for the answer to your previous attempt\n")
                response.headers["Retry-After"] = str(math.ceil(self.auth_throttle.max_delay_s))
                return response
            if not self._authorized(request):
                return await self._refuse_key(connection, request, address, peer)
            self.auth_throttle.succeeded(address)
        if self._admitted >= self.max_connections:
            self.stats.busy += 1
            self.log(f"refused a connection from {peer}: {self._admitted} connections open (--max-connections "
                     f"{self.max_connections}, 503)")
            response = connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                          f"503 Service Unavailable: {self.max_connections} connections are open, "
                                          "the most this server takes; retry later\n")
            response.headers["Retry-After"] = "1"
            return response
        # The slot is held from here until the TCP connection closes, whether or not the handshake completes.
        self._admitted += 1
        task = asyncio.get_running_loop().create_task(self._release_when_closed(connection))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
        return None

    async def _release_when_closed(self, connection: Any) -> None:
        try:
            await connection.wait_closed()
        finally:
            self._admitted -= 1

    async def _refuse_key(self, connection: Any, request: Any, address: str, peer: str) -> Any:
        """401 for no key (at once) or a wrong one (after the throttle's delay for that address)."""
        self.stats.refused += 1
        if not request.headers.get_all("Authorization"):
            self.log(f"refused a connection from {peer}: no API key (401)")
        else:
            failures, delay = self.auth_throttle.failed(address)
            slowed = f", answered after {delay:g} s: wrong key {failures} from this address" if delay else ""
            self.log(f"refused a connection from {peer}: a wrong API key (401{slowed})")
            if delay:
                try:
                    await asyncio.sleep(delay)
                finally:
                    self.auth_throttle.answered(address)
        response = connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                      f"401 Unauthorized: send the header 'Authorization: {API_KEY_SCHEME} <key>'\n")
        response.headers["WWW-Authenticate"] = API_KEY_SCHEME
        return response

    def access_line(self, port: int) -> str:
        """The start-up line saying who may connect (a ``warning:`` line under ``insecure_no_auth``) and the limits."""
        if self.requires_key:
            access = f"clients must send 'Authorization: {API_KEY_SCHEME} <key>' ({HEALTH_PATH} stays open)"
        elif self.insecure_no_auth:
            access = (f"warning: --insecure-no-auth: no API key, anyone who can reach {self.host}:{port} can drive "
                      "this policy; use it only on a trusted private network")
        else:
            access = f"no API key: only clients on this machine can connect ({self.host} is a loopback address)"
        return (f"{access}; messages up to {self.max_message_mb:g} MB, {self.max_queued_requests} queued requests "
                f"per connection, {self.max_connections} connections at once")

    async def run(self, stop: asyncio.Event, ready: Callable[[int], None] | None = None) -> ServerStats:
        """Serve until ``stop`` is set; then close every connection and return the stats.

        Raises:
            ConfigError: the address cannot be bound (port in use, unknown host).
        """
        from websockets.asyncio.server import serve as ws_serve

        try:
            server = await ws_serve(self._handle, self.host, self.port, compression=None,
                                    max_size=self.max_message_bytes, max_queue=self.max_queued_requests,
                                    process_request=self._process_request, ping_interval=PING_INTERVAL_S,
                                    ping_timeout=PING_TIMEOUT_S)
        except (OSError, OverflowError) as exc:
            detail = getattr(exc, "strerror", None) or exc
            raise ConfigError(f"cannot listen on --host {self.host} --port {self.port} ({detail}); "
                              "pick a free port or another host") from None
        try:
            self.port = int(next(iter(server.sockets)).getsockname()[1])
            if ready is not None:
                ready(self.port)
            await stop.wait()
        finally:
            server.close()
            await server.wait_closed()
            if self._closing:  # connections are closed: their slots are being released
                await asyncio.gather(*self._closing, return_exceptions=True)
            self._executor.shutdown(wait=True)
        return self.stats

    async def _handle(self, ws: Any) -> None:
        import websockets
        from websockets.frames import CloseCode

        conn_id = next(self._ids)
        self.stats.connections += 1
        session = self.policy.session()
        peer = _peer(ws.remote_address)
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
        except websockets.ConnectionClosed as exc:
            if exc.sent is not None and exc.sent.code == CloseCode.MESSAGE_TOO_BIG:
                self.stats.oversized += 1
                self.log(f"connection {conn_id} from {peer}: a message over --max-message-mb "
                         f"{self.max_message_mb:g} MB was refused unread (close code 1009)")
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
        except BehaviorSmolVLAError as exc:  # the client's input, or a NaN output: answered, never an action
            self.stats.errors += 1
            if isinstance(exc, PolicyOutputError):
                self.log(f"policy output refused: {exc}")
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


def _peer(address: Any) -> str:
    return f"{address[0]}:{address[1]}" if isinstance(address, tuple) and len(address) >= 2 else str(address)


def _host(address: Any) -> str:
    """The client's IP address (without the port): what :class:`AuthThrottle` counts failures by."""
    return str(address[0]) if isinstance(address, tuple) and address else str(address)


def _chunk_request(value: Any) -> int | None:
    """``__action_chunk_size__`` as an int (None when absent); ObservationError when it is not one integer."""
    if value is None:
        return None
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iu":
        raise ObservationError(f"{ACTION_CHUNK_REQUEST_KEY} must be one integer K (actions wanted), got {value!r}")
    return int(array.reshape(-1)[0])


def serve(policy: BehaviorPolicy, host: str = "127.0.0.1", port: int = 8000,
          log: Callable[[str], None] = print, *, api_key: str | None = None, insecure_no_auth: bool = False,
          max_message_mb: float = DEFAULT_MAX_MESSAGE_MB,
          max_queued_requests: int = DEFAULT_MAX_QUEUED_REQUESTS,
          max_connections: int = DEFAULT_MAX_CONNECTIONS) -> ServerStats:
    """Run the policy server until SIGINT or SIGTERM; print the summary line and return the stats.

    Args:
        policy: from :func:`load_policy`.
        host, port: where to listen; port 0 picks a free port (the "listening" line names it).
        log: line sink (stdout by default).
        api_key, insecure_no_auth, max_message_mb, max_queued_requests, max_connections: see :class:`PolicyServer`.

    Raises:
        ConfigError: a bad option (:func:`check_server_options`), or the address cannot be bound.
    """
    server = PolicyServer(policy, host, port, log=log, api_key=api_key, insecure_no_auth=insecure_no_auth,
                          max_message_mb=max_message_mb, max_queued_requests=max_queued_requests,
                          max_connections=max_connections)

    async def main() -> ServerStats:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)

        def ready(bound: int) -> None:
            meta = server.metadata
            log(f"serving {server.checkpoint_path} on ws://{host}:{bound} (health: http://{host}:{bound}"
                f"{HEALTH_PATH}); device {meta['device']}, proprio [{meta['proprio_dim']}] -> state map "
                f"{meta['state_map']['name']} [{meta['state_dim']}], {len(meta['cameras'])} cameras at "
                f"{meta['image_size']} px, {meta['n_action_steps']} of {meta['chunk_size']} actions per model call, "
                f"chunks: {meta['inference']['label']}")
            log(server.access_line(bound))

        try:
            return await server.run(stop, ready)
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    stats = asyncio.run(main())
    log(f"stopped: {stats.summary()}")
    return stats
