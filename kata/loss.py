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
Write it with tensor operations (``amax``, ``exp``, ``log``, ``gather``, ``where``):
``torch.nn.functional.cross_entropy`` and ``torch.log_softmax`` are the spec's oracles (the former
returns NaN in the all-ignored case; yours returns 0). The opt-in ``fast=True`` path may take the
per-position nll from ``F.cross_entropy(..., reduction="none")``; everything else stays yours.

**Training objectives** (``loss_fn(logits (B, T, V), targets (B, T)) -> scalar``), same
``ignore_index`` and reductions:

    label smoothing (Szegedy et al. 2016):  (1 - eps) * nll + eps * (1 / V) * sum_j -log p_j
    z-loss (PaLM, Chowdhery et al. 2022):    coef * logsumexp(z)^2

Their oracles are ``F.cross_entropy(..., label_smoothing=eps)`` and ``torch.logsumexp``: write
them out with your ``log_softmax`` and the same max-shift.

Spec: ``pytest --impl kata spec_tests/test_loss.py``.
"""

from __future__ import annotations

import torch

from . import checks

IGNORE_INDEX = -100
REDUCTIONS = ("mean", "sum", "none")


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``(..., V) -> (..., V)``: ``z - m - log(sum(exp(z - m)))`` along the last dim, ``m = max(z)``.

    Check ``logits`` with ``checks.tensor("logits", logits, min_dim=1, floating=True)``. Subtracting
    the max first keeps every exponent <= 0, so logits of 1e4 do not overflow to inf. The max may be
    detached: its gradient cancels exactly.
    """
    raise NotImplementedError("log_softmax: subtract the row max, then subtract log(sum(exp(...)))")


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = IGNORE_INDEX,
                  reduction: str = "mean", fast: bool = False) -> torch.Tensor:
    """Mean (or sum, or per-position) negative log-likelihood of ``targets`` under ``softmax(logits)``.

    Args:
        logits: ``(..., V)`` floating (``checks.tensor("logits", ...)``; TypeError if not floating).
        targets: ``(...)`` integer (``checks.tensor("targets", targets, floating=False)``), the shape
            of ``logits`` without its last dim (else ValueError naming ``targets`` and the shapes);
            each in ``[0, V)`` or equal to ``ignore_index`` (else ValueError naming ``targets``, the
            range and the bad value).
        ignore_index: an int; targets equal to it are skipped.
        reduction: ``"mean"`` | ``"sum"`` | ``"none"`` (``checks.one_of("reduction", ...)``).
        fast: a bool (``checks.boolean``); True takes the nll of each position from
            ``F.cross_entropy(logits (N, V), safe targets (N,), reduction="none")``, same result.

    Returns: a scalar (mean, sum) or ``(...)`` (none, 0 at ignored positions), in the logits' dtype.
    Mean = sum / max(number kept, 1), so all-ignored gives 0. Compute half-precision logits in float32.
    Hint: ``gather`` the target's log-probability; replace ignored targets by 0 before gathering.
    """
    raise NotImplementedError("cross_entropy: -log_softmax(logits)[target], masked, then reduced")


def label_smoothed_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, epsilon: float,
                                 ignore_index: int = IGNORE_INDEX, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against the smoothed targets ``(1 - eps) * onehot(y) + eps / V`` (Szegedy et al. 2016).

    Checks as ``cross_entropy`` (logits, targets, ignore_index, reduction), then
    ``checks.number_in_range("epsilon", epsilon, 0.0, 1.0, high_inclusive=False)``.
    Per kept position: ``(1 - eps) * nll + eps * mean over the V classes of -log p_j`` (every class,
    the target included); 0 at ignored positions (both terms), which the mean does not count.
    ``epsilon = 0`` must give ``cross_entropy`` bit for bit: compute the nll the same way.
    """
    raise NotImplementedError("label_smoothed_cross_entropy: (1 - eps) * nll + eps * (-log_softmax).mean(-1), masked, reduced")


def z_loss(logits: torch.Tensor, targets: torch.Tensor, coef: float, ignore_index: int = IGNORE_INDEX,
           reduction: str = "mean") -> torch.Tensor:
    """``coef * logsumexp(logits)^2`` per kept position (PaLM's auxiliary loss, Chowdhery et al. 2022).

    Checks as ``cross_entropy``, then ``checks.number_in_range("coef", coef, 0.0, None)``. The
    targets only give the mask: 0 at ignored positions; the mean is over the kept ones (0 if none).
    logsumexp with the max subtracted first (logits of 1e4 stay finite); ``coef = 0`` gives exactly 0.
    """
    raise NotImplementedError("z_loss: coef * (m + log(sum(exp(z - m))))^2 per kept position, reduced")


def objective(label_smoothing: float = 0.0, z_loss_coef: float = 0.0, ignore_index: int = IGNORE_INDEX):
    """The training objective: a function ``loss_fn(logits, targets) -> scalar`` returning
    ``label_smoothed_cross_entropy(logits, targets, label_smoothing, ignore_index)`` plus, when
    ``z_loss_coef`` is not 0, ``z_loss(logits, targets, z_loss_coef, ignore_index)`` (coef 0 adds
    nothing). Check the arguments at once: ``checks.number_in_range("label_smoothing", ..., 0.0, 1.0,
    high_inclusive=False)`` and ``checks.number_in_range("z_loss_coef", ..., 0.0, None)``."""
    raise NotImplementedError("objective: check the arguments, then return a closure adding the two losses")
