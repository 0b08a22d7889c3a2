"""A trained checkpoint, loaded for prediction: the one path evaluation and serving both use.

``load_checkpoint(path)`` reads a checkpoint written by ``smolvla-train`` and returns a :class:`CheckpointPolicy`
that knows everything needed to turn raw inputs into actions exactly as in training: the state map, the cameras and
their policy keys, the image size, the task strings and the normalisation (inside lerobot's pre/post processors).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from behavior_smolvla.policy import checkpoint as ckpt
from behavior_smolvla.errors import CheckpointError


@dataclass
class CheckpointPolicy:
    """A loaded checkpoint: lerobot SmolVLA + processors + the training-time data facts.

    Attributes:
        checkpoint: the checkpoint folder (``.../checkpoints/<step>``).
        bundle: ``policy.PolicyBundle`` (SmolVLAPolicy in eval mode, pre/post processors).
        train_config: the whole ``train_config.yaml`` (``run``, ``dataset``, ``state_map`` sections).
        state_map: the bound state map the policy was trained with (applied to raw proprioception).
        cameras: dataset camera keys in policy order; ``camera_map`` maps them to ``observation.images.cameraN``.
        image_size: square image side in pixels the policy was trained at.
        chunk_size, n_action_steps, action_dim: from the SmolVLA config.
        tasks: task strings seen in training; ``task_map``: dataset task_index (str) -> task string.
        device: where the model runs.
    """

    checkpoint: Path
    bundle: Any
    train_config: dict[str, Any]
    state_map: Any
    cameras: list[str]
    camera_map: dict[str, str]
    image_size: int
    chunk_size: int
    n_action_steps: int
    action_dim: int
    tasks: list[str]
    task_map: dict[str, str]
    device: torch.device

    @property
    def train_episodes(self) -> list[int]:
        return list(self.train_config["dataset"].get("train_episodes", []))

    def predict_chunk(self, batch: dict[str, Any], noise_seed: int | None = 0) -> np.ndarray:
        """Predict the action chunk for a batch of observations, unnormalised.

        Args:
            batch: dataset-style batch: each camera key (``self.cameras``) -> float32 [B, 3, H, W] in [0, 1];
                ``observation.state`` float32 [B, D] (already mapped by ``self.state_map``); ``task`` list[str] of B.
            noise_seed: seeds the flow-matching noise (float32 [B, chunk, max_action_dim], standard normal) so the
                prediction is repeatable; ``None`` draws from the global RNG.

        Returns:
            float32 [B, chunk_size, action_dim] actions in the dataset's units (radians, m/s, gripper command).
        """
        from behavior_smolvla.policy.smolvla import to_policy_batch

        policy = self.bundle.policy
        inputs = self.bundle.preprocessor(to_policy_batch(batch, self.camera_map))
        bsize = len(batch["task"])
        noise = None
        if noise_seed is not None:
            gen = torch.Generator(device="cpu").manual_seed(int(noise_seed))
            shape = (bsize, policy.config.chunk_size, policy.config.max_action_dim)
            noise = torch.randn(shape, generator=gen, dtype=torch.float32).to(self.device)
        with torch.inference_mode():
            actions = policy.predict_action_chunk(inputs, noise=noise)
        return self.bundle.postprocessor(actions).detach().to("cpu", torch.float32).numpy()


def load_checkpoint(path: str | Path, device: str = "auto", tokenizer_name: str | None = None) -> CheckpointPolicy:
    """Load a checkpoint of this project for prediction.

    Args:
        path: a run folder (uses ``checkpoints/last``), a ``checkpoints/<step>`` folder or its ``pretrained_model``.
        device: ``auto`` | ``cpu`` | ``cuda[:N]`` | ``mps``.
        tokenizer_name: override the tokenizer the preprocessor loads (a local folder when offline).

    Raises:
        CheckpointError: not a checkpoint, or not one of this project's (``train_config.yaml`` missing).
        PolicyLoadError: lerobot cannot load the policy or its backbone.
    """
    from behavior_smolvla.policy.smolvla import load_policy_bundle, resolve_device
    from behavior_smolvla.state_maps.maps import StateMap

    checkpoint = ckpt.resolve_checkpoint(path)
    config = ckpt.load_train_config(checkpoint)
    for section in ("run", "dataset", "state_map"):
        if section not in config:
            raise CheckpointError(
                f"{checkpoint / ckpt.PRETRAINED_DIR / ckpt.TRAIN_CONFIG_FILE}: no '{section}' section; "
                "the checkpoint was written by another tool or an older version: retrain or re-export it"
            )
    dev = resolve_device(device)
    vlm = config["run"]["policy"].get("vlm_model")
    local_vlm = vlm if vlm and Path(vlm).is_dir() else None
    bundle = load_policy_bundle(
        checkpoint / ckpt.PRETRAINED_DIR, device=str(dev), tokenizer_name=tokenizer_name or local_vlm
    )
    bundle.policy.eval()
    data = config["dataset"]
    state_map = StateMap.from_dict(config["state_map"]).bind(data["state_dim"])
    cfg = bundle.policy.config
    return CheckpointPolicy(
        checkpoint=checkpoint,
        bundle=bundle,
        train_config=config,
        state_map=state_map,
        cameras=list(data["cameras"]),
        camera_map=dict(data["camera_map"]),
        image_size=int(data["image_size"]),
        chunk_size=int(cfg.chunk_size),
        n_action_steps=int(cfg.n_action_steps),
        action_dim=int(cfg.action_feature.shape[0]),
        tasks=list(data.get("tasks", [])),
        task_map=dict(data.get("task_map", {})),
        device=dev,
    )
