"""Optimisation: AdamW (Loshchilov & Hutter, 2019), parameter groups, gradient clipping, LR schedule.

AdamW, for each parameter ``p`` with gradient ``g`` at step ``t = 1, 2, ...``::

    p   = p - lr * wd * p                      decoupled weight decay, BEFORE the Adam update
    m   = beta1 * m + (1 - beta1) * g          first moment (exp_avg)
    v   = beta2 * v + (1 - beta2) * g^2        second moment (exp_avg_sq)
    m^  = m / (1 - beta1^t)                    bias corrections
    v^  = v / (1 - beta2^t)
    p   = p - lr * m^ / (sqrt(v^) + eps)

exactly as ``torch.optim.AdamW`` (the spec's oracle). Weight decay is *decoupled*: it shrinks the
weights directly and never enters ``m`` or ``v`` (adding ``wd * p`` to the gradient is L2
regularisation, i.e. Adam, not AdamW).

``param_groups(model, wd)`` decays only the weight matrices; biases, norm gains and embedding tables
(the token embedding, which a tied ``lm_head`` shares, and learned position embeddings) are not decayed.

``clip_grad_norm(parameters, max_norm)``: the global L2 norm ``N`` of all gradients together; when
``N > max_norm`` every gradient is scaled by ``max_norm / (N + 1e-6)``. Returns ``N`` (before clipping).

``lr_schedule(step, max_lr, min_lr, warmup_steps, total_steps)`` (``step`` counts from 0)::

    step <  warmup_steps:           max_lr * (step + 1) / warmup_steps          linear warmup
    warmup_steps <= step < total:   min_lr + (max_lr - min_lr) * (1 + cos(pi * progress)) / 2,
                                    progress = (step - warmup_steps) / (total_steps - warmup_steps)
    step >= total_steps:            min_lr

so ``lr(warmup_steps - 1) == lr(warmup_steps) == max_lr`` and ``lr(total_steps) == min_lr``.

Write the update with tensor operations: ``torch.optim.AdamW`` and ``torch.nn.utils.clip_grad_norm_``
are the spec's oracles. Spec: ``pytest --impl kata spec_tests/test_optim.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from . import checks

CLIP_EPS = 1e-6  # added to the norm in the clipping coefficient, as torch.nn.utils.clip_grad_norm_


class AdamW(torch.optim.Optimizer):
    """AdamW with decoupled weight decay; the update is written out with tensor operations.

    ``params``: an iterable of parameters or of param-group dicts (``{"params": [...], "weight_decay": 0.0}``).
    ``torch.optim.Optimizer.__init__(params, defaults)`` builds ``self.param_groups`` and ``self.state``;
    ``defaults = dict(lr=..., betas=(b1, b2), eps=..., weight_decay=...)``.
    State per parameter (``self.state[p]``): ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v), created
    at the parameter's first step. ``state_dict()`` is torch.optim.Optimizer's.

    Errors: ``checks.number_in_range("lr", lr, 0.0, None)``; ``betas`` a pair, each
    ``checks.number_in_range(f"betas[{i}]", beta, 0.0, 1.0, high_inclusive=False)``;
    ``eps > 0`` (``low_inclusive=False``); ``weight_decay >= 0``.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        raise NotImplementedError("AdamW.__init__: check the hyperparameters, then super().__init__(params, defaults)")

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW update of every parameter that has a gradient (skip ``p.grad is None``)."""
        raise NotImplementedError("AdamW.step: decay p by (1 - lr*wd), update m and v, bias-correct, step")

    def load_state_dict(self, state_dict: dict) -> None:
        """``super().load_state_dict(state_dict)``, then make each group's ``betas`` a tuple again
        (a checkpoint stored as JSON gives lists) and each state's ``step`` an int."""
        raise NotImplementedError("AdamW.load_state_dict: super().load_state_dict, then betas -> tuple")


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW param groups: ``[{"params": decay, "weight_decay": weight_decay},
    {"params": no_decay, "weight_decay": 0.0}]``.

    decay: every parameter with 2 or more dims that is not an embedding table (the weight matrices
    of the Linear layers). no_decay: everything else (biases, norm gains, the token embedding - also
    the tied ``lm_head`` - and learned position embeddings). Every parameter appears exactly once,
    in ``model.parameters()`` order (it lists a shared parameter once). Embedding tables: the
    parameters of ``nn.Embedding``, ``embedding.TokenEmbedding`` and ``positional.LearnedPositionalEmbedding``
    modules. Error: ``checks.number_in_range("weight_decay", weight_decay, 0.0, None)``.
    """
    raise NotImplementedError("param_groups: matrices that are not embedding tables decay; the rest does not")


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Scale all gradients by ``max_norm / (N + 1e-6)`` when their global L2 norm ``N > max_norm``.

    ``parameters``: a tensor or an iterable of tensors (those without ``.grad`` are skipped).
    ``N = sqrt(sum over every gradient entry of g^2)`` - one norm over all tensors together.
    Returns ``N``, the norm *before* clipping, as a float (0.0 when no gradient exists).
    Error: ``max_norm <= 0`` -> ``checks.number_in_range("max_norm", max_norm, 0.0, None, low_inclusive=False)``.
    """
    raise NotImplementedError("clip_grad_norm: global norm of all grads; scale them all when it is too big")


def lr_schedule(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to ``max_lr``, cosine decay to ``min_lr`` at ``total_steps``, then ``min_lr``.

    See the module docstring for the exact formula. Errors (ValueError/TypeError naming the argument):
    ``step``/``warmup_steps`` negative, ``total_steps < 1``, ``warmup_steps > total_steps``,
    ``max_lr < 0``, ``min_lr`` outside ``[0, max_lr]``.
    """
    raise NotImplementedError("lr_schedule: max_lr*(step+1)/warmup, then cosine to min_lr, then min_lr")
