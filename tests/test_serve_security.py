"""The policy server's security: API key, bind address, message and queue limits, input/output ranges, metadata.

Servers run on 127.0.0.1 only: ``smolvla-serve`` in a subprocess driven like the evaluator (the client of
``test_serve.py``, which sends openpi's ``Authorization: Api-Key <key>`` header), or :class:`PolicyServer` in this
process for a model whose weights were made to predict NaN. The non-loopback refusal is checked before anything is
loaded or bound (the checkpoint path given does not even exist).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import struct
import threading
import time
import urllib.request
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
import websockets
from cli_runner import run_in_process
from test_serve import (
    ENV,
    RECV_TIMEOUT_S,
    EvaluatorClient,
    ServerProcess,
    expected_actions,
    make_observation,
)
from websockets.sync.client import connect

from behavior_smolvla.errors import ConfigError, ObservationError, PolicyOutputError
from behavior_smolvla.serving.limits import (
    AUTH_FREE_FAILURES,
    AUTH_MAX_DELAY_S,
    PROPRIO_ABS_MAX,
    AuthThrottle,
    check_action_chunk,
    check_observation_ranges,
)
from behavior_smolvla.serving.observation import PROPRIO_KEY, ObservationSpec, ParsedObservation
from behavior_smolvla.state_maps.maps import load_state_map
from behavior_smolvla.serving.server import BehaviorPolicy, PolicyServer, is_loopback, public_metadata

KEY = secrets.token_urlsafe(24)
# One character off; a random key ends in "x" one time in 64, so the replacement letter depends on it.
WRONG_KEY = KEY[:-1] + ("x" if KEY[-1] != "x" else "y")
MAX_MESSAGE_MB = 1  # small, so that an oversized message is cheap to build; the test observations are ~70 kB


# -- options, checked before anything is loaded or bound ----------------------------------------------------------


@pytest.mark.parametrize(("args", "env_key", "needle"), [
    (["--port", "70000"], None, "--port"),
    (["--port", "-1"], None, "--port"),
    (["--host", "0.0.0.0"], None, "--api-key"),  # non-loopback without a key
    (["--host", "0.0.0.0"], "short", "SMOLVLA_API_KEY"),  # a key too short to resist guessing
    (["--api-key", "has a space in it here"], None, "--api-key"),
    (["--api-key", KEY, "--insecure-no-auth"], None, "--insecure-no-auth"),
    (["--max-message-mb", "0"], None, "--max-message-mb"),
    (["--max-message-mb", "nan"], None, "--max-message-mb"),
    (["--max-queued-requests", "0"], None, "--max-queued-requests"),
    (["--max-connections", "0"], None, "--max-connections"),
])
def test_bad_serve_flags_exit_2_with_one_line_before_loading(tmp_path, args, env_key, needle):
    # In this process (tests/cli_runner.py: the installed script's app and error wrapper); the installed script's
    # one-line exit 2 in a subprocess is test_bad_inputs.py's.
    proc = run_in_process("smolvla-serve", ["--checkpoint", str(tmp_path / "nothing"), *args],
                          env={"SMOLVLA_API_KEY": env_key})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert "nothing" not in lines[0]  # refused before the (missing) checkpoint was looked at, so before binding
    if args[:2] == ["--host", "0.0.0.0"] and env_key is None:
        assert "SMOLVLA_API_KEY" in lines[0] and "--insecure-no-auth" in lines[0]  # says how to set one
    if env_key:
        assert env_key not in lines[0].replace("SMOLVLA_API_KEY", "")  # the key itself is never echoed


def test_loopback_addresses():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.3.2.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "192.168.1.20", "10.0.0.1", "example.org", "my-host"))


def test_public_metadata_drops_absolute_paths():
    meta = {"checkpoint": "/srv/users/alice/runs/r1/checkpoints/000600", "chunk_size": 50,
            "state_map": {"description": "dims from /home/alice/maps/custom.yaml; see https://github.com/a/b (m/s)",
                          "names": ["base_vel/x", "arm/0"]},
            "nested": [{"path": "~/data/behavior"}, "C:\\Users\\bob\\ckpt"]}
    out = public_metadata(meta)
    assert out["checkpoint"] == "r1/checkpoints/000600" and out["chunk_size"] == 50
    assert out["state_map"]["description"] == "dims from custom.yaml; see https://github.com/a/b (m/s)"
    assert out["state_map"]["names"] == ["base_vel/x", "arm/0"]
    assert out["nested"] == [{"path": "behavior"}, "ckpt"]
    assert meta["checkpoint"].startswith("/srv")  # the caller's map is left as it was


def _parsed(proprio: np.ndarray) -> ParsedObservation:
    return ParsedObservation(proprio=proprio, images={}, task="t", batched=False)


@pytest.mark.parametrize("value", [1e38, -3e6, np.inf, np.nan])
def test_out_of_range_proprio_is_refused(value):
    proprio = np.zeros(256, np.float32)
    proprio[7] = value
    with pytest.raises(ObservationError, match=r"robot_r1::proprio .*\[7\]") as info:
        check_observation_ranges(_parsed(proprio))
    assert "\n" not in str(info.value)
    check_observation_ranges(_parsed(proprio), dims=[0, 6, 8])  # dims the policy does not read are not checked
    check_observation_ranges(_parsed(np.full(256, PROPRIO_ABS_MAX, np.float32)))  # the bound itself passes


def test_only_the_proprio_dims_the_policy_reads_are_checked():
    """NaN/inf or wild values are refused in the state map's source dims and, for a delta-action policy, in the
    action dims' reference dims; any other dim may hold anything (limits.check_observation_ranges' rule)."""
    state_map = load_state_map("r1pro-2025-top32").bind(256)
    read = set(state_map.source_indices)
    unread = [d for d in range(256) if d not in read]
    absolute = ObservationSpec(state_map=state_map, cameras=[], camera_sources={}, image_size=64, task_map={},
                               tasks=["t"], task="t")
    reference = (None, unread[0], None)  # a delta policy whose second action dim is relative to an unread dim
    delta = ObservationSpec(state_map=state_map, cameras=[], camera_sources={}, image_size=64, task_map={},
                            tasks=["t"], task="t", action_reference=reference)
    np.testing.assert_array_equal(absolute.read_dims, sorted(read))
    np.testing.assert_array_equal(delta.read_dims, sorted(read | {unread[0]}))

    def check(spec: ObservationSpec, proprio: np.ndarray) -> None:  # what BehaviorPolicy.step does first
        check_observation_ranges(spec.parse({PROPRIO_KEY: proprio}), spec.read_dims)

    for value in (np.nan, np.inf, 1e38):
        proprio = np.zeros(256, np.float32)
        proprio[unread[:2]] = value
        check(absolute, proprio)
        with pytest.raises(ObservationError, match=rf"robot_r1::proprio has 1 values .*\[{unread[0]}\]") as info:
            check(delta, proprio)  # the reference dim is read; unread[1] still is not
        assert "\n" not in str(info.value)
        proprio = np.zeros(256, np.float32)
        proprio[min(read)] = value
        with pytest.raises(ObservationError, match=rf"\[{min(read)}\]"):
            check(absolute, proprio)


def test_auth_throttle_delays_double_after_free_failures_and_memory_is_bounded():
    now = [0.0]
    throttle = AuthThrottle(free=3, first_delay_s=0.25, max_delay_s=5.0, forget_s=900, max_addresses=3,
                            clock=lambda: now[0])
    delays = [throttle.failed("10.0.0.1")[1] for _ in range(10)]
    assert delays == [0, 0, 0, 0.25, 0.5, 1, 2, 4, 5, 5]
    assert throttle.pending("10.0.0.1")  # until its delayed answer is sent
    throttle.answered("10.0.0.1")
    assert not throttle.pending("10.0.0.1")
    assert throttle.failed("10.0.0.1") == (11, 5.0)
    throttle.answered("10.0.0.1")
    throttle.succeeded("10.0.0.1")  # a right key: forgotten
    assert throttle.failed("10.0.0.1") == (1, 0.0)
    now[0] = 901.0  # long after the last failure: forgotten
    assert throttle.failed("10.0.0.1") == (1, 0.0)
    for i in range(2, 6):  # more addresses than remembered: the least recently failed go first
        throttle.failed(f"10.0.0.{i}")
    assert len(throttle) == 3
    assert throttle.failed("10.0.0.1") == (1, 0.0)
    assert throttle.failed("10.0.0.5") == (2, 0.0)
    defaults = AuthThrottle()
    assert [defaults.delay_s(n) for n in (AUTH_FREE_FAILURES, AUTH_FREE_FAILURES + 1, 100)] == [0, 0.25,
                                                                                               AUTH_MAX_DELAY_S]


def test_non_finite_actions_are_refused():
    actions = np.zeros((1, 50, 23), np.float32)
    check_action_chunk(actions)
    actions[0, 3, [4, 20]] = (np.nan, -np.inf)
    with pytest.raises(PolicyOutputError, match=r"2 NaN/inf action values \(action dims \[4, 20\]\)"):
        check_action_chunk(actions)


# -- smolvla-serve with a key, in a subprocess on 127.0.0.1 ---------------------------------------------------------


@pytest.fixture(scope="module")
def demo_checkpoint(demo_short_run: Path) -> Path:
    return demo_short_run


@pytest.fixture(scope="module")
def model(demo_checkpoint: Path):
    from behavior_smolvla.policy.smolvla import load_policy_bundle

    return load_policy_bundle(demo_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def key_server(demo_checkpoint: Path):
    """The key from the environment variable (the way the README recommends), small limits to test them cheaply."""
    srv = ServerProcess(demo_checkpoint, "--max-message-mb", str(MAX_MESSAGE_MB), "--max-queued-requests", "2",
                        env={**ENV, "SMOLVLA_API_KEY": KEY})
    yield srv
    srv.stop()


def _refused_status(port: int, headers: dict[str, str] | None) -> int:
    with pytest.raises(websockets.InvalidStatus) as info:
        connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=30,
                additional_headers=headers).close()
    body = info.value.response.body or b""
    assert b"behavior-smolvla" not in body and b"checkpoint" not in body  # nothing but the refusal is answered
    return info.value.response.status_code


@pytest.mark.slow
def test_api_key_no_key_or_wrong_key_is_refused_right_key_is_served(key_server, model):
    with urllib.request.urlopen(f"http://127.0.0.1:{key_server.port}/healthz", timeout=30) as response:
        assert response.status == 200  # the evaluator polls /healthz without a key
    assert _refused_status(key_server.port, None) == 401
    assert _refused_status(key_server.port, {"Authorization": f"Api-Key {WRONG_KEY}"}) == 401
    assert _refused_status(key_server.port, {"Authorization": f"Bearer {KEY}"}) == 401
    key_server.wait_for(r"refused a connection from 127\.0\.0\.1:\d+: no API key \(401\)", timeout=30)
    key_server.wait_for(r"refused a connection from 127\.0\.0\.1:\d+: a wrong API key \(401\)", timeout=30)
    assert not any(KEY in line for line in key_server.lines)  # the key never reaches the log

    obs = make_observation(np.random.default_rng(30))
    client = EvaluatorClient(key_server.port, api_key=KEY)  # openpi's WebsocketClientPolicy(api_key=KEY) header
    try:
        np.testing.assert_array_equal(client.request(obs)["action"], expected_actions(model, [obs])[0])
    finally:
        client.close()


@pytest.mark.slow
def test_metadata_carries_no_absolute_path(key_server, model, demo_checkpoint):
    client = EvaluatorClient(key_server.port, api_key=KEY)
    client.close()
    strings: list[str] = []

    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(k)
                walk(v)
        elif isinstance(value, list | tuple):
            for v in value:
                walk(v)
        elif isinstance(value, bytes | str):
            strings.append(value.decode() if isinstance(value, bytes) else value)

    walk(client.metadata)
    root = str(demo_checkpoint.resolve().parents[1])
    assert strings and not [s for s in strings if root in s or s.startswith(("/", "~"))]
    assert client.metadata["checkpoint"] == "/".join(model.checkpoint.parts[-3:])


@pytest.mark.slow
def test_oversized_message_is_refused_and_the_server_keeps_serving(key_server, model):
    rng = np.random.default_rng(31)
    other = EvaluatorClient(key_server.port, api_key=KEY)
    big = EvaluatorClient(key_server.port, api_key=KEY)
    try:
        huge = make_observation(rng, full_size=True)  # a 720x720 RGBA head camera alone is 2.07 MB > 1 MB
        big.send(huge)
        with pytest.raises(websockets.ConnectionClosedError) as info:
            big.ws.recv(timeout=RECV_TIMEOUT_S)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009  # "message too big"
        key_server.wait_for(r"over --max-message-mb 1 MB was refused unread \(close code 1009\)", timeout=30)
        # The other connection, opened before, and a new one are served as usual.
        obs = [make_observation(rng) for _ in range(2)]
        want = [expected_actions(model, [o])[0] for o in obs]  # each the first step of its connection
        np.testing.assert_array_equal(other.request(obs[0])["action"], want[0])
        fresh = EvaluatorClient(key_server.port, api_key=KEY)
        np.testing.assert_array_equal(fresh.request(obs[1])["action"], want[1])
        fresh.close()
    finally:
        other.close()
        big.close()


@pytest.mark.slow
def test_oversized_frame_is_refused_from_its_header_without_reading_the_payload(key_server, model):
    """A frame announcing 600 MB is refused as soon as its header arrives: the server does not wait for (or
    buffer) the payload, which this client never sends."""
    client = EvaluatorClient(key_server.port, api_key=KEY)
    try:
        # FIN + binary opcode; masked (client frames are), 64-bit length; then the 4-byte mask and 10 payload bytes.
        header = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 600_000_000) + os.urandom(4)
        client.ws.socket.sendall(header + b"\x00" * 10)
        with pytest.raises(websockets.ConnectionClosedError) as info:
            client.ws.recv(timeout=30)  # a server waiting for the payload would let this time out instead
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
    finally:
        client.close()
    obs = make_observation(np.random.default_rng(32))
    again = EvaluatorClient(key_server.port, api_key=KEY)
    try:
        np.testing.assert_array_equal(again.request(obs)["action"], expected_actions(model, [obs])[0])
    finally:
        again.close()


@pytest.mark.slow
def test_out_of_range_inputs_get_an_error_string_and_the_connection_keeps_serving(key_server, model):
    rng = np.random.default_rng(33)
    good = make_observation(rng)
    read = int(model.inputs.state_map.source_indices[-1])  # a dim the checkpoint's state map feeds to the model
    unread = sorted(set(range(256)) - set(model.inputs.state_map.source_indices))[:1]  # the demo's top32 map reads 32
    client = EvaluatorClient(key_server.port, api_key=KEY)
    try:
        for value, dtype in ((1e38, np.float32), (-2e6, np.float32), (1e300, np.float64), (np.nan, np.float32)):
            proprio = good[PROPRIO_KEY].astype(dtype)
            proprio[read] = value
            reply = client.request({**good, PROPRIO_KEY: proprio})
            assert isinstance(reply, str) and reply.startswith("error: ") and PROPRIO_KEY in reply, reply
            assert f"[{read}]" in reply and "\n" not in reply  # float64 1e300 is inf as float32: the NaN/inf check
        want = expected_actions(model, [good])[0]
        np.testing.assert_array_equal(client.request(good)["action"], want)
        client.reset()
        # A wild value or NaN where the policy does not look changes nothing (the same action as for `good`).
        for value in (1e38, np.nan):
            client.reset()
            proprio = good[PROPRIO_KEY].copy()
            proprio[unread] = value
            np.testing.assert_array_equal(client.request({**good, PROPRIO_KEY: proprio})["action"], want)
        assert unread, "the demo's state map reads every proprio dim: this test needs one it does not read"
    finally:
        client.close()


@pytest.mark.slow
def test_pipelined_requests_beyond_the_queue_limit_are_all_answered_in_order(key_server, model):
    """With --max-queued-requests 2 the server stops reading a socket that runs ahead; nothing is dropped."""
    rng = np.random.default_rng(34)
    obs = [make_observation(rng) for _ in range(8)]
    want = expected_actions(model, obs)
    client = EvaluatorClient(key_server.port, api_key=KEY)
    try:
        for o in obs:
            client.send(o)
        got = [msgpack.unpackb(client.ws.recv(timeout=RECV_TIMEOUT_S), object_hook=_decode)["action"] for _ in obs]
    finally:
        client.close()
    np.testing.assert_array_equal(np.stack(got), np.stack(want))


def _decode(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    return obj


# -- PolicyServer in this process ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _serving(server: PolicyServer):
    """Run ``server`` on its own event loop in a thread for the ``with`` block; stop it and wait for it after."""
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    bound = threading.Event()
    thread = threading.Thread(target=lambda: loop.run_until_complete(server.run(stop, lambda _: bound.set())))
    thread.start()
    try:
        assert bound.wait(60)
        yield server
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(60)
        loop.close()


def _wait_for_line(lines: list[str], pattern: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(re.search(pattern, line) for line in list(lines)):
            return
        time.sleep(0.02)
    raise AssertionError(f"the server never logged {pattern!r}:\n" + "\n".join(lines[-20:]))


@pytest.mark.slow
def test_policy_server_refuses_a_public_host_without_a_key(model):
    """Checked when the server is built, before anything is bound (nothing here listens on 0.0.0.0)."""
    policy = BehaviorPolicy(model, noise_seed=0)
    with pytest.raises(ConfigError, match="SMOLVLA_API_KEY"):
        PolicyServer(policy, host="0.0.0.0", port=0)
    with pytest.raises(ConfigError, match="--port"):
        PolicyServer(policy, port=70000)
    insecure = PolicyServer(policy, host="0.0.0.0", port=0, insecure_no_auth=True)
    assert insecure.access_line(8000).startswith("warning: --insecure-no-auth: no API key, anyone who can reach "
                                                 "0.0.0.0:8000")
    assert "Authorization: Api-Key" in PolicyServer(policy, host="0.0.0.0", port=0, api_key=KEY).access_line(8000)
    assert KEY not in PolicyServer(policy, api_key=KEY).access_line(8000)


@pytest.mark.slow
def test_nan_actions_are_answered_with_an_error_string(demo_checkpoint):
    """A checkpoint whose output layer gives NaN: the step raises, the queue stays empty, the client gets
    ``error: ...`` (never a NaN action) and the server keeps serving."""
    from behavior_smolvla.policy.smolvla import load_policy_bundle

    broken = load_policy_bundle(demo_checkpoint, device="cpu")
    with torch.no_grad():
        broken.policy.model.action_out_proj.bias.fill_(float("nan"))
    policy = BehaviorPolicy(broken, noise_seed=0)
    obs = make_observation(np.random.default_rng(35))
    with pytest.raises(PolicyOutputError, match="NaN/inf"):
        policy.step(obs)
    assert policy.queued == 0

    lines: list[str] = []
    server = PolicyServer(policy, host="127.0.0.1", port=0, log=lines.append, api_key=KEY)
    with _serving(server):
        client = EvaluatorClient(server.port, api_key=KEY)
        try:
            for _ in range(2):
                reply = client.request(obs)
                assert isinstance(reply, str) and reply.startswith("error: the policy predicted"), reply
        finally:
            client.close()
    assert server.stats.errors == 2 and server.stats.requests == 0
    assert any(line.startswith("policy output refused:") for line in lines)
    assert not any("Traceback" in line for line in lines)


def _attempt(port: int, key: str) -> tuple[int, float]:
    """One websocket upgrade with ``key``: (HTTP status, seconds until the answer); 101 when it was accepted."""
    start = time.monotonic()
    try:
        with connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=60,
                     additional_headers={"Authorization": f"Api-Key {key}"}):
            status = 101
    except websockets.InvalidStatus as exc:
        status = exc.response.status_code
    return status, time.monotonic() - start


@pytest.mark.slow
def test_repeated_wrong_keys_are_answered_ever_more_slowly_and_a_right_key_is_still_served(model):
    """The first wrong key is answered at once, the third only after the throttle's 2 s; an attempt made while a
    delayed refusal is pending is answered 429 unchecked (the right key included); then the right key is served
    and the count starts again. Small delays (1 s doubling to 2 s after one free failure) keep the test short; the
    default schedule is test_auth_throttle_delays_double_after_free_failures_and_memory_is_bounded's."""
    lines: list[str] = []
    throttle = AuthThrottle(free=1, first_delay_s=1.0, max_delay_s=2.0)
    server = PolicyServer(BehaviorPolicy(model, noise_seed=0), host="127.0.0.1", port=0, log=lines.append,
                          api_key=KEY, auth_throttle=throttle)
    wrong = WRONG_KEY
    obs = make_observation(np.random.default_rng(36))
    with _serving(server):
        answers = [_attempt(server.port, wrong) for _ in range(3)]
        assert [status for status, _ in answers] == [401, 401, 401]
        assert answers[2][1] >= 2.0 > answers[0][1]  # the 3rd waited the 2 s the 1st did not
        assert [bool(re.search(r"answered after \d", line)) for line in lines if "wrong API key" in line] == \
            [False, True, True]
        fourth: list[tuple[int, float]] = []
        pending = threading.Thread(target=lambda: fourth.append(_attempt(server.port, wrong)))
        pending.start()
        _wait_for_line(lines, r"wrong key 4 from this address")
        assert _attempt(server.port, KEY)[0] == 429  # while the 4th waits: not even the right key is checked
        pending.join(60)
        assert fourth[0][0] == 401
        client = EvaluatorClient(server.port, api_key=KEY)  # the right key, once nothing is pending: served
        try:
            np.testing.assert_array_equal(client.request(obs)["action"], expected_actions(model, [obs])[0])
        finally:
            client.close()
        assert _attempt(server.port, wrong)[0] == 401
        assert lines[-1].endswith("a wrong API key (401)")  # counted from 1 again after the right key: at once
    assert server.stats.refused == 6 and not any(KEY in line for line in lines)
    assert any("(429, key not checked)" in line for line in lines)


@pytest.mark.slow
def test_connections_beyond_max_connections_are_answered_503(model):
    lines: list[str] = []
    server = PolicyServer(BehaviorPolicy(model, noise_seed=0), host="127.0.0.1", port=0, log=lines.append,
                          max_connections=1)
    with _serving(server):
        first = EvaluatorClient(server.port)
        try:
            assert _attempt(server.port, KEY)[0] == 503  # (no key needed on loopback; the header is ignored)
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=30) as response:
                assert response.status == 200  # health checks are not connections
        finally:
            first.close()
        # the slot is free again once the first connection's socket is closed
        deadline = time.monotonic() + 60
        while (status := _attempt(server.port, KEY)[0]) == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert status == 101
    assert server.stats.busy >= 1
    assert any(re.search(r"refused a connection from 127\.0\.0\.1:\d+: 1 connections open \(--max-connections "
                         r"1, 503\)", line) for line in lines)
    assert "1 connections at once" in server.access_line(server.port)
