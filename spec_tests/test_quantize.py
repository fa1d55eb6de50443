"""Spec of ``quantize``: symmetric round-to-nearest weight quantization, per output channel (INT8)
and per group of input columns (INT4, two values per byte); ``QuantizedLinear``, ``quantize_model``,
the quantized checkpoint file."""

import copy
import json
import struct

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import (assert_close, assert_equal, batch_shapes, randint, randn, raises_clear,
                      rewrite_safetensors, seed_all, seeds, sizes)

TINY = dict(vocab_size=32, context_length=8, n_layers=2, d_model=8, n_heads=2)
QMAX = {8: 127, 4: 7}


@pytest.fixture(scope="module")
def quantize(impl):
    return impl.component("quantize")


@st.composite
def weights_setup(draw, max_out=6, max_groups=3, max_group=8):
    """``(bits, n_out, n_in, group_size)``: group_size divides n_in (and is even for INT4);
    group_size None (one group per row) about a third of the time."""
    bits = draw(st.sampled_from([8, 4]))
    n_out = draw(sizes(max_out))
    size = draw(sizes(max_group // 2)) * 2 if bits == 4 else draw(sizes(max_group))
    n_groups = draw(sizes(max_groups))
    per_row = draw(st.integers(0, 2)) == 0
    return bits, n_out, n_groups * size, None if per_row else size


def _groups(w, group_size):
    """(out, in) -> (out, n_groups, group_size): consecutive columns of each row."""
    size = w.shape[1] if group_size is None else group_size
    return w.reshape(w.shape[0], w.shape[1] // size, size)


def _linear(impl, n_in, n_out, bias=True, dtype=torch.float64, seed=0):
    seed_all(seed)
    layer = impl.component("linear").Linear(n_in, n_out, bias=bias).to(dtype)
    with torch.no_grad():
        layer.weight.copy_(randn((n_out, n_in), seed + 3, dtype))
        if bias:
            layer.bias.copy_(randn((n_out,), seed + 7, dtype))
    return layer


def _model(impl, seed=0, dtype=torch.float64, **overrides):
    model = impl.component("model")
    seed_all(seed)
    return model.TransformerLM(model.ModelConfig(**{**TINY, **overrides})).to(dtype).eval()


def _logits(model, seed):
    return model(randint(0, TINY["vocab_size"], (2, TINY["context_length"]), seed))[0]


def _data_bytes(path):
    """(bytes of tensor data, header) of a safetensors file: its size less the 8-byte length and the header."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return len(raw) - 8 - n, json.loads(raw[8:8 + n])


# --- scales, integers, dequantization ---------------------------------------------------------------

@given(setup=weights_setup(), dtype=st.sampled_from([torch.float32, torch.float64]), zero_row=st.booleans(),
       seed=seeds)
def test_scales_are_absmax_over_qmax(quantize, setup, dtype, zero_row, seed):
    """compute_scales: s = max |w| / Q (Q = 127 for INT8, 7 for INT4) over each group of group_size
    consecutive input columns of each row (None: the whole row), shape (out, in / group_size), the
    weight's dtype; an all-zero group gets s = 1 (not 0, which would give 0 / 0 = NaN)."""
    bits, n_out, n_in, group_size = setup
    w = randn((n_out, n_in), seed, dtype)
    if zero_row:
        w[0] = 0.0
    scale = quantize.compute_scales(w, bits, group_size)
    expected = _groups(w, group_size).abs().amax(dim=-1) / QMAX[bits]
    expected = torch.where(expected == 0, torch.ones_like(expected), expected)
    assert_equal(scale, expected, what=f"scale (bits={bits}, group_size={group_size}): max|w_group| / {QMAX[bits]}, "
                                       f"1 for an all-zero group")


@given(setup=weights_setup(), dtype=st.sampled_from([torch.float32, torch.float64]), seed=seeds)
def test_integers_are_rounded_and_clamped(quantize, setup, dtype, seed):
    """quantize_weight: q = clamp(round(w / s), -Q, Q) as int8 (out, in), round half to even
    (torch.round), each element divided by ITS group's scale; q is within [-Q, Q]."""
    bits, n_out, n_in, group_size = setup
    w = randn((n_out, n_in), seed, dtype)
    q, scale = quantize.quantize_weight(w, bits, group_size)
    assert_equal(q.dtype, torch.int8, what="q dtype (unpacked integers)")
    assert_equal(tuple(q.shape), (n_out, n_in), what="q shape (out, in)")
    size = n_in if group_size is None else group_size
    s = scale.repeat_interleave(size, dim=1)
    expected = torch.clamp(torch.round(w / s), -QMAX[bits], QMAX[bits]).to(torch.int8)
    assert_equal(q, expected, what=f"q = clamp(round(w / s), -{QMAX[bits]}, {QMAX[bits]}) (bits={bits})")


@given(setup=weights_setup(), dtype=st.sampled_from([torch.float32, torch.float64]), zero_row=st.booleans(),
       seed=seeds)
def test_dequantized_within_half_a_step(quantize, setup, dtype, zero_row, seed):
    """dequantize_tensor(q, s) = q * s: every element is within half a step of the original,
    |w - q s| <= s / 2 (plus 4 ulps of float rounding), and each group's largest-magnitude element
    comes back exact up to float rounding (2 ulps); an all-zero row comes back as exact zeros."""
    bits, n_out, n_in, group_size = setup
    w = randn((n_out, n_in), seed, dtype)
    if zero_row:
        w[0] = 0.0
    q, scale = quantize.quantize_weight(w, bits, group_size)
    deq = quantize.dequantize_tensor(q, scale)
    assert_equal(deq.dtype, dtype, what="dequantized weight dtype (the scale's)")
    size = n_in if group_size is None else group_size
    s = scale.repeat_interleave(size, dim=1)
    eps = torch.finfo(dtype).eps
    err = (w - deq).abs()
    bound = s / 2 + 4 * eps * w.abs()
    if bool((err > bound).any()):
        i, j = divmod(int((err - bound).argmax()), n_in)
        raise AssertionError(f"|w - q s| must be <= s / 2 (bits={bits}, group_size={group_size}); at [{i}, {j}]: "
                             f"w={w[i, j].item():.7g}, q={q[i, j].item()}, s={s[i, j].item():.7g}, "
                             f"q s={deq[i, j].item():.7g}, error {err[i, j].item():.3g} > s/2 = {s[i, j].item() / 2:.3g}")
    groups_w, groups_d = _groups(w, group_size), _groups(deq, group_size)
    arg = groups_w.abs().argmax(dim=-1, keepdim=True)
    top_w, top_d = groups_w.gather(-1, arg), groups_d.gather(-1, arg)
    assert_close(top_d, top_w, atol=0.0, rtol=2 * eps,
                 what="each group's max-magnitude element after dequantization (must map to +-Q: exact)")
    if zero_row:
        assert_equal(deq[0], torch.zeros(n_in, dtype=dtype), what="an all-zero row dequantized (no NaN)")


@given(setup=weights_setup(), seed=seeds, exponent=st.integers(-12, 4))
def test_representable_weight_is_lossless(quantize, setup, seed, exponent):
    """A weight that is already q * s (integers in [-Q, Q], each group reaching +-Q, s a power of
    two so the products are exact) quantizes to exactly those integers and scales, and dequantizes
    back to itself bit for bit."""
    bits, n_out, n_in, group_size = setup
    qmax = QMAX[bits]
    size = n_in if group_size is None else group_size
    q = randint(-qmax, qmax + 1, (n_out, n_in), seed).to(torch.int8)
    q[:, ::size] = torch.where(randint(0, 2, (n_out, n_in // size), seed + 1) == 1, qmax, -qmax).to(torch.int8)
    s = (2.0 ** (exponent + randint(-3, 4, (n_out, n_in // size), seed + 2))).to(torch.float32)
    w = q.to(torch.float32) * s.repeat_interleave(size, dim=1)
    got_q, got_s = quantize.quantize_weight(w, bits, group_size)
    assert_equal(got_s, s, what="scales of a representable weight")
    assert_equal(got_q, q, what="integers of a representable weight")
    assert_equal(quantize.dequantize_tensor(got_q, got_s), w, what="a representable weight after the round trip")


@pytest.mark.parametrize("bits", [8, 4])
def test_ties_round_half_to_even(quantize, bits):
    """w / s exactly halfway between two integers rounds to the even one (torch.round), for both
    signs: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, -0.5 -> -0, -1.5 -> -2, -2.5 -> -2 (s = 1: the row's
    max |w| is Q). floor gives 0, 1, 2, -1, -2, -3; trunc gives 0, 1, 2, 0, -1, -2."""
    qmax = QMAX[bits]
    w = torch.tensor([[0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 3.0, float(qmax)]])
    q, scale = quantize.quantize_weight(w, bits, None)
    assert_equal(scale, torch.ones(1, 1), what="scale (max |w| = Q)")
    assert_equal(q[0].tolist(), [0, 2, 2, 0, -2, -2, 3, qmax], what="integers of halfway values")


@pytest.mark.parametrize("bits", [8, 4])
def test_given_scale_saturates(quantize, bits):
    """quantize_tensor(w, s) with a scale smaller than max |w| / Q saturates: q is clamped to
    [-Q, Q], never wraps around (int8 overflow) and never leaves the 4-bit range."""
    qmax = QMAX[bits]
    w = torch.tensor([[1000.0, -1000.0, 3.0, -3.0, qmax + 0.4, -(qmax + 0.6)]])
    q = quantize.quantize_tensor(w, torch.ones(1, 1), bits)
    assert_equal(q.dtype, torch.int8, what="quantize_tensor dtype")
    assert_equal(q[0].tolist(), [qmax, -qmax, 3, -3, qmax, -qmax], what=f"clamped integers (Q = {qmax})")


# --- INT4 packing ----------------------------------------------------------------------------------

@given(n_out=sizes(5), half=sizes(6), seed=seeds)
def test_pack_unpack_round_trip(quantize, n_out, half, seed):
    """pack_int4 then unpack_int4 gives back every 4-bit value in [-8, 7]; pack_int4 is uint8
    (out, in / 2): half the bytes of int8."""
    q = randint(-8, 8, (n_out, 2 * half), seed).to(torch.int8)
    packed = quantize.pack_int4(q)
    assert_equal(packed.dtype, torch.uint8, what="pack_int4 dtype")
    assert_equal(tuple(packed.shape), (n_out, half), what="pack_int4 shape (out, in / 2)")
    assert_equal(quantize.unpack_int4(packed), q, what="unpack_int4(pack_int4(q))")


def test_pack_layout_low_nibble_first_twos_complement(quantize):
    """byte j of a row = (q[2j] & 0xF) | (q[2j+1] & 0xF) << 4: the even column in the LOW nibble,
    negative values as 4-bit two's complement (-1 -> 0xF, -8 -> 0x8, 7 -> 0x7)."""
    q = torch.tensor([[1, -2, -1, 7, -8, 0, 3, -7]], dtype=torch.int8)
    expected = [0x01 | 0xE0, 0x0F | 0x70, 0x08 | 0x00, 0x03 | 0x90]
    assert_equal(quantize.pack_int4(q)[0].tolist(), expected, what="packed bytes of [1, -2, -1, 7, -8, 0, 3, -7]")
    raw = torch.tensor([[0xE1, 0x7F, 0x08, 0x93]], dtype=torch.uint8)
    assert_equal(quantize.unpack_int4(raw)[0].tolist(), q[0].tolist(), what="unpack_int4 of bytes E1 7F 08 93")


# --- QuantizedLinear --------------------------------------------------------------------------------

@given(setup=weights_setup(), bias=st.booleans(), seed=seeds)
def test_layer_buffers_and_storage_formula(quantize, impl, setup, bias, seed):
    """QuantizedLinear: qweight is int8 (out, in) for INT8 and packed uint8 (out, in / 2) for INT4,
    holding quantize_weight's integers; scale is (out, in / group_size) in the weight's dtype; the
    bias is the float bias, bit for bit (not quantized); storage_bytes() equals the formula
    out * in * bits / 8 + out * n_groups * itemsize (+ out * itemsize for a bias)."""
    bits, n_out, n_in, group_size = setup
    lin = _linear(impl, n_in, n_out, bias=bias, dtype=torch.float32, seed=seed % 1000)
    layer = quantize.QuantizedLinear(lin, bits=bits, group_size=group_size)
    q, scale = quantize.quantize_weight(lin.weight.detach(), bits, group_size)
    size = n_in if group_size is None else group_size
    assert_equal(layer.group_size, size, what="group_size attribute (in_features when None)")
    if bits == 8:
        assert_equal(layer.qweight, q, what="INT8 qweight: int8 (out, in)")
    else:
        assert_equal(layer.qweight.dtype, torch.uint8, what="INT4 qweight dtype (two values per byte)")
        assert_equal(tuple(layer.qweight.shape), (n_out, n_in // 2), what="INT4 qweight shape (out, in / 2)")
        assert_equal(quantize.unpack_int4(layer.qweight), q, what="INT4 qweight unpacked")
    assert_equal(layer.integers(), q, what="integers() (unpacked)")
    assert_equal(layer.scale, scale, what="scale buffer: (out, in / group_size), the weight's dtype")
    if bias:
        assert_equal(layer.bias.detach(), lin.bias.detach(), what="bias (kept in float, unchanged)")
    else:
        assert layer.bias is None, "bias=False: QuantizedLinear.bias must be None"
    formula = n_out * n_in * bits // 8 + n_out * (n_in // size) * 4 + (n_out * 4 if bias else 0)
    assert_equal(layer.storage_bytes(), formula, what=f"storage_bytes (bits={bits}, group_size={size})")
    assert_equal(quantize.storage_bytes(n_in, n_out, bits, group_size, torch.float32, bias), formula,
                 what="storage_bytes(in, out, bits, group_size, float32, bias) formula")


@given(lead=batch_shapes(0, 2), setup=weights_setup(), bias=st.booleans(), seed=seeds)
def test_layer_forward_equals_linear_of_dequantized(quantize, impl, lead, setup, bias, seed):
    """QuantizedLinear(x) = F.linear(x, q * s, b): a float linear layer with the dequantized weight
    (float64)."""
    bits, n_out, n_in, group_size = setup
    lin = _linear(impl, n_in, n_out, bias=bias, seed=seed % 1000)
    layer = quantize.QuantizedLinear(lin, bits=bits, group_size=group_size)
    q, scale = quantize.quantize_weight(lin.weight.detach(), bits, group_size)
    x = randn((*lead, n_in), seed + 5, torch.float64)
    expected = F.linear(x, quantize.dequantize_tensor(q, scale), lin.bias)
    assert_close(layer(x), expected, what=f"QuantizedLinear(x) (bits={bits}, group_size={group_size})")


def test_zero_rows_give_zero_output(quantize, impl):
    """A Linear whose weight rows are all zero: scale 1, integers 0, the output of those channels
    is exactly the bias (0 without bias), never NaN."""
    for bits in (8, 4):
        lin = _linear(impl, 8, 4, bias=False, dtype=torch.float32)
        with torch.no_grad():
            lin.weight[1:3] = 0.0
        layer = quantize.QuantizedLinear(lin, bits=bits, group_size=4)
        y = layer(randn((3, 8), 1, torch.float32)).detach()
        assert not bool(torch.isnan(y).any()), f"bits={bits}: NaN in the output of a layer with zero rows"
        assert_equal(y[:, 1:3], torch.zeros(3, 2), what=f"bits={bits}: output of the all-zero rows")
        assert_equal(layer.scale[1:3], torch.ones(2, 2), what=f"bits={bits}: scales of the all-zero rows")


@settings(max_examples=10, deadline=None)
@given(setup=weights_setup(), seed=seeds)
def test_fast_path_equals_written_out(quantize, impl, setup, seed):
    """fast=True (the dequantized weight cached) gives bit-identical outputs to the written-out
    path, also after the integers and scales are replaced in place (load_state_dict): the cache
    must follow them, never serve a stale weight."""
    bits, n_out, n_in, group_size = setup
    lin = _linear(impl, n_in, n_out, dtype=torch.float32, seed=seed % 1000)
    slow = quantize.QuantizedLinear(lin, bits=bits, group_size=group_size)
    fast = quantize.QuantizedLinear(lin, bits=bits, group_size=group_size, fast=True)
    x = randn((3, n_in), seed + 1, torch.float32)
    assert_equal(fast(x).detach(), slow(x).detach(), what="fast path vs written-out path")
    other = quantize.QuantizedLinear(_linear(impl, n_in, n_out, dtype=torch.float32, seed=seed % 1000 + 1),
                                     bits=bits, group_size=group_size)
    fast.load_state_dict(other.state_dict())
    assert_equal(fast(x).detach(), other(x).detach(), what="fast path after load_state_dict of new weights")


# --- quantize_model -----------------------------------------------------------------------------------

LINEARS = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.out_proj", "ffn.w1", "ffn.w2"]


@settings(max_examples=8, deadline=None)
@given(bits=st.sampled_from([8, 4]), group_size=st.sampled_from([None, 2, 4, 8]), tie=st.booleans(),
       activation=st.sampled_from(["gelu", "swiglu"]), seed=seeds)
def test_model_equals_float_model_with_dequantized_weights(quantize, impl, bits, group_size, tie, activation, seed):
    """quantize_model replaces every Linear of every block (and the lm_head when untied) by a
    QuantizedLinear; a tied lm_head stays float and tied to the (unchanged) embedding. The logits
    equal those of the float model whose weights are replaced by the dequantized ones (float64)."""
    model = _model(impl, seed=seed % 1000, tie_weights=tie, activation=activation)
    reference = copy.deepcopy(model)
    embedding = model.token_embedding.weight.detach().clone()
    quantize.quantize_model(model, bits=bits, group_size=group_size)
    names = [f"blocks.{i}.{p}" for i in range(TINY["n_layers"])
             for p in LINEARS + (["ffn.w3"] if activation == "swiglu" else [])] + ([] if tie else ["lm_head"])
    layers = quantize.quantized_layers(model)
    assert_equal(sorted(layers), sorted(names), what=f"quantized modules (tie_weights={tie})")
    if tie:
        assert model.lm_head.weight is model.token_embedding.weight, \
            "tie_weights: the lm_head must stay tied to the token embedding (the same Parameter)"
    assert_equal(model.token_embedding.weight.detach(), embedding, what="token embedding (never quantized)")
    with torch.no_grad():
        for name, layer in layers.items():
            reference.get_submodule(name).weight.copy_(layer.dequantized_weight())
    assert_close(_logits(model, seed), _logits(reference, seed).detach(),
                 what="logits of the quantized model vs the float model with dequantized weights")


def test_int8_model_close_to_float_and_int4_packs_to_half(quantize, impl):
    """INT8 per-channel keeps the logits close to the float model's (within 0.05, weights ~ N(0, 0.02^2));
    the INT4 integers take half the bytes of the INT8 ones."""
    model = _model(impl, dtype=torch.float32, d_model=16, tie_weights=False)
    base = _logits(model, 3).detach()
    int8 = quantize.quantize_model(copy.deepcopy(model), bits=8)
    int4 = quantize.quantize_model(copy.deepcopy(model), bits=4, group_size=8)
    assert_close(_logits(int8, 3), base, atol=0.05, rtol=0.0, what="INT8 logits vs float logits")
    bytes8 = sum(m.qweight.numel() * m.qweight.element_size() for m in quantize.quantized_layers(int8).values())
    bytes4 = sum(m.qweight.numel() * m.qweight.element_size() for m in quantize.quantized_layers(int4).values())
    assert_equal(2 * bytes4, bytes8, what="INT4 integer bytes x 2 vs INT8 integer bytes")


# --- the quantized checkpoint ----------------------------------------------------------------------

@pytest.mark.parametrize("bits, group_size, tie", [(8, None, True), (4, 4, False), (4, None, True), (4, 8, True)])
def test_checkpoint_round_trip_is_bit_exact(quantize, impl, tmp_path, bits, group_size, tie):
    """save_quantized writes one safetensors file holding the integers (int8, or uint8 packed) and
    the scales as such, not dequantized floats, a tied table once; its tensor data is the formula's
    bytes plus the float tensors'. load_quantized gives back every integer and scale bit for bit,
    the same logits exactly, and the tokenizer. (group_size 8 equals d_model = 8: the q/k/v/w1
    layers then have one group per row, w2 four; the file must still say group_size 8.)"""
    model = quantize.quantize_model(_model(impl, dtype=torch.float32, tie_weights=tie), bits=bits,
                                    group_size=group_size)
    tokenizer = impl.component("tokenizer").Tokenizer.train(["one two three, one two."], 260)
    path = quantize.save_quantized(model, tmp_path / "q.safetensors", tokenizer=tokenizer)
    data, header = _data_bytes(tmp_path / "q.safetensors")
    layers = quantize.quantized_layers(model)
    for name, layer in layers.items():
        assert_equal(header[f"{name}.qweight"]["dtype"], "I8" if bits == 8 else "U8", what=f"{name}.qweight in the file")
        assert_equal(header[f"{name}.scale"]["dtype"], "F32", what=f"{name}.scale in the file")
        assert f"{name}.weight" not in header, f"{name}: the file must hold integers and scales, not a float weight"
    if tie:
        assert "lm_head.weight" not in header and "token_embedding.weight" in header, \
            "a tied lm_head is stored once, as token_embedding.weight"
    floats = sum(t.numel() * 4 for n, t in model.state_dict().items()
                 if t.is_floating_point() and not n.endswith(".scale") and not (tie and n == "lm_head.weight")
                 and not (n.endswith(".bias") and n.rsplit(".", 1)[0] in layers))
    formula = sum(quantize.storage_bytes(m.in_features, m.out_features, bits, group_size, torch.float32,
                                         m.bias is not None) for m in layers.values())
    assert_equal(data, formula + floats, what="tensor bytes in the file (quantized layers + float tensors)")
    loaded, tok = quantize.load_quantized(path)
    for name, layer in quantize.quantized_layers(loaded).items():
        assert_equal(layer.qweight, layers[name].qweight, what=f"{name}.qweight after load")
        assert_equal(layer.scale, layers[name].scale, what=f"{name}.scale after load")
        assert_equal((layer.bits, layer.group_size), (layers[name].bits, layers[name].group_size),
                     what=f"{name}: (bits, group_size) after load")
    assert_equal(_logits(loaded, 1).detach(), _logits(model, 1).detach(), what="logits after load_quantized")
    assert tok is not None and tok.encode("one two three") == tokenizer.encode("one two three"), \
        "load_quantized must give back the saved tokenizer"


# --- errors --------------------------------------------------------------------------------------------

def test_bad_arguments_raise(quantize, impl, tmp_path):
    """bits not 8 or 4, group_size not a positive int or not dividing in_features (or odd for INT4),
    a non-Linear, a non-model, a second quantize_model, a missing or foreign file: clear errors."""
    w = randn((4, 8), 0)
    for bits in (3, 16, 0, "8"):
        with raises_clear(ValueError, "bits", "8", "4"):
            quantize.compute_scales(w, bits)
    with raises_clear(ValueError, "group_size"):
        quantize.compute_scales(w, 4, 0)
    with raises_clear(ValueError, "group_size"):
        quantize.compute_scales(w, 8, -2)
    with raises_clear(ValueError, "group_size", "in_features"):
        quantize.compute_scales(w, 8, 3)
    with raises_clear(ValueError, "group_size", "even"):
        quantize.compute_scales(randn((4, 9), 0), 4, 3)
    lin = _linear(impl, 8, 4, dtype=torch.float32)
    with raises_clear(ValueError, "bits"):
        quantize.QuantizedLinear(lin, bits=2)
    with raises_clear(ValueError, "group_size", "in_features"):
        quantize.QuantizedLinear(lin, bits=8, group_size=5)
    with raises_clear(TypeError, "linear"):
        quantize.QuantizedLinear(torch.zeros(4, 8), bits=8)
    with raises_clear(ValueError, "group_size", "in_features"):
        quantize.quantize_model(_model(impl, dtype=torch.float32), bits=4, group_size=6)
    with raises_clear(TypeError, "model"):
        quantize.quantize_model(lin, bits=8)
    model = quantize.quantize_model(_model(impl, dtype=torch.float32), bits=8)
    with raises_clear(ValueError, "quantized"):
        quantize.quantize_model(model, bits=8)
    with raises_clear(FileNotFoundError, "missing.safetensors"):
        quantize.load_quantized(tmp_path / "missing.safetensors")
    from safetensors.torch import save_file
    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with raises_clear(ValueError, "other.safetensors"):
        quantize.load_quantized(tmp_path / "other.safetensors")


def test_defaults(quantize):
    """The documented defaults hold when no argument is given.

    bits 8 for compute_scales, quantize_tensor, quantize_weight and storage_bytes (whose scale dtype
    is float32 and bias False), one group per row, DEFAULT_GROUP_SIZE 32; storage_bytes is an int."""
    w = randn((3, 8), 5, torch.float32)
    scale = quantize.compute_scales(w)
    assert_equal(scale, quantize.compute_scales(w, 8, None), what="compute_scales(w) (bits 8, one group per row)")
    assert_equal(scale, w.abs().amax(dim=1, keepdim=True) / 127, what="compute_scales(w): absmax / 127")
    q = quantize.quantize_tensor(w * 200, scale)
    assert_equal(q, quantize.quantize_tensor(w * 200, scale, 8), what="quantize_tensor(w, s) (bits 8: saturates at 127)")
    assert_equal(int(q.abs().max()), 127, what="quantize_tensor(200 w, s).abs().max() by default")
    q, s = quantize.quantize_weight(w)
    q8, s8 = quantize.quantize_weight(w, 8, None)
    assert_equal(q, q8, what="integers of quantize_weight(w) (bits 8, one group per row)")
    assert_equal(s, s8, what="scales of quantize_weight(w) (bits 8, one group per row)")
    assert_equal(quantize.DEFAULT_GROUP_SIZE, 32, what="DEFAULT_GROUP_SIZE")
    n = quantize.storage_bytes(8, 3)
    assert_equal(n, 3 * 8 + 3 * 4, what="storage_bytes(8, 3): int8 integers + one float32 scale per row, no bias")
    assert type(n) is int, f"storage_bytes must return an int, got {type(n).__name__} {n!r}"
    n = quantize.storage_bytes(6, 5, 4, 2, torch.float16, True)
    assert_equal(n, 5 * 6 // 2 + 5 * 3 * 2 + 5 * 2, what="storage_bytes(6, 5, bits=4, group_size=2, float16, bias)")
    assert type(n) is int, f"storage_bytes must return an int, got {type(n).__name__} {n!r}"


def test_scale_shapes_that_do_not_fit_are_refused(quantize):
    """A scale that does not fit the weight is refused by quantize_tensor and dequantize_tensor.

    They take a scale (out, n_groups) with n_groups dividing in_features: more or fewer rows, no
    column, or a column count that does not divide in_features is a ValueError naming scale (never a ZeroDivisionError or a silent broadcast); a fitting scale on
    300 rows works (rows compared by value)."""
    w = randn((4, 6), 0, torch.float32)
    q = quantize.quantize_tensor(w, quantize.compute_scales(w))
    for shape in [(5, 1), (3, 1), (4, 0), (4, 4), (5, 0)]:
        bad = torch.ones(shape)
        with raises_clear(ValueError, "scale"):
            quantize.quantize_tensor(w, bad)
        with raises_clear(ValueError, "scale"):
            quantize.dequantize_tensor(q, bad)
    big = randn((300, 4), 1, torch.float32)
    scale = quantize.compute_scales(big, 8, 2)
    assert_equal(tuple(quantize.dequantize_tensor(quantize.quantize_tensor(big, scale), scale).shape), (300, 4),
                 what="dequantize(quantize(W, s), s) shape for 300 rows")


def test_tensors_of_the_wrong_rank_or_dtype_are_refused(quantize):
    """Tensor arguments of the wrong rank or dtype are refused, naming them.

    Every tensor argument is a matrix: weight, scale, q and packed of 1 or 3 dimensions are a
    ValueError naming them; q and packed must be integer (packed uint8), weight and scale floating
    (TypeError naming them)."""
    w = randn((4, 6), 0, torch.float32)
    s = quantize.compute_scales(w)
    q = quantize.quantize_tensor(w, s)
    for shape in [(6,), (2, 4, 6)]:
        with raises_clear(ValueError, "weight"):
            quantize.compute_scales(randn(shape, 1, torch.float32))
        with raises_clear(ValueError, "weight"):
            quantize.quantize_tensor(randn(shape, 1, torch.float32), s)
        with raises_clear(ValueError, "q"):
            quantize.dequantize_tensor(torch.zeros(shape, dtype=torch.int8), s)
        with raises_clear(ValueError, "q"):
            quantize.pack_int4(torch.zeros(shape, dtype=torch.int8))
        with raises_clear(ValueError, "packed"):
            quantize.unpack_int4(torch.zeros(shape, dtype=torch.uint8))
    for shape in [(4,), (4, 1, 1)]:
        with raises_clear(ValueError, "scale"):
            quantize.quantize_tensor(w, torch.ones(shape))
        with raises_clear(ValueError, "scale"):
            quantize.dequantize_tensor(q, torch.ones(shape))
    with raises_clear(TypeError, "weight"):
        quantize.compute_scales(torch.zeros(4, 6, dtype=torch.int8))
    with raises_clear(TypeError, "q"):
        quantize.dequantize_tensor(q.float(), s)
    with raises_clear(TypeError, "packed"):
        quantize.unpack_int4(torch.zeros(4, 3, dtype=torch.int8))


def test_pack_int4_refuses_what_four_bits_cannot_hold(quantize):
    """pack_int4 takes values in [-8, 7] and an even number of columns.

    -8 and 7 pack and come back; -9, 8, 100, -128 or 3 columns are a ValueError."""
    edge = torch.tensor([[-8, 7, 0, -1]], dtype=torch.int8)
    assert_equal(quantize.unpack_int4(quantize.pack_int4(edge)), edge, what="unpack(pack([-8, 7, 0, -1]))")
    for value in (-9, 8, 100, -128):
        with pytest.raises(ValueError):
            quantize.pack_int4(torch.tensor([[0, value]], dtype=torch.int8))
    with pytest.raises(ValueError):
        quantize.pack_int4(torch.zeros(2, 3, dtype=torch.int8))


def test_layer_and_model_defaults(quantize, impl):
    """QuantizedLinear(linear) and quantize_model(model) without arguments are INT8, one group per
    row, written out (fast False)."""
    layer = quantize.QuantizedLinear(_linear(impl, 8, 4, dtype=torch.float32))
    assert_equal((layer.bits, layer.group_size, layer.fast), (8, 8, False), what="QuantizedLinear(linear): (bits, group_size, fast)")
    assert_equal(layer.qweight.dtype, torch.int8, what="QuantizedLinear(linear).qweight dtype")
    model = quantize.quantize_model(_model(impl, dtype=torch.float32))
    got = {(m.bits, m.group_size, m.fast) for m in quantize.quantized_layers(model).values()}
    assert_equal(got, {(8, m.in_features, False) for m in quantize.quantized_layers(model).values()},
                 what="(bits, group_size, fast) of quantize_model(model)'s layers")


@pytest.mark.parametrize("fast", [False, True])
def test_layer_refuses_a_scalar_input(quantize, impl, fast):
    """x must have at least one dimension (its last is in_features): a 0-dim x is a ValueError naming x."""
    layer = quantize.QuantizedLinear(_linear(impl, 1, 2, dtype=torch.float32), fast=fast)
    with raises_clear(ValueError, "x"):
        layer(torch.tensor(1.0))


@pytest.mark.parametrize("bits", [8, 4])
def test_fast_path_follows_replaced_buffers(quantize, impl, bits):
    """fast=True follows qweight and scale REPLACED by other tensors (not changed in place): swapping
    back and forth between two layers' buffers, every output equals the written-out one of the layer
    whose buffers it holds (a cache keyed so that it misses one swap serves a stale weight)."""
    a, b, layer = (quantize.QuantizedLinear(_linear(impl, 8, 4, bias=False, dtype=torch.float32, seed=seed), bits=bits,
                                            group_size=4, fast=fast) for seed, fast in [(1, False), (2, False), (1, True)])
    x = randn((3, 8), 5, torch.float32)
    for step, source in enumerate([b, a, b, a]):
        layer.qweight = source.qweight.clone()
        layer.scale = source.scale.clone()
        assert_equal(layer(x).detach(), source(x).detach(), what=f"fast path after replacing the buffers (swap {step})")
        layer.qweight, layer.scale = source.qweight, source.scale    # the very tensors, then the clones again
        assert_equal(layer(x).detach(), source(x).detach(), what=f"fast path on the source's own buffers (swap {step})")
    layer.scale = a.scale.to(torch.float64)
    assert_equal(layer(x.double()).detach(), x.double() @ quantize.dequantize_tensor(a.integers(), a.scale.double()).T,
                 what="fast path after the scale moved to float64")


def _rewrite(src, dst, edit=None, meta_edit=None):
    """``rewrite_safetensors`` of a quantized checkpoint: its "quantize" metadata through ``meta_edit``."""
    return rewrite_safetensors(src, dst, edit, "quantize", meta_edit)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_checkpoint_keeps_the_float_dtype_and_fast(quantize, impl, tmp_path, dtype):
    """A file of a float64 (or float32) model loads as a model of that dtype with its floats and
    scales bit for bit; load_quantized is written out by default (fast False) and fast=True gives
    fast layers with the same logits."""
    model = quantize.quantize_model(_model(impl, dtype=dtype), bits=4, group_size=4)
    path = quantize.save_quantized(model, tmp_path / "q.safetensors")
    loaded, _ = quantize.load_quantized(path)
    assert_equal(loaded.token_embedding.weight.dtype, dtype, what="token embedding dtype after load")
    for name, t in model.state_dict().items():
        assert_equal(loaded.state_dict()[name], t, what=f"{name} after load")
    assert_equal({m.fast for m in quantize.quantized_layers(loaded).values()}, {False}, what="fast of the loaded layers by default")
    fast, _ = quantize.load_quantized(path, fast=True)
    assert_equal({m.fast for m in quantize.quantized_layers(fast).values()}, {True}, what="fast of the layers with fast=True")
    assert_equal(_logits(fast, 1).detach(), _logits(model, 1).detach(), what="logits of load_quantized(fast=True)")


def test_bad_checkpoint_files(quantize, impl, tmp_path):
    """load_quantized refuses, naming the file: bytes that are not safetensors; another format
    (its tensors fitting, sorting before or after the right name); a tensor missing and one
    unexpected (named, and no tensor that fits is named), one missing, one unexpected; a tensor of a larger or smaller shape, a
    float where integers belong, integers of another width."""
    good = quantize.save_quantized(quantize.quantize_model(_model(impl, dtype=torch.float32), bits=8),
                                   tmp_path / "good.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x07\x00\x00\x00\x00\x00\x00\x00not json")
    with raises_clear(ValueError, "garbage.safetensors"):
        quantize.load_quantized(garbage)
    for fmt in ("bare-lm-quantized-0", "bare-lm-quantized-2", "another-9"):
        other = _rewrite(good, tmp_path / f"format-{fmt}.safetensors", meta_edit=lambda m: m.update(format=fmt))
        with raises_clear(ValueError, other.name):
            quantize.load_quantized(other)

    def rename(t):
        t["blocks.9.attn.q_proj.qweight"] = t.pop("blocks.1.attn.q_proj.qweight")
    renamed = _rewrite(good, tmp_path / "renamed.safetensors", rename)
    with pytest.raises(ValueError) as refused:
        quantize.load_quantized(renamed)
    message = str(refused.value)
    for word in ("renamed.safetensors", "blocks.1.attn.q_proj.qweight", "blocks.9.attn.q_proj.qweight"):
        assert word in message, f"the error should name {word}, got {message!r}"
    assert "blocks.0.attn.q_proj.qweight" not in message, f"the error names a tensor that fits: {message!r}"
    for what, edit in {"missing": lambda t: t.pop("blocks.1.ffn.w2.scale"),
                       "unexpected": lambda t: t.update({"blocks.0.aaa": torch.zeros(2)})}.items():
        bad = _rewrite(good, tmp_path / f"{what}.safetensors", edit)
        with raises_clear(ValueError, bad.name, "blocks.1.ffn.w2.scale" if what == "missing" else "blocks.0.aaa"):
            quantize.load_quantized(bad)

    edits = {"larger": lambda t: t.update({"blocks.0.ffn.w1.qweight": torch.zeros(33, 8, dtype=torch.int8)}),
             "smaller": lambda t: t.update({"blocks.0.ffn.w1.qweight": torch.zeros(31, 8, dtype=torch.int8)}),
             "wider": lambda t: t.update({"blocks.0.ffn.w1.qweight": torch.zeros(32, 9, dtype=torch.int8)}),
             "float": lambda t: t.update({"blocks.0.ffn.w1.qweight": t["blocks.0.ffn.w1.qweight"].float()}),
             "int16": lambda t: t.update({"blocks.0.ffn.w1.qweight": t["blocks.0.ffn.w1.qweight"].to(torch.int16)})}
    for what, edit in edits.items():
        bad = _rewrite(good, tmp_path / f"{what}.safetensors", edit)
        with raises_clear(ValueError, bad.name, "blocks.0.ffn.w1.qweight"):
            quantize.load_quantized(bad)


def test_refused_quantize_model_changes_nothing(quantize, impl):
    """Every layer is checked before any is replaced: a group_size that divides the first layers'
    in_features (16) but not a later one's (w2: d_ff = 24) is a ValueError naming group_size, and the
    model keeps every float Linear."""
    model = _model(impl, dtype=torch.float32, d_model=16, d_ff=24)
    with raises_clear(ValueError, "group_size"):
        quantize.quantize_model(model, bits=8, group_size=16)
    assert_equal(quantize.quantized_layers(model), {}, what="quantized layers after a refused quantize_model")


@pytest.mark.parametrize("mix", ["bits", "group_size"])
def test_save_refuses_mixed_settings(quantize, impl, tmp_path, mix):
    """The file records one (bits, group_size) for the whole model: a model whose layers were
    quantized with different bits, or different group sizes, is a ValueError (never a file that
    loads back with other settings)."""
    model = quantize.quantize_model(_model(impl, dtype=torch.float32), bits=4, group_size=4)
    block = model.blocks[0].attn
    float_layer = impl.component("linear").Linear(8, 8)
    block.q_proj = quantize.QuantizedLinear(float_layer, bits=8 if mix == "bits" else 4, group_size=4 if mix == "bits" else 2)
    with pytest.raises(ValueError):
        quantize.save_quantized(model, tmp_path / "mixed.safetensors")
