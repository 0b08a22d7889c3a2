"""An exponential moving average (EMA) of a model's trainable weights, the weights a checkpoint serves.

After every optimizer step (the k-th update, k = 0, 1, 2, ...), for every trainable parameter ``p`` and its fp32
shadow ``s``::

    d_k = min(D, (1 + k) / (10 + k))
    s  <- d_k * s + (1 - d_k) * p          (torch.lerp(s, p, 1 - d_k))

``D`` is ``--ema-decay`` (``optim.ema_decay``). The warm-up ``(1 + k) / (10 + k)`` (0.1 at the first update, 0.5 at
the 9th, 0.9 at the 81st) keeps the random or pretrained starting weights from dominating the average of a short
run; it is the ``num_updates`` rule of TensorFlow's ``tf.train.ExponentialMovingAverage``, also used by diffusers'
``EMAModel`` (without ``use_ema_warmup``) and latent-diffusion's ``LitEma``. With the decay at ``D`` the average
spans about ``1 / (1 - D)`` steps.

Only parameters with ``requires_grad`` are averaged: frozen ones (SmolVLA's VLM, ~350M parameters at real size)
never change, so the model's own copy already is their average. The shadow is fp32 whatever the parameters' dtype.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

WARMUP_OFFSET = 10
"""``(1 + k) / (WARMUP_OFFSET + k)``: the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=k)``."""


def ema_decay_at(decay: float, updates: int) -> float:
    """The decay used by update number ``updates`` (0 for the first): ``min(decay, (1 + k) / (10 + k))``."""
    return min(decay, (1 + updates) / (WARMUP_OFFSET + updates))


class EMA:
    """The EMA of a module's trainable parameters (fp32 shadows on the parameters' devices).

    Args:
        module: the model (the unwrapped one under DDP: its parameters are the synchronised weights).
        decay: ``D`` in [0, 1) (0 makes the shadow follow the weights exactly).
        updates: updates already made (``k`` of the next update; a resumed run passes the saved count).

    Attributes:
        names: the trainable parameters' names in ``module.named_parameters()`` order.
        shadow: float32 tensors, one per name, shaped like the parameter.
        updates: updates made so far (saved as ``ema_steps`` in ``training_step.json``).
    """

    def __init__(self, module: torch.nn.Module, decay: float, updates: int = 0) -> None:
        if not 0 <= decay < 1:
            raise ValueError(f"EMA decay {decay}: must be in [0, 1)")
        self.decay = float(decay)
        self.updates = int(updates)
        named = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
        self.names = [n for n, _ in named]
        self._params = [p for _, p in named]
        self.shadow = [p.detach().to(torch.float32, copy=True) for p in self._params]

    @torch.no_grad()
    def update(self) -> float:
        """Move the shadow towards the current weights (call once per optimizer step); returns the decay used."""
        d = ema_decay_at(self.decay, self.updates)
        # .float() is the parameter itself when it is fp32 (no copy); bf16/fp16 weights are widened first.
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in self._params], 1.0 - d)
        self.updates += 1
        return d

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Inside the block the module's trainable parameters hold the averaged weights (cast to their dtype); on
        exit the training weights are put back bit for bit (from a copy taken on entry), also after an error."""
        with torch.no_grad():
            raw = [p.detach().clone() for p in self._params]
            for p, s in zip(self._params, self.shadow):
                p.copy_(s)
        try:
            yield
        finally:
            with torch.no_grad():
                for p, r in zip(self._params, raw):
                    p.copy_(r)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{name: shadow}``: the averaged weights (float32; the tensors themselves, not copies)."""
        return dict(zip(self.names, self.shadow))

    def trained_state_dict(self) -> dict[str, torch.Tensor]:
        """``{name: parameter}``: the training weights of the averaged parameters (detached, not copies; outside
        :meth:`applied`)."""
        return {n: p.detach() for n, p in zip(self.names, self._params)}
