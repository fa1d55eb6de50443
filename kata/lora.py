"""Low-rank adapters (LoRA; Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen projection ``W`` (out, in) is adapted by a trainable low-rank update ``B A``::

    h = W x + b + (alpha / r) * B A dropout(x)      A: (r, in), B: (out, r), r << min(in, out)

* ``A`` ~ U(-1 / sqrt(in), 1 / sqrt(in)) (``torch.nn.Linear``'s Kaiming-uniform); ``B`` is zeros, so
  at initialisation the wrapped model computes exactly what the base model computes.
* ``dropout`` (inverted, ``model.dropout``) acts on the adapter's INPUT only, in training mode.
* The scale is ``alpha / r``.

``apply_lora(model, targets=...)`` replaces chosen projections of every block of a ``TransformerLM``
by ``LoRALinear`` wrappers and freezes every base parameter. ``merge()`` adds the update into the
base weight (keeping a copy); ``unmerge()`` puts the copy back (exact bits). ``save_adapter`` writes
the adapters alone to a safetensors file, settings in its metadata.

Spec: ``pytest --impl kata spec_tests/test_lora.py``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from . import checks
from .linear import Linear
from .model import TransformerLM
from .model import dropout as inverted_dropout

#: short target name -> (sub-module of a block, attribute)
TARGETS: dict[str, tuple[str, str]] = {
    "q": ("attn", "q_proj"),
    "k": ("attn", "k_proj"),
    "v": ("attn", "v_proj"),
    "o": ("attn", "out_proj"),
    "w1": ("ffn", "w1"),
    "w2": ("ffn", "w2"),
    "w3": ("ffn", "w3"),
}
DEFAULT_TARGETS = ("q", "v")  # Hu et al. adapt W_q and W_v
ADAPTER_FORMAT = "bare-lm-lora-1"


class LoRALinear(nn.Module):
    """``base(x) + (alpha / rank) * dropout(x) @ lora_A.T @ lora_B.T``; the base layer is frozen.

    Attributes: ``base`` (the wrapped ``Linear`` itself, its parameters ``requires_grad=False``),
    ``lora_A`` (rank, in) ~ U(-1/sqrt(in), 1/sqrt(in)) from ``torch.rand``, ``lora_B`` (out, rank)
    zeros (both in the base weight's dtype and device), ``rank``, ``alpha``, ``dropout`` (the rate),
    ``scaling`` (``alpha / rank``), ``merged`` (False).
    """

    def __init__(self, base: Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        raise NotImplementedError(
            "LoRALinear.__init__: check base is a Linear (TypeError), rank (checks.positive_int), alpha > 0 and "
            "dropout in [0, 1) (checks.number_in_range); freeze base; lora_A ~ U(-1/sqrt(in), 1/sqrt(in)), lora_B zeros")

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / rank) * B @ A``, shape ``(out, in)``."""
        raise NotImplementedError("LoRALinear.delta_weight: return scaling * lora_B @ lora_A")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``base(x)``, plus (unless merged) ``scaling * (inverted_dropout(x) @ A.T) @ B.T``."""
        raise NotImplementedError("LoRALinear.forward: base(x) + scaling * dropout(x) @ A.T @ B.T (base(x) alone when merged)")

    def merge(self) -> None:
        """``W <- W + delta_weight()`` in place, after keeping a copy of W; a no-op when merged."""
        raise NotImplementedError("LoRALinear.merge: keep a clone of base.weight, add delta_weight() in place, merged = True")

    def unmerge(self) -> None:
        """Copy the kept weight back into ``base.weight`` (exact bits); a no-op when not merged."""
        raise NotImplementedError("LoRALinear.unmerge: copy the kept weight back, merged = False")


def apply_lora(model: TransformerLM, targets=DEFAULT_TARGETS, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> TransformerLM:
    """Freeze every parameter of ``model``, then wrap ``targets`` (names of ``TARGETS``) of every block
    in ``LoRALinear``; returns ``model``.

    Errors (ValueError): an unknown target (list the allowed names), no targets, ``"w3"`` without
    swiglu, a model that already has adapters; bad rank / alpha / dropout as in ``LoRALinear``.
    """
    raise NotImplementedError("apply_lora: validate, freeze model.parameters(), setattr(parent, attr, LoRALinear(...)) per block")


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` of ``model`` by its module name (``blocks.0.attn.q_proj``)."""
    raise NotImplementedError("lora_layers: the LoRALinear modules of model.named_modules()")


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (each layer's ``lora_A`` then ``lora_B``)."""
    raise NotImplementedError("lora_parameters: [A, B of every layer in lora_layers(model)]")


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<module name>.lora_A": A, "<module name>.lora_B": B, ...}`` (detached)."""
    raise NotImplementedError("adapter_state_dict: the adapters' tensors keyed <module name>.lora_A / .lora_B")


def merge_lora(model: nn.Module) -> None:
    """``merge()`` every adapter."""
    raise NotImplementedError("merge_lora: merge() each layer of lora_layers(model)")


def unmerge_lora(model: nn.Module) -> None:
    """``unmerge()`` every adapter."""
    raise NotImplementedError("unmerge_lora: unmerge() each layer of lora_layers(model)")


def save_adapter(model: nn.Module, path) -> Path:
    """Write ``adapter_state_dict`` to the safetensors file ``path``, with the JSON settings
    ``{"format": ADAPTER_FORMAT, "rank", "alpha", "dropout", "targets"}`` under the metadata key ``"lora"``."""
    raise NotImplementedError("save_adapter: safetensors.torch.save_file(tensors, path, metadata={'lora': json.dumps(...)})")


def load_adapter(model: TransformerLM, path) -> TransformerLM:
    """``apply_lora`` with the file's settings, then copy its tensors in; returns ``model``.

    A missing file is FileNotFoundError; an unreadable file, one that is not an adapter, or one
    whose names or shapes do not fit ``model`` is a ValueError naming the file.
    """
    raise NotImplementedError("load_adapter: safetensors.safe_open the file, read metadata['lora'], apply_lora, copy tensors")
