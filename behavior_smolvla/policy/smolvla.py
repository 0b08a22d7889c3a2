"""Building, loading and saving lerobot's SmolVLA policy and its pre/post processors for BEHAVIOR data.

Nothing here re-implements the model: the policy is ``lerobot.policies.smolvla.SmolVLAPolicy`` and the processors
are the pipelines of ``make_smolvla_pre_post_processors`` (rename -> batch -> "\\n" after the task -> tokenise
with the VLM's tokenizer -> device -> MEAN_STD normalisation of ``observation.state`` and ``action``; the
post-processor unnormalises ``action`` and moves it to the CPU). This module adds what the project needs around
them:

- the SmolVLA features of an input contract (:class:`~behavior_smolvla.inputs.PolicyInputs`: its cameras become
  ``observation.images.camera{i}``, its mapped state ``observation.state``, its action ``action``);
- starting from scratch on a VLM backbone, or from a pretrained SmolVLA (hub id or local ``pretrained_model``
  folder) whose weights are loaded leniently: layers whose shapes change with this dataset (``state_proj`` when
  ``max_state_dim`` grows, the action projections when ``max_action_dim`` grows) are freshly initialised and
  reported, everything else must load;
- saving and loading in lerobot's own layout, so ``SmolVLAPolicy.from_pretrained`` and
  ``PolicyProcessorPipeline.from_pretrained`` read what :func:`save_policy` writes; :func:`load_policy_bundle` loads a
  checkpoint of this project with its input contract, for evaluation and serving.

Batch contract (what :func:`to_policy_batch` returns and the pre-processor takes), B = batch size:
``observation.images.camera{i}`` float32 [B, 3, H, W] in [0, 1] (any H, W: SmolVLA resizes with padding to
``image_size``); ``observation.state`` float32 [B, state_dim] (raw units, e.g. radians, metres; normalised by
the pre-processor); ``action`` float32 [B, chunk_size, action_dim] and ``action_is_pad`` bool [B, chunk_size]
(training only); ``task`` list[str] of length B.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from behavior_smolvla.errors import CheckpointError, ConfigError, DatasetError, PolicyLoadError
from behavior_smolvla.policy.inference import Inference, sample_chunks

if TYPE_CHECKING:
    from lerobot.policies.smolvla import SmolVLAConfig, SmolVLAPolicy
    from lerobot.processor import PolicyProcessorPipeline

    from behavior_smolvla.config import PolicyConfig
    from behavior_smolvla.inputs import PolicyInputs

__all__ = [
    "DEFAULT_POLICY_PATH",
    "DEFAULT_VLM_MODEL",
    "SMOLVLA_PADDED_DIM",
    "PolicyBundle",
    "create_policy",
    "load_policy_bundle",
    "resolve_device",
    "save_policy",
    "to_policy_batch",
]

logger = logging.getLogger(__name__)

DEFAULT_POLICY_PATH = "lerobot/smolvla_base"
"""The pretrained SmolVLA on the Hugging Face hub (lerobot's own fine-tuning starting point)."""
DEFAULT_VLM_MODEL = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"
"""``SmolVLAConfig.vlm_model_name`` default in lerobot 0.6.1: the backbone of ``lerobot/smolvla_base``."""
SMOLVLA_PADDED_DIM = 32
"""``SmolVLAConfig.max_state_dim`` / ``max_action_dim`` default in lerobot 0.6.1 (and in ``smolvla_base``)."""

OBS_STATE = "observation.state"
ACTION = "action"
ACTION_IS_PAD = "action_is_pad"
TASK = "task"

# Files lerobot writes for a policy and its processors (names fixed by lerobot 0.6.1).
POLICY_FILES = ("config.json", "model.safetensors", "policy_preprocessor.json", "policy_postprocessor.json")
# Pre-0.4 lerobot checkpoints kept normalisation statistics inside the model; the processors built here from the
# dataset's statistics replace them, so such keys in a pretrained checkpoint are ignored (with a warning).
_LEGACY_NORM_PREFIXES = ("normalize_inputs.", "normalize_targets.", "unnormalize_outputs.")
_VLM_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# The only SmolVLA layers whose shapes depend on the dataset: state_proj on max_state_dim, the action
# projections on max_action_dim (lerobot 0.6.1 VLAFlowMatching).
_RESHAPEABLE_LAYERS = ("model.state_proj", "model.action_in_proj", "model.action_out_proj")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """Turn a device name into a :class:`torch.device`.

    Args:
        name: ``"auto"`` (CUDA if available, else Apple MPS, else CPU), or an explicit ``"cuda"``, ``"cuda:N"``,
            ``"mps"``, ``"cpu"``.

    Raises:
        ConfigError: unknown name, or a device this machine does not have.
    """
    name = str(name).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device {name!r} is not a torch device; use auto, cuda, cuda:N, mps or cpu") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {name} requested but CUDA is not available here; use --device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name} requested but only {torch.cuda.device_count()} CUDA device(s) exist here"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {name} requested but MPS is not available here; use --device auto or cpu")
    elif device.type not in ("cuda", "mps", "cpu"):
        raise ConfigError(f"--device {name!r} is not supported; use auto, cuda, cuda:N, mps or cpu")
    return device


@dataclass
class PolicyBundle:
    """A SmolVLA policy with the processors that feed it and the input contract it reads: what training, evaluation
    and serving hold (built by :func:`create_policy`, loaded from a checkpoint by :func:`load_policy_bundle`).

    Attributes:
        policy: ``SmolVLAPolicy`` on its device. ``policy.forward(batch) -> (loss, info)``;
            ``policy.predict_action_chunk(batch, noise=None) -> float32 [B, chunk_size, action_dim]`` (normalised
            actions: pass them through ``postprocessor``).
        preprocessor: ``PolicyProcessorPipeline`` taking a :func:`to_policy_batch` dict and returning the model's
            batch (normalised state/action, ``observation.language.tokens`` / ``.attention_mask``, on device).
        postprocessor: ``PolicyProcessorPipeline`` taking the model's action tensor and returning it unnormalised
            (dataset units) on the CPU.
        reinitialised: state-dict names of parameters freshly initialised instead of loaded from the pretrained
            policy because their layer's shape changed, e.g. ``["model.state_proj.bias",
            "model.state_proj.weight"]`` when ``max_state_dim`` grows (empty from scratch and when nothing changed).
        inputs: the :class:`~behavior_smolvla.inputs.PolicyInputs` the policy reads (cameras, state map, sizes).
        checkpoint: the checkpoint folder it was loaded from (None for a policy built in memory).
        train_config: the checkpoint's whole ``train_config.yaml`` (empty for a policy built in memory).
        action_stats: statistics of the ABSOLUTE action in the training data (``mean``, ``std``, ``min``, ``max``:
            float32 [A]), whatever the action mode (the processors hold those of the trained targets, e.g. per-step
            deltas). Evaluation's reference predictors and ranges read them; None = read from the post-processor
            (checkpoints written before they were saved, all absolute / global).
    """

    policy: SmolVLAPolicy
    preprocessor: PolicyProcessorPipeline
    postprocessor: PolicyProcessorPipeline
    inputs: PolicyInputs
    reinitialised: list[str] = field(default_factory=list)
    checkpoint: Path | None = None
    train_config: dict[str, Any] = field(default_factory=dict)
    action_stats: dict[str, np.ndarray] | None = None

    @property
    def chunk_size(self) -> int:
        return int(self.policy.config.chunk_size)

    @property
    def n_action_steps(self) -> int:
        return int(self.policy.config.n_action_steps)

    @property
    def action_dim(self) -> int:
        return int(self.policy.config.action_feature.shape[0])

    @property
    def device(self) -> torch.device:
        return next(self.policy.parameters()).device

    @property
    def train_episodes(self) -> list[int]:
        """Episodes the checkpoint was trained on (empty when unknown)."""
        return list(self.train_config.get("dataset", {}).get("train_episodes", []))

    def predict_chunk(self, batch: Mapping[str, Any], inference: Inference = Inference(),
                      noise_seed: int | None = 0) -> np.ndarray:
        """Predict action chunks for a batch of observations, unnormalised, with an inference strategy.

        Args:
            batch: each of ``inputs.cameras`` -> float32 [B, 3, H, W] in [0, 1]; ``observation.state`` float32
                [B, D] (already mapped by ``inputs.state_map``); ``task`` list[str] of length B; in ``delta`` action
                mode also ``action.reference`` float32 [B, A] (the raw state of each action dim's reference joint,
                ``inputs.reference_state``). The reader's samples and the serving observation spec both produce this.
            inference: :class:`~behavior_smolvla.policy.inference.Inference`: zero initial noise (the default), one
                draw, or the mean of K draws (one batched model call, the prefix encoded once).
            noise_seed: seeds the K draws' noise (:meth:`Inference.initial_noise`: float32 [K, B, chunk,
                max_action_dim] from one CPU generator; draw k is slice k) so the prediction is repeatable; None
                draws from the global RNG. Unused with zero noise.

        Returns:
            float32 [B, chunk_size, action_dim] ABSOLUTE actions in the dataset's units (radians, m/s, gripper
            command): each draw unnormalised by the post-processor, then averaged over the K draws; in ``delta``
            mode the reference state is added back here (the only place it is).

        Raises:
            DatasetError: a delta-mode policy given a batch without ``action.reference``.
        """
        from behavior_smolvla.actions import REFERENCE_KEY, to_absolute

        reference = None
        if self.inputs.delta_reference is not None:
            if REFERENCE_KEY not in batch:
                raise DatasetError(f"this policy predicts delta actions but the batch lacks {REFERENCE_KEY!r} (the "
                                   "reference state); build the reader or observation spec from its inputs")
            reference = torch.as_tensor(batch[REFERENCE_KEY], dtype=torch.float32).cpu()
        policy = self.policy
        inputs = self.preprocessor(to_policy_batch(batch, self.inputs.camera_map))
        noise = inference.initial_noise(len(batch["task"]), policy.config.chunk_size, policy.config.max_action_dim,
                                        noise_seed, self.device)
        with torch.inference_mode():
            if len(noise) == 1:  # zero noise or one draw: lerobot's own entry point, exactly
                actions = policy.predict_action_chunk(inputs, noise=noise[0])[None]
            else:
                actions = sample_chunks(policy, inputs, noise)
        draws, frames = actions.shape[:2]
        actions = self.postprocessor(actions.reshape(draws * frames, *actions.shape[2:]))
        actions = actions.detach().to("cpu", torch.float32).reshape(draws, frames, *actions.shape[1:]).mean(0)
        if reference is not None:
            actions = to_absolute(actions, reference)
        return actions.numpy()


def to_policy_batch(sample_batch: Mapping[str, Any], camera_map: Mapping[str, str]) -> dict[str, Any]:
    """Rename a dataset batch to SmolVLA's keys, without copying tensors.

    Args:
        sample_batch: a collated batch of ``BehaviorDataset`` samples (or one observation): camera keys ->
            float32 [B, 3, H, W] in [0, 1]; ``observation.state`` float32 [B, D]; optional ``action`` float32
            [B, chunk, A] and ``action_is_pad`` bool [B, chunk]; ``task`` list[str] (or one str).
        camera_map: ``PolicyInputs.camera_map`` (dataset camera key -> SmolVLA image key).

    Returns:
        A new dict holding the same tensor objects under ``observation.images.camera{i}``, plus
        ``observation.state``, ``task`` and, when present, ``action`` and ``action_is_pad``. Other keys
        (``episode_index``, ``frame_index``, ``timestamp``, ``index``, ...) are left out.

    Raises:
        DatasetError: a camera of ``camera_map``, ``observation.state`` or ``task`` is missing.
    """
    missing = [k for k in (*camera_map, OBS_STATE, TASK) if k not in sample_batch]
    if missing:
        raise DatasetError(
            f"batch lacks key(s) {missing} that the policy needs (has {sorted(sample_batch)}); "
            "check --cameras against the dataset's camera keys"
        )
    batch = {policy_key: sample_batch[key] for key, policy_key in camera_map.items()}
    for key in (OBS_STATE, ACTION, ACTION_IS_PAD, TASK):
        if key in sample_batch:
            batch[key] = sample_batch[key]
    return batch


def _policy_stats(dataset_stats: Mapping[str, Mapping[str, Any]], inputs: PolicyInputs):
    """Validate dataset statistics and rename camera entries to policy keys (float32 tensors)."""
    expected = {OBS_STATE: inputs.policy_state_dim, ACTION: inputs.action_dim}
    stats: dict[str, dict[str, torch.Tensor]] = {}
    for key, dim in expected.items():
        if key not in dataset_stats:
            raise DatasetError(f"dataset statistics lack {key!r} (have {sorted(dataset_stats)}); recompute the stats")
        for stat in ("mean", "std"):
            if stat not in dataset_stats[key]:
                raise DatasetError(f"dataset statistics of {key!r} lack {stat!r}; SmolVLA normalises with MEAN_STD")
        allowed = {(dim,)}
        if key == ACTION and inputs.action_norm == "per-step":
            allowed = {(inputs.chunk_size, dim)}  # one mean/std per chunk step; lerobot broadcasts [C, A] on [B, C, A]
        for stat, value in dataset_stats[key].items():
            shape = tuple(np.shape(value))
            if shape not in allowed:
                raise DatasetError(
                    f"dataset statistics {key}.{stat} have shape {shape}, expected {sorted(allowed)[0]} for a "
                    f"{dim}-dim {key} ({inputs.action_norm if key == ACTION else 'global'} normalisation); "
                    "compute the stats after the state map"
                )
    camera_map = inputs.camera_map
    for key, value in dataset_stats.items():
        name = camera_map.get(key, key)
        stats[name] = {s: torch.as_tensor(np.asarray(v, dtype=np.float32)) for s, v in value.items()}
    return stats


def _features(inputs: PolicyInputs):
    """SmolVLA's input and output features of an input contract (images are declared at the padded square size)."""
    from lerobot.configs import FeatureType, PolicyFeature

    size = inputs.image_size
    features = {key: PolicyFeature(type=FeatureType.VISUAL, shape=(3, size, size)) for key in inputs.camera_map.values()}
    features[OBS_STATE] = PolicyFeature(type=FeatureType.STATE, shape=(inputs.policy_state_dim,))
    outputs = {ACTION: PolicyFeature(type=FeatureType.ACTION, shape=(inputs.action_dim,))}
    return features, outputs


def _validate_options(inputs: PolicyInputs, options: PolicyConfig, policy_path: str | None) -> None:
    max_state_dim = options.state_dim
    if max_state_dim is not None and (not isinstance(max_state_dim, int) or max_state_dim < inputs.policy_state_dim):
        raise ConfigError(f"--state-dim {max_state_dim!r} must be an integer >= the mapped state's "
                          f"{inputs.policy_state_dim} dims")
    if not options.from_scratch and not policy_path:
        raise ConfigError("no pretrained policy given: pass --policy-path, or --from-scratch --vlm-model <VLM>")


def _is_local(path: str) -> bool:
    return Path(path).expanduser().is_dir()


def _has_vlm_weights(vlm_model: str) -> bool:
    """A hub id always has weights; a local folder only if it holds weight files."""
    folder = Path(vlm_model).expanduser()
    if not folder.is_dir():
        return True
    return any(p.name.endswith(_VLM_WEIGHT_SUFFIXES) for p in folder.iterdir())


def vlm_is_random(options: PolicyConfig) -> bool:
    """True when the policy's VLM starts from random weights: ``from_scratch`` on a backbone folder without weight
    files (a hub id or a folder with weights gives the pretrained VLM, as lerobot loads it)."""
    return options.from_scratch and not _has_vlm_weights(options.vlm_model or DEFAULT_VLM_MODEL)


def resolve_train_expert_only(options: PolicyConfig) -> bool:
    """Whether only the action expert trains: ``options.train_expert_only`` when set, else (None, the default) not
    :func:`vlm_is_random`: a pretrained VLM stays frozen (SmolVLA's default), a randomly initialised one trains.
    The one place this default is decided (``training.build`` saves the result in the run's config)."""
    if options.train_expert_only is not None:
        return options.train_expert_only
    return not vlm_is_random(options)


def _hub_hint() -> str:
    return (
        "pass a local pretrained_model folder as --policy-path, or train from scratch with "
        "--from-scratch --vlm-model <local SmolVLM folder>"
    )


def _resolve_pretrained_folder(policy_path: str) -> Path:
    """A local folder holding the pretrained policy's config.json and model.safetensors (hub ids: the HF cache)."""
    if _is_local(policy_path):
        folder = Path(policy_path).expanduser().resolve()
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(policy_path, allow_patterns=["config.json", "model.safetensors"]))
        except Exception as e:  # offline, not cached, unknown repo, network error: all end the same way
            raise PolicyLoadError(
                f"cannot load pretrained policy {policy_path!r}: it is not a local folder and the Hugging Face hub "
                f"gave {type(e).__name__} (offline, e.g. HF_HUB_OFFLINE=1, or not in the local cache); {_hub_hint()}"
            ) from e
    missing = [name for name in POLICY_FILES[:2] if not (folder / name).is_file()]
    if missing:
        raise PolicyLoadError(
            f"pretrained policy {policy_path!r} ({folder}) lacks {missing}; point --policy-path at a lerobot "
            "pretrained_model folder (config.json + model.safetensors)"
        )
    from behavior_smolvla.policy.checkpoint import verify_weights

    verify_weights(folder)  # a checkpoint of this project: its weights as written (its manifest)
    return folder


def _load_smolvla_config(folder: Path, label: str) -> SmolVLAConfig:
    from lerobot.configs import PreTrainedConfig
    from lerobot.policies.smolvla import SmolVLAConfig

    try:
        config = PreTrainedConfig.from_pretrained(folder)
    except Exception as e:  # draccus / json errors: a folder that is not a lerobot policy
        raise PolicyLoadError(
            f"{folder / 'config.json'} is not a lerobot policy config ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); point {label} at a SmolVLA pretrained_model folder"
        ) from e
    if not isinstance(config, SmolVLAConfig):
        raise PolicyLoadError(
            f"{folder / 'config.json'} is a {config.type!r} policy, not SmolVLA; point {label} at a SmolVLA folder"
        )
    return config


def _instantiate(config: SmolVLAConfig) -> SmolVLAPolicy:
    """``SmolVLAPolicy(config)``, turning a backbone that cannot be fetched into one clear error."""
    from lerobot.policies.smolvla import SmolVLAPolicy

    try:
        return SmolVLAPolicy(config)
    except OSError as e:  # transformers raises OSError for a backbone that is neither local nor reachable
        raise PolicyLoadError(
            f"cannot load the VLM backbone {config.vlm_model_name!r} ({type(e).__name__}: offline or not in the local "
            "Hugging Face cache); pass --vlm-model <local SmolVLM folder>"
        ) from e


def _scratch_config(inputs: PolicyInputs, options: PolicyConfig, device: torch.device) -> SmolVLAConfig:
    from lerobot.policies.smolvla import SmolVLAConfig

    vlm_model = options.vlm_model or DEFAULT_VLM_MODEL
    if _is_local(vlm_model):
        vlm_model = str(Path(vlm_model).expanduser().resolve())
    features, outputs = _features(inputs)
    size = inputs.image_size
    return SmolVLAConfig(
        input_features=features,
        output_features=outputs,
        device=str(device),
        chunk_size=inputs.chunk_size,
        n_action_steps=inputs.n_action_steps,
        max_state_dim=options.state_dim or max(SMOLVLA_PADDED_DIM, inputs.policy_state_dim),
        max_action_dim=max(SMOLVLA_PADDED_DIM, inputs.action_dim),
        resize_imgs_with_padding=(size, size),
        vlm_model_name=vlm_model,
        # A hub backbone has weights; a local folder only if it holds weight files (a tiny VLM folder has none).
        load_vlm_weights=_has_vlm_weights(vlm_model),
        train_expert_only=resolve_train_expert_only(options),
        freeze_vision_encoder=options.freeze_vision_encoder,
    )


def _pretrained_config(inputs: PolicyInputs, options: PolicyConfig, device: torch.device, folder: Path,
                       policy_path: str) -> SmolVLAConfig:
    base = _load_smolvla_config(folder, "--policy-path")
    features, outputs = _features(inputs)
    size = inputs.image_size
    changes: dict[str, Any] = {
        "input_features": features,
        "output_features": outputs,
        "device": str(device),
        "chunk_size": inputs.chunk_size,
        "n_action_steps": inputs.n_action_steps,
        "max_state_dim": options.state_dim or max(base.max_state_dim, inputs.policy_state_dim),
        "max_action_dim": max(base.max_action_dim, inputs.action_dim),
        "resize_imgs_with_padding": (size, size),
        "train_expert_only": resolve_train_expert_only(options),
        "freeze_vision_encoder": options.freeze_vision_encoder,
        "pretrained_path": Path(policy_path),
    }
    if options.vlm_model:
        vlm = options.vlm_model
        changes["vlm_model_name"] = str(Path(vlm).expanduser().resolve()) if _is_local(vlm) else vlm
    # replace() re-runs SmolVLAConfig.__post_init__, so lerobot's own checks apply to the merged config.
    return dataclasses.replace(base, **changes)


def _load_weights_leniently(policy: SmolVLAPolicy, weights_file: Path) -> list[str]:
    """Copy a checkpoint's weights into ``policy``; keep the fresh initialisation of layers whose shape changed.

    Returns the sorted state-dict names of the parameters left freshly initialised (every parameter of a layer
    with at least one reshaped parameter). Raises PolicyLoadError on any other
    mismatch (a key the checkpoint lacks, or one the policy does not have).
    """
    from safetensors.torch import load_file

    source = load_file(str(weights_file))
    target = policy.state_dict()
    legacy = sorted(k for k in source if k.startswith(_LEGACY_NORM_PREFIXES))
    if legacy:
        logger.warning(
            "ignoring %d legacy normalisation buffers in %s; the dataset's statistics are used",
            len(legacy),
            weights_file,
        )
    unexpected = sorted(k for k in source if k not in target and k not in legacy)
    # A layer with any reshaped parameter is re-initialised whole: a pretrained bias means nothing next to a
    # freshly initialised weight.
    reshaped_layers = {k.rpartition(".")[0] for k in source if k in target and source[k].shape != target[k].shape}
    unplanned = sorted(reshaped_layers - set(_RESHAPEABLE_LAYERS))
    if unplanned:
        raise PolicyLoadError(
            f"{weights_file} has other shapes than this SmolVLA in {unplanned[:4]}...: only the state and action "
            "projections may change shape; use the pretrained policy's own VLM backbone (drop --vlm-model)"
        )
    reinitialised = sorted(k for k in target if k.rpartition(".")[0] in reshaped_layers)
    loadable = {k: v for k, v in source.items() if k in target and k not in reinitialised}
    # safetensors stores one name per shared storage (tied weights); a name whose storage is shared with a
    # loaded name is loaded through it.
    by_storage: dict[tuple, list[str]] = {}
    for name, tensor in target.items():
        if tensor.numel():
            by_storage.setdefault((tensor.untyped_storage().data_ptr(), tensor.storage_offset()), []).append(name)
    covered = set(loadable)
    for names in by_storage.values():
        if covered.intersection(names):
            covered.update(names)
    missing = sorted(k for k in target if k not in covered and k not in reinitialised)
    if missing or unexpected:
        shown = ", ".join((missing + unexpected)[:6])
        raise PolicyLoadError(
            f"{weights_file} does not match this SmolVLA architecture: {len(missing)} missing and {len(unexpected)} "
            f"unexpected key(s) ({shown}...); was it saved with another lerobot version or VLM backbone (--vlm-model)?"
        )
    with torch.no_grad():
        policy.load_state_dict(loadable, strict=False)
    return reinitialised


def create_policy(inputs: PolicyInputs, options: PolicyConfig, dataset_stats: Mapping[str, Mapping[str, Any]],
                  device: str | torch.device = "auto", policy_path: str | None = None,
                  action_stats: Mapping[str, Any] | None = None) -> PolicyBundle:
    """Build a SmolVLA policy and its pre/post processors for an input contract.

    From scratch (``options.from_scratch``): a new ``SmolVLAConfig`` on the ``options.vlm_model`` backbone.
    Pretrained: ``policy_path``'s config with the contract's features, chunk size, padding widths and image size and
    the freezing options, and its weights loaded leniently (see :class:`PolicyBundle.reinitialised`).

    Args:
        inputs: what the policy reads (:class:`~behavior_smolvla.inputs.PolicyInputs`).
        options: the run's ``policy`` config section (``policy_path``, ``from_scratch``, ``vlm_model``,
            ``state_dim`` = SmolVLA's ``max_state_dim``, ``train_expert_only`` (None:
            :func:`resolve_train_expert_only`), ``freeze_vision_encoder``).
        dataset_stats: ``{"observation.state": {...}, "action": {...}}`` with float32 numpy arrays ``mean``,
            ``std`` (required), ``min``, ``max``, ``q01``, ``q99`` (optional) of shape ``[policy_state_dim]`` /
            ``[action_dim]``; the state stats must be those of the mapped state.
        device: where the policy goes (:func:`resolve_device`).
        policy_path: the pretrained policy to load instead of ``options.policy_path`` (a resumed run loads its own
            checkpoint's ``pretrained_model``); ignored from scratch.
        action_stats: statistics of the absolute action (float32 [A] each; :attr:`PolicyBundle.action_stats`);
            None = ``dataset_stats["action"]`` when those are absolute and global, else left unset.

    Returns:
        :class:`PolicyBundle` with the policy in training mode.

    Raises:
        ConfigError: invalid sizes or device, or conflicting options.
        DatasetError: statistics missing or of the wrong shape.
        PolicyLoadError: the pretrained policy or the VLM backbone cannot be found (e.g. a hub id while offline
            and not cached), is not a SmolVLA, or its weights do not fit apart from the reshaped layers.
        CheckpointError: a pretrained folder that is a checkpoint of this project whose ``config.json`` or
            ``model.safetensors`` differs from its manifest (``checkpoint.verify_weights``).
    """
    from lerobot.policies.smolvla import make_smolvla_pre_post_processors

    policy_path = policy_path or options.policy_path
    _validate_options(inputs, options, policy_path)
    stats = _policy_stats(dataset_stats, inputs)
    torch_device = resolve_device(device)
    reinitialised: list[str] = []
    if options.from_scratch:
        config = _scratch_config(inputs, options, torch_device)
        policy = _instantiate(config)
    else:
        folder = _resolve_pretrained_folder(policy_path)
        config = _pretrained_config(inputs, options, torch_device, folder, policy_path)
        policy = _instantiate(config)
        reinitialised = _load_weights_leniently(policy, folder / "model.safetensors")
        if reinitialised:
            logger.info("freshly initialised (shape changed): %s", ", ".join(reinitialised))
    policy.to(torch_device)
    policy.train()
    try:
        preprocessor, postprocessor = make_smolvla_pre_post_processors(config, dataset_stats=stats)
    except OSError as e:
        raise PolicyLoadError(
            f"cannot load the tokenizer of {config.vlm_model_name!r} ({type(e).__name__}); pass --vlm-model "
            "<local SmolVLM folder>"
        ) from e
    if action_stats is None and inputs.action_mode == "absolute" and inputs.action_norm == "global":
        action_stats = dataset_stats[ACTION]
    absolute = ({k: np.asarray(v, dtype=np.float32) for k, v in action_stats.items()}
                if action_stats is not None else None)
    return PolicyBundle(policy, preprocessor, postprocessor, inputs, reinitialised, action_stats=absolute)


def save_policy(
    bundle: PolicyBundle, directory: str | Path, extra_files: Mapping[str, str | bytes] | None = None
) -> Path:
    """Write a policy and its processors in lerobot's ``pretrained_model`` layout.

    Writes ``config.json``, ``model.safetensors``, ``policy_preprocessor.json``, ``policy_postprocessor.json``
    and the processors' state files (``policy_preprocessor_step_*_normalizer_processor.safetensors``, ...), plus
    ``extra_files`` (name -> text or bytes; e.g. ``train_config.yaml``). ``SmolVLAPolicy.from_pretrained`` and
    ``PolicyProcessorPipeline.from_pretrained`` read the result. Not atomic: ``checkpoint.py`` writes into a
    temporary folder and renames it.

    Args:
        bundle: the policy to save (unwrapped: not a DDP / accelerate wrapper).
        directory: created if needed; existing files of the same names are overwritten.
        extra_files: plain file names (no folders) -> content.

    Returns:
        ``directory`` as a Path.

    Raises:
        CheckpointError: an extra file name with a folder part or one that would overwrite lerobot's files.
    """
    directory = Path(directory)
    extra_files = dict(extra_files or {})
    for name in extra_files:
        if Path(name).name != name or name in (".", "..") or name in POLICY_FILES:
            raise CheckpointError(
                f"extra checkpoint file name {name!r} must be a plain file name not in {POLICY_FILES}"
            )
    directory.mkdir(parents=True, exist_ok=True)
    bundle.policy.save_pretrained(directory)
    bundle.preprocessor.save_pretrained(directory)
    bundle.postprocessor.save_pretrained(directory)
    for name, content in extra_files.items():
        path = directory / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return directory


def load_policy_bundle(
    path: str | Path,
    device: str | torch.device = "auto",
    tokenizer_name: str | None = None,
    vlm_model: str | None = None,
) -> PolicyBundle:
    """Load a checkpoint of this project for prediction: lerobot's own loaders for the policy and its processors,
    and the input contract saved beside them (``train_config.yaml``; older checkpoints are converted).

    Args:
        path: a run folder (its ``checkpoints/last``), a ``checkpoints/<step>`` folder or its ``pretrained_model``.
        device: where the policy and the pre-processor's output go (see :func:`resolve_device`).
        tokenizer_name: tokenizer for the pre-processor (hub id or local folder), overriding the saved name via
            the processor override ``tokenizer_processor.tokenizer_name``; None = ``vlm_model`` if given, else the
            run's local ``--vlm-model`` folder when it still exists, else the saved one.
        vlm_model: re-point the policy's VLM backbone (``vlm_model_name``) at another location of the same
            backbone, e.g. a local copy or a tiny VLM folder rebuilt elsewhere; None = the saved one.

    Returns:
        :class:`PolicyBundle` (``reinitialised`` empty, ``checkpoint`` and ``train_config`` set) with the policy in
        eval mode. The weights load strictly.

    Raises:
        CheckpointError: no checkpoint there, one of lerobot's files or ``train_config.yaml`` is missing, a file
            does not match the checkpoint's manifest (truncated, overwritten, edited: ``checkpoint.verify_checkpoint``),
            or its input contract is edited or unreadable. A checkpoint written before manifests loads with one
            "unverified" warning.
        PolicyLoadError: the config is not a SmolVLA one, the backbone or tokenizer cannot be loaded, or the
            weights do not match the architecture.
    """
    from behavior_smolvla.inputs import PolicyInputs
    from behavior_smolvla.policy import checkpoint as ckpt
    from lerobot.policies.smolvla import SmolVLAPolicy
    from lerobot.processor import PolicyProcessorPipeline
    from lerobot.processor.converters import (
        batch_to_transition,
        policy_action_to_transition,
        transition_to_batch,
        transition_to_policy_action,
    )

    checkpoint = ckpt.resolve_checkpoint(path)
    folder = checkpoint / ckpt.PRETRAINED_DIR
    train_config = ckpt.load_train_config(checkpoint)
    inputs = PolicyInputs.from_train_config(train_config, str(folder / ckpt.TRAIN_CONFIG_FILE))
    if tokenizer_name is None and vlm_model is None:
        run_vlm = ((train_config.get("run") or {}).get("policy") or {}).get("vlm_model")
        tokenizer_name = run_vlm if run_vlm and Path(run_vlm).is_dir() else None
    # resolve_checkpoint verified the folder (files parse and match the manifest; the contract is the recorded one)
    missing = [name for name in POLICY_FILES if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder} lacks {missing}; pass a complete pretrained_model folder")
    torch_device = resolve_device(device)
    config = _load_smolvla_config(folder, "the policy folder")
    config.device = str(torch_device)
    if vlm_model:
        config.vlm_model_name = str(Path(vlm_model).expanduser().resolve()) if _is_local(vlm_model) else vlm_model
    tokenizer = tokenizer_name or vlm_model
    if tokenizer and _is_local(tokenizer):
        tokenizer = str(Path(tokenizer).expanduser().resolve())
    try:
        policy = SmolVLAPolicy.from_pretrained(folder, config=config, strict=True)
    except OSError as e:
        raise PolicyLoadError(
            f"cannot load the VLM backbone {config.vlm_model_name!r} of {folder} ({type(e).__name__}); pass "
            "vlm_model=<local copy of that backbone>"
        ) from e
    except RuntimeError as e:  # load_state_dict(strict=True) mismatch
        raise PolicyLoadError(
            f"{folder / 'model.safetensors'} does not match its config.json ({str(e).splitlines()[0]})"
        ) from e
    pre_overrides: dict[str, Any] = {"device_processor": {"device": str(torch_device)}}
    if tokenizer:
        pre_overrides["tokenizer_processor"] = {"tokenizer_name": tokenizer}
    try:
        preprocessor = PolicyProcessorPipeline.from_pretrained(
            folder,
            config_filename="policy_preprocessor.json",
            overrides=pre_overrides,
            to_transition=batch_to_transition,
            to_output=transition_to_batch,
        )
    except OSError as e:
        raise PolicyLoadError(
            f"cannot load the tokenizer for {folder} ({type(e).__name__}); pass tokenizer_name=<local tokenizer folder>"
        ) from e
    postprocessor = PolicyProcessorPipeline.from_pretrained(
        folder,
        config_filename="policy_postprocessor.json",
        to_transition=policy_action_to_transition,
        to_output=transition_to_policy_action,
    )
    policy.eval()
    saved = train_config.get("action_stats")
    action_stats = ({k: np.asarray(v, dtype=np.float32) for k, v in saved.items()}
                    if isinstance(saved, Mapping) else None)
    return PolicyBundle(policy, preprocessor, postprocessor, inputs, [], checkpoint, train_config, action_stats)
