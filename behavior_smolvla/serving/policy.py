"""A checkpoint driven by the BEHAVIOR evaluator's raw observations: :func:`load_policy` -> :class:`BehaviorPolicy`.

It takes the evaluator's observation dict (:mod:`behavior_smolvla.serving.observation`, built from the checkpoint's
input contract) and returns R1Pro actions, float32 [23] in the dataset's units (base velocity m/s and rad/s, joint
positions rad, gripper command), from an action queue refilled by one SmolVLA call every ``n_action_steps`` steps.
Usable from Python without any server; ``serving.server`` puts it behind a websocket.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from behavior_smolvla.errors import ConfigError, ObservationError
from behavior_smolvla.policy.inference import Inference
from behavior_smolvla.policy.smolvla import PolicyBundle, load_policy_bundle
from behavior_smolvla.serving.limits import check_action_chunk, check_observation_ranges
from behavior_smolvla.serving.observation import ObservationSpec, ProprioHistory

ACTION_CHUNK_REQUEST_KEY = "__action_chunk_size__"
"""Request key asking for the next K actions (OmniGibson ``network_utils.ACTION_CHUNK_REQUEST_KEY``)."""


@dataclass
class StepResult:
    """What one :meth:`BehaviorPolicy.step` produced.

    Attributes:
        action: float32 [A], the action to execute now (dataset units).
        chunk: float32 [K, A] (first row == ``action``) when K actions were asked for, else None.
        batched: the observation carried a leading batch dimension of 1.
        infer_ms: wall time of the whole step (validation, conversion, model call if any), milliseconds.
        model_ms: wall time of the model call (waiting for the shared model included), or None when the queue
            served the step.
    """

    action: np.ndarray
    chunk: np.ndarray | None
    batched: bool
    infer_ms: float
    model_ms: float | None


class BehaviorPolicy:
    """A checkpoint driven by the evaluator's raw observations, with an action queue.

    Each model call predicts a chunk of ``chunk_size`` actions from the current observation; the first
    ``n_action_steps`` of them are queued and served one per step, and the next model call happens when the queue
    is empty (SmolVLA's ``select_action`` scheme). A checkpoint whose state map has velocity dims also keeps the
    episode's recent proprio (:class:`~behavior_smolvla.serving.observation.ProprioHistory`, one per session, cleared
    by :meth:`reset`): every observation is recorded, queue-served or not, and the evaluator is assumed to step at
    the dataset's fps (one observation per dataset frame).

    Args:
        model: a :class:`~behavior_smolvla.policy.smolvla.PolicyBundle` (``load_policy_bundle``); its input
            contract says what the observation must hold and how it becomes the policy's batch.
        n_action_steps: actions executed per model call, 1..chunk_size; None = the checkpoint's.
        task: a fixed instruction overriding the observation's ``task_id``.
        inference: how each chunk is drawn (:class:`~behavior_smolvla.policy.inference.Inference`): zero initial
            noise (the default; the same observation always gives the same chunk), one draw, or the mean of K draws.
        noise_seed: with sampled noise, None draws fresh noise at every model call (as lerobot does); an int uses
            that seed at every call, so the same observation always gives the same chunk. Unused with zero noise.

    Raises:
        ConfigError: ``n_action_steps`` out of range.
        CheckpointError: the checkpoint's cameras cannot be fed from the evaluator's three RGB images.
    """

    def __init__(self, model: PolicyBundle, n_action_steps: int | None = None, task: str | None = None,
                 noise_seed: int | None = None, *, inference: Inference = Inference(), _lock: threading.Lock | None = None,
                 _spec: ObservationSpec | None = None) -> None:
        steps = model.n_action_steps if n_action_steps is None else n_action_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= model.chunk_size:
            raise ConfigError(f"--n-action-steps {steps!r} must be between 1 and the checkpoint's chunk size "
                              f"{model.chunk_size}")
        self.model = model
        self.n_action_steps = steps
        self.noise_seed = noise_seed
        self.inference = inference
        self.spec = _spec or ObservationSpec.from_inputs(model.inputs, task=task)
        self._lock = _lock or threading.Lock()
        self._queue: collections.deque[np.ndarray] = collections.deque()
        lag = self.spec.state_map.lag_frames
        self._history = ProprioHistory(lag) if lag else None

    @property
    def action_dim(self) -> int:
        return int(self.model.action_dim)

    @property
    def chunk_size(self) -> int:
        return int(self.model.chunk_size)

    @property
    def queued(self) -> int:
        """Actions left in the queue (served without a model call)."""
        return len(self._queue)

    def session(self) -> BehaviorPolicy:
        """A new policy state (empty queue) on the same model; model calls of all sessions run one at a time."""
        return BehaviorPolicy(self.model, self.n_action_steps, self.spec.task, self.noise_seed,
                              inference=self.inference, _lock=self._lock, _spec=self.spec)

    def reset(self) -> None:
        """Forget the queued actions and the proprio history (start of an episode): the next step calls the model,
        with zero motion in a velocity state map's dims."""
        self._queue.clear()
        if self._history is not None:
            self._history.clear()

    def act(self, observation: Mapping[str, Any]) -> np.ndarray:
        """The action for this step, float32 [A] (A = 23 for the R1Pro), unnormalised.

        Args:
            observation: the evaluator's observation dict (see :meth:`ObservationSpec.parse`).

        Raises:
            ObservationError: a malformed observation (missing key, wrong proprio length, image of the wrong rank,
                unknown task_id, ...); the queue is left as it was.
        """
        return self.step(observation).action

    def act_chunk(self, observation: Mapping[str, Any], k: int) -> np.ndarray:
        """The next ``k`` actions, float32 [k, A], consumed from the queue; row 0 is this step's action.

        The k actions always come from one model call: when fewer than k are queued, the queue is dropped and
        refilled from this observation (with ``max(n_action_steps, k)`` actions), so a client that executes the
        chunk open-loop never crosses a re-planning boundary.

        Raises:
            ObservationError: ``k`` not in 1..chunk_size, or a malformed observation.
        """
        result = self.step(observation, k)
        assert result.chunk is not None
        return result.chunk

    def step(self, observation: Mapping[str, Any], k: int | None = None) -> StepResult:
        """One step: validate the observation, refill the queue from the model if needed, pop 1 (or ``k``) actions.

        Raises:
            ObservationError: as :meth:`act` / :meth:`act_chunk`, or NaN/inf or a value beyond
                ``limits.PROPRIO_ABS_MAX`` in a proprio dim the policy reads (``spec.read_dims``, and only there:
                :func:`~behavior_smolvla.serving.limits.check_observation_ranges`).
            PolicyOutputError: the model predicted NaN/inf actions; the queue stays empty.
        """
        start = time.perf_counter()
        wanted = 1 if k is None else k
        if isinstance(wanted, bool) or not isinstance(wanted, int | np.integer) or not 1 <= wanted <= self.chunk_size:
            raise ObservationError(f"{ACTION_CHUNK_REQUEST_KEY}={k!r}: ask for 1..{self.chunk_size} actions (the "
                                   "checkpoint's chunk size)")
        wanted = int(wanted)
        parsed = self.spec.parse(observation)
        check_observation_ranges(parsed, self.spec.read_dims)  # only the dims the policy reads: others may be NaN
        previous = None if self._history is None else self._history.observe(parsed.proprio)
        model_ms = None
        if len(self._queue) < wanted:
            batch = self.spec.to_batch(parsed, previous)
            call = time.perf_counter()
            with self._lock:
                chunk = self.model.predict_chunk(batch, self.inference, noise_seed=self.noise_seed)
            model_ms = (time.perf_counter() - call) * 1e3
            check_action_chunk(chunk)  # before queueing: a NaN plan is never served, the next step re-plans
            self._queue = collections.deque(chunk[0, : max(self.n_action_steps, wanted)])
        actions = np.stack([self._queue.popleft() for _ in range(wanted)]).astype(np.float32, copy=False)
        if self._history is not None:
            self._history.advance(wanted)  # the next observation comes after these actions were executed
        return StepResult(action=actions[0], chunk=actions if k is not None else None, batched=parsed.batched,
                          infer_ms=(time.perf_counter() - start) * 1e3, model_ms=model_ms)

    def metadata(self) -> dict[str, Any]:
        """What the server sends on connect: checkpoint, state map, cameras, sizes, tasks, the inference strategy
        (``inference``: :meth:`Inference.to_dict`; ``noise_seed``) (msgpack-able)."""
        model, inputs = self.model, self.model.inputs
        return {
            "server": "behavior-smolvla",
            "checkpoint": str(model.checkpoint),
            "policy": "smolvla",
            "device": str(model.device),
            "state_map": inputs.state_map.to_dict(),
            "proprio_dim": self.spec.proprio_dim,
            "state_dim": inputs.policy_state_dim,
            "action_mode": inputs.action_mode,
            "action_norm": inputs.action_norm,
            "cameras": [{"observation_key": self.spec.camera_sources[c], "dataset_key": c,
                         "policy_key": inputs.camera_map[c]} for c in inputs.cameras],
            "image_size": inputs.image_size,
            "action_dim": self.action_dim,
            "chunk_size": self.chunk_size,
            "n_action_steps": self.n_action_steps,
            "inference": self.inference.to_dict(),
            "noise_seed": self.noise_seed,
            "tasks": list(inputs.tasks),
            "task_map": dict(self.spec.task_map),
            "task_override": self.spec.task,
        }


def load_policy(checkpoint: str | Path, device: str = "auto", n_action_steps: int | None = None,
                task: str | None = None, noise_seed: int | None = None, vlm_model: str | None = None,
                inference: Inference = Inference()) -> BehaviorPolicy:
    """Load a checkpoint of ``smolvla-train`` for driving by the BEHAVIOR evaluator's observations.

    Args:
        checkpoint: a run folder (its ``checkpoints/last``), a ``checkpoints/<step>`` folder or its
            ``pretrained_model``.
        device: ``auto`` | ``cpu`` | ``cuda[:N]`` | ``mps``.
        n_action_steps: actions served per model call (1..chunk_size); None = the checkpoint's.
        task: instruction to use whatever ``task_id`` says (None: the checkpoint's ``task_map``).
        noise_seed, inference: see :class:`BehaviorPolicy` (``--noise-seed``, ``--noise``, ``--num-samples``).
        vlm_model: the checkpoint's VLM backbone at another place (a local copy when the saved hub id or folder
            cannot be reached here); None = the saved one.

    Returns:
        :class:`BehaviorPolicy` with ``reset()``, ``act(obs) -> float32 [23]``, ``act_chunk(obs, k) -> [k, 23]``.

    Raises:
        CheckpointError, PolicyLoadError: as :func:`behavior_smolvla.policy.smolvla.load_policy_bundle`.
        ConfigError: a bad device or ``n_action_steps``.
    """
    bundle = load_policy_bundle(checkpoint, device=device, vlm_model=vlm_model)
    return BehaviorPolicy(bundle, n_action_steps, task, noise_seed, inference=inference)
