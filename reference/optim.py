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
    State per parameter: ``step`` (int), ``exp_avg`` (m), ``exp_avg_sq`` (v). ``state_dict()`` /
    ``load_state_dict()`` are torch.optim.Optimizer's, so a run resumes exactly.
    """

    def __init__(self, params, lr: float, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        checks.number_in_range("lr", lr, 0.0, None)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        for i, beta in enumerate(betas):
            checks.number_in_range(f"betas[{i}]", beta, 0.0, 1.0, high_inclusive=False)
        checks.number_in_range("eps", eps, 0.0, None, low_inclusive=False)
        checks.number_in_range("weight_decay", weight_decay, 0.0, None)
        defaults = dict(lr=float(lr), betas=(float(betas[0]), float(betas[1])), eps=float(eps),
                        weight_decay=float(weight_decay))
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """One AdamW update of every parameter that has a gradient; returns ``closure()`` if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p)     # m
                    state["exp_avg_sq"] = torch.zeros_like(p)  # v
                state["step"] += 1
                t = state["step"]
                m, v = state["exp_avg"], state["exp_avg_sq"]
                p.mul_(1.0 - lr * wd)                          # decoupled weight decay first
                m.mul_(beta1).add_(g, alpha=1.0 - beta1)
                v.mul_(beta2).addcmul_(g, g, value=1.0 - beta2)
                m_hat = m / (1.0 - beta1 ** t)
                v_hat = v / (1.0 - beta2 ** t)
                p.sub_(lr * m_hat / (v_hat.sqrt() + eps))
        return loss

    def load_state_dict(self, state_dict: dict) -> None:
        """torch.optim.Optimizer.load_state_dict; ``betas`` come back as a tuple (JSON gives lists)."""
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            group["betas"] = tuple(group["betas"])
        for state in self.state.values():
            if "step" in state:
                state["step"] = int(state["step"])


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW param groups: ``[{"params": decay, "weight_decay": weight_decay},
    {"params": no_decay, "weight_decay": 0.0}]``.

    decay: every parameter with 2 or more dims that is not an embedding table (the weight matrices
    of the Linear layers). no_decay: everything else (biases, norm gains, the token embedding - also
    the tied ``lm_head`` - and learned position embeddings). Every parameter appears exactly once,
    in ``model.parameters()`` order.
    """
    checks.number_in_range("weight_decay", weight_decay, 0.0, None)
    tables = {id(p) for m in model.modules() if _is_embedding(m) for p in m.parameters(recurse=False)}
    decay, no_decay = [], []
    for p in model.parameters():  # shared (tied) parameters are listed once
        if p.dim() >= 2 and id(p) not in tables:
            decay.append(p)
        else:
            no_decay.append(p)
    return [{"params": decay, "weight_decay": float(weight_decay)},
            {"params": no_decay, "weight_decay": 0.0}]


def _is_embedding(module: nn.Module) -> bool:
    """Token or learned position embedding tables: looked up by id, never multiplied."""
    kinds = [nn.Embedding]
    try:
        from .embedding import TokenEmbedding
        kinds.append(TokenEmbedding)
    except ImportError:
        pass
    try:
        from .positional import LearnedPositionalEmbedding
        kinds.append(LearnedPositionalEmbedding)
    except ImportError:
        pass
    return isinstance(module, tuple(kinds))


def clip_grad_norm(parameters, max_norm: float) -> float:
    """Scale all gradients by ``max_norm / (N + 1e-6)`` when their global L2 norm ``N > max_norm``.

    ``parameters``: a tensor or an iterable of tensors (those without ``.grad`` are skipped).
    Returns ``N``, the norm *before* clipping, as a float (0.0 when no gradient exists).
    """
    checks.number_in_range("max_norm", max_norm, 0.0, None, low_inclusive=False)
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return 0.0
    norms = torch.stack([g.detach().double().norm(2).to(grads[0].device) for g in grads])  # (n_tensors,)
    total = float(norms.norm(2))                                   # sqrt(sum of all squared entries)
    if total > max_norm:
        coef = max_norm / (total + CLIP_EPS)
        for g in grads:
            g.mul_(coef)
    return total


def lr_schedule(step: int, max_lr: float, min_lr: float, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to ``max_lr``, cosine decay to ``min_lr`` at ``total_steps``, then ``min_lr``.

    See the module docstring for the exact formula. Errors: ``step``/``warmup_steps`` negative,
    ``total_steps < 1``, ``warmup_steps > total_steps``, ``max_lr < 0``, ``min_lr`` outside ``[0, max_lr]``.
    """
    checks.non_negative_int("step", step)
    checks.non_negative_int("warmup_steps", warmup_steps)
    checks.positive_int("total_steps", total_steps)
    checks.number_in_range("max_lr", max_lr, 0.0, None)
    checks.number_in_range("min_lr", min_lr, 0.0, None)
    if min_lr > max_lr:
        raise ValueError(f"min_lr must be <= max_lr ({max_lr}), got {min_lr}")
    if warmup_steps > total_steps:
        raise ValueError(f"warmup_steps must be <= total_steps ({total_steps}), got {warmup_steps}")
    if step < warmup_steps:
        return max_lr * (step + 1) / warmup_steps
    if step >= total_steps:
        return float(min_lr)
    progress = (step - warmup_steps) / (total_steps - warmup_steps)  # in [0, 1)
    return min_lr + (max_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
