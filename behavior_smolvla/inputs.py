"""The input contract: what a policy reads, resolved once, saved in every checkpoint, used unchanged downstream.

:class:`PolicyInputs` owns every choice that decides what the policy sees and predicts: the dataset features read as
the state and the action, the state map, the cameras in policy order, the image size, the chunk size and the number
of actions executed per chunk, the frame stride, the action representation and the task table. Defaults are resolved
here and nowhere else (:meth:`PolicyInputs.resolve`: state map by state dim, cameras by layout, ...). Everything that
reads data for the policy is derived from it:

* the training reader and the evaluation reader (:meth:`PolicyInputs.dataset`, :meth:`PolicyInputs.eval_dataset`);
* the SmolVLA features and camera names (``policy.smolvla``, through :attr:`PolicyInputs.camera_map`);
* the serving observation spec (``serving.observation.ObservationSpec.from_inputs``).

It is saved as the ``inputs`` section of ``train_config.yaml`` in every checkpoint (:meth:`to_dict`, with
:data:`INPUTS_VERSION`) and read back by :meth:`from_train_config`, which also converts checkpoints written before
the contract existed (their ``run`` / ``dataset`` / ``state_map`` sections). Its fingerprint
(:class:`ContractFingerprint`: a hash of the section's canonical form, and one per field) is saved beside the weights
and the training state (``policy.checkpoint``'s manifests), so an edited section is refused, naming the fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from behavior_smolvla.actions import (
    ACTION_MODES, ACTION_NORMS, Reference, default_action_norm, describe_reference, reference_state,
    resolve_action_reference,
)
from behavior_smolvla.data.dataset import BehaviorDataset
from behavior_smolvla.data.meta import ACTION_KEY, STATE_KEY, DatasetMeta
from behavior_smolvla.errors import CheckpointError, ConfigError, DatasetError, StateMapError
from behavior_smolvla.r1pro import behavior_rgb_cameras
from behavior_smolvla.state_maps.maps import StateMap, default_state_map, load_state_map, standard_track_map

if TYPE_CHECKING:
    from behavior_smolvla.config import DataConfig, PolicyConfig

INPUTS_VERSION = 1
"""Version of the saved ``inputs`` section; bumped when its meaning changes (a newer one is refused, older ones are
converted)."""

POLICY_IMAGE_PREFIX = "observation.images.camera"
"""SmolVLA's image keys are ``observation.images.camera{i}``, i = 1, 2, ... in policy order (the BEHAVIOR convention
camera1 = head, camera2 = left wrist, camera3 = right wrist is what ``lerobot/smolvla_base`` was fine-tuned with)."""


def default_cameras(meta: DatasetMeta) -> list[str]:
    """The cameras a policy reads when ``--cameras`` is not given: BEHAVIOR's three RGB cameras in SmolVLA's order
    (head, left wrist, right wrist; ``r1pro.CAMERAS_2025`` / ``CAMERAS_2026``), every colour camera otherwise (depth
    and segmentation videos are not images SmolVLA's vision encoder was trained on)."""
    return behavior_rgb_cameras(meta.camera_keys) or meta.rgb_camera_keys


def default_state_map_for(meta: DatasetMeta, state_map: str | None, filter_state: bool) -> StateMap:
    """The state map a policy reads, unbound: ``state_map`` (a name or YAML file) if given, else the layout's
    standard-track map with ``filter_state``, else the default by state size (256 -> ``r1pro-2025-top32``,
    61 -> ``r1pro-2026-b1k25``, <= 32 -> ``identity``).

    Raises:
        StateMapError: unknown map, or no default for this state size (the message names ``--state-map``).
    """
    if state_map:
        return load_state_map(state_map)
    if filter_state:
        return standard_track_map(meta.state_dim)
    return default_state_map(meta.state_dim)


def policy_camera_keys(cameras: Sequence[str]) -> dict[str, str]:
    """Dataset camera keys -> SmolVLA image keys ``observation.images.camera{i}`` (1-based, in the given order).

    Raises:
        ConfigError: no cameras, or a camera listed twice.
    """
    cameras = list(cameras)
    if not cameras:
        raise ConfigError("no cameras given: pass at least one dataset camera key (--cameras)")
    duplicates = sorted({c for c in cameras if cameras.count(c) > 1})
    if duplicates:
        raise ConfigError(f"camera key(s) {duplicates} listed more than once in --cameras; list each camera once")
    return {key: f"{POLICY_IMAGE_PREFIX}{i}" for i, key in enumerate(cameras, start=1)}


def canonical_json(value: Any) -> str:
    """The canonical text of a JSON/YAML-like value: mapping keys as strings, sorted; tuples as lists; no spaces.

    ``PolicyInputs.to_dict()`` in memory and the same section read back from ``train_config.yaml`` give the same
    text (YAML keeps the task map's int keys, and both become strings here)."""

    def plain(v: Any) -> Any:
        if isinstance(v, Mapping):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [plain(x) for x in v]
        return v

    # default=str: an edited YAML may hold values JSON has no type for (a date); they must hash, not crash.
    return json.dumps(plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


@dataclass(frozen=True)
class ContractFingerprint:
    """The fingerprint of a saved input contract (the ``inputs`` section of ``train_config.yaml``).

    Attributes:
        sha256: hex SHA-256 of the whole section's :func:`canonical_json` (64 characters).
        fields: field name -> hex SHA-256 of that field's canonical value (first 16 characters: enough to tell which
            fields changed, not a security boundary), so that a changed contract is reported by field.
    """

    sha256: str
    fields: dict[str, str]

    @classmethod
    def of(cls, section: Any) -> ContractFingerprint:
        """The fingerprint of an ``inputs`` section (``PolicyInputs.to_dict()`` or the mapping read from YAML; any
        other value, e.g. a missing section's None, has no fields)."""
        fields = ({str(k): hashlib.sha256(canonical_json(v).encode()).hexdigest()[:16] for k, v in section.items()}
                  if isinstance(section, Mapping) else {})
        return cls(hashlib.sha256(canonical_json(section).encode()).hexdigest(), fields)

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "fields": dict(sorted(self.fields.items()))}

    @classmethod
    def from_dict(cls, data: Any) -> ContractFingerprint:
        """Read :meth:`to_dict`'s output back.

        Raises:
            ValueError: not such a mapping (the caller names the file).
        """
        if not (isinstance(data, Mapping) and isinstance(data.get("sha256"), str)
                and isinstance(data.get("fields"), Mapping)):
            raise ValueError("not an inputs fingerprint (sha256, fields)")
        return cls(data["sha256"], {str(k): str(v) for k, v in data["fields"].items()})

    def differing_fields(self, other: ContractFingerprint) -> list[str]:
        """Names of the fields whose value differs between the two contracts (present in only one included)."""
        return sorted(k for k in self.fields.keys() | other.fields.keys() if self.fields.get(k) != other.fields.get(k))


@dataclass(frozen=True)
class PolicyInputs:
    """What a policy reads and predicts. Build it with :meth:`resolve` (training) or :meth:`from_train_config`
    (a checkpoint); never field by field from flags.

    Attributes:
        state_key: dataset feature read as ``observation.state`` (e.g. ``observation.state``, ``state``).
        action_key: dataset feature read as ``action`` (e.g. ``action``, ``actions``).
        state_map: the state map, bound to the dataset's state (``state_map.input_dim`` raw dims in,
            ``state_map.output_dim`` dims to the policy); a map with velocity dims is timed with this contract's
            ``fps`` and ``frame_stride`` (its lag of k policy steps = ``k * frame_stride`` dataset frames).
        action_dim: size of the action vector (23 for the R1Pro: base velocity in m/s and rad/s, joint positions in
            radians, gripper commands).
        action_names: one name per action dim, or None when the dataset declares none.
        cameras: dataset camera keys in policy order (camera1, camera2, ...).
        image_size: frames are decoded with their longer side scaled to this many pixels; SmolVLA then pads them to
            a square of this side (``resize_imgs_with_padding``).
        chunk_size: actions predicted per model call.
        n_action_steps: actions executed from each chunk before the next model call (1..chunk_size).
        frame_stride: the policy steps every ``frame_stride`` dataset frames (3: 30 Hz data -> 10 Hz policy); the
            action chunk is at that rate.
        fps: the dataset's frame rate (Hz); a policy step lasts ``frame_stride / fps`` seconds.
        action_mode: the action representation (``behavior_smolvla.actions.ACTION_MODES``: ``absolute`` as
            recorded, ``delta`` = minus the reference state where there is one).
        action_norm: ``global`` (one mean/std per action dim) or ``per-step`` (one per chunk step and dim).
        action_reference: one RAW-state index (before the state map) or None per action dim: the state dim holding
            the same joint (``behavior_smolvla.actions.resolve_action_reference``); None when no dim has one (and in
            checkpoints written before it existed). Used by ``delta`` and by the evaluation's ``state`` predictor.
        task_map: task index -> instruction, the dataset's task table (serving maps the evaluator's ``task_id``).
        tasks: the instructions trained on, sorted.
    """

    state_key: str
    action_key: str
    state_map: StateMap
    action_dim: int
    action_names: tuple[str, ...] | None
    cameras: tuple[str, ...]
    image_size: int
    chunk_size: int
    n_action_steps: int
    frame_stride: int
    fps: float
    action_mode: str = "absolute"
    action_norm: str = "global"
    action_reference: Reference | None = None
    task_map: dict[int, str] = field(default_factory=dict)
    tasks: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.state_map.input_dim is None:
            raise StateMapError(f"state map {self.state_map.name!r} is not bound to a state size; bind it first")
        if self.state_map.has_velocity and self.state_map.timing != (float(self.fps), self.frame_stride):
            raise StateMapError(f"state map {self.state_map.name!r} has velocity dims timed for "
                                f"{self.state_map.timing} (fps, frame stride), but the contract runs at "
                                f"({self.fps}, {self.frame_stride}); bind it with fps=, frame_stride= of the contract")
        for name in ("action_dim", "image_size", "chunk_size", "frame_stride"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"--{name.replace('_', '-')} {value!r}: must be a positive integer")
        if not 1 <= self.n_action_steps <= self.chunk_size:
            raise ConfigError(f"--n-action-steps {self.n_action_steps}: must be between 1 and --chunk-size "
                              f"({self.chunk_size})")
        if self.action_mode not in ACTION_MODES:
            raise ConfigError(f"--action-mode {self.action_mode!r}: use one of {', '.join(ACTION_MODES)}")
        if self.action_norm not in ACTION_NORMS:
            raise ConfigError(f"--action-norm {self.action_norm!r}: use one of {', '.join(ACTION_NORMS)}")
        if self.action_reference is not None:
            ref = self.action_reference
            if len(ref) != self.action_dim or any(r is not None and not 0 <= r < self.state_dim for r in ref):
                raise ConfigError(f"action reference {list(ref)}: needs {self.action_dim} entries, each a raw-state "
                                  f"index below {self.state_dim} or None; fix --action-reference")
        if self.action_mode == "delta" and self.delta_reference is None:
            raise ConfigError("--action-mode delta: no action dim has a reference state dim (no R1Pro layout, no "
                              "equal action/state names); pass --action-reference FILE (action dim -> state dim)")
        policy_camera_keys(self.cameras)  # validates: at least one, no duplicates

    # -- derived facts ----------------------------------------------------------------------------------------

    @property
    def state_dim(self) -> int:
        """Raw state size in the dataset (the state map's input)."""
        return int(self.state_map.input_dim)

    @property
    def policy_state_dim(self) -> int:
        """State size the policy takes (the state map's output)."""
        return int(self.state_map.output_dim)

    @property
    def camera_map(self) -> dict[str, str]:
        """Dataset camera key -> SmolVLA image key (:func:`policy_camera_keys`)."""
        return policy_camera_keys(self.cameras)

    @property
    def delta_reference(self) -> Reference | None:
        """The reference the readers attach and the policy's targets subtract: :attr:`action_reference` in ``delta``
        mode when some dim has one, else None (absolute actions)."""
        if self.action_mode != "delta" or self.action_reference is None:
            return None
        return self.action_reference if any(r is not None for r in self.action_reference) else None

    def reference_state(self, raw_state: Any) -> Any:
        """float32 [..., state_dim] raw state -> float32 [..., action_dim] reference (0 where none; all 0 when the
        contract has no reference)."""
        import numpy as np

        raw_state = np.asarray(raw_state, dtype=np.float32)
        if self.action_reference is None:
            return np.zeros((*raw_state.shape[:-1], self.action_dim), dtype=np.float32)
        return reference_state(raw_state, self.action_reference)

    def describe_actions(self) -> str:
        """One line: the action mode, normalisation and the action -> state reference."""
        if self.delta_reference is not None:
            return (f"actions: delta (action - current state) where {describe_reference(self.action_reference)}; the "
                    f"other dims absolute; {self.action_norm} normalisation")
        return (f"actions: absolute, {self.action_norm} normalisation ({describe_reference(self.action_reference)}; "
                "the eval's state baseline uses it)")

    @property
    def step_s(self) -> float:
        """Seconds between two actions of a chunk."""
        return self.frame_stride / self.fps

    # -- resolution (the only place defaults are chosen) ------------------------------------------------------

    @classmethod
    def resolve(cls, meta: DatasetMeta, data: DataConfig, policy: PolicyConfig,
                train_episodes: Sequence[int] | None = None) -> PolicyInputs:
        """Resolve every default from a dataset and the run's config.

        Args:
            meta: the training dataset's metadata, loaded with ``data.state_key`` / ``data.action_key``.
            data, policy: the ``data`` and ``policy`` sections of the run config.
            train_episodes: the training episodes (their tasks become :attr:`tasks`); None = every episode.

        Raises:
            StateMapError: an unknown state map, or one that does not fit the dataset's state.
            DatasetError: a camera the dataset does not have.
            ConfigError: sizes out of range, a camera listed twice.
        """
        bound = default_state_map_for(meta, data.state_map, data.filter_state).bind(
            meta.state_dim, meta.state_names, fps=float(meta.fps), frame_stride=int(data.frame_stride))
        cameras = list(data.cameras) if data.cameras else default_cameras(meta)
        for key in cameras:
            meta.check_camera(key)
        episodes = list(meta.episodes) if train_episodes is None else list(train_episodes)
        mode = data.action_mode or "absolute"
        reference, _ = resolve_action_reference(meta, data.action_reference)
        return cls(
            state_key=meta.state_key,
            action_key=meta.action_key,
            state_map=bound,
            action_dim=int(meta.action_dim),
            action_names=tuple(meta.action_names) if meta.action_names else None,
            cameras=tuple(cameras),
            image_size=int(data.image_size),
            chunk_size=int(policy.chunk_size),
            n_action_steps=int(policy.n_action_steps or policy.chunk_size),
            frame_stride=int(data.frame_stride),
            fps=float(meta.fps),
            action_mode=mode,
            action_norm=data.action_norm or default_action_norm(mode),
            action_reference=reference,
            task_map=dict(meta.tasks),
            tasks=tuple(sorted({t for e in episodes for t in meta.episodes[e].tasks})),
        )

    # -- what is derived from it ------------------------------------------------------------------------------

    def load_meta(self, root: str | Path, state_key: str | None = None, action_key: str | None = None
                  ) -> DatasetMeta:
        """A dataset's metadata read with this contract's state and action keys (or overrides), checked to feed it.

        Raises:
            DatasetError / StateMapError: the dataset lacks the features or cameras, or their sizes differ (the
                message names the dataset and what the policy was trained on).
        """
        meta = DatasetMeta.load(root, state_key=state_key or self.state_key, action_key=action_key or self.action_key)
        self.check_dataset(meta)
        return meta

    def check_dataset(self, meta: DatasetMeta) -> None:
        """Raise the project's error when ``meta``'s dataset cannot feed this policy (state size, action size,
        cameras), before any frame is read."""
        if meta.state_dim != self.state_dim:
            raise StateMapError(
                f"--dataset-path {meta.root}: {meta.state_key!r} has {meta.state_dim} dims but the policy was trained "
                f"with state map {self.state_map.name!r} over a {self.state_dim}-dim state; use a dataset with the "
                "training data's state layout")
        if self.state_map.has_velocity and abs(float(meta.fps) - self.fps) > 1e-6:
            raise StateMapError(
                f"--dataset-path {meta.root}: recorded at {meta.fps:g} fps but the policy's state map "
                f"{self.state_map.name!r} has velocities over {self.state_map.lag_frames} frames at {self.fps:g} fps; "
                "use a dataset at the training frame rate")
        if meta.action_dim != self.action_dim:
            raise DatasetError(
                f"--dataset-path {meta.root}: {meta.action_key!r} has {meta.action_dim} dims but the policy predicts "
                f"{self.action_dim}; use a dataset of the same robot")
        missing = [c for c in self.cameras if c not in meta.camera_keys]
        if missing:
            raise DatasetError(
                f"--dataset-path {meta.root}: camera(s) {missing} that the policy reads are not in the dataset (it has "
                f"{', '.join(meta.camera_keys) or 'none'}); use a dataset with the training cameras")

    def dataset(self, meta: DatasetMeta, episodes: str | Sequence[int] | None, **reader: Any) -> BehaviorDataset:
        """The training reader: samples exactly as the policy is trained on them (``reader``: ``BehaviorDataset``'s
        loader options such as ``max_open_videos``, ``decoder_threads``)."""
        return BehaviorDataset(meta, episodes=episodes, cameras=list(self.cameras), chunk_size=self.chunk_size,
                               image_size=self.image_size, frame_stride=self.frame_stride, state_map=self.state_map,
                               action_reference=self.delta_reference, **reader)

    def eval_dataset(self, meta: DatasetMeta, episodes: str | Sequence[int] | None, **reader: Any) -> BehaviorDataset:
        """The evaluation reader: every frame (stride 1) with a chunk of ``(chunk_size - 1) * frame_stride + 1``
        actions, so any frame can be evaluated and its ground truth at the policy's rate is ``chunk[::stride]``.
        Samples hold ``action.reference`` whenever the contract has a reference (any mode): the evaluation's ``state``
        predictor reads it, and ``predict_chunk`` adds it back in delta mode."""
        return BehaviorDataset(meta, episodes=episodes, cameras=list(self.cameras),
                               chunk_size=(self.chunk_size - 1) * self.frame_stride + 1, image_size=self.image_size,
                               frame_stride=1, state_map=self.state_map, action_reference=self.action_reference,
                               **reader)

    # -- saving and loading -----------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A YAML/JSON-safe dict: the ``inputs`` section of ``train_config.yaml`` (self-contained: the state map is
        stored whole, so no YAML file is needed to load it)."""
        out = {"version": INPUTS_VERSION}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "state_map":
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = {int(k): v for k, v in value.items()}
            out[f.name] = value
        return out

    def fingerprint(self) -> ContractFingerprint:
        """:class:`ContractFingerprint` of :meth:`to_dict` (what ``save_checkpoint`` records from the section it
        writes; equal to it, since the section reads back from YAML unchanged)."""
        return ContractFingerprint.of(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> PolicyInputs:
        """Read :meth:`to_dict`'s output back.

        Raises:
            CheckpointError: a newer or unknown version, or missing / malformed fields (naming ``where``).
        """
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{where}: the 'inputs' section is not a mapping; the checkpoint is damaged")
        version = data.get("version")
        if version != INPUTS_VERSION:
            raise CheckpointError(
                f"{where}: inputs version {version!r}, this behavior-smolvla reads version {INPUTS_VERSION}; "
                "use the behavior-smolvla version that wrote the checkpoint (or a newer one)")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names - {"version"})
        if unknown:
            raise CheckpointError(f"{where}: unknown inputs field(s) {unknown}; written by a newer behavior-smolvla?")
        try:
            state_map = StateMap.from_dict(data["state_map"])
            values = dict(data)
            values.pop("version")
            values["state_map"] = state_map.bind(int(data["state_map"]["input_dim"]))
            values["cameras"] = tuple(data["cameras"])
            values["action_names"] = tuple(data["action_names"]) if data.get("action_names") else None
            values["tasks"] = tuple(data.get("tasks") or ())
            values["task_map"] = {int(k): str(v) for k, v in (data.get("task_map") or {}).items()}
            if data.get("action_reference") is not None:
                values["action_reference"] = tuple(None if r is None else int(r) for r in data["action_reference"])
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: the 'inputs' section is incomplete or malformed ({type(exc).__name__}: "
                                  f"{exc}); the checkpoint is damaged") from None

    @classmethod
    def from_train_config(cls, config: Mapping[str, Any], where: str) -> PolicyInputs:
        """The contract saved in a checkpoint's ``train_config.yaml``; checkpoints written before it existed (no
        ``inputs`` section: ``run``, ``dataset`` and ``state_map`` sections) are converted on the fly.

        Raises:
            CheckpointError: neither layout is there, or it is malformed (naming ``where``).
        """
        if not isinstance(config, Mapping):
            raise CheckpointError(f"{where}: not a mapping; the checkpoint is damaged")
        if "inputs" in config:
            return cls.from_dict(config["inputs"], where)
        if all(k in config for k in ("run", "dataset", "state_map")):
            return cls._from_legacy(config, where)
        raise CheckpointError(f"{where}: no 'inputs' section; the checkpoint was written by another tool: retrain "
                              "it with smolvla-train")

    @classmethod
    def _from_legacy(cls, config: Mapping[str, Any], where: str) -> PolicyInputs:
        """Checkpoints of behavior-smolvla before the input contract (up to commit 28dbabc): the same facts, spread
        over the run config and the data facts the trainer added."""
        try:
            data, run = config["dataset"], config["run"]
            chunk = int(run["policy"]["chunk_size"])
            return cls(
                state_key=STATE_KEY,
                action_key=ACTION_KEY,
                state_map=StateMap.from_dict(config["state_map"]).bind(int(data["state_dim"])),
                action_dim=int(data["action_dim"]),
                action_names=tuple(data["action_names"]) if data.get("action_names") else None,
                cameras=tuple(data["cameras"]),
                image_size=int(data["image_size"]),
                chunk_size=chunk,
                n_action_steps=int(run["policy"].get("n_action_steps") or chunk),
                frame_stride=int(data.get("frame_stride", 1)),
                fps=float(data["fps"]),
                task_map={int(k): str(v) for k, v in (data.get("task_map") or {}).items()},
                tasks=tuple(data.get("tasks") or ()),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: an older checkpoint layout without the fact {exc}; retrain it with "
                                  "smolvla-train") from None

    def describe(self) -> str:
        """One line for logs: state, action, cameras, sizes."""
        m = self.state_map
        motion = (f", velocities over {m.lag_frames} frames = {m.velocity_dt:.3g} s" if m.has_velocity else "")
        return (f"state {self.state_key} ({self.state_dim} -> {self.policy_state_dim} dims, map "
                f"{m.name}{motion}); action {self.action_key} ({self.action_dim} dims, {self.action_mode}, "
                f"{self.action_norm} norm); "
                f"cameras {list(self.cameras)} at {self.image_size} px; chunk {self.chunk_size}, "
                f"{self.n_action_steps} executed; stride {self.frame_stride} ({1 / self.step_s:g} Hz)")
