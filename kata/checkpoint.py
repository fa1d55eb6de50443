"""Checkpoints: safetensors weights + JSON, committed by one atomic rename, loaded without unpickling.

A checkpoint ``path`` is a DIRECTORY holding a pointer file and the version it names::

    path/CURRENT                one line: the name of the current version directory, "v-<16 hex>"
    path/v-<16 hex>/            the checkpoint itself, three files:
        model.safetensors       the model's state_dict; a tensor shared by several names (the tied
                                lm_head IS the token embedding) is stored once, under its first name
        state.safetensors       every other tensor: optimizer moments, RNG states, data-state tensors
        checkpoint.json         format, step, model config, tokenizer (Tokenizer.to_dict()), optimizer
                                state, RNG states, data state, train config, extra - every tensor
                                replaced by {"__tensor__": key in state.safetensors} -, the tied names
                                ({"lm_head.weight": "token_embedding.weight"}), the sha256 of both
                                safetensors files, and ``meta_sha256``: the sha256 of all of that

Save = write a NEW version directory (each file fsynced, then the directory), write the pointer to a
temporary file (fsynced), and ``os.replace`` it onto ``CURRENT``: that one rename is the commit
point. Before it, ``CURRENT`` names the previous version, untouched; after it, the new one, complete
on disk. Nothing is ever modified in place, so a crash at any instant - and any sequence of crashes -
leaves ``CURRENT`` naming a complete checkpoint. Everything else in ``path`` (older versions,
half-written ones, temporary pointers) is a leftover: each save removes them, before writing and
after committing. One writer at a time (the caller's lock); any number of readers.

A reader reads ``CURRENT``, then the files of that version. A version directory never changes once
named, so the three files always belong together; should a save remove the version while it is
being read, the load finds ``CURRENT`` moved on and reads the new one (it never reports a
half-swapped checkpoint as corrupt).

Integrity: ``meta_sha256`` is the sha256 of the canonical JSON of every other field
(``json.dumps(meta, sort_keys=True, separators=(",", ":"))``, ASCII), so ANY edit of
``checkpoint.json`` (a step, a learning rate, a merge, a tensor hash) is refused, while reformatting
it is not; the tensor files are covered by their sha256, recorded in it. Then the JSON is checked
field by field (missing or unknown key, wrong type, value out of range; ``model_config`` by
building the ``ModelConfig``), every error a ``CheckpointError`` naming the file and the field.

No pickle: tensors are read with ``safetensors.torch.load`` from the bytes that were hashed,
everything else is JSON; ``torch.load`` is never called.


Useful: ``safetensors.torch.save_file(dict_of_tensors, filename)`` / ``load(bytes)`` (contiguous CPU
tensors, no two names sharing memory), ``os.replace`` (atomic, also onto an existing file),
``os.fsync`` (files, and a directory opened with ``os.open(d, os.O_RDONLY)``), ``hashlib.sha256``,
``uuid.uuid4().hex``, ``json.dumps(..., sort_keys=True, separators=(",", ":"))``,
``torch.get_rng_state()``, ``random.getstate()``. Spec: ``pytest --impl kata spec_tests/test_checkpoint.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors_from_bytes
from safetensors.torch import save_file

from . import checks

FORMAT = "bare-lm-checkpoint/2"
MODEL_FILE = "model.safetensors"
STATE_FILE = "state.safetensors"
JSON_FILE = "checkpoint.json"
POINTER_FILE = "CURRENT"
LOAD_ATTEMPTS = 100  # a load reads at most this many versions (the first included) while saves replace it


class CheckpointError(ValueError):
    """A checkpoint that is incomplete, corrupt, altered or of an unknown format."""


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
    """Write a new version of the checkpoint ``path`` and commit it (see the module docstring); returns ``path``.

    ``model`` must have a ``config`` with ``to_dict()`` (a TransformerLM). ``rng_state`` defaults
    to ``get_rng_state()`` now. ``data_state``, ``train_config`` and ``extra`` hold JSON values
    (dicts, lists, str, numbers, bools, None) and tensors, nested freely; the optimizer's
    ``state_dict()`` too (its dict keys are ints: keep them ints through JSON).
    Order: ``remove_leftovers(path)``; a fresh ``path/v-<16 hex>/`` with the weights first, then
    ``optimizer.state_dict()`` and ``tokenizer.to_dict()``, the state tensors, the JSON (its
    ``meta_sha256`` last), each file fsynced, then the directories; the pointer to a temporary file,
    fsynced, ``os.replace``d onto ``CURRENT`` (the commit); then ``remove_leftovers(path, keep=version)``.
    Never delete or change anything ``CURRENT`` names before the commit.
    Errors: ``checks.non_negative_int("step", step)``; ``path`` a file -> ValueError naming it; a
    file that cannot be written -> OSError (catch safetensors' ``SafetensorError`` and raise one).
    """
    raise NotImplementedError("save_checkpoint: write a new version dir, fsync, then os.replace the CURRENT pointer")


def remove_leftovers(path, keep: str | None = None) -> list[Path]:
    """Remove what interrupted or superseded saves left in the checkpoint directory ``path``.

    Removes every version directory but ``keep`` (default: the one ``CURRENT`` names; when there is
    no readable pointer, only temporary pointer files go), every temporary pointer file, and - once
    there is a current version - the files of an old-layout (``bare-lm-checkpoint/1``) checkpoint
    lying directly in ``path``; entries with other names are left alone. Returns what it removed.
    ``save_checkpoint`` calls it; call it yourself only with no save running.
    """
    raise NotImplementedError("remove_leftovers: delete the v-* dirs and .CURRENT.tmp-* files CURRENT does not name")


def has_checkpoint(path) -> bool:
    """True when ``path`` holds a committed checkpoint (its ``CURRENT`` names an existing version).

    Cheap: reads the pointer only, not the files (``load_checkpoint`` checks those). False for a
    path that does not exist or whose first save never committed.
    """
    raise NotImplementedError("has_checkpoint: is there a CURRENT naming an existing version directory?")


# --- load ---------------------------------------------------------------------------------------

def load_checkpoint(path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read the checkpoint ``CURRENT`` names in ``path`` (see ``Checkpoint`` for the fields).

    Read each file's bytes once; hash and parse those same bytes. Check, in order: the JSON parses
    to an object, ``format``, the keys (missing/unknown), ``meta_sha256``, each field's type and
    range, the tensor files' sha256; rebuild the model with ``ModelConfig.from_dict`` (its
    ValueError/TypeError becomes a CheckpointError naming ``model_config``) + ``TransformerLM``, fill
    the tied names from their source, ``load_state_dict(strict=True)`` (the tie survives).
    A save that commits while this reads makes it read again (``LOAD_ATTEMPTS`` reads in all, the first included): when
    a step fails, re-read ``CURRENT``; if it names another version, start over with that one.

    Errors: ``FileNotFoundError`` naming ``path`` when there is no committed checkpoint;
    ``CheckpointError`` (a ValueError) naming the file (and the field) for a missing file, unreadable
    JSON or tensors, a sha256 mismatch (corrupt or altered), a field that is missing, unknown, of
    the wrong type or out of range, an unknown format (a ``bare-lm-checkpoint/1`` directory
    included), or weights that do not fit the saved config.
    """
    raise NotImplementedError("load_checkpoint: read CURRENT, then that version's files; verify, rebuild; retry if CURRENT moved")


def load_model(path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from a checkpoint, the model in eval mode - for generation."""
    raise NotImplementedError("load_model: load_checkpoint, then model.eval()")
