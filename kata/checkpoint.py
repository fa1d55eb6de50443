"""Checkpoints: safetensors weights + JSON, written atomically, loaded without unpickling anything.

A checkpoint is a DIRECTORY with three files::

    model.safetensors    the model's state_dict; a tensor shared by several names (the tied lm_head
                         IS the token embedding) is stored once, under its first name
    state.safetensors    every other tensor: optimizer moments, RNG states, tensors of the data state
    checkpoint.json      format, step, model config, tokenizer (Tokenizer.to_dict()), the optimizer
                         state, RNG states, data state, train config and extra - with every tensor
                         replaced by {"__tensor__": key in state.safetensors} - plus the tied names
                         ({"lm_head.weight": "token_embedding.weight"}) and the sha256 of both
                         safetensors files

Atomic write: the three files go to a fresh temporary directory beside ``path`` (same parent, so
the same file system), each is fsynced, then the directory is swapped in with ``os.replace``
(``path`` -> ``.<name>.old``, temporary -> ``path``, remove ``.old``). Whatever fails or is
interrupted, ``path`` holds either the previous checkpoint or the new one, complete; were a crash to
fall between the two renames, ``load_checkpoint`` finds the previous one in ``.<name>.old``.

No pickle: tensors are read with ``safetensors.torch.load_file``, everything else is JSON;
``torch.load`` is never called. The sha256 of each tensor file catches corruption.

Useful: ``safetensors.torch.save_file(dict_of_tensors, filename)`` / ``load_file(filename)`` (contiguous
CPU tensors, no two names sharing memory), ``os.replace``, ``os.fsync``, ``hashlib.sha256``,
``torch.get_rng_state()``. Spec: ``pytest --impl kata spec_tests/test_checkpoint.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from . import checks

FORMAT = "bare-lm-checkpoint/1"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
JSON_FILE = "checkpoint.json"


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, corrupt or of an unknown format."""


@dataclass
class Checkpoint:
    """What ``load_checkpoint`` returns.

    model: a ``TransformerLM`` built from ``model_config`` with the saved weights (on ``device``,
        train mode); tied weights are one Parameter again.
    model_config: the ``ModelConfig``.
    step: the number of optimizer steps taken when it was saved.
    tokenizer: a ``Tokenizer`` (``Tokenizer.from_dict``) or None.
    optimizer_state: a dict for ``optimizer.load_state_dict`` (tensors on CPU) or None.
    rng_state: as ``get_rng_state()`` returned it (``{"torch": uint8 tensor, "cuda": [...], "python": ...}``) or None.
    data_state: the data sampler's state as saved (JSON values and tensors) or None.
    train_config: the train config dict or None.
    extra: any other JSON/tensor values the caller saved.
    """

    model: torch.nn.Module
    model_config: object
    step: int
    tokenizer: object | None = None
    optimizer_state: dict | None = None
    rng_state: dict | None = None
    data_state: dict | None = None
    train_config: dict | None = None
    extra: dict = field(default_factory=dict)


# --- RNG ----------------------------------------------------------------------------------------

def get_rng_state() -> dict:
    """The global RNG states: ``{"torch": torch.get_rng_state() (uint8 tensor), "python": random.getstate()
    as a JSON-able list, "cuda": torch.cuda.get_rng_state_all() (only when CUDA is available)}``."""
    raise NotImplementedError("get_rng_state: collect torch's (and python's, cuda's) RNG states")


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned (CUDA states only where CUDA is available)."""
    raise NotImplementedError("set_rng_state: torch.set_rng_state(state['torch']), random.setstate(...)")


# --- save ---------------------------------------------------------------------------------------

def save_checkpoint(path, model: torch.nn.Module, *, step: int, optimizer=None, tokenizer=None,
                    rng_state: dict | None = None, data_state: dict | None = None,
                    train_config: dict | None = None, extra: dict | None = None) -> Path:
    """Write the checkpoint directory ``path`` atomically (see the module docstring); returns ``path``.

    ``model`` must have a ``config`` with ``to_dict()`` (a TransformerLM). ``rng_state`` defaults
    to ``get_rng_state()`` now. ``data_state``, ``train_config`` and ``extra`` hold JSON values
    (dicts, lists, str, numbers, bools, None) and tensors, nested freely; the optimizer's
    ``state_dict()`` too (its dict keys are ints: keep them ints through JSON).
    Order: write the weights first, then ask for ``optimizer.state_dict()`` and ``tokenizer.to_dict()``.
    Errors: ``checks.non_negative_int("step", step)``; whatever fails, the previous checkpoint at
    ``path`` stays intact and the temporary files are removed.
    """
    raise NotImplementedError("save_checkpoint: write the files to a temporary dir, fsync, then os.replace it in")


# --- load ---------------------------------------------------------------------------------------

def load_checkpoint(path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint directory written by ``save_checkpoint`` (see ``Checkpoint`` for the fields).

    Rebuild the model with ``ModelConfig.from_dict`` + ``TransformerLM``, fill the tied names from
    their source, ``load_state_dict(strict=True)`` (the tie survives: it copies into the shared
    Parameter). Errors: ``FileNotFoundError`` naming ``path`` when there is no checkpoint;
    ``CheckpointError`` (a ValueError) naming the file for a missing file (incomplete), unreadable
    JSON or tensors, a sha256 mismatch (corrupt), an unknown format, or weights that do not fit.
    """
    raise NotImplementedError("load_checkpoint: check the files and hashes, read JSON + safetensors, rebuild")


def load_model(path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from a checkpoint, the model in eval mode - for generation."""
    raise NotImplementedError("load_model: load_checkpoint, then model.eval()")
