"""Serving a demo-trained checkpoint: the evaluator's observation path, the action queue, and the websocket server.

Everything is real: a checkpoint written by ``smolvla-train --demo`` (conftest's ``demo_short_run``: the full demo's
run when the session trains it, else a 10-step one; lerobot SmolVLA on the tiny backbone), the training reader decoding the demo's HEVC videos with PyAV, and ``smolvla-serve``
in a subprocess on 127.0.0.1, driven by a client built like the BEHAVIOR evaluator's (``websockets`` sync client,
``msgpack`` with bytes-keyed array maps, no compression, no size limit). Tests that need the demo checkpoint are
marked slow (end to end: a model and often a server); the frame conversion and camera-mapping tests are not.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import numpy as np
import pytest
import torch
from cli_runner import run_in_process
from websockets.sync.client import connect

from behavior_smolvla.errors import CheckpointError, ConfigError, ObservationError
from behavior_smolvla.policy.inference import Inference
from behavior_smolvla.serving.observation import (
    EVALUATOR_RGB_KEYS,
    PROPRIO_KEY,
    TASK_ID_KEY,
    camera_role,
    evaluator_camera_sources,
    training_frame,
)
from behavior_smolvla.serving.server import BehaviorPolicy, load_policy

BIN = Path(sys.executable).parent
# Without SMOLVLA_API_KEY: a key in the developer's shell would make these servers refuse the keyless clients.
ENV = {**{k: v for k, v in os.environ.items() if k != "SMOLVLA_API_KEY"}, "HF_HUB_OFFLINE": "1",
       "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1"}
HEAD, LEFT, RIGHT = (EVALUATOR_RGB_KEYS[r] for r in ("head", "left_wrist", "right_wrist"))
RECV_TIMEOUT_S = 120


# -- fixtures ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_checkpoint(demo_short_run: Path) -> Path:
    """A finished demo run (conftest's ``demo_short_run``, shared by the session)."""
    return demo_short_run


@pytest.fixture(scope="module")
def model(demo_checkpoint: Path):
    from behavior_smolvla.policy.smolvla import load_policy_bundle

    return load_policy_bundle(demo_checkpoint, device="cpu")


def make_observation(rng: np.random.Generator, batched: bool = False, full_size: bool = False,
                     task_id: int = 0) -> dict:
    """An evaluator-shaped observation: 256-dim proprio, RGBA cameras (release sizes with ``full_size``)."""
    head, wrist = ((720, 720), (480, 480)) if full_size else ((96, 96), (64, 64))
    obs = {
        PROPRIO_KEY: rng.normal(0.0, 0.3, 256).astype(np.float32),
        HEAD: rng.integers(0, 256, (*head, 4), dtype=np.uint8),
        LEFT: rng.integers(0, 256, (*wrist, 4), dtype=np.uint8),
        RIGHT: rng.integers(0, 256, (*wrist, 4), dtype=np.uint8),
        "robot_r1::cam_rel_poses": rng.normal(size=21).astype(np.float32),
        TASK_ID_KEY: np.array([task_id], dtype=np.int64),
    }
    return {k: v[None] for k, v in obs.items()} if batched else obs


# -- the evaluator's observation path agrees with the training reader ---------------------------------------------


@pytest.mark.slow
def test_evaluator_observation_gives_the_training_readers_prediction(model):
    """act() on the evaluator's dict equals the prediction on the same frame read by the training reader.

    The evaluator observation is built from the demo dataset's raw 256-dim state and its frames decoded at full
    size (head 96 px, wrists 64 px, RGBA); the reference is ``predict_chunk`` on the reader's sample (state map
    applied, frames decoded straight to the checkpoint's 64 px), with the same noise seed.

    State and task are bitwise equal. The images cannot be: the reader converts yuv420p to RGB and resizes in one
    swscale call, while the server only has the decoded RGB and re-subsamples it (``training_frame``), which
    rounds differently (measured: mean ~1.2, max 14 of 255 levels per camera). Without the yuv420p step the head
    camera differs by up to ~70 levels, so the bounds below (mean < 2.5, max < 24) check the colour path, and a
    wrong camera mapping would differ by far more (each camera shows different content). The actions then agree
    to within 5% (max) and 1% (mean) of the std the checkpoint normalises each action dimension with; measured on
    the full demo over every third held-out frame: mean 0.3%, max 2.0%, the max always on the gripper command,
    whose switch the policy reads from the progress stripe in the head image.
    """
    from behavior_smolvla.data.dataset import BehaviorDataset

    data = model.train_config["dataset"]
    kwargs = {"episodes": data["val_episodes"][:1] or data["train_episodes"][:1], "cameras": list(model.inputs.cameras),
              "chunk_size": model.chunk_size}
    reader = BehaviorDataset(data["path"], image_size=model.inputs.image_size, state_map=model.inputs.state_map, **kwargs)
    full = BehaviorDataset(data["path"], image_size=None, **kwargs)
    task_index = {text: index for index, text in reader.meta.tasks.items()}
    # The std the checkpoint normalises actions with (lerobot's unnormaliser step): the policy's own unit of error.
    unnormalizer = next(step for step in model.postprocessor.steps if getattr(step, "stats", None))
    action_std = np.asarray(unnormalizer.stats["action"]["std"], dtype=np.float32)
    for i in np.linspace(0, len(reader) - 1, 3).round().astype(int):
        sample, raw = reader[int(i)], full[int(i)]
        assert raw["observation.state"].shape == (256,)
        obs = {PROPRIO_KEY: raw["observation.state"].numpy(), TASK_ID_KEY: np.array([task_index[sample["task"]]])}
        for camera in model.inputs.cameras:
            rgb = (raw[camera] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            alpha = np.full((*rgb.shape[:2], 1), 255, dtype=np.uint8)
            obs[EVALUATOR_RGB_KEYS[camera_role(camera)]] = np.concatenate([rgb, alpha], axis=-1)

        policy = BehaviorPolicy(model, noise_seed=0)
        batch = policy.spec(obs)
        assert torch.equal(batch["observation.state"][0], sample["observation.state"])
        assert batch["task"] == [sample["task"]]
        for camera in model.inputs.cameras:
            assert batch[camera].shape == (1, *sample[camera].shape)
            levels = (batch[camera][0] - sample[camera]).abs() * 255
            assert levels.mean() < 2.5 and levels.max() < 24, (camera, levels.mean(), levels.max())

        reference = model.predict_chunk({**{c: sample[c][None] for c in model.inputs.cameras},
                                         "observation.state": sample["observation.state"][None],
                                         "task": [sample["task"]]}, noise_seed=0)[0]
        served = policy.act_chunk(obs, model.chunk_size)
        assert served.dtype == np.float32 and served.shape == (model.chunk_size, 23)
        relative = np.abs(served - reference) / action_std
        assert relative.max() <= 0.05 and relative.mean() <= 0.01, (relative.max(), relative.mean())
        # The action the evaluator gets is row 0 of that chunk.
        np.testing.assert_array_equal(BehaviorPolicy(model, noise_seed=0).act(obs), served[0])


def test_training_frame_keeps_aspect_drops_alpha_and_matches_colours():
    rgba = np.zeros((480, 720, 4), dtype=np.uint8)
    rgba[..., :3] = (200, 40, 90)
    rgba[..., 3] = 7  # alpha must not leak into any channel
    out = training_frame(rgba[..., :3], 64)
    assert out.shape == (43, 64, 3) and out.dtype == np.uint8  # 480 x 720 -> longer side 64, aspect kept
    assert np.abs(out.astype(int) - (200, 40, 90)).max() <= 2  # a flat colour survives yuv420p within rounding
    assert training_frame(rgba[..., :3], (64, 64)).shape == (64, 64, 3)


def test_camera_sources_by_role_or_order():
    v21 = ["observation.images.rgb.left_wrist", "observation.images.rgb.head", "observation.images.rgb.right_wrist"]
    assert evaluator_camera_sources(v21) == {v21[0]: LEFT, v21[1]: HEAD, v21[2]: RIGHT}
    v30 = [f"observation.rgb.{n}_camera_0" for n in ("zed_link", "left_realsense_link", "right_realsense_link")]
    assert list(evaluator_camera_sources(v30).values()) == [HEAD, LEFT, RIGHT]
    assert list(evaluator_camera_sources(["observation.images.front", "observation.images.top"]).values()) == \
        [HEAD, LEFT]  # no recognisable role: policy order camera1 = head, camera2 = left wrist
    with pytest.raises(CheckpointError, match="3 RGB images"):
        evaluator_camera_sources([f"observation.images.cam{i}" for i in range(4)])


# -- BehaviorPolicy: queue, chunks, tasks, errors -----------------------------------------------------------------


@pytest.mark.slow
def test_queue_serves_n_action_steps_between_model_calls(model):
    rng = np.random.default_rng(1)
    obs_a, obs_b = make_observation(rng), make_observation(rng)
    chunk_a = BehaviorPolicy(model, noise_seed=0).act_chunk(obs_a, model.chunk_size)
    chunk_b = BehaviorPolicy(model, noise_seed=0).act_chunk(obs_b, model.chunk_size)
    policy = BehaviorPolicy(model, n_action_steps=4, noise_seed=0)
    steps = [policy.step(obs_a)] + [policy.step(obs_b) for _ in range(3)]  # queue-served: obs_b is not used
    np.testing.assert_array_equal(np.stack([s.action for s in steps]), chunk_a[:4])
    assert [s.model_ms is not None for s in steps] == [True, False, False, False]
    fifth = policy.step(obs_b)
    assert fifth.model_ms is not None
    np.testing.assert_array_equal(fifth.action, chunk_b[0])
    policy.reset()
    assert policy.queued == 0
    np.testing.assert_array_equal(policy.act(obs_a), chunk_a[0])

    chunked = BehaviorPolicy(model, n_action_steps=4, noise_seed=0)
    np.testing.assert_array_equal(chunked.act_chunk(obs_a, 3), chunk_a[:3])
    np.testing.assert_array_equal(chunked.act_chunk(obs_b, 1), chunk_a[3:4])  # the queue's last action
    # Fewer than k queued: the chunk comes from one fresh model call, never from two plans.
    np.testing.assert_array_equal(chunked.act_chunk(obs_b, 2), chunk_b[:2])
    assert chunked.queued == 2
    np.testing.assert_array_equal(chunked.act_chunk(obs_a, 6), chunk_a[:6])  # k > n_action_steps
    assert chunked.queued == 0
    with pytest.raises(ObservationError, match="__action_chunk_size__"):
        chunked.act_chunk(obs_a, model.chunk_size + 1)
    with pytest.raises(ConfigError, match="--n-action-steps"):
        BehaviorPolicy(model, n_action_steps=model.chunk_size + 1)


@pytest.mark.slow
def test_batched_observations_and_tasks(model):
    rng = np.random.default_rng(2)
    obs = make_observation(rng, task_id=1)
    policy = BehaviorPolicy(model, noise_seed=0)
    parsed = policy.spec.parse(obs)
    assert not parsed.batched and parsed.task == model.inputs.task_map[1]
    batched = {k: v[None] for k, v in obs.items()}
    assert policy.spec.parse(batched).batched
    np.testing.assert_array_equal(BehaviorPolicy(model, noise_seed=0).act(batched), policy.act(obs))
    fixed = BehaviorPolicy(model, task="Pick up the radio.", noise_seed=0)
    assert fixed.spec.parse({k: v for k, v in obs.items() if k != TASK_ID_KEY}).task == "Pick up the radio."


@pytest.mark.slow
@pytest.mark.parametrize(("change", "needle"), [
    (lambda o: o.pop(PROPRIO_KEY), PROPRIO_KEY),
    (lambda o: o.update({PROPRIO_KEY: np.zeros(61, np.float32)}), "takes [256]"),
    (lambda o: o.update({PROPRIO_KEY: np.full(256, np.nan, np.float32)}), "NaN"),
    (lambda o: o.update({PROPRIO_KEY: np.zeros((2, 256), np.float32)}), "batch of 2"),
    (lambda o: o.pop(LEFT), LEFT),
    (lambda o: o.update({HEAD: np.zeros((96, 96), np.uint8)}), HEAD),
    (lambda o: o.update({HEAD: np.zeros((96, 96, 2), np.uint8)}), HEAD),
    (lambda o: o.update({RIGHT: np.zeros((64, 64, 3), np.float32)}), "uint8"),
    (lambda o: o.update({TASK_ID_KEY: np.array([42])}), "task_id 42"),
    (lambda o: o.pop(TASK_ID_KEY), "--task"),
])
def test_malformed_observations_are_refused_without_touching_the_queue(model, change, needle):
    rng = np.random.default_rng(3)
    policy = BehaviorPolicy(model, noise_seed=0)
    first = policy.act(make_observation(rng))
    queued = policy.queued
    bad = make_observation(rng)
    change(bad)
    with pytest.raises(ObservationError) as info:
        policy.act(bad)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert policy.queued == queued and first.shape == (23,)


# -- the websocket server in a subprocess -------------------------------------------------------------------------


def _evaluator_encode(obj):
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _evaluator_decode(obj):
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


class EvaluatorClient:
    """The evaluator's side of the protocol (OmniGibson's and openpi's ``WebsocketClientPolicy``): bytes-keyed
    array maps, and with ``api_key`` the header they send, ``Authorization: Api-Key <key>``."""

    def __init__(self, port: int, api_key: str | None = None):
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self._connection = connect(f"ws://127.0.0.1:{port}", compression=None, max_size=None, open_timeout=30,
                                   additional_headers=headers)
        self.ws = self._connection.__enter__()
        self.metadata = msgpack.unpackb(self.ws.recv(timeout=RECV_TIMEOUT_S), object_hook=_evaluator_decode)

    def send(self, message) -> None:
        self.ws.send(msgpack.packb(message, default=_evaluator_encode))

    def request(self, message):
        self.send(message)
        raw = self.ws.recv(timeout=RECV_TIMEOUT_S)
        return raw if isinstance(raw, str) else msgpack.unpackb(raw, object_hook=_evaluator_decode)

    def reset(self) -> None:
        self.send({"reset": True})

    def close(self) -> None:
        self._connection.__exit__(None, None, None)


class ServerProcess:
    def __init__(self, checkpoint: Path, *args: str, env: dict[str, str] | None = None):
        self.proc = subprocess.Popen([str(BIN / "smolvla-serve"), "--checkpoint", str(checkpoint), "--port", "0",
                                      "--device", "cpu", "--noise-seed", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env or ENV)
        self.lines: list[str] = []
        self._new: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.port = int(self.wait_for(r"ws://127\.0\.0\.1:(\d+)", timeout=300).group(1))

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            self._new.put(line)

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        for line in list(self.lines):
            if match := re.search(pattern, line):
                return match
        while time.monotonic() < deadline:
            try:
                line = self._new.get(timeout=1)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            if match := re.search(pattern, line):
                return match
        raise AssertionError(f"server never printed {pattern!r}; output:\n" + "\n".join(self.lines[-40:]))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
            raise AssertionError("the server did not stop within 60 s of " + signal.Signals(sig).name) from None


@pytest.fixture(scope="module")
def server(demo_checkpoint: Path):
    srv = ServerProcess(demo_checkpoint)
    yield srv
    srv.stop()


def expected_actions(model, observations: list[dict]) -> list[np.ndarray]:
    """What one fresh connection should get for these observations, from the policy in this process."""
    session = BehaviorPolicy(model, noise_seed=0)
    return [session.act(obs) for obs in observations]


@pytest.mark.slow
def test_healthz(server):
    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=30) as response:
        assert response.status == 200 and response.read().decode().strip() == "OK"


@pytest.mark.slow
def test_metadata_on_connect(server, model, demo_checkpoint):
    client = EvaluatorClient(server.port)
    try:
        meta = client.metadata
        # The checkpoint's identity in the run layout, never where the server keeps it.
        assert meta["checkpoint"] == "/".join(model.checkpoint.parts[-3:]) and not meta["checkpoint"].startswith("/")
        assert meta["state_map"]["name"] == model.inputs.state_map.name and meta["proprio_dim"] == 256
        assert meta["state_dim"] == model.inputs.state_map.output_dim
        assert [c["observation_key"] for c in meta["cameras"]] == [HEAD, LEFT, RIGHT]
        assert [c["dataset_key"] for c in meta["cameras"]] == list(model.inputs.cameras)
        assert (meta["action_dim"], meta["chunk_size"], meta["image_size"]) == (23, model.chunk_size, model.inputs.image_size)
        assert meta["task_map"] == {str(k): v for k, v in model.inputs.task_map.items()}
        assert meta["inference"] == Inference().to_dict() and meta["noise_seed"] == 0
        assert "chunks: mean of 8 draws" in next(line for line in server.lines if "ws://" in line)
    finally:
        client.close()


@pytest.mark.slow
def test_sixty_steps_batched_and_unbatched(server, model):
    rng = np.random.default_rng(10)
    observations = [make_observation(rng, full_size=step % 20 == 0) for step in range(60)]
    expected = expected_actions(model, observations)
    client = EvaluatorClient(server.port)
    try:
        client.reset()
        for step, (obs, want) in enumerate(zip(observations, expected, strict=True)):
            batched = step % 2 == 0
            reply = client.request({k: v[None] for k, v in obs.items()} if batched else obs)
            assert isinstance(reply, dict), reply
            action = reply["action"]
            assert action.dtype == np.float32 and action.shape == ((1, 23) if batched else (23,))
            np.testing.assert_array_equal(action.reshape(23), want)
            assert reply["server_timing"]["infer_ms"] >= 0 and "action_chunk" not in reply
    finally:
        client.close()


@pytest.mark.slow
def test_action_chunk_request(server, model):
    rng = np.random.default_rng(11)
    obs = make_observation(rng)
    chunk = BehaviorPolicy(model, noise_seed=0).act_chunk(obs, model.chunk_size)
    client = EvaluatorClient(server.port)
    try:
        reply = client.request({**obs, "__action_chunk_size__": 4})
        assert reply["action_chunk"].shape == (4, 23) and reply["action_chunk"].dtype == np.float32
        np.testing.assert_array_equal(reply["action_chunk"][0], reply["action"])
        np.testing.assert_array_equal(reply["action_chunk"], chunk[:4])
        batched = client.request({**{k: v[None] for k, v in obs.items()}, "__action_chunk_size__": np.int64(3)})
        assert batched["action"].shape == (1, 23) and batched["action_chunk"].shape == (1, 3, 23)
        np.testing.assert_array_equal(batched["action_chunk"][0], chunk[4:7])  # the next actions of the same plan
        np.testing.assert_array_equal(batched["action_chunk"][:, 0], batched["action"])
    finally:
        client.close()


@pytest.mark.slow
def test_reset_gets_no_reply_and_restarts_the_queue(server, model):
    rng = np.random.default_rng(12)
    obs = [make_observation(rng) for _ in range(3)]
    fresh = expected_actions(model, obs)
    client = EvaluatorClient(server.port)
    try:
        np.testing.assert_array_equal(client.request(obs[0])["action"], fresh[0])
        np.testing.assert_array_equal(client.request(obs[1])["action"], fresh[1])  # from the queue
        client.reset()
        client.reset()
        # Had a reset been answered, this recv would return that reply instead of the action below.
        np.testing.assert_array_equal(client.request(obs[1])["action"], expected_actions(model, [obs[1]])[0])
    finally:
        client.close()


@pytest.mark.slow
def test_two_clients_at_once_have_their_own_queues(server, model):
    rng = np.random.default_rng(13)
    runs = [[make_observation(rng, task_id=c) for _ in range(25)] for c in (0, 1)]
    expected = [expected_actions(model, run) for run in runs]
    clients = [EvaluatorClient(server.port) for _ in runs]

    def drive(index: int) -> list[np.ndarray]:
        return [clients[index].request(obs)["action"] for obs in runs[index]]

    try:
        with ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(drive, range(2)))
    finally:
        for client in clients:
            client.close()
    for got, want in zip(results, expected, strict=True):
        np.testing.assert_array_equal(np.stack(got), np.stack(want))


@pytest.mark.slow
def test_malformed_requests_get_an_error_string_and_the_connection_keeps_serving(server, model):
    rng = np.random.default_rng(14)
    good = [make_observation(rng) for _ in range(2)]
    want = expected_actions(model, good)
    client = EvaluatorClient(server.port)
    try:
        np.testing.assert_array_equal(client.request(good[0])["action"], want[0])
        bad = {
            "missing proprio": {k: v for k, v in good[1].items() if k != PROPRIO_KEY},
            "wrong proprio length": {**good[1], PROPRIO_KEY: np.zeros(61, np.float32)},
            "image of wrong rank": {**good[1], HEAD: np.zeros((96, 96), np.uint8)},
            "chunk too long": {**good[1], "__action_chunk_size__": model.chunk_size + 5},
            "not a map": [1, 2, 3],
        }
        for name, message in bad.items():
            reply = client.request(message)
            assert isinstance(reply, str) and reply.startswith("error: "), (name, reply)
        client.ws.send("a text frame")
        assert client.ws.recv(timeout=RECV_TIMEOUT_S).startswith("error: ")
        assert "robot_r1::proprio" in client.request(bad["wrong proprio length"])
        # The same connection still serves, and the errors did not consume the queue.
        np.testing.assert_array_equal(client.request(good[1])["action"], want[1])
    finally:
        client.close()


@pytest.mark.slow
def test_reconnect_gets_metadata_and_a_fresh_queue(server, model):
    rng = np.random.default_rng(15)
    obs = [make_observation(rng) for _ in range(3)]
    want = expected_actions(model, obs)
    first = EvaluatorClient(server.port)
    for o, w in zip(obs, want, strict=True):
        np.testing.assert_array_equal(first.request(o)["action"], w)
    first.close()
    second = EvaluatorClient(server.port)
    try:
        assert second.metadata["chunk_size"] == model.chunk_size
        np.testing.assert_array_equal(second.request(obs[0])["action"], want[0])
    finally:
        second.close()


@pytest.mark.slow
def test_sigint_stops_cleanly_with_a_summary(server):
    client = EvaluatorClient(server.port)
    client.request(make_observation(np.random.default_rng(16)))  # keep a connection open through the shutdown
    assert server.stop(signal.SIGINT) == 0
    output = "\n".join(server.lines)
    assert re.search(r"connection \d+ from 127\.0\.0\.1:\d+ opened", output)
    assert re.search(r"connection \d+ from 127\.0\.0\.1:\d+ closed after [\d.]+ s: \d+ requests, \d+ errors", output)
    summary = re.search(r"stopped: (\d+) connections, (\d+) requests \(mean [\d.]+ ms, p95 [\d.]+ ms\), (\d+) model "
                        r"calls \(mean [\d.]+ ms, p95 [\d.]+ ms\), (\d+) errors", output)
    assert summary, output[-2000:]
    assert int(summary.group(2)) >= 1 and int(summary.group(4)) >= 1
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
    client.close()


def test_cli_error_is_one_line(tmp_path):
    # In this process (tests/cli_runner.py); the installed smolvla-serve's exit code 2 in a subprocess is
    # test_bad_inputs.py's (serve-missing-checkpoint, serve-model-truncated).
    proc = run_in_process("smolvla-serve", ["--checkpoint", str(tmp_path / "nothing")], env={"SMOLVLA_API_KEY": None})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "nothing") in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for flags, needle in ((["--noise", "foo"], "--noise 'foo'"), (["--num-samples", "0"], "--num-samples 0")):
        proc = subprocess.run([str(BIN / "smolvla-serve"), "--checkpoint", str(tmp_path / "nothing"), *flags],
                              capture_output=True, text=True, env=ENV, timeout=120)
        assert proc.returncode == 2 and needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_served_mean_of_draws_from_the_command_line(demo_checkpoint, model):
    """``smolvla-serve --noise sample --num-samples 3`` serves the mean of 3 draws: its metadata and start-up line
    say so, and its action is the in-process policy's with that strategy and the same noise seed."""
    srv = ServerProcess(demo_checkpoint, "--noise", "sample", "--num-samples", "3")
    client = EvaluatorClient(srv.port)
    try:
        mean_of_3 = Inference("sample", 3)
        assert client.metadata["inference"] == mean_of_3.to_dict()
        assert "chunks: mean of 3 draws" in next(line for line in srv.lines if "ws://" in line)
        obs = make_observation(np.random.default_rng(23))
        expected = BehaviorPolicy(model, noise_seed=0, inference=mean_of_3).act(obs)
        reply = client.request(obs)
        assert isinstance(reply, dict), reply
        np.testing.assert_allclose(reply["action"], expected, rtol=0, atol=1e-5)
        assert np.abs(expected - BehaviorPolicy(model, noise_seed=0).act(obs)).max() > 1e-4  # not the default K
    finally:
        client.close()
        srv.stop()


@pytest.mark.slow
def test_load_policy_python_api(demo_checkpoint):
    policy = load_policy(demo_checkpoint, device="cpu", n_action_steps=3, noise_seed=0)
    obs = make_observation(np.random.default_rng(17))
    actions = [policy.act(obs) for _ in range(3)]
    assert all(a.shape == (23,) and a.dtype == np.float32 for a in actions) and policy.queued == 0
    assert policy.act_chunk(obs, 5).shape == (5, 23)
