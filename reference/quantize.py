"""Weight quantization: per-output-channel symmetric INT8 and group-wise INT4 for every ``Linear``.

A weight ``W`` (out, in) is cut, along each row, into groups of ``group_size`` consecutive input
columns (``group_size=None``: one group per row, the whole row: per-output-channel). Each group
``g`` gets one scale, and every element an integer ``q`` (symmetric: no zero point)::

    s_g = max_{j in g} |W[r, j]| / Q          Q = 127 for INT8, 7 for INT4   (QMAX)
    q   = clamp(round(W / s_g), -Q, Q)        round: half to even (torch.round)
    W'  = q * s_g                             the dequantized weight, used in the forward

* A group that is all zeros would get ``s = 0`` (and ``0 / 0 = NaN``): its scale is 1 instead, so
  its integers are 0 and it dequantizes to exactly 0.
* The largest-magnitude element of a group maps to ``+-Q`` and comes back exact up to float
  rounding; every other element is within half a step, ``|W - W'| <= s / 2``.
* INT4 uses the symmetric range ``[-7, 7]`` (the code ``-8`` is never produced): ``+max`` and
  ``-max`` are both exact, and ``-q`` is representable for every ``q``. The ``[-8, 7]`` convention
  (``s = max / 8``) gains one level for negative values but has to clip ``+max``.
* INT4 storage: two 4-bit two's-complement values per ``uint8`` byte, along the row: column ``2j``
  in the LOW nibble, column ``2j + 1`` in the HIGH nibble (``pack_int4`` / ``unpack_int4``).
* Scales have the float weight's dtype, shape ``(out, in / group_size)``; the bias is kept in float,
  untouched. Integers: ``int8`` ``(out, in)`` for INT8, packed ``uint8`` ``(out, in / 2)`` for INT4.

The layout is the one of LLM.int8() (Dettmers et al., 2022: row-wise absmax INT8) and of the
group-wise INT4 formats of GPTQ (Frantar et al., 2022) and AWQ (Lin et al., 2023), without their
outlier handling, error-compensating updates or activation-aware scaling: round-to-nearest alone.

``quantize_model(model, bits, group_size)`` replaces every ``Linear`` of a ``TransformerLM`` by a
``QuantizedLinear`` (in place). A TIED ``lm_head`` (``tie_weights=True``: its weight IS the token
embedding table) stays float and tied: the embedding is a lookup table, not a ``Linear``, and
quantizing the shared tensor would change the embeddings too. An untied ``lm_head`` is quantized.

Fast path (``fast=True``): the dequantized weight is cached and rebuilt only when the integers or
the scales change (their version counter, storage, dtype or device); the matmul is the same, so the
result is bit-identical to the written-out path. No torch kernel is used: ``torch._weight_int8pack_mm``
scales after the matmul (``(x q^T) s`` instead of ``x (q s)^T``) and the INT4 kernels
(``torch._weight_int4pack_mm``) take zero points and bfloat16 in their own tile layout; neither
gives bit-identical results.

The quantized checkpoint (``save_quantized``) is ONE safetensors file: the integers and scales as
such (``int8`` / ``uint8`` and float, never dequantized), the float tensors (embeddings, norms,
biases; a tied table once), and, in its metadata, the model config, the quantization settings and
the tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from . import checks
from .linear import Linear
from .model import ModelConfig, TransformerLM

BITS = (8, 4)
QMAX: dict[int, int] = {8: 127, 4: 7}  # symmetric ranges [-127, 127] and [-7, 7]
DEFAULT_GROUP_SIZE = 32                 # the CLI's INT4 default (None: one group per row)
QUANTIZED_FORMAT = "bare-lm-quantized-1"


def check_bits(bits) -> int:
    """``bits`` must be 8 or 4 (a ValueError naming ``bits`` and the allowed values)."""
    if isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits must be one of {', '.join(map(str, BITS))}; got {bits!r}")
    return bits


def resolve_group_size(in_features: int, bits: int, group_size: int | None) -> int:
    """The group size for a row of ``in_features`` columns: ``group_size``, or ``in_features`` when None.

    ``group_size`` must be a positive int dividing ``in_features``; for ``bits=4`` it must be even
    (two values per byte, and a byte never straddles two groups).
    """
    check_bits(bits)
    checks.positive_int("in_features", in_features)
    size = in_features if group_size is None else checks.positive_int("group_size", group_size)
    if in_features % size:
        raise ValueError(f"group_size must divide in_features: group_size={size}, in_features={in_features}")
    if bits == 4 and size % 2:
        raise ValueError(f"bits=4 packs two values per byte: group_size must be even, got group_size={size} "
                         f"(in_features={in_features})")
    return size


def compute_scales(weight: torch.Tensor, bits: int = 8, group_size: int | None = None) -> torch.Tensor:
    """``s = max |W| / QMAX[bits]`` per group of ``group_size`` consecutive columns of each row.

    ``weight (out, in)`` -> ``scale (out, in / group_size)`` in the weight's dtype; an all-zero
    group gets scale 1 (never 0: no division by zero, no NaN).
    """
    checks.tensor("weight", weight, min_dim=2, max_dim=2, floating=True)
    n_out, n_in = weight.shape
    size = resolve_group_size(n_in, bits, group_size)
    groups = weight.detach().reshape(n_out, n_in // size, size)     # (out, n_groups, group_size)
    absmax = groups.abs().amax(dim=-1)                              # (out, n_groups)
    scale = absmax / QMAX[bits]                                     # (out, n_groups)
    return torch.where(scale == 0, torch.ones_like(scale), scale)   # all-zero group: s = 1


def quantize_tensor(weight: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``q = clamp(round(W / s), -Q, Q)`` as ``int8`` ``(out, in)``; ``scale (out, n_groups)``, each
    column of it covering ``in / n_groups`` consecutive columns of ``weight``."""
    checks.tensor("weight", weight, min_dim=2, max_dim=2, floating=True)
    checks.tensor("scale", scale, min_dim=2, max_dim=2, floating=True)
    check_bits(bits)
    n_out, n_in = weight.shape
    if scale.shape[0] != n_out or scale.shape[1] < 1 or n_in % scale.shape[1]:
        raise ValueError(f"scale must have shape (out, n_groups) with n_groups dividing in_features: "
                         f"weight {tuple(weight.shape)}, scale {tuple(scale.shape)}")
    size = n_in // scale.shape[1]
    s = scale.repeat_interleave(size, dim=1)                        # (out, in): each group's scale
    q = torch.round(weight.detach() / s)                            # half to even
    q = torch.clamp(q, -QMAX[bits], QMAX[bits])
    return q.to(torch.int8)                                         # (out, in)


def dequantize_tensor(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``W' = q * s``: ``q (out, in)`` integers, ``scale (out, n_groups)`` -> ``(out, in)`` in the scale's dtype."""
    checks.tensor("q", q, min_dim=2, max_dim=2, floating=False)
    checks.tensor("scale", scale, min_dim=2, max_dim=2, floating=True)
    n_out, n_in = q.shape
    if scale.shape[0] != n_out or scale.shape[1] < 1 or n_in % scale.shape[1]:
        raise ValueError(f"scale must have shape (out, n_groups) with n_groups dividing in_features: "
                         f"q {tuple(q.shape)}, scale {tuple(scale.shape)}")
    s = scale.repeat_interleave(n_in // scale.shape[1], dim=1)      # (out, in)
    return q.to(scale.dtype) * s


def quantize_weight(weight: torch.Tensor, bits: int = 8,
                    group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: ``compute_scales`` then ``quantize_tensor``; q ``int8`` ``(out, in)`` (unpacked)."""
    scale = compute_scales(weight, bits, group_size)
    return quantize_tensor(weight, scale, bits), scale


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit two's-complement values per byte: ``(out, in)`` int8 in [-8, 7] -> ``(out, in / 2)`` uint8.

    ``byte[r, j] = (q[r, 2j] & 0xF) | (q[r, 2j + 1] & 0xF) << 4``: the even column in the low nibble.
    """
    checks.tensor("q", q, min_dim=2, max_dim=2, floating=False)
    if q.shape[1] % 2:
        raise ValueError(f"pack_int4 needs an even number of columns, got shape {tuple(q.shape)}")
    if bool(((q < -8) | (q > 7)).any()):
        raise ValueError("pack_int4: values must be in [-8, 7] (4-bit two's complement)")
    nibbles = q.to(torch.int16) & 0xF                               # (out, in) in [0, 15]: two's complement
    low, high = nibbles[:, 0::2], nibbles[:, 1::2]                  # (out, in / 2) each
    return (low | (high << 4)).to(torch.uint8)                      # (out, in / 2)


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4``: ``(out, n)`` uint8 -> ``(out, 2 n)`` int8 in [-8, 7]."""
    checks.tensor("packed", packed, min_dim=2, max_dim=2, floating=False)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed must be a uint8 tensor, got {packed.dtype}")
    b = packed.to(torch.int16)
    low, high = b & 0xF, (b >> 4) & 0xF                             # (out, n) each, in [0, 15]
    nibbles = torch.stack((low, high), dim=-1).reshape(packed.shape[0], -1)  # (out, 2 n): low first
    signed = torch.where(nibbles >= 8, nibbles - 16, nibbles)       # two's complement: 8..15 -> -8..-1
    return signed.to(torch.int8)


def storage_bytes(in_features: int, out_features: int, bits: int = 8, group_size: int | None = None,
                  scale_dtype: torch.dtype = torch.float32, bias: bool = False) -> int:
    """Bytes of a quantized ``Linear``: integers ``out * in * bits / 8`` (INT4: two per byte) plus
    scales ``out * (in / group_size) * itemsize`` (plus a float bias ``out * itemsize``)."""
    size = resolve_group_size(checks.positive_int("in_features", in_features), bits, group_size)
    checks.positive_int("out_features", out_features)
    itemsize = torch.empty((), dtype=scale_dtype).element_size()
    integers = out_features * in_features * bits // 8
    scales = out_features * (in_features // size) * itemsize
    return integers + scales + (out_features * itemsize if bias else 0)


class QuantizedLinear(nn.Module):
    """A ``Linear`` with its weight stored as integers and scales: ``y = x (q s)^T + b``.

    Built from a float ``Linear``. Buffers: ``qweight`` (``int8`` ``(out, in)`` for INT8, packed
    ``uint8`` ``(out, in / 2)`` for INT4), ``scale`` (``(out, in / group_size)``, the weight's
    dtype). ``bias``: the Linear's bias Parameter itself (float, not quantized) or None. Attributes:
    ``in_features``, ``out_features``, ``bits``, ``group_size`` (resolved: ``in_features`` when None
    was given), ``fast``.
    """

    def __init__(self, linear: Linear, bits: int = 8, group_size: int | None = None, fast: bool = False):
        super().__init__()
        if not isinstance(linear, Linear):
            raise TypeError(f"linear must be a Linear, got {type(linear).__name__}")
        self.bits = check_bits(bits)
        self.fast = checks.boolean("fast", fast)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group_size = resolve_group_size(self.in_features, bits, group_size)
        q, scale = quantize_weight(linear.weight.detach(), bits, self.group_size)   # (out, in), (out, n_groups)
        self.register_buffer("qweight", pack_int4(q) if bits == 4 else q)
        self.register_buffer("scale", scale.clone())
        self.bias = linear.bias                                      # float, untouched (or None)
        self._cache: torch.Tensor | None = None                      # fast path: the dequantized weight
        self._cache_key: tuple | None = None

    def integers(self) -> torch.Tensor:
        """The integers ``q``, unpacked: ``int8`` ``(out, in)``."""
        return unpack_int4(self.qweight) if self.bits == 4 else self.qweight

    def dequantized_weight(self) -> torch.Tensor:
        """``W' = q * s``, ``(out, in)`` in the scale's dtype."""
        return dequantize_tensor(self.integers(), self.scale)

    def storage_bytes(self) -> int:
        """Bytes held by ``qweight``, ``scale`` and ``bias``: ``storage_bytes(...)`` of this layer."""
        tensors = [self.qweight, self.scale] + ([self.bias] if self.bias is not None else [])
        return sum(t.numel() * t.element_size() for t in tensors)

    def _weight(self) -> torch.Tensor:
        if not self.fast:
            return self.dequantized_weight()
        q, s = self.qweight, self.scale
        key = (q.data_ptr(), q._version, q.dtype, s.data_ptr(), s._version, s.dtype, s.device)
        if self._cache is None or self._cache_key != key:            # rebuilt when q or s change
            self._cache, self._cache_key = self.dequantized_weight(), key
        return self._cache

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        checks.tensor("x", x, min_dim=1, last_dim=self.in_features, floating=True)
        y = x @ self._weight().T        # (..., in) @ (in, out) -> (..., out)
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"group_size={self.group_size}, bias={self.bias is not None}, fast={self.fast}")


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """Every ``QuantizedLinear`` of ``model`` by its module name (``blocks.0.attn.q_proj``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, QuantizedLinear)}


def quantize_model(model: TransformerLM, bits: int = 8, group_size: int | None = None,
                   fast: bool = False) -> TransformerLM:
    """Replace every ``Linear`` of ``model`` by a ``QuantizedLinear`` (in place); returns ``model``.

    A tied ``lm_head`` (its weight is the token embedding) stays a float ``Linear``, still tied.
    Every layer's ``in_features`` must be divisible by ``group_size`` (checked before any change).
    """
    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a TransformerLM, got {type(model).__name__}")
    check_bits(bits)
    checks.boolean("fast", fast)
    if quantized_layers(model):
        raise ValueError("model is already quantized; quantize_model takes a float TransformerLM once")
    tied = model.lm_head.weight is model.token_embedding.weight
    targets = [(name, m) for name, m in model.named_modules()
               if isinstance(m, Linear) and not (tied and m is model.lm_head)]
    for name, m in targets:                                          # every error before any change
        try:
            resolve_group_size(m.in_features, bits, group_size)
        except ValueError as err:
            raise ValueError(f"{err} (layer {name})") from None
    for name, m in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, attr, QuantizedLinear(m, bits=bits, group_size=group_size, fast=fast))
    return model


def _settings(model: TransformerLM) -> dict:
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("model has no quantized layers (quantize_model first)")
    bits = {layer.bits for layer in layers.values()}
    sizes = {layer.group_size for layer in layers.values()}
    if all(layer.group_size == layer.in_features for layer in layers.values()):
        sizes = {None}                                               # one group per row everywhere
    if len(bits) != 1 or len(sizes) != 1:
        raise ValueError(f"save_quantized needs one setting for every layer, got bits {sorted(bits)}, "
                         f"group sizes {sorted(sizes)}")
    return {"bits": bits.pop(), "group_size": sizes.pop()}


def save_quantized(model: TransformerLM, path, tokenizer=None) -> Path:
    """Write the quantized model (integers, scales, float tensors) and its settings to the
    safetensors file ``path``; a tied table is stored once. Returns the path."""
    from safetensors.torch import save_file

    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a TransformerLM, got {type(model).__name__}")
    settings = _settings(model)
    tied = getattr(model.lm_head, "weight", None) is model.token_embedding.weight
    state = model.state_dict()
    if tied:
        del state["lm_head.weight"]                                  # the same tensor as the embedding
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format": QUANTIZED_FORMAT, **settings, "tied": tied, "model_config": model.config.to_dict()}
    metadata = {"quantize": json.dumps(meta)}
    if tokenizer is not None:
        metadata["tokenizer"] = json.dumps(tokenizer.to_dict())
    path = Path(path)
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_quantized(path, device: str | torch.device = "cpu", fast: bool = False):
    """``(model, tokenizer)`` from a file of ``save_quantized``: the quantized ``TransformerLM``
    (eval mode, on ``device``) with the file's integers and scales bit for bit, and the
    ``Tokenizer`` (None when the file has none)."""
    from safetensors import SafetensorError, safe_open

    from .tokenizer import Tokenizer

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"quantized checkpoint {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        meta = json.loads(metadata.get("quantize", "null"))
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != QUANTIZED_FORMAT:
        raise ValueError(f"{path} is not a Bare-LM quantized checkpoint (no {QUANTIZED_FORMAT!r} metadata)")
    model = TransformerLM(ModelConfig.from_dict(meta["model_config"]))
    quantize_model(model, bits=meta["bits"], group_size=meta["group_size"], fast=fast)
    if meta["tied"]:
        tensors["lm_head.weight"] = tensors["token_embedding.weight"]
    expected = model.state_dict()
    if sorted(expected) != sorted(tensors):
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        raise ValueError(f"{path} does not fit its model config: missing {missing[:4]}, unexpected {extra[:4]}")
    for key, value in tensors.items():
        target = expected[key]
        if tuple(value.shape) != tuple(target.shape) or value.dtype.is_floating_point != target.dtype.is_floating_point:
            raise ValueError(f"{path}: {key} has shape {tuple(value.shape)} and dtype {value.dtype}, the model needs "
                             f"{tuple(target.shape)} and {target.dtype}")
        if not value.dtype.is_floating_point and value.dtype != target.dtype:
            raise ValueError(f"{path}: {key} has dtype {value.dtype}, expected {target.dtype}")
    floats = {v.dtype for k, v in tensors.items() if v.dtype.is_floating_point}
    if len(floats) == 1:
        model.to(floats.pop())                                       # float64 files load as float64
    model.load_state_dict(tensors)
    tokenizer = Tokenizer.from_dict(json.loads(metadata["tokenizer"])) if "tokenizer" in metadata else None
    return model.to(device).eval(), tokenizer
