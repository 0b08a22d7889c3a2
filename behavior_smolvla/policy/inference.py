"""How an action chunk is drawn from SmolVLA: the inference strategy (:class:`Inference`), its one owner.

SmolVLA is a flow-matching policy: a chunk is the Euler integration (``num_steps`` = 10 steps) of a learned velocity
field from an initial noise ``x_1`` (float32 [B, chunk_size, max_action_dim]) to the actions ``x_0``. One draw from
standard-normal noise is one random sample of the policy's action distribution, not its most likely chunk; offline
scores of a single draw are therefore noisy. Two strategies replace it:

- ``noise="zero"``: start from ``x_1 = 0``, the centre of the noise distribution. Deterministic, one model call.
- ``noise="sample", num_samples=K``: the mean of K draws (K = 1: one draw, SmolVLA's own behaviour).

Evaluation (``smolvla-eval --noise --num-samples``), validation during training (``--eval-noise
--eval-num-samples``) and serving (``smolvla-serve --noise --num-samples``) all pass an :class:`Inference` to
``PolicyBundle.predict_chunk``; the default (the dataclass defaults, nowhere else) is the mean of
:data:`DEFAULT_NUM_SAMPLES` draws: in ``bench/learning.py`` (real G1 episodes, 3 seeds) it had the lowest whole-chunk
error in every run (6 runs), 2-7% below zero noise and ~2% below one draw, for ~1.4x one draw's CPU on the tiny model
(the prefix is encoded once). Zero noise is deterministic and was no better than one draw there.

Noise seeds: :meth:`Inference.initial_noise` draws float32 [K, B, chunk_size, max_action_dim] from
``torch.Generator("cpu").manual_seed(noise_seed)`` in one ``torch.randn`` call (the global CPU RNG when the seed is
None); draw k of frame b starts from ``noise[k, b]``, so ``predict_action_chunk(batch, noise=noise[k])`` reproduces
draw k alone. K = 1 with a seed gives the same noise as before this module existed (``randn([B, C, D])``).

The K draws are one batched model call (:func:`sample_chunks`): the prefix (images, language, state) is encoded
once for B frames and its key/value cache repeated to B * K rows, then lerobot's own denoising steps run on the
B * K noises. Nothing of the model is re-implemented: the orchestration mirrors lerobot 0.6.1
``SmolVLAPolicy.predict_action_chunk`` / ``_get_action_chunk`` and ``VLAFlowMatching.sample_actions``
(``lerobot/policies/smolvla/modeling_smolvla.py``) step by step and calls their functions.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from behavior_smolvla.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from lerobot.policies.smolvla import SmolVLAPolicy

__all__ = ["DEFAULT_NUM_SAMPLES", "NOISE_KINDS", "Inference", "check_inference", "sample_chunks"]

DEFAULT_NUM_SAMPLES = 8
"""Draws averaged by default (``bench/learning.py``, issue 18: the mean of 8 scored best in every seed)."""
NOISE_KINDS = ("zero", "sample")
"""``zero``: the initial noise is all zeros (deterministic); ``sample``: standard-normal draws."""


def check_inference(noise: Any, num_samples: Any, noise_flag: str = "--noise",
                    samples_flag: str = "--num-samples") -> None:
    """Refuse a strategy that means nothing, naming the flag.

    Raises:
        ConfigError: ``noise`` not in :data:`NOISE_KINDS`; ``num_samples`` not a whole number >= 1; ``num_samples``
            > 1 with zero noise (every draw would be the same chunk).
    """
    if noise not in NOISE_KINDS:
        raise ConfigError(f"{noise_flag} {noise!r}: use zero (deterministic, from zero initial noise) or sample "
                          f"(random draws, averaged over {samples_flag})")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"{samples_flag} {num_samples!r}: must be a whole number >= 1 (draws averaged per chunk)")
    if noise == "zero" and num_samples != 1:
        raise ConfigError(f"{samples_flag} {num_samples} with {noise_flag} zero: zero noise gives the same chunk at "
                          f"every draw; use {noise_flag} sample to average {num_samples} draws, or {samples_flag} 1")


@dataclass(frozen=True)
class Inference:
    """The inference strategy of a flow-matching chunk (see the module docstring). Validated on construction.

    Attributes:
        noise: ``"zero"`` (initial noise all zeros) or ``"sample"`` (standard-normal draws).
        num_samples: draws averaged per chunk, >= 1; must be 1 with zero noise.

    Raises:
        ConfigError: a bad value (:func:`check_inference`, naming ``--noise`` / ``--num-samples``; use
            :meth:`from_flags` for other flag names).
    """

    noise: str = "sample"
    num_samples: int = DEFAULT_NUM_SAMPLES

    def __post_init__(self) -> None:
        check_inference(self.noise, self.num_samples)

    @classmethod
    def from_flags(cls, noise: str | None, num_samples: int | None, noise_flag: str = "--noise",
                   samples_flag: str = "--num-samples") -> Inference:
        """The strategy given by two flags; a flag not given (None) takes the default, except that ``--noise zero``
        alone means one chunk (K draws of zero noise would all be the same). Errors name these flags."""
        default = cls()
        noise = default.noise if noise is None else noise
        if num_samples is None:
            num_samples = 1 if noise == "zero" else default.num_samples
        check_inference(noise, num_samples, noise_flag, samples_flag)
        return cls(noise, num_samples)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Inference:
        """Inverse of :meth:`to_dict`."""
        return cls(values["noise"], int(values["num_samples"]))

    def to_dict(self) -> dict[str, Any]:
        """``{"noise": ..., "num_samples": ..., "label": describe()}`` (JSON/YAML-safe; reports, metadata)."""
        return {"noise": self.noise, "num_samples": self.num_samples, "label": self.describe()}

    def describe(self) -> str:
        """A short label: ``zero noise``, ``one draw``, ``mean of 8 draws``."""
        if self.noise == "zero":
            return "zero noise"
        return "one draw" if self.num_samples == 1 else f"mean of {self.num_samples} draws"

    def initial_noise(self, batch_size: int, chunk_size: int, action_dim: int, noise_seed: int | None,
                      device: torch.device | str = "cpu") -> torch.Tensor:
        """The initial noises of one prediction: float32 [K, B, chunk_size, action_dim] on ``device``.

        Args:
            batch_size: B, frames predicted together.
            chunk_size: the policy's chunk size.
            action_dim: SmolVLA's padded action width (``config.max_action_dim``, 32 in lerobot 0.6.1).
            noise_seed: seeds a CPU ``torch.Generator`` that draws all K * B noises in one ``torch.randn`` call;
                None draws from the global CPU RNG. Ignored for zero noise.
            device: where the tensor goes.

        Returns:
            zeros [1, B, C, D] for ``noise="zero"``; standard normal [K, B, C, D] for ``noise="sample"`` (draw k =
            slice k).
        """
        import torch

        if self.noise == "zero":
            return torch.zeros((1, batch_size, chunk_size, action_dim), dtype=torch.float32, device=device)
        generator = None if noise_seed is None else torch.Generator(device="cpu").manual_seed(int(noise_seed))
        shape = (self.num_samples, batch_size, chunk_size, action_dim)
        return torch.randn(shape, generator=generator, dtype=torch.float32).to(device)


def sample_chunks(policy: SmolVLAPolicy, batch: dict[str, Any], noise: torch.Tensor) -> torch.Tensor:
    """K flow-matching draws for each of B frames, the prefix encoded once: normalised actions [K, B, chunk, A].

    Mirrors lerobot 0.6.1 ``modeling_smolvla.py``: ``SmolVLAPolicy.predict_action_chunk`` (``eval()``,
    ``_prepare_batch``), ``_get_action_chunk`` (``prepare_images``, ``prepare_state``, the language tokens, unpad to
    the action dim, ``_pi_aloha_encode_actions``) and ``VLAFlowMatching.sample_actions`` (``embed_prefix``, the
    prefix's 2-D attention mask and positions, ``vlm_with_expert.forward`` filling the key/value cache,
    ``euler_integrate`` over ``denoise_step``). One step is added: the prefix cache (a transformers ``DynamicCache``)
    and pad mask are repeated K times per frame (``batch_repeat_interleave``; row ``b * K + k``) before
    denoising, so the vision encoder and VLM run once for B frames and only the action expert runs on B * K rows.
    ``predict_action_chunk``'s observation queue is not touched (it feeds ``select_action`` only, unused here).
    Real-time chunking (RTC) guidance is not applied: this project never enables it.

    Args:
        policy: lerobot's ``SmolVLAPolicy``.
        batch: the pre-processor's output for B frames (normalised state, language tokens, images on the device).
        noise: float32 [K, B, chunk_size, max_action_dim] on the policy's device (:meth:`Inference.initial_noise`).

    Returns:
        float32 [K, B, chunk_size, action_dim], draw k of frame b at ``[k, b]``; normalised (pass it through the
        post-processor). Call under ``torch.inference_mode()`` / ``no_grad``.

    Raises:
        ConfigError: the policy's config has ``use_cache`` off (lerobot 0.6.1 cannot denoise without the prefix
            cache either) or real-time chunking on.
    """
    import torch
    from lerobot.policies.smolvla.modeling_smolvla import (
        OBS_LANGUAGE_ATTENTION_MASK,
        OBS_LANGUAGE_TOKENS,
        euler_integrate,
        make_att_2d_masks,
    )

    k, b = noise.shape[:2]
    model = policy.model
    if not policy.config.use_cache or model._rtc_enabled():
        raise ConfigError("--num-samples > 1 needs SmolVLA's prefix cache (config.json use_cache: true) and no "
                          "real-time chunking (rtc_config); use --num-samples 1")
    policy.eval()
    batch = policy._prepare_batch(dict(batch))
    images, img_masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)
    prefix_embs, prefix_pad_masks, prefix_att_masks = model.embed_prefix(
        images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state=state)
    prefix_att_2d_masks = make_att_2d_masks(prefix_pad_masks, prefix_att_masks)
    prefix_position_ids = torch.cumsum(prefix_pad_masks, dim=1) - 1
    _, cache = model.vlm_with_expert.forward(attention_mask=prefix_att_2d_masks, position_ids=prefix_position_ids,
                                             past_key_values=None, inputs_embeds=[prefix_embs, None],
                                             use_cache=True)
    cache.batch_repeat_interleave(k)
    pad_masks = prefix_pad_masks.repeat_interleave(k, dim=0)
    x_1 = noise.transpose(0, 1).reshape(b * k, *noise.shape[2:])  # row b * K + k, the cache's order

    actions = euler_integrate(
        lambda x_t, t: model.denoise_step(x_t=x_t, prefix_pad_masks=pad_masks, past_key_values=cache, timestep=t),
        x_1, model.config.num_steps, rtc_processor=model.rtc_processor, rtc_enabled=False)
    actions = actions[:, :, : policy.config.action_feature.shape[0]]
    if policy.config.adapt_to_pi_aloha:
        actions = policy._pi_aloha_encode_actions(actions)
    return actions.reshape(b, k, *actions.shape[1:]).transpose(0, 1)
