"""Low-rank adapters (LoRA; Hu et al., 2021, "LoRA: Low-Rank Adaptation of Large Language Models").

A frozen projection ``W`` (out, in) is adapted by a trainable low-rank update ``B A``::

    h = W x + b + (alpha / r) * B A dropout(x)      A: (r, in), B: (out, r), r << min(in, out)

* ``A`` is initialised like ``torch.nn.Linear``'s weight (Kaiming-uniform with a = sqrt(5)):
  ``A ~ U(-1 / sqrt(in), 1 / sqrt(in))``; ``B`` is zeros, so at initialisation ``B A = 0`` and the
  wrapped model computes exactly what the base model computes.
* ``dropout`` (inverted, rate ``p``) acts on the adapter's INPUT only, in training mode; the base
  path ``W x + b`` never sees it.
* The scale is ``alpha / r`` (so changing ``r`` does not change the update's size at init-time lr).

``apply_lora(model, targets=...)`` replaces chosen projections of every block of a ``TransformerLM``
by ``LoRALinear`` wrappers and freezes every base parameter: only the ``lora_A`` / ``lora_B``
tensors require gradients. Targets are short names (``TARGETS``): ``q``, ``k``, ``v``, ``o`` (the
attention projections ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``) and ``w1``, ``w2``, ``w3``
(the FFN matrices; ``w3`` exists only for ``activation="swiglu"``).

Merging: ``merge()`` adds ``(alpha / r) B A`` into the base weight for inference (one matmul per
projection) after keeping a copy of the base weight; ``unmerge()`` puts that copy back, so the base
weight's bits are restored exactly (no ``W + D - D`` rounding).

The adapter file (``save_adapter``) is a safetensors file holding the ``lora_A`` / ``lora_B``
tensors alone (keyed by their names in the wrapped model, e.g. ``blocks.0.attn.q_proj.lora_A``)
and the settings (rank, alpha, dropout, targets) in its metadata: its size is proportional to r.
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

    Attributes: ``base`` (the wrapped ``Linear``, its parameters ``requires_grad=False``),
    ``lora_A`` (rank, in) ~ U(-1/sqrt(in), 1/sqrt(in)), ``lora_B`` (out, rank) zeros, ``rank``,
    ``alpha``, ``dropout`` (the rate), ``scaling`` (``alpha / rank``), ``merged`` (bool).
    """

    def __init__(self, base: Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0):
        super().__init__()
        if not isinstance(base, Linear):
            raise TypeError(f"base must be a Linear, got {type(base).__name__}")
        self.rank = checks.positive_int("rank", rank)
        self.alpha = checks.number_in_range("alpha", alpha, 0.0, None, low_inclusive=False)
        self.dropout = checks.number_in_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
        self.scaling = self.alpha / self.rank
        self.base = base
        for p in base.parameters():
            p.requires_grad_(False)                       # the base is frozen
        n_in, n_out = base.in_features, base.out_features
        weight = base.weight
        bound = 1.0 / math.sqrt(n_in)                     # nn.Linear's Kaiming-uniform (a = sqrt(5))
        a = (torch.rand(rank, n_in) * 2.0 - 1.0) * bound  # (r, in) ~ U(-bound, bound)
        self.lora_A = nn.Parameter(a.to(weight.dtype).to(weight.device))
        self.lora_B = nn.Parameter(torch.zeros(n_out, rank, dtype=weight.dtype, device=weight.device))  # (out, r)
        self.merged = False
        self._saved_weight: torch.Tensor | None = None    # the base weight's bits while merged

    def delta_weight(self) -> torch.Tensor:
        """The update ``(alpha / rank) * B @ A``, shape ``(out, in)`` like the base weight."""
        return self.scaling * (self.lora_B @ self.lora_A)  # (out, r) @ (r, in) -> (out, in)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)                                   # (..., out): W x + b, frozen
        if self.merged:
            return y                                       # the update is inside W already
        h = inverted_dropout(x, self.dropout, self.training)  # (..., in): dropout on the input only
        return y + self.scaling * ((h @ self.lora_A.T) @ self.lora_B.T)  # (..., r) -> (..., out)

    def merge(self) -> None:
        """``W <- W + (alpha / rank) B A`` in place (a copy of W is kept); a no-op when merged."""
        if self.merged:
            return
        with torch.no_grad():
            self._saved_weight = self.base.weight.detach().clone()
            self.base.weight.add_(self.delta_weight())
        self.merged = True

    def unmerge(self) -> None:
        """Put back the base weight kept by ``merge`` (its exact bits); a no-op when not merged."""
        if not self.merged:
            return
        with torch.no_grad():
            self.base.weight.copy_(self._saved_weight)
        self._saved_weight = None
        self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha}, dropout={self.dropout}, merged={self.merged}"


def _check_targets(targets) -> tuple[str, ...]:
    if isinstance(targets, str):
        targets = (targets,)
    try:
        targets = tuple(dict.fromkeys(targets))
    except TypeError:
        raise TypeError(f"targets must be a sequence of names from {list(TARGETS)}, got {targets!r}") from None
    if not targets:
        raise ValueError(f"targets must name at least one projection, from {list(TARGETS)}")
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise ValueError(f"unknown LoRA target(s) {unknown}; targets must be among {list(TARGETS)}")
    return targets


def apply_lora(model: TransformerLM, targets=DEFAULT_TARGETS, rank: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> TransformerLM:
    """Wrap ``targets`` of every block in ``LoRALinear`` (in place) and freeze every base parameter.

    Returns ``model``. Only the adapters' ``lora_A`` / ``lora_B`` require gradients afterwards.
    """
    if not isinstance(model, TransformerLM):
        raise TypeError(f"model must be a TransformerLM, got {type(model).__name__}")
    targets = _check_targets(targets)
    checks.positive_int("rank", rank)
    checks.number_in_range("alpha", alpha, 0.0, None, low_inclusive=False)
    checks.number_in_range("dropout", dropout, 0.0, 1.0, high_inclusive=False)
    if lora_layers(model):
        raise ValueError("model already has LoRA adapters; apply_lora wraps a plain TransformerLM once")
    if "w3" in targets and model.config.activation != "swiglu":
        raise ValueError(f"target 'w3' needs activation='swiglu' (the model's is {model.config.activation!r}); "
                         f"targets must be among {[t for t in TARGETS if t != 'w3']}")
    for p in model.parameters():
        p.requires_grad_(False)                            # the whole base model is frozen
    for block in model.blocks:
        for name in targets:
            parent_name, attr = TARGETS[name]
            parent = getattr(block, parent_name)
            setattr(parent, attr, LoRALinear(getattr(parent, attr), rank=rank, alpha=alpha, dropout=dropout))
    return model


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    """Every ``LoRALinear`` of ``model`` by its module name (``blocks.0.attn.q_proj``)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, LoRALinear)}


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapters' parameters (every ``lora_A`` and ``lora_B``): what the optimiser gets."""
    return [p for layer in lora_layers(model).values() for p in (layer.lora_A, layer.lora_B)]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"blocks.0.attn.q_proj.lora_A": (r, in), "...lora_B": (out, r), ...}``: the adapters alone."""
    state = {}
    for name, layer in lora_layers(model).items():
        state[f"{name}.lora_A"] = layer.lora_A.detach()
        state[f"{name}.lora_B"] = layer.lora_B.detach()
    return state


def merge_lora(model: nn.Module) -> None:
    """``merge()`` every adapter: the model then runs as a plain model with the updated weights."""
    for layer in lora_layers(model).values():
        layer.merge()


def unmerge_lora(model: nn.Module) -> None:
    """``unmerge()`` every adapter: the base weights are back, bit for bit."""
    for layer in lora_layers(model).values():
        layer.unmerge()


def save_adapter(model: nn.Module, path) -> Path:
    """Write the adapters (tensors + settings in the metadata) to the safetensors file ``path``."""
    from safetensors.torch import save_file

    layers = lora_layers(model)
    if not layers:
        raise ValueError("model has no LoRA adapters to save (apply_lora first)")
    first = next(iter(layers.values()))
    targets = sorted({next(t for t, (p, a) in TARGETS.items() if name.endswith(f".{p}.{a}"))
                      for name in layers}, key=list(TARGETS).index)
    meta = {"format": ADAPTER_FORMAT, "rank": first.rank, "alpha": first.alpha, "dropout": first.dropout,
            "targets": targets}
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    path = Path(path)
    save_file(tensors, str(path), metadata={"lora": json.dumps(meta)})
    return path


def load_adapter(model: TransformerLM, path) -> TransformerLM:
    """``apply_lora`` with the file's settings, then its ``lora_A`` / ``lora_B`` tensors; returns ``model``.

    A file that is not an adapter, or whose shapes or names do not fit ``model``, is a ValueError
    naming the file and what does not fit.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("lora", "null"))
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors adapter file ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != ADAPTER_FORMAT:
        raise ValueError(f"{path} is not a Bare-LM LoRA adapter file (no {ADAPTER_FORMAT!r} metadata)")
    apply_lora(model, targets=meta["targets"], rank=meta["rank"], alpha=meta["alpha"], dropout=meta["dropout"])
    expected = adapter_state_dict(model)
    if sorted(expected) != sorted(tensors):
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        raise ValueError(f"adapter {path} does not fit the model: missing {missing[:4]}, unexpected {extra[:4]}")
    layers = lora_layers(model)
    with torch.no_grad():
        for key, value in tensors.items():
            target = expected[key]
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"adapter {path}: {key} has shape {tuple(value.shape)}, the model needs "
                                 f"{tuple(target.shape)}")
            name, which = key.rsplit(".", 1)
            getattr(layers[name], which).copy_(value.to(target.dtype))
    return model
