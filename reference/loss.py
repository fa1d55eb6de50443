"""Cross-entropy of next-token predictions, written from primitives (numerically stable).

For logits ``z`` over ``V`` classes and a target class ``y``, the negative log-likelihood is::

    log_softmax(z)_i = z_i - logsumexp(z)
    logsumexp(z)     = m + log(sum_j exp(z_j - m)),      m = max_j z_j     (no overflow: every
                                                                            exponent is <= 0)
    nll(z, y)        = logsumexp(z) - z_y

Shapes: ``logits (..., V)``, ``targets (...)`` (long). Targets equal to ``ignore_index`` (default
-100, the padding convention) contribute nothing::

    "none":  nll per position, (...), 0 where ignored
    "sum":   sum of nll over kept positions
    "mean":  sum / (number of kept positions); 0 (not NaN) when every target is ignored

The maths is done in float32 for float16/bfloat16 logits; the result has the logits' dtype.
``torch.nn.functional.cross_entropy`` is the spec's oracle (it returns NaN in the all-ignored case).
``fast=True`` is an opt-in fast path with the same semantics: the per-position nll comes from
``torch.nn.functional.cross_entropy(..., reduction="none")`` (one fused kernel); the checks, the
ignore mask and the reductions stay as written here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import checks

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum", "none")


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``(..., V) -> (..., V)``: ``z - logsumexp(z)`` along the last dim, with the max subtracted first."""
    checks.tensor("logits", logits, min_dim=1, floating=True)
    h = _upcast(logits)                                     # (..., V)
    m = h.amax(dim=-1, keepdim=True).detach()               # (..., 1) the shift; its gradient cancels
    shifted = h - m                                         # (..., V) every entry <= 0
    lse = torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))  # (..., 1) logsumexp(z) - m
    return (shifted - lse).to(logits.dtype)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                  reduction: str = "mean", fast: bool = False) -> torch.Tensor:
    """Mean (or sum, or per-position) negative log-likelihood of ``targets`` under ``softmax(logits)``.

    logits (..., V) floating; targets (...) integer, each in [0, V) or equal to ``ignore_index``.
    """
    checks.tensor("logits", logits, min_dim=1, floating=True)
    checks.tensor("targets", targets, floating=False)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} {ignore_index!r}")
    checks.one_of("reduction", reduction, REDUCTIONS)
    checks.boolean("fast", fast)
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets must have the shape of logits without its last dim: logits "
                         f"{tuple(logits.shape)} needs targets {tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    vocab_size = logits.shape[-1]
    keep = targets != ignore_index                                   # (...) bool
    bad = keep & ((targets < 0) | (targets >= vocab_size))
    if bool(bad.any()):
        value = int(targets[bad][0])
        raise ValueError(f"targets must be in [0, {vocab_size}) (the logits' last dim) or equal "
                         f"ignore_index={ignore_index}; got {value}")

    safe = torch.where(keep, targets, torch.zeros_like(targets))     # (...) ignored -> class 0
    if fast:  # one fused kernel: log_softmax, then pick the target
        nll = F.cross_entropy(_upcast(logits).reshape(-1, vocab_size), safe.reshape(-1),
                              reduction="none").reshape(safe.shape)  # (...) -log p(target)
    else:
        log_probs = log_softmax(_upcast(logits))                     # (..., V) float32 or float64
        nll = -log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (...) -log p(target)
    nll = torch.where(keep, nll, torch.zeros_like(nll))              # (...) 0 where ignored
    if reduction == "none":
        return nll.to(logits.dtype)
    total = nll.sum()
    if reduction == "sum":
        return total.to(logits.dtype)
    count = keep.sum().clamp(min=1)                                  # all ignored -> 0 / 1 = 0
    return (total / count).to(logits.dtype)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
