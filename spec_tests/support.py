"""What every spec file shares: tolerances, ``assert_close``, seeded tensors, hypothesis strategies.

Tensors are never drawn element by element: a test draws a *shape* and a *seed*, and builds the
tensor from a seeded ``torch.Generator``. It is fast, and a failing example prints as
``shape=(1, 2), seed=0`` which anyone can rebuild.
"""

from __future__ import annotations

import contextlib
import re

import torch
from hypothesis import strategies as st

# ---------------------------------------------------------------------------------------------
# Tolerances and comparison
# ---------------------------------------------------------------------------------------------

#: (atol, rtol) per dtype, for two computations of the same maths in a different order.
TOLERANCES: dict[torch.dtype, tuple[float, float]] = {
    torch.float64: (1e-10, 1e-7),
    torch.float32: (1e-5, 1e-4),
    torch.bfloat16: (2e-2, 2e-2),
    torch.float16: (2e-3, 2e-3),
}


def tolerance(dtype: torch.dtype) -> tuple[float, float]:
    return TOLERANCES.get(dtype, (0.0, 0.0))


def assert_close(got, expected, *, what: str = "output", atol: float | None = None,
                 rtol: float | None = None) -> None:
    """Assert ``got`` equals ``expected`` within the tolerance of ``expected``'s dtype.

    The message names ``what`` was compared, the shapes, how many elements differ, and the worst
    element: its index, expected and got values. Exact dtypes (integers, bool) compare exactly.
    """
    got = got if isinstance(got, torch.Tensor) else torch.as_tensor(got)
    expected = expected if isinstance(expected, torch.Tensor) else torch.as_tensor(expected)
    if tuple(got.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: wrong shape: expected {tuple(expected.shape)}, got {tuple(got.shape)}")
    if got.dtype != expected.dtype:
        raise AssertionError(f"{what}: wrong dtype: expected {expected.dtype}, got {got.dtype}")
    d_atol, d_rtol = tolerance(expected.dtype)
    atol = d_atol if atol is None else atol
    rtol = d_rtol if rtol is None else rtol
    g = got.detach().to("cpu", torch.float64)
    e = expected.detach().to("cpu", torch.float64)
    both_nan = torch.isnan(g) & torch.isnan(e)
    bad = ~((g - e).abs() <= atol + rtol * e.abs()) & ~both_nan
    bad |= torch.isinf(e) & (g != e)
    n_bad = int(bad.sum())
    if n_bad == 0:
        return
    err = torch.where(bad, (g - e).abs().nan_to_num(float("inf")), torch.zeros_like(g))
    flat = int(err.flatten().argmax())
    index = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), g.shape)) if g.dim() else ()
    raise AssertionError(
        f"{what}: {n_bad} of {g.numel()} elements differ (shape {tuple(g.shape)}, {expected.dtype}, "
        f"atol={atol:g}, rtol={rtol:g}); worst at index {index}: expected {e[index].item():.7g}, "
        f"got {g[index].item():.7g}"
    )


def assert_equal(got, expected, *, what: str = "value") -> None:
    """Assert exact equality of plain values (ints, lists, bytes, strings, tensors) with a readable message.

    Sequences that differ name the first differing index and the values there (and the lengths
    when one is a prefix of the other), so a long mismatch needs no eyeballing of two printed lists.
    """
    if isinstance(got, torch.Tensor) or isinstance(expected, torch.Tensor):
        _assert_equal_tensors(got, expected, what)
        return
    if got == expected:
        return
    raise AssertionError(f"{what}: expected {_short(expected)}, got {_short(got)}{_first_difference(got, expected)}")


def _assert_equal_tensors(got, expected, what: str) -> None:
    got = got if isinstance(got, torch.Tensor) else torch.as_tensor(got)
    expected = expected if isinstance(expected, torch.Tensor) else torch.as_tensor(expected)
    if tuple(got.shape) != tuple(expected.shape):
        raise AssertionError(f"{what}: wrong shape: expected {tuple(expected.shape)}, got {tuple(got.shape)}")
    if got.dtype != expected.dtype:
        raise AssertionError(f"{what}: wrong dtype: expected {expected.dtype}, got {got.dtype}")
    differ = got.cpu() != expected.cpu()
    n_bad = int(differ.sum())
    if n_bad == 0:
        return
    index = tuple(int(i) for i in differ.nonzero()[0]) if got.dim() else ()
    raise AssertionError(f"{what}: {n_bad} of {got.numel()} elements differ (shape {tuple(got.shape)}); "
                         f"first at index {index}: expected {expected[index].item()!r}, got {got[index].item()!r}")


def _first_difference(got, expected) -> str:
    sequence = (list, tuple, str, bytes)
    if isinstance(got, dict) and isinstance(expected, dict):
        missing = [k for k in expected if k not in got]
        extra = [k for k in got if k not in expected]
        wrong = [k for k in expected if k in got and got[k] != expected[k]]
        parts = ([f"missing keys {_short(missing, 80)}"] if missing else []) + \
                ([f"unexpected keys {_short(extra, 80)}"] if extra else []) + \
                ([f"key {wrong[0]!r}: expected {_short(expected[wrong[0]], 80)}, got {_short(got[wrong[0]], 80)}"]
                 if wrong else [])
        return "; " + "; ".join(parts) if parts else ""
    if not (isinstance(got, sequence) and isinstance(expected, sequence)):
        return ""
    for i, (g, e) in enumerate(zip(got, expected)):
        if g != e:
            return (f"\n  first difference at index {i}: expected {_short(e, 80)}, got {_short(g, 80)} "
                    f"(lengths: expected {len(expected)}, got {len(got)})")
    n = min(len(got), len(expected))
    longer = "got" if len(got) > len(expected) else "expected"
    rest = (got if longer == "got" else expected)[n:]
    return (f"\n  the first {n} items agree; {longer} has {len(rest)} more, from index {n}: {_short(rest, 80)} "
            f"(lengths: expected {len(expected)}, got {len(got)})")


def _short(value, limit: int = 300) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


@contextlib.contextmanager
def raises_clear(exc_types, *words: str):
    """Expect ``exc_types`` with a message naming each of ``words`` (case-insensitive).

    A clear error names the argument at fault and what is allowed; a bare ``ValueError()`` or an
    accidental ``IndexError`` deep in torch does not count.
    """
    exc_types = exc_types if isinstance(exc_types, tuple) else (exc_types,)
    names = " or ".join(t.__name__ for t in exc_types)
    try:
        yield
    except exc_types as err:
        message = str(err)
        missing = [w for w in words if not re.search(re.escape(w), message, re.IGNORECASE)]
        if missing:
            raise AssertionError(
                f"raised {type(err).__name__}({message!r}), but the message should name {missing}"
            ) from None
    except NotImplementedError:
        raise
    except Exception as err:
        raise AssertionError(
            f"expected {names} naming {list(words)}, got {type(err).__name__}: {err}"
        ) from err
    else:
        raise AssertionError(f"expected {names} naming {list(words)}, but nothing was raised")


def fresh(name: str) -> str:
    """An equal string that is another object than the literal: a name read from a config file or
    the command line. An implementation that compares names with ``is`` instead of ``==`` (true
    only for literals interned by the compiler) fails with it."""
    copy = "".join([name[:1], name[1:]]) if len(name) > 1 else (name + "_")[:-1]
    assert copy == name
    return copy


# ---------------------------------------------------------------------------------------------
# Seeded tensors
# ---------------------------------------------------------------------------------------------


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(shape, seed: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Standard normal tensor from a seeded generator (drawn in float64, then cast)."""
    return (torch.randn(tuple(shape), generator=generator(seed), dtype=torch.float64) * scale).to(dtype)


def randint(low: int, high: int, shape, seed: int) -> torch.Tensor:
    return torch.randint(low, high, tuple(shape), generator=generator(seed))


def seed_all(seed: int) -> None:
    """Seed torch's global RNG, for implementations that build their parameters from it."""
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------------

seeds = st.integers(min_value=0, max_value=2**31 - 1)

#: dtypes a layer must handle; float64 shows maths bugs that float32 noise would hide.
float_dtypes = st.sampled_from([torch.float32, torch.float64])


def sizes(max_value: int = 8, min_value: int = 1):
    return st.integers(min_value=min_value, max_value=max_value)


def batch_shapes(min_rank: int = 0, max_rank: int = 2, max_side: int = 4):
    """Leading (batch-like) dims: ``()``, ``(3,)``, ``(2, 4)``..."""
    return st.lists(sizes(max_side), min_size=min_rank, max_size=max_rank).map(tuple)


@st.composite
def model_dims(draw, max_heads: int = 4, max_head_dim: int = 8):
    """A consistent ``(d_model, n_heads)``: ``d_model`` is a multiple of ``n_heads``."""
    n_heads = draw(sizes(max_heads))
    head_dim = draw(sizes(max_head_dim))
    return n_heads * head_dim, n_heads


# ---------------------------------------------------------------------------------------------
# A sliding-window language model by definition
# ---------------------------------------------------------------------------------------------


def windowed_lm_logits(lm, idx: torch.Tensor) -> torch.Tensor:
    """``idx (B, T) -> logits (B, T, V)`` of a Pre-LN ``TransformerLM`` with ``config.window = w``
    and positional rope (interleaved, base 10000), alibi or none, at the TRUE positions 0 .. T-1,
    however far past ``context_length``; the attention is written out from its definition
    (query i sees keys i - w < j <= i), norms with torch.nn.functional, the FFN is the block's."""
    import math

    import torch.nn.functional as F

    c = lm.config
    b, t = idx.shape
    h_n, kv_n, d, w = c.n_heads, c.resolved_n_kv_heads, c.resolved_head_dim, c.window
    pos = torch.arange(t, dtype=torch.float64)

    def norm(layer, x):
        if c.norm == "layernorm":
            return F.layer_norm(x, (x.shape[-1],), layer.weight, getattr(layer, "bias", None), eps=c.norm_eps)
        return F.rms_norm(x, (x.shape[-1],), layer.weight, eps=c.norm_eps)

    def rope(x):                                  # x (B, H, T, D): pairs (2i, 2i+1) rotated by p 10000^(-2i/D)
        z = torch.view_as_complex(x.reshape(*x.shape[:-1], d // 2, 2).contiguous())
        angle = pos[:, None] * 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        return torch.view_as_real(z * torch.polar(torch.ones_like(angle), angle).to(z.dtype)).reshape(x.shape)

    slopes = torch.tensor([2.0 ** (-8.0 * (h + 1) / h_n) for h in range(h_n)], dtype=torch.float64)  # power of 2
    i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
    allowed = (j <= i) & (i - j < w)                                      # (T, T) the sliding window
    x = F.embedding(idx, lm.token_embedding.weight)                       # (B, T, C)
    for block in lm.blocks:
        a = block.attn
        h = norm(block.ln_1, x)
        q = F.linear(h, a.q_proj.weight, a.q_proj.bias).view(b, t, h_n, d).transpose(1, 2)
        k = F.linear(h, a.k_proj.weight, a.k_proj.bias).view(b, t, kv_n, d).transpose(1, 2)
        v = F.linear(h, a.v_proj.weight, a.v_proj.bias).view(b, t, kv_n, d).transpose(1, 2)
        if c.positional == "rope":
            q, k = rope(q), rope(k)
        k, v = k.repeat_interleave(h_n // kv_n, dim=1), v.repeat_interleave(h_n // kv_n, dim=1)
        scores = q @ k.transpose(-2, -1) / math.sqrt(d)                   # (B, H, T, T)
        if c.positional == "alibi":
            scores = scores - (slopes[:, None, None] * (i - j)).to(scores.dtype)
        out = torch.softmax(scores.masked_fill(~allowed, float("-inf")), dim=-1) @ v
        x = x + F.linear(out.transpose(1, 2).reshape(b, t, h_n * d), a.out_proj.weight, a.out_proj.bias)
        x = x + block.ffn(norm(block.ln_2, x))
    return F.linear(norm(lm.ln_f, x), lm.lm_head.weight)                  # (B, T, V)


@contextlib.contextmanager
def file_size_limit(limit: int):
    """RLIMIT_FSIZE = ``limit`` bytes for the block (SIGXFSZ ignored): a write past it fails with
    OSError EFBIG, as on a full disk. Skips the test where the platform has neither."""
    import signal

    import pytest
    resource = pytest.importorskip("resource")
    if not hasattr(signal, "SIGXFSZ"):
        pytest.skip("needs SIGXFSZ to turn the size limit into an OSError")
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


class TwoParams(torch.nn.Module):
    """A model whose second parameter is used only when x[0] > 0: model(x, y) -> (None, loss)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.tensor([0.3, 0.7, -1.1], dtype=torch.float64))

    def forward(self, x, y=None):
        loss = ((self.a * x).sum() - 1.0) ** 2
        if x[0] > 0:
            loss = loss + ((self.b * x).sum() + 2.0) ** 2
        return None, loss

    @staticmethod
    def inputs() -> tuple[torch.Tensor, torch.Tensor]:
        """``(on, off)``: an input that gives both parameters a gradient, and one that gives only ``a``."""
        return torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), torch.tensor([-1.0, 2.0, 3.0], dtype=torch.float64)


class StepClock:
    """A stand-in for time.perf_counter and time.monotonic that moves only with the optimizer steps: it starts
    at ``start`` and gains ``tick`` seconds at each optimizer.step() (binary-exact values), so the time spent
    in the training steps is known exactly (evaluation, saving and tokenizing take 0 s)."""

    def __init__(self, start: float = 0.5, tick: float = 0.75):
        self.now, self.step_seconds = start, tick

    def __call__(self) -> float:
        return self.now

    def tick(self, *args) -> None:
        self.now += self.step_seconds


@contextlib.contextmanager
def step_clock(start: float = 0.5, tick: float = 0.75):
    """A StepClock as time.perf_counter and time.monotonic for the duration of the block (also in a
    rank process of the distributed spec, where there is no monkeypatch fixture)."""
    import time

    from torch.optim.optimizer import register_optimizer_step_post_hook
    clock = StepClock(start, tick)
    saved = time.perf_counter, time.monotonic
    time.perf_counter = time.monotonic = clock
    handle = register_optimizer_step_post_hook(clock.tick)          # every optimizer.step(), any optimizer
    try:
        yield clock
    finally:
        handle.remove()
        time.perf_counter, time.monotonic = saved


def rewrite_safetensors(src, dst, edit=None, meta_key: str | None = None, meta_edit=None):
    """Copy the safetensors file ``src`` to ``dst`` with its tensors passed through ``edit(dict)`` and
    the JSON of its metadata entry ``meta_key`` through ``meta_edit(dict)`` (both in place). Returns ``dst``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(src), framework="pt") as f:
        tensors, metadata = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    if edit:
        edit(tensors)
    if meta_edit:
        meta = json.loads(metadata[meta_key])
        meta_edit(meta)
        metadata[meta_key] = json.dumps(meta)
    save_file(tensors, str(dst), metadata=metadata)
    return dst
