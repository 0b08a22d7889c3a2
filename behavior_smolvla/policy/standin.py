"""A full-size stand-in for ``lerobot/smolvla_base``, built offline with random weights.

Real users fine-tune ``lerobot/smolvla_base`` (~450 M parameters), which cannot be downloaded on machines without
network access. :func:`build_smolvla_base_standin` writes a folder with the same architecture, so that every path
that only matters at that size (widening the state projection of a pretrained checkpoint, memory with three 512 px
cameras, ~2 GB checkpoints, bf16 on CUDA, keeping a GPU fed) can be exercised and measured::

    OUT/
      vlm/                  SmolVLM2-500M-shaped backbone (config, processor, tokenizer; no weights), see
                            :func:`behavior_smolvla.policy.backbone.build_smolvlm2_500m_standin`
      pretrained_model/     lerobot's layout: config.json (smolvla_base's published config, vlm_model_name -> vlm/)
                            and model.safetensors (random float32 weights)
      standin.json          what was built: seed, parameter counts, lerobot version

Use it exactly as the real checkpoint: ``smolvla-train --policy-path OUT/pretrained_model ...``.

The SmolVLA options are those of https://huggingface.co/lerobot/smolvla_base/blob/main/config.json (see
:data:`SMOLVLA_BASE_CONFIG`); the sizes they imply (16 of the VLM's 32 text layers, an action expert 0.75 x 960 =
720 wide with cross-attention and self-attention every second layer, chunk 50, 32-dim padded state and action)
give ~450 M parameters of which ~100 M train with the VLM frozen, as the SmolVLA paper (arXiv 2506.01844) states.
Two deliberate differences from the hosted folder: ``load_vlm_weights`` is false (there are no SmolVLM2 weights to
load; lerobot then builds the VLM in float32, where the real checkpoint's VLM is loaded in bfloat16), and the
backbone's tokenizer is the tiny word-level one (ids fit SmolVLM2's 49,280-row embedding).

Command line: ``python -m behavior_smolvla.policy.standin OUT [--seed N]`` (prints the folder and the counts).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from behavior_smolvla.errors import PolicyLoadError

__all__ = ["SMOLVLA_BASE_CONFIG", "STANDIN_FORMAT", "build_smolvla_base_standin", "count_parameters"]

STANDIN_FORMAT = 1
"""Version of the folder layout; written into ``standin.json`` so a stale folder is detected."""

SMOLVLA_BASE_CONFIG: dict[str, Any] = {
    "chunk_size": 50,
    "n_action_steps": 50,
    "max_state_dim": 32,
    "max_action_dim": 32,
    "resize_imgs_with_padding": (512, 512),
    "tokenizer_max_length": 48,
    "num_steps": 10,
    "freeze_vision_encoder": True,
    "train_expert_only": True,
    "train_state_proj": True,
    "attention_mode": "cross_attn",
    "prefix_length": 0,
    "pad_language_to": "max_length",
    "num_expert_layers": 0,
    "num_vlm_layers": 16,
    "self_attn_every_n_layers": 2,
    "expert_width_multiplier": 0.75,
    "min_period": 4e-3,
    "max_period": 4.0,
}
"""SmolVLA options of ``lerobot/smolvla_base``'s config.json (the hosted file; most equal lerobot 0.6.1's
``SmolVLAConfig`` defaults, ``pad_language_to`` / ``prefix_length`` / ``num_expert_layers`` do not)."""

_CAMERAS = ("observation.images.camera1", "observation.images.camera2", "observation.images.camera3")
# smolvla_base's input features: three 256 x 256 cameras (resized with padding to 512) and a 6-dim state;
# 6-dim actions (SO-100 arms, the community datasets it was pretrained on).
_CAMERA_SHAPE = (3, 256, 256)
_STATE_DIM = _ACTION_DIM = 6
_MARKER = "standin.json"


def count_parameters(module) -> dict[str, int]:
    """``{"params_total": N, "params_trainable": M}`` of a torch module (each shared tensor counted once)."""
    seen: set[int] = set()
    total = trainable = 0
    for p in module.parameters():  # parameters() already yields a tied parameter once
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return {"params_total": total, "params_trainable": trainable}


def _config(vlm: Path):
    from lerobot.configs import FeatureType, PolicyFeature
    from lerobot.policies.smolvla import SmolVLAConfig

    inputs = {key: PolicyFeature(type=FeatureType.VISUAL, shape=_CAMERA_SHAPE) for key in _CAMERAS}
    inputs["observation.state"] = PolicyFeature(type=FeatureType.STATE, shape=(_STATE_DIM,))
    outputs = {"action": PolicyFeature(type=FeatureType.ACTION, shape=(_ACTION_DIM,))}
    return SmolVLAConfig(
        input_features=inputs,
        output_features=outputs,
        device="cpu",
        vlm_model_name=str(vlm),
        load_vlm_weights=False,
        **SMOLVLA_BASE_CONFIG,
    )


def _params(seed: int) -> dict:
    import lerobot

    return {"format": STANDIN_FORMAT, "seed": seed, "lerobot": lerobot.__version__}


def build_smolvla_base_standin(out_dir: str | Path, *, seed: int = 0) -> Path:
    """Write (or reuse) a random SmolVLA with ``lerobot/smolvla_base``'s architecture and config.

    Peak memory ~4 GB (the float32 model and its serialisation); ~1.8 GB on disk; tens of seconds on 2 CPU cores.

    Args:
        out_dir: folder to create (layout in the module docstring). Reused untouched when it already holds a
            stand-in built with the same seed, format and lerobot version; built in a temporary sibling and
            renamed into place, so an interrupted build leaves nothing half-written under ``out_dir``. The
            saved ``vlm_model_name`` is the absolute path of ``out_dir/vlm``: after moving the folder, pass
            ``--vlm-model NEW/vlm``.
        seed: ``torch.manual_seed`` before the weights are initialised (same seed, same weights).

    Returns:
        ``out_dir/pretrained_model`` as an absolute :class:`~pathlib.Path` (what ``--policy-path`` takes).

    Raises:
        PolicyLoadError: ``out_dir`` exists and holds something else (another stand-in or other files).
    """
    import torch
    from lerobot.policies.smolvla import SmolVLAPolicy

    from behavior_smolvla.policy.backbone import build_smolvlm2_500m_standin

    folder = Path(out_dir).expanduser().resolve()
    params = _params(seed)
    marker = folder / _MARKER
    if marker.is_file():
        existing = json.loads(marker.read_text())
        if {k: existing.get(k) for k in params} != params:
            raise PolicyLoadError(
                f"{folder} holds a smolvla_base stand-in built with {existing}, not {params}; delete it or choose "
                "another folder"
            )
        return folder / "pretrained_model"
    if folder.exists() and any(folder.iterdir()):
        raise PolicyLoadError(f"{folder} exists and is not a smolvla_base stand-in; choose an empty or new folder")

    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the published folder should read like any other
    try:
        # The config names the backbone by its final absolute path; it is read from staging until the rename.
        build_smolvlm2_500m_standin(staging / "vlm")
        torch.manual_seed(seed)
        config = _config(staging / "vlm")
        policy = SmolVLAPolicy(config)
        counts = count_parameters(policy)
        policy.config.vlm_model_name = str(folder / "vlm")
        policy.save_pretrained(staging / "pretrained_model")
        del policy
        (staging / _MARKER).write_text(json.dumps({**params, **counts}, indent=2) + "\n")
        if folder.exists():
            folder.rmdir()  # empty (checked above)
        os.rename(staging, folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / "pretrained_model"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m behavior_smolvla.policy.standin",
        description="Save a random SmolVLA with lerobot/smolvla_base's architecture and config (offline).",
    )
    parser.add_argument("out_dir", help="folder to create (reused when it already holds the same stand-in)")
    parser.add_argument("--seed", type=int, default=0, help="weight initialisation seed (0)")
    args = parser.parse_args(argv)
    try:
        pretrained = build_smolvla_base_standin(args.out_dir, seed=args.seed)
    except PolicyLoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    info = json.loads((pretrained.parent / _MARKER).read_text())
    print(json.dumps({"policy_path": str(pretrained), **info}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
