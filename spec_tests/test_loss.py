"""Spec of ``loss``: ``cross_entropy(logits, targets, ignore_index=-100, reduction="mean")`` and ``log_softmax``."""

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from .support import assert_close, batch_shapes, float_dtypes, fresh, randint, randn, raises_clear, seeds, sizes

reductions = st.sampled_from(["mean", "sum", "none"])
#: Logit scales: 1e4 overflows exp() in float32 and float64 unless the max is subtracted first.
scales = st.sampled_from([0.1, 3.0, 1e4])


@pytest.fixture(scope="module")
def loss(impl):
    return impl.component("loss")


def _problem(lead, v, seed, dtype, scale, ignore_fraction=0.3, ignore_index=-100):
    """Logits (*lead, V), targets (*lead,) with about ``ignore_fraction`` of them set to ``ignore_index``."""
    logits = randn((*lead, v), seed, dtype, scale)
    targets = randint(0, v, lead, seed + 1)
    ignored = torch.rand(lead, generator=torch.Generator().manual_seed(seed + 2)) < ignore_fraction
    return logits, targets.masked_fill(ignored, ignore_index)


def _oracle(logits, targets, ignore_index=-100, reduction="mean"):
    """torch's cross_entropy on the flattened problem (classes last -> (N, V))."""
    v = logits.shape[-1]
    out = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), ignore_index=ignore_index,
                          reduction=reduction)
    return out.reshape(targets.shape) if reduction == "none" else out


@given(lead=batch_shapes(1, 3), v=sizes(12, 1), reduction=reductions, dtype=float_dtypes, scale=scales,
       seed=seeds)
def test_equals_torch(loss, lead, v, reduction, dtype, scale, seed):
    """cross_entropy equals torch.nn.functional.cross_entropy (ignored targets skipped) for every reduction."""
    logits, targets = _problem(lead, v, seed, dtype, scale)
    targets.view(-1)[0] = int(randint(0, v, (), seed + 3))  # at least one target is kept
    got = loss.cross_entropy(logits, targets, reduction=reduction)
    assert_close(got, _oracle(logits, targets, reduction=reduction),
                 what=f"cross_entropy(reduction={reduction!r}) vs F.cross_entropy")


@given(lead=batch_shapes(1, 2), v=sizes(10, 2), ignore_index=st.sampled_from([-1, 0, 3, 999]),
       reduction=reductions, seed=seeds)
def test_custom_ignore_index(loss, lead, v, ignore_index, reduction, seed):
    """Any ignore_index, even a valid class id, removes those targets (from the mean's denominator too)."""
    logits, targets = _problem(lead, v, seed, torch.float64, 2.0, ignore_fraction=0.0)
    drop = torch.rand(lead, generator=torch.Generator().manual_seed(seed + 5)) < 0.4
    drop.view(-1)[0] = False
    targets = targets.masked_fill(drop, ignore_index)
    kept = targets.view(-1)[0]
    if kept == ignore_index:
        targets.view(-1)[0] = (kept + 1) % v
    got = loss.cross_entropy(logits, targets, ignore_index=ignore_index, reduction=reduction)
    assert_close(got, _oracle(logits, targets, ignore_index, reduction),
                 what=f"cross_entropy(ignore_index={ignore_index}, reduction={reduction!r})")


@given(lead=batch_shapes(1, 2), v=sizes(10), seed=seeds)
def test_mean_is_sum_over_kept(loss, lead, v, seed):
    """The mean divides the summed loss by the number of kept (non-ignored) targets, not by all targets."""
    logits, targets = _problem(lead, v, seed, torch.float64, 1.0, ignore_fraction=0.5)
    targets.view(-1)[0] = 0
    mean = loss.cross_entropy(logits, targets, reduction="mean")
    total = loss.cross_entropy(logits, targets, reduction="sum")
    kept = int((targets != -100).sum())
    assert_close(mean * kept, total, what=f"mean * kept ({kept}) vs sum")


@given(lead=batch_shapes(1, 2), v=sizes(8), dtype=float_dtypes, seed=seeds)
def test_all_ignored(loss, lead, v, dtype, seed):
    """When every target is ignored: mean and sum are 0 (not NaN), per-position losses are all 0."""
    logits = randn((*lead, v), seed, dtype).requires_grad_()
    targets = torch.full(lead, -100, dtype=torch.long)
    mean = loss.cross_entropy(logits, targets)
    assert_close(mean, torch.zeros((), dtype=dtype), what="mean loss with every target ignored")
    assert_close(loss.cross_entropy(logits, targets, reduction="sum"), torch.zeros((), dtype=dtype),
                 what="summed loss with every target ignored")
    assert_close(loss.cross_entropy(logits, targets, reduction="none"), torch.zeros(lead, dtype=dtype),
                 what="per-position loss with every target ignored")
    mean.backward()
    assert_close(logits.grad, torch.zeros_like(logits), what="gradient with every target ignored")


@given(lead=batch_shapes(1, 2), v=sizes(12, 2), reduction=st.sampled_from(["mean", "sum"]), seed=seeds)
def test_gradient_equals_torch(loss, lead, v, reduction, seed):
    """The gradient of cross_entropy with respect to the logits equals F.cross_entropy's."""
    logits, targets = _problem(lead, v, seed, torch.float64, 3.0)
    targets.view(-1)[0] = 1
    ours = logits.clone().requires_grad_()
    theirs = logits.clone().requires_grad_()
    weights = randn((), seed + 7, torch.float64)
    (loss.cross_entropy(ours, targets, reduction=reduction) * weights).backward()
    (_oracle(theirs, targets, reduction=reduction) * weights).backward()
    assert_close(ours.grad, theirs.grad, what="d loss / d logits")


@given(lead=batch_shapes(1, 2), v=sizes(12, 1), reduction=reductions, dtype=float_dtypes, scale=scales,
       ignore_fraction=st.sampled_from([0.0, 0.3, 1.0]), ignore_index=st.sampled_from([-100, -1, 2]), seed=seeds)
def test_fast_path_equals_written_out(loss, lead, v, reduction, dtype, scale, ignore_fraction, ignore_index, seed):
    """fast=True gives the written-out values and gradients: any ignore_index, all-ignored included."""
    logits, targets = _problem(lead, v, seed, dtype, scale, ignore_fraction, ignore_index)
    slow, fast = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    expected = loss.cross_entropy(slow, targets, ignore_index, reduction)
    got = loss.cross_entropy(fast, targets, ignore_index, reduction, fast=True)
    what = (f"cross_entropy(fast=True, ignore_index={ignore_index}, reduction={reduction!r}) vs fast=False "
            f"({ignore_fraction:.0%} ignored)")
    assert_close(got, expected, what=what)
    upstream = randn(expected.shape, seed + 9, expected.dtype)
    (expected * upstream).sum().backward()
    (got * upstream).sum().backward()
    assert_close(fast.grad, slow.grad, what=f"gradient of {what}")


@given(v=sizes(64, 2), dtype=float_dtypes, seed=seeds)
def test_huge_logits_stay_finite(loss, v, dtype, seed):
    """Logits of scale 1e4 give a finite loss and finite gradients, equal to torch's (no overflow)."""
    logits = (randn((4, v), seed, dtype, 1e4) + 5e4).requires_grad_()
    targets = randint(0, v, (4,), seed + 1)
    out = loss.cross_entropy(logits, targets)
    assert torch.isfinite(out), f"cross_entropy of huge logits is {out.item()}, expected finite"
    assert_close(out, _oracle(logits.detach(), targets), what="cross_entropy of logits ~ 5e4 +- 1e4")
    out.backward()
    assert torch.isfinite(logits.grad).all(), "gradient of cross_entropy of huge logits is not finite"


@given(lead=batch_shapes(1, 2), v=sizes(10), dtype=float_dtypes, scale=scales, seed=seeds)
def test_log_softmax_equals_torch(loss, lead, v, dtype, scale, seed):
    """log_softmax equals torch.log_softmax along the last dim, even for huge logits."""
    logits = randn((*lead, v), seed, dtype, scale)
    got = loss.log_softmax(logits)
    assert_close(got, torch.log_softmax(logits, dim=-1), what="log_softmax(logits)")


@given(v=sizes(40, 2))
def test_uniform_logits_give_log_v(loss, v):
    """Equal logits give a loss of exactly ln(V) for every target."""
    logits = torch.full((3, v), 7.0, dtype=torch.float64)
    targets = torch.arange(3) % v
    assert_close(loss.cross_entropy(logits, targets), torch.tensor(math.log(v), dtype=torch.float64),
                 what=f"loss of uniform logits over V={v}")


@pytest.mark.parametrize("fast", [False, True])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(loss, dtype, fast):
    """bfloat16 / float16 logits give a loss of that dtype: the float32 loss rounded once (within eps(dtype), relative)."""
    logits = randn((64, 50), 0, torch.float32, 30.0)
    targets = randint(0, 50, (64,), 1)
    got = loss.cross_entropy(logits.to(dtype), targets, fast=fast)
    assert got.dtype == dtype, f"loss dtype: expected {dtype}, got {got.dtype}"
    expected = F.cross_entropy(logits.to(dtype).float(), targets)
    eps = torch.finfo(dtype).eps          # rounding once costs at most eps / 2, relative
    assert_close(got.float(), expected, what=f"{dtype} cross_entropy vs float32", atol=0.0, rtol=eps)
    none = loss.cross_entropy(logits.to(dtype), targets, reduction="none", fast=fast)
    assert none.dtype == dtype, f"reduction='none' dtype: expected {dtype}, got {none.dtype}"
    assert_close(none.float(), F.cross_entropy(logits.to(dtype).float(), targets, reduction="none"),
                 what=f"{dtype} per-position nll vs float32", atol=0.0, rtol=eps)
    # 4,096 positions with an nll of about 100 each: their sum (~4e5) is beyond float16's range
    # (65,504), so the mean must be taken in float32 and only then rounded.
    many = randn((4096, 4), 2, torch.float32, 100.0).to(dtype)
    many_targets = randint(0, 4, (4096,), 3)
    mean = loss.cross_entropy(many, many_targets, fast=fast)
    assert_close(mean.float(), F.cross_entropy(many.float(), many_targets), what=f"{dtype} mean over 4,096 positions",
                 atol=0.0, rtol=eps)


def test_bad_arguments(loss):
    """Shape mismatch, out-of-range or non-integer targets, and an unknown reduction raise clear errors."""
    logits = torch.zeros(2, 3, 5)
    good = torch.zeros(2, 3, dtype=torch.long)
    with raises_clear(ValueError, "targets", "(2, 3)"):
        loss.cross_entropy(logits, torch.zeros(2, 4, dtype=torch.long))
    with raises_clear(ValueError, "targets", "(2, 3)"):
        loss.cross_entropy(logits, torch.zeros(6, dtype=torch.long))
    with raises_clear(ValueError, "targets", "5"):
        loss.cross_entropy(logits, good.clone().fill_(5))
    with raises_clear(ValueError, "targets", "-1"):
        loss.cross_entropy(logits, good.clone().fill_(-1))
    with raises_clear(TypeError, "targets"):
        loss.cross_entropy(logits, good.float())
    with raises_clear(TypeError, "logits"):
        loss.cross_entropy(good, good)
    with raises_clear(ValueError, "reduction", "mean"):
        loss.cross_entropy(logits, good, reduction="average")
    with raises_clear(TypeError, "fast"):
        loss.cross_entropy(logits, good, fast=None)


def test_bad_targets_shape_any_order(loss):
    """targets of any shape other than logits.shape[:-1], smaller or larger, are a ValueError naming targets and that shape."""
    logits = torch.zeros(2, 3, 5)
    for shape in ((2, 2), (1, 3), (2,), (), (2, 4), (3, 3), (2, 3, 1), (6,)):
        with raises_clear(ValueError, "targets", "(2, 3)"):
            loss.cross_entropy(logits, torch.zeros(shape, dtype=torch.long))


@pytest.mark.parametrize("value", [5, 6, 9, -1, -7])
def test_one_target_outside_the_range(loss, value):
    """A single target outside [0, V) (V = 5 here: 5, 6, 9, -1, -7) among valid ones is a ValueError naming
    targets and the value; V - 1 = 4 and 0 are fine."""
    logits = randn((2, 3, 5), 0)
    targets = torch.tensor([[0, 4, 1], [2, 3, 4]])
    loss.cross_entropy(logits, targets)  # 0 and V - 1 are inside
    targets[1, 1] = value
    with raises_clear(ValueError, "targets", str(value)):
        loss.cross_entropy(logits, targets)


def test_bad_ignore_index(loss):
    """ignore_index must be an int: a bool, a float or a string is a TypeError naming ignore_index; any int is fine."""
    logits, targets = randn((2, 3, 5), 0), torch.tensor([[0, 4, 1], [2, 3, 4]])
    for bad in (True, False, 1.0, -100.0, "-100"):
        with raises_clear(TypeError, "ignore_index"):
            loss.cross_entropy(logits, targets, ignore_index=bad)
    for fn in (lambda i: loss.label_smoothed_cross_entropy(logits, targets, 0.1, ignore_index=i),
               lambda i: loss.z_loss(logits, targets, 0.1, ignore_index=i)):
        with raises_clear(TypeError, "ignore_index"):
            fn(True)
        fn(1)
    assert_close(loss.cross_entropy(logits, targets, ignore_index=1), _oracle(logits, targets, ignore_index=1),
                 what="cross_entropy(ignore_index=1)")


@given(v=sizes(12, 1), reduction=reductions, dtype=float_dtypes, seed=seeds)
def test_one_dim_logits(loss, v, reduction, dtype, seed):
    """Logits of rank 1 (one position: (V,), a 0-dim target) are fine: log_softmax and cross_entropy equal
    torch's unbatched results; rank-0 logits are a ValueError naming logits."""
    logits = randn((v,), seed, dtype, 3.0)
    target = randint(0, v, (), seed + 1)
    assert_close(loss.log_softmax(logits), torch.log_softmax(logits, dim=-1), what="log_softmax of (V,) logits")
    got = loss.cross_entropy(logits, target, reduction=reduction)
    assert_close(got, F.cross_entropy(logits, target, reduction=reduction),
                 what=f"cross_entropy((V,) logits, 0-dim target, reduction={reduction!r})")
    with raises_clear(ValueError, "logits"):
        loss.log_softmax(torch.tensor(1.0, dtype=dtype))
    with raises_clear(ValueError, "logits"):
        loss.cross_entropy(torch.tensor(1.0, dtype=dtype), torch.tensor(0), reduction=reduction)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_reduction_name_compares_by_value(loss, reduction):
    """A reduction name read from a config (an equal string, not the literal) reduces as the literal does."""
    logits, targets = randn((2, 3, 5), 0, torch.float64), torch.tensor([[0, 4, 1], [2, -100, 4]])
    got = loss.cross_entropy(logits, targets, reduction=fresh(reduction))
    assert_close(got, _oracle(logits, targets, reduction=reduction),
                 what=f"cross_entropy(reduction={reduction!r} read from a config)")
    smoothed = loss.label_smoothed_cross_entropy(logits, targets, 0.2, reduction=fresh(reduction))
    assert_close(smoothed, _smoothed_oracle(logits, targets, 0.2, reduction=reduction),
                 what=f"label_smoothed_cross_entropy(reduction={reduction!r} read from a config)")


def test_compiled_targets_outside_the_range(loss):
    """Compiled, cross_entropy still refuses targets outside [0, V) that are not ignore_index, and equals
    the eager loss on valid ones.

    Traced by dynamo (the `eager` backend, one graph): a target of -1, V or beyond is refused (an
    in-graph assert there is a RuntimeError; eager mode raises ValueError); targets in [0, V) and
    ignore_index pass."""
    logits = randn((2, 3, 5), 0)
    targets = torch.tensor([[0, 4, -100], [2, 3, 1]])
    expected = loss.cross_entropy(logits, targets)  # eager first: a stub reads as not started
    torch._dynamo.reset()
    compiled = torch.compile(lambda z, t: loss.cross_entropy(z, t) * 1, backend="eager", fullgraph=True)
    assert_close(compiled(logits, targets), expected, what="compiled cross_entropy on valid targets")
    for value in (-1, 5, 8):
        bad = targets.clone()
        bad[1, 0] = value
        with pytest.raises((RuntimeError, ValueError)):
            compiled(logits, bad)


@given(lead=batch_shapes(1, 2), v=sizes(12, 2), seed=seeds)
def test_defaults(loss, lead, v, seed):
    """cross_entropy(logits, targets) alone: targets -100 ignored, the mean over the kept ones (F.cross_entropy's defaults)."""
    logits = randn((*lead, v), seed, torch.float64, 3.0)
    targets = randint(0, v, lead, seed)
    targets[randint(0, 2, lead, seed + 1).bool()] = -100
    targets.view(-1)[0] = int(randint(0, v, (), seed + 2))         # at least one kept target
    got = loss.cross_entropy(logits, targets)
    expected = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), ignore_index=-100, reduction="mean")
    assert_close(got, expected, what="cross_entropy(logits, targets) with every default")


# --- training objectives: label smoothing, z-loss ---------------------------------------------------

epsilons = st.floats(min_value=0.0, max_value=0.999, allow_nan=False)
coefs = st.sampled_from([1e-4, 0.1, 1.0, 2.5])


def _smoothed_oracle(logits, targets, eps, ignore_index=-100, reduction="mean"):
    """torch's cross_entropy with label_smoothing=eps (Szegedy et al.'s (1 - eps) * nll + eps * mean_j -log p_j)."""
    v = logits.shape[-1]
    out = F.cross_entropy(logits.reshape(-1, v), targets.reshape(-1), ignore_index=ignore_index,
                          reduction=reduction, label_smoothing=eps)
    return out.reshape(targets.shape) if reduction == "none" else out


def _z_oracle(logits, targets, coef, ignore_index=-100, reduction="mean"):
    """coef * logsumexp(logits)^2 per kept position (torch.logsumexp), 0 where ignored; mean over kept."""
    keep = targets != ignore_index
    per = torch.where(keep, coef * torch.logsumexp(logits, dim=-1) ** 2, torch.zeros((), dtype=logits.dtype))
    if reduction == "none":
        return per
    return per.sum() if reduction == "sum" else per.sum() / keep.sum()


@given(lead=batch_shapes(1, 3), v=sizes(12, 2), eps=epsilons, reduction=reductions, dtype=float_dtypes,
       scale=scales, ignore_index=st.sampled_from([-100, -1, 2]), seed=seeds)
def test_label_smoothing_equals_torch(loss, lead, v, eps, reduction, dtype, scale, ignore_index, seed):
    """label_smoothed_cross_entropy equals F.cross_entropy(..., label_smoothing=eps): values and gradients."""
    logits, targets = _problem(lead, v, seed, dtype, scale, ignore_index=ignore_index)
    targets.view(-1)[0] = (ignore_index + 1) % v                       # at least one target is kept
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got = loss.label_smoothed_cross_entropy(ours, targets, eps, ignore_index=ignore_index, reduction=reduction)
    expected = _smoothed_oracle(theirs, targets, eps, ignore_index, reduction)
    what = f"label_smoothed_cross_entropy(eps={eps:g}, ignore_index={ignore_index}, reduction={reduction!r})"
    assert_close(got, expected.detach(), what=f"{what} vs F.cross_entropy(label_smoothing=eps)")
    upstream = randn(expected.shape, seed + 9, dtype)
    (got * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert_close(ours.grad, theirs.grad, what=f"gradient of {what}")


@given(lead=batch_shapes(1, 2), v=sizes(12, 1), reduction=reductions, dtype=float_dtypes, scale=scales, seed=seeds)
def test_label_smoothing_zero_is_cross_entropy(loss, lead, v, reduction, dtype, scale, seed):
    """epsilon = 0 gives cross_entropy exactly (bit for bit), ignored positions and reductions included."""
    logits, targets = _problem(lead, v, seed, dtype, scale)
    got = loss.label_smoothed_cross_entropy(logits, targets, 0.0, reduction=reduction)
    expected = loss.cross_entropy(logits, targets, reduction=reduction)
    assert torch.equal(got, expected), \
        f"label smoothing 0 must be cross_entropy exactly (reduction={reduction!r}): expected {expected}, got {got}"


@given(v=sizes(12, 2), eps=st.floats(min_value=0.01, max_value=0.999), seed=seeds)
def test_label_smoothing_ignored_and_all_ignored(loss, v, eps, seed):
    """Ignored positions give 0 per position (the eps term too) and are not counted; all ignored: mean 0, not NaN."""
    logits = randn((5, v), seed, torch.float64, 3.0).requires_grad_()
    targets = torch.full((5,), -100, dtype=torch.long)
    mean = loss.label_smoothed_cross_entropy(logits, targets, eps)
    assert_close(mean, torch.zeros((), dtype=torch.float64), what=f"smoothed loss (eps={eps:g}) with every target ignored")
    assert_close(loss.label_smoothed_cross_entropy(logits, targets, eps, reduction="none"),
                 torch.zeros(5, dtype=torch.float64), what="per-position smoothed loss at ignored targets")
    mean.backward()
    assert_close(logits.grad, torch.zeros_like(logits), what="gradient with every target ignored")


@given(lead=batch_shapes(1, 3), v=sizes(12, 1), coef=coefs, reduction=reductions, dtype=float_dtypes,
       ignore_index=st.sampled_from([-100, -1, 2]), seed=seeds)
def test_z_loss_equals_formula(loss, lead, v, coef, reduction, dtype, ignore_index, seed):
    """z_loss = coef * logsumexp(logits)^2 per kept position (torch.logsumexp), mean over kept: values and gradients."""
    logits, targets = _problem(lead, v, seed, dtype, 3.0, ignore_index=ignore_index)
    targets.view(-1)[0] = (ignore_index + 1) % v                       # at least one target is kept
    ours, theirs = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    got = loss.z_loss(ours, targets, coef, ignore_index=ignore_index, reduction=reduction)
    expected = _z_oracle(theirs, targets, coef, ignore_index, reduction)
    what = f"z_loss(coef={coef:g}, ignore_index={ignore_index}, reduction={reduction!r})"
    assert_close(got, expected.detach(), what=f"{what} vs coef * torch.logsumexp(logits, -1) ** 2")
    upstream = randn(expected.shape, seed + 9, dtype)
    (got * upstream).sum().backward()
    (expected * upstream).sum().backward()
    assert_close(ours.grad, theirs.grad, what=f"gradient of {what} (2 * coef * logsumexp * softmax)")


@given(v=sizes(64, 2), dtype=float_dtypes, seed=seeds)
def test_z_loss_of_huge_logits_stays_finite(loss, v, dtype, seed):
    """Logits ~ 5e4 +- 1e4 give a finite z-loss equal to the formula (the max is subtracted inside logsumexp)."""
    logits = randn((4, v), seed, dtype, 1e4) + 5e4
    targets = randint(0, v, (4,), seed + 1)
    got = loss.z_loss(logits, targets, 1e-4)
    assert torch.isfinite(got), f"z_loss of huge logits is {got.item()}, expected finite"
    assert_close(got, _z_oracle(logits, targets, 1e-4), what="z_loss of logits ~ 5e4 +- 1e4")


@given(lead=batch_shapes(1, 2), v=sizes(12, 1), eps=epsilons, seed=seeds)
def test_objective_is_the_sum_and_zero_z_loss_adds_nothing(loss, lead, v, eps, seed):
    """objective(eps, coef)(logits, targets) = smoothed CE + z-loss; coef 0 adds exactly nothing; (0, 0) is cross_entropy."""
    logits, targets = _problem(lead, v, seed, torch.float64, 3.0)
    targets.view(-1)[0] = 1 % v
    smoothed = _smoothed_oracle(logits, targets, eps)
    got = loss.objective(eps, 0.5)(logits, targets)
    assert_close(got, smoothed + _z_oracle(logits, targets, 0.5), what=f"objective({eps:g}, 0.5) vs smoothed CE + z-loss")
    alone = loss.label_smoothed_cross_entropy(logits, targets, eps)
    assert torch.equal(loss.objective(eps, 0.0)(logits, targets), alone), \
        "objective with z_loss_coef=0 must equal the smoothed cross-entropy exactly (z-loss 0 adds nothing)"
    zero = loss.z_loss(logits, targets, 0.0)
    assert torch.equal(zero, torch.zeros((), dtype=torch.float64)), f"z_loss(coef=0) must be exactly 0, got {zero}"
    assert torch.equal(loss.objective()(logits, targets), loss.cross_entropy(logits, targets)), \
        "objective() (no smoothing, no z-loss) must equal cross_entropy exactly"


def test_objective_bad_arguments(loss):
    """epsilon outside [0, 1), a negative coef and bad targets raise errors naming the argument and range."""
    logits, good = torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.long)
    for eps in (-0.1, 1.0, 1.5):
        with raises_clear(ValueError, "epsilon", "[0.0, 1.0)"):
            loss.label_smoothed_cross_entropy(logits, good, eps)
        with raises_clear(ValueError, "label_smoothing", "[0.0, 1.0)"):
            loss.objective(label_smoothing=eps)
    with raises_clear(ValueError, "coef", "[0.0, inf]"):
        loss.z_loss(logits, good, -1e-3)
    with raises_clear(ValueError, "z_loss_coef", "[0.0, inf]"):
        loss.objective(z_loss_coef=-1.0)
    with raises_clear(TypeError, "epsilon"):
        loss.label_smoothed_cross_entropy(logits, good, "0.1")
    for fn in (lambda t: loss.label_smoothed_cross_entropy(logits, t, 0.1), lambda t: loss.z_loss(logits, t, 0.1)):
        with raises_clear(ValueError, "targets", "5"):
            fn(good.clone().fill_(5))
        with raises_clear(ValueError, "targets", "(2, 3)"):
            fn(torch.zeros(2, 4, dtype=torch.long))
    with raises_clear(ValueError, "reduction", "mean"):
        loss.z_loss(logits, good, 0.1, reduction="average")
