"""Argument checks shared by every component: a bad argument raises a clear error naming it.

This file is a given, not an exercise: the kata ships it complete.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


def positive_int(name: str, value) -> int:
    """``value`` must be an int >= 1 (bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be a positive int (>= 1), got {value}")
    return value


def boolean(name: str, value) -> bool:
    """``value`` must be a bool (``True``/``False``, not 0/1 or None)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value


def non_negative_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def number_in_range(name: str, value, low: float | None = None, high: float | None = None, *,
                    low_inclusive: bool = True, high_inclusive: bool = True) -> float:
    """``value`` must be a finite real number in the given (closed or open) range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    lo = "[" if low_inclusive else "("
    hi = "]" if high_inclusive else ")"
    allowed = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if math.isnan(value) or math.isinf(value):
        raise ValueError(f"{name} must be a finite number in {allowed}, got {value}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        raise ValueError(f"{name} must be in {allowed}, got {value}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        raise ValueError(f"{name} must be in {allowed}, got {value}")
    return value


def one_of(name: str, value, allowed: Iterable):
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
    return value


def tensor(name: str, x, *, min_dim: int = 0, max_dim: int | None = None,
           last_dim: int | None = None, floating: bool | None = None) -> torch.Tensor:
    """``x`` must be a tensor with at least ``min_dim`` dims (and at most ``max_dim``), the given
    last dimension, and a floating (or integer) dtype."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() < min_dim or (max_dim is not None and x.dim() > max_dim):
        rank = f"{min_dim}" if max_dim == min_dim else f">= {min_dim}" if max_dim is None else f"{min_dim}..{max_dim}"
        raise ValueError(f"{name} must have {rank} dimensions, got shape {tuple(x.shape)}")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ValueError(f"{name} must have last dimension {last_dim}, got shape {tuple(x.shape)}")
    if floating is True and not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if floating is False and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise TypeError(f"{name} must be an integer tensor, got {x.dtype}")
    return x


def compile_backend(name: str, value) -> str | None:
    """``value`` of a ``compile`` switch: False (eager: None), True (``torch.compile``'s default
    backend, ``"inductor"``) or a backend name such as ``"aot_eager"`` (returned as is)."""
    if value is False or value is None:
        return None
    if value is True:
        return "inductor"
    if not isinstance(value, str) or not value:
        raise TypeError(f"{name} must be a bool or a torch.compile backend name (e.g. 'inductor', "
                        f"'aot_eager'), got {type(value).__name__} {value!r}")
    return value


def compiled(model: torch.nn.Module, backend: str | None) -> torch.nn.Module:
    """``torch.compile(model, backend=backend)``, or ``model`` itself when ``backend`` is None. The
    compiled module shares the model's parameters: ``model.state_dict()`` keeps its keys (no
    ``_orig_mod.`` prefix), so save ``model``, not the compiled wrapper."""
    if backend is None:
        return model
    return torch.compile(model, backend=backend)
