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

**Training objectives** (``loss_fn(logits (B, T, V), targets (B, T)) -> scalar``, what
``train.train_step`` minimises), with the same ``ignore_index`` and reductions:

    label smoothing (Szegedy et al. 2016, "Rethinking the Inception Architecture", section 7):
        the target distribution is q' = (1 - eps) * onehot(y) + eps * uniform(V), so
        H(q', p) = (1 - eps) * nll(z, y) + eps * (1 / V) * sum_j -log p_j          0 <= eps < 1
    z-loss (PaLM, Chowdhery et al. 2022, section 5):
        coef * log(Z)^2,  log Z = logsumexp(z): keeps the softmax normaliser near 1      coef >= 0

``objective(label_smoothing, z_loss_coef)`` is their sum, the objective of ``TrainConfig``'s
``label_smoothing`` and ``z_loss``. ``F.cross_entropy(..., label_smoothing=eps)`` and
``torch.logsumexp`` are the spec's oracles.
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
    keep, safe = _kept_targets(logits, targets, ignore_index, reduction)  # (...) bool, (...) ignored -> 0
    checks.boolean("fast", fast)
    vocab_size = logits.shape[-1]
    if fast:  # one fused kernel: log_softmax, then pick the target
        nll = F.cross_entropy(_upcast(logits).reshape(-1, vocab_size), safe.reshape(-1),
                              reduction="none").reshape(safe.shape)  # (...) -log p(target)
    else:
        log_probs = log_softmax(_upcast(logits))                     # (..., V) float32 or float64
        nll = -log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (...) -log p(target)
    nll = torch.where(keep, nll, torch.zeros_like(nll))              # (...) 0 where ignored
    return _reduce(nll, keep, reduction, logits.dtype)


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float,
                                 ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against the smoothed targets ``(1 - eps) * onehot(y) + eps / V`` (Szegedy et al. 2016).

    logits (..., V) floating; targets (...) as for ``cross_entropy``; ``epsilon`` in [0, 1).
    Per kept position ``(1 - eps) * nll + eps * mean_j(-log p_j)``; 0 at ignored positions, which
    the mean does not count. ``epsilon = 0`` gives ``cross_entropy`` exactly.
    """
    keep, safe = _kept_targets(logits, targets, ignore_index, reduction)
    checks.number_in_range("epsilon", epsilon, 0.0, 1.0, high_inclusive=False)
    log_probs = log_softmax(_upcast(logits))                          # (..., V) float32 or float64
    nll = -log_probs.gather(-1, safe.unsqueeze(-1)).squeeze(-1)       # (...) -log p(target)
    uniform = -log_probs.mean(dim=-1)                                 # (...) cross-entropy vs uniform(V)
    smoothed = (1.0 - epsilon) * nll + epsilon * uniform              # (...) H(q', p)
    smoothed = torch.where(keep, smoothed, torch.zeros_like(smoothed))  # (...) 0 where ignored
    return _reduce(smoothed, keep, reduction, logits.dtype)


def z_loss(logits: torch.Tensor, targets: torch.Tensor, coef: float, ignore_index: int = IGNORE_INDEX,
           reduction: str = "mean") -> torch.Tensor:
    """``coef * logsumexp(logits)^2`` per kept position (PaLM's auxiliary loss, Chowdhery et al. 2022).

    logits (..., V) floating; targets (...) as for ``cross_entropy`` (only their ignore mask is
    used: the mean is over the positions ``cross_entropy`` counts); ``coef >= 0``.
    """
    keep, _ = _kept_targets(logits, targets, ignore_index, reduction)
    checks.number_in_range("coef", coef, 0.0, None)
    h = _upcast(logits)                                               # (..., V)
    shift = h.amax(dim=-1, keepdim=True).detach()                     # (..., 1) no overflow
    log_z = (shift + torch.log(torch.exp(h - shift).sum(dim=-1, keepdim=True))).squeeze(-1)  # (...) log Z
    penalty = coef * log_z ** 2                                       # (...)
    penalty = torch.where(keep, penalty, torch.zeros_like(penalty))   # (...) 0 where ignored
    return _reduce(penalty, keep, reduction, logits.dtype)


def objective(label_smoothing: float = 0.0, z_loss_coef: float = 0.0, ignore_index: int = IGNORE_INDEX):
    """The training objective ``loss_fn(logits (B, T, V), targets (B, T)) -> scalar``:
    ``label_smoothed_cross_entropy(eps) + z_loss(coef)``, each a mean over the kept targets.
    ``z_loss_coef = 0`` adds nothing (not even a zero)."""
    checks.number_in_range("label_smoothing", label_smoothing, 0.0, 1.0, high_inclusive=False)
    checks.number_in_range("z_loss_coef", z_loss_coef, 0.0, None)

    def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        loss = label_smoothed_cross_entropy(logits, targets, label_smoothing, ignore_index)   # ()
        if z_loss_coef:
            loss = loss + z_loss(logits, targets, z_loss_coef, ignore_index)                    # ()
        return loss

    loss_fn.label_smoothing, loss_fn.z_loss_coef = label_smoothing, z_loss_coef
    return loss_fn


def _kept_targets(logits, targets, ignore_index, reduction) -> tuple[torch.Tensor, torch.Tensor]:
    """The checks of ``cross_entropy``; ``(keep (...) bool, safe (...) targets with ignored -> 0)``."""
    checks.tensor("logits", logits, min_dim=1, floating=True)
    checks.tensor("targets", targets, floating=False)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int, got {type(ignore_index).__name__} {ignore_index!r}")
    checks.one_of("reduction", reduction, REDUCTIONS)
    if tuple(targets.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"targets must have the shape of logits without its last dim: logits "
                         f"{tuple(logits.shape)} needs targets {tuple(logits.shape[:-1])}, got {tuple(targets.shape)}")
    vocab_size = logits.shape[-1]
    keep = targets != ignore_index                                    # (...) bool
    outside = keep & ((targets < 0) | (targets >= vocab_size))
    if torch.compiler.is_compiling():   # traced by torch.compile: an assert in the graph, no host sync
        torch._assert_async(~outside.any(), f"targets must be in [0, {vocab_size}) or equal ignore_index={ignore_index}")
    elif bool(outside.any()):
        raise ValueError(f"targets must be in [0, {vocab_size}) (the logits' last dim) or equal "
                         f"ignore_index={ignore_index}; got {int(targets[outside][0])}")
    return keep, torch.where(keep, targets, torch.zeros_like(targets))


def _reduce(per_position: torch.Tensor, keep: torch.Tensor, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """``(...)`` losses, already 0 where ignored -> "none" | "sum" | "mean" over the kept (0 if none)."""
    if reduction == "none":
        return per_position.to(dtype)
    if reduction == "sum":
        return per_position.sum().to(dtype)
    return (per_position.sum() / keep.sum().clamp(min=1)).to(dtype)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
