"""Weight quantization: per-output-channel symmetric INT8 and group-wise INT4 for every ``Linear``.

A weight ``W`` (out, in) is cut, along each row, into groups of ``group_size`` consecutive input
columns (``group_size=None``: the whole row, i.e. per output channel). Each group gets one scale::

    s  = max |W_group| / Q          Q = QMAX[bits]: 127 for INT8, 7 for INT4 (all-zero group: s = 1)
    q  = clamp(round(W / s), -Q, Q) round half to even (torch.round), int8
    W' = q * s                      the dequantized weight, used in the forward

INT4 is the symmetric range [-7, 7], stored two values per uint8 byte (4-bit two's complement):
column 2j in the LOW nibble, column 2j + 1 in the HIGH nibble. Scales have the weight's dtype,
shape (out, in / group_size); biases stay float. A tied lm_head (its weight IS the token embedding)
stays float and tied; every other Linear of a TransformerLM is quantized.

Spec: ``pytest --impl kata spec_tests/test_quantize.py``.
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
    raise NotImplementedError("check_bits: return bits if it is 8 or 4 (not a bool), else ValueError naming bits, 8, 4")


def resolve_group_size(in_features: int, bits: int, group_size: int | None) -> int:
    """The group size for a row of ``in_features`` columns: ``group_size``, or ``in_features`` when None.

    ``group_size`` must be a positive int dividing ``in_features``; for ``bits=4`` it must be even.
    """
    raise NotImplementedError("resolve_group_size: check_bits, checks.positive_int, then ValueErrors for "
                              "'group_size must divide in_features' and (bits=4) 'group_size must be even'")


def compute_scales(weight: torch.Tensor, bits: int = 8, group_size: int | None = None) -> torch.Tensor:
    """``s = max |W| / QMAX[bits]`` per group of ``group_size`` consecutive columns of each row.

    ``weight (out, in)`` -> ``scale (out, in / group_size)`` in the weight's dtype; an all-zero
    group gets scale 1.
    """
    raise NotImplementedError("compute_scales: reshape to (out, n_groups, group_size), abs().amax(-1) / QMAX[bits], "
                              "then replace zeros by 1 (torch.where)")


def quantize_tensor(weight: torch.Tensor, scale: torch.Tensor, bits: int = 8) -> torch.Tensor:
    """``q = clamp(round(W / s), -Q, Q)`` as ``int8`` ``(out, in)``; ``scale (out, n_groups)``."""
    raise NotImplementedError("quantize_tensor: repeat each group's scale over its columns (repeat_interleave), "
                              "torch.round(W / s), torch.clamp to [-Q, Q], .to(torch.int8)")


def dequantize_tensor(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``W' = q * s``: ``q (out, in)`` integers, ``scale (out, n_groups)`` -> ``(out, in)`` in the scale's dtype."""
    raise NotImplementedError("dequantize_tensor: q.to(scale.dtype) * each group's scale repeated over its columns")


def quantize_weight(weight: torch.Tensor, bits: int = 8,
                    group_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(q, scale)``: ``compute_scales`` then ``quantize_tensor``; q ``int8`` ``(out, in)`` (unpacked)."""
    raise NotImplementedError("quantize_weight: scale = compute_scales(...); return quantize_tensor(weight, scale, bits), scale")


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """Two 4-bit two's-complement values per byte: ``(out, in)`` int8 in [-8, 7] -> ``(out, in / 2)`` uint8.

    ``byte[r, j] = (q[r, 2j] & 0xF) | (q[r, 2j + 1] & 0xF) << 4``: the even column in the low nibble.
    """
    raise NotImplementedError("pack_int4: nibbles = q (as int16) & 0xF; low = even columns, high = odd columns; "
                              "(low | high << 4) as uint8")


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of ``pack_int4``: ``(out, n)`` uint8 -> ``(out, 2 n)`` int8 in [-8, 7]."""
    raise NotImplementedError("unpack_int4: low = b & 0xF, high = b >> 4, interleave (low first), "
                              "nibbles >= 8 are negative (n - 16)")


def storage_bytes(in_features: int, out_features: int, bits: int = 8, group_size: int | None = None,
                  scale_dtype: torch.dtype = torch.float32, bias: bool = False) -> int:
    """Bytes of a quantized ``Linear``: integers ``out * in * bits / 8`` plus scales
    ``out * (in / group_size) * itemsize`` (plus a float bias ``out * itemsize``)."""
    raise NotImplementedError("storage_bytes: out * in * bits // 8 + out * (in // group_size) * itemsize (+ bias)")


class QuantizedLinear(nn.Module):
    """A ``Linear`` with its weight stored as integers and scales: ``y = x (q s)^T + b``.

    Buffers: ``qweight`` (``int8`` ``(out, in)`` for INT8, packed ``uint8`` ``(out, in / 2)`` for
    INT4), ``scale`` (``(out, in / group_size)``, the weight's dtype). ``bias``: the Linear's bias
    Parameter itself or None. Attributes: ``in_features``, ``out_features``, ``bits``,
    ``group_size`` (resolved), ``fast``.
    """

    def __init__(self, linear: Linear, bits: int = 8, group_size: int | None = None, fast: bool = False):
        super().__init__()
        raise NotImplementedError(
            "QuantizedLinear.__init__: check linear is a Linear (TypeError), bits, fast, group_size; "
            "quantize_weight(linear.weight); register_buffer qweight (pack_int4 for 4 bits) and scale; keep the bias")

    def integers(self) -> torch.Tensor:
        """The integers ``q``, unpacked: ``int8`` ``(out, in)``."""
        raise NotImplementedError("QuantizedLinear.integers: unpack_int4(qweight) for 4 bits, else qweight")

    def dequantized_weight(self) -> torch.Tensor:
        """``W' = q * s``, ``(out, in)`` in the scale's dtype."""
        raise NotImplementedError("QuantizedLinear.dequantized_weight: dequantize_tensor(integers(), scale)")

    def storage_bytes(self) -> int:
        """Bytes held by ``qweight``, ``scale`` and ``bias``."""
        raise NotImplementedError("QuantizedLinear.storage_bytes: sum of numel() * element_size() of qweight, scale, bias")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x @ dequantized_weight().T + bias``; ``fast=True``: the same with the weight cached while
        qweight and scale are unchanged (bit-identical)."""
        raise NotImplementedError("QuantizedLinear.forward: x @ (q s).T + bias (fast: cache q s, rebuilt when they change)")


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """Every ``QuantizedLinear`` of ``model`` by its module name (``blocks.0.attn.q_proj``)."""
    raise NotImplementedError("quantized_layers: the QuantizedLinear modules of model.named_modules()")


def quantize_model(model: TransformerLM, bits: int = 8, group_size: int | None = None,
                   fast: bool = False) -> TransformerLM:
    """Replace every ``Linear`` of ``model`` by a ``QuantizedLinear`` (in place); returns ``model``.

    A tied ``lm_head`` stays a float ``Linear``, still tied. Every layer is checked before any change.
    """
    raise NotImplementedError("quantize_model: validate, then setattr(parent, attr, QuantizedLinear(...)) for every "
                              "Linear of model.named_modules() except a tied lm_head")


def save_quantized(model: TransformerLM, path, tokenizer=None) -> Path:
    """Write the quantized model (integers, scales, float tensors) and its settings to the
    safetensors file ``path``; a tied table is stored once. Returns the path."""
    raise NotImplementedError("save_quantized: state_dict (drop lm_head.weight when tied), safetensors save_file with "
                              "metadata 'quantize' (format, bits, group_size, tied, model_config) and 'tokenizer'")


def load_quantized(path, device: str | torch.device = "cpu", fast: bool = False):
    """``(model, tokenizer)`` from a file of ``save_quantized``: the quantized ``TransformerLM``
    (eval mode, on ``device``) with the file's integers and scales bit for bit, and the tokenizer."""
    raise NotImplementedError("load_quantized: read the metadata, build TransformerLM(ModelConfig.from_dict(...)), "
                              "quantize_model with the file's settings, load_state_dict the tensors")
