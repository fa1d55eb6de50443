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
    """The global RNG states: torch CPU (uint8 tensor), every CUDA device (list), python's ``random``."""
    state = {"torch": torch.get_rng_state(), "python": _python_state_to_json(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what ``get_rng_state`` returned (CUDA states only where CUDA is available)."""
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8).cpu() for s in state["cuda"]])


def _python_state_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


# --- save ---------------------------------------------------------------------------------------

def save_checkpoint(path, model: torch.nn.Module, *, step: int, optimizer=None, tokenizer=None,
                    rng_state: dict | None = None, data_state: dict | None = None,
                    train_config: dict | None = None, extra: dict | None = None) -> Path:
    """Write the checkpoint directory ``path`` atomically (see the module docstring); returns ``path``.

    ``model`` must have a ``config`` with ``to_dict()`` (a TransformerLM). ``rng_state`` defaults
    to ``get_rng_state()`` now. ``data_state``, ``train_config`` and ``extra`` hold JSON values
    (dicts, lists, str, numbers, bools, None) and tensors, nested freely.
    """
    path = Path(path)
    checks.non_negative_int("step", step)
    if not hasattr(model, "config") or not hasattr(model.config, "to_dict"):
        raise TypeError(f"model must have a config with to_dict() (a TransformerLM), got {type(model).__name__}")
    rng_state = get_rng_state() if rng_state is None else rng_state
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _write_files(tmp, model, step, optimizer, tokenizer, rng_state, data_state, train_config, extra)
        _swap_in(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        old = path.parent / f".{path.name}.old"
        if not path.exists() and old.exists():
            os.replace(old, path)  # put the previous checkpoint back
        raise
    return path


def _write_files(directory: Path, model, step, optimizer, tokenizer, rng_state, data_state, train_config,
                 extra) -> None:
    """The three files of a checkpoint, each fsynced; the weights first."""
    weights, tied = _unique_state_dict(model)
    _save_tensors(weights, directory / MODEL_FILE)
    tensors: dict[str, torch.Tensor] = {}
    meta = {
        "format": FORMAT,
        "step": step,
        "model_config": model.config.to_dict(),
        "tied": tied,
        "optimizer": _to_json(optimizer.state_dict(), "optimizer", tensors) if optimizer is not None else None,
        "tokenizer": tokenizer.to_dict() if tokenizer is not None else None,
        "rng": _to_json(rng_state, "rng", tensors),
        "data": _to_json(data_state, "data", tensors),
        "train_config": _to_json(train_config, "train_config", tensors),
        "extra": _to_json(extra or {}, "extra", tensors),
    }
    _save_tensors(tensors, directory / STATE_FILE)
    meta["sha256"] = {name: _sha256(directory / name) for name in (MODEL_FILE, STATE_FILE)}
    _write_text(directory / JSON_FILE, json.dumps(meta, indent=1))
    _fsync_dir(directory)


def _swap_in(tmp: Path, path: Path) -> None:
    """Replace the directory ``path`` by ``tmp``; the previous one stays whole until the new one is in."""
    old = path.parent / f".{path.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    _fsync_dir(path.parent)
    if old.exists():
        shutil.rmtree(old)


def _unique_state_dict(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state_dict with each shared tensor once (safetensors refuses aliases), and the aliases."""
    weights, tied, seen = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if t.numel() > 0 and key in seen:
            tied[name] = seen[key]
            continue
        seen[key] = name
        weights[name] = t.detach().cpu().contiguous()
    return weights, tied


def _to_json(value, prefix: str, tensors: dict):
    """A JSON-safe copy of ``value``: tensors go to ``tensors[key]`` and become {"__tensor__": key}."""
    if isinstance(value, torch.Tensor):
        key = f"{prefix}"
        tensors[key] = value.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(value, dict):
        return {"__dict__": [[_to_json(k, f"{prefix}.k{i}", tensors), _to_json(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(value.items())]}
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{prefix}.{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot save a {type(value).__name__} in a checkpoint (at {prefix}); "
                    f"use JSON values and tensors")


def _from_json(value, tensors: dict):
    if isinstance(value, dict):
        if "__tensor__" in value:
            key = value["__tensor__"]
            if key not in tensors:
                raise CheckpointError(f"corrupt checkpoint: tensor {key!r} is missing from {STATE_FILE}")
            return tensors[key]
        return {_from_json(k, tensors): _from_json(v, tensors) for k, v in value["__dict__"]}
    if isinstance(value, list):
        return [_from_json(v, tensors) for v in value]
    return value


def _save_tensors(tensors: dict[str, torch.Tensor], file: Path) -> None:
    save_file(tensors, str(file))
    with open(file, "rb+") as f:
        os.fsync(f.fileno())


def _write_text(file: Path, text: str) -> None:
    with open(file, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(file: Path) -> str:
    h = hashlib.sha256()
    with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- load ---------------------------------------------------------------------------------------

def load_checkpoint(path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint directory written by ``save_checkpoint`` (see ``Checkpoint`` for the fields).

    Errors: ``FileNotFoundError`` naming ``path`` when there is no checkpoint; ``CheckpointError``
    (a ValueError) naming the file for a missing file (incomplete), unreadable JSON or tensors, a
    sha256 mismatch (corrupt), an unknown format, or weights that do not fit the saved config.
    """
    from .model import ModelConfig, TransformerLM

    path = Path(path)
    if not path.exists():
        old = path.parent / f".{path.name}.old"
        if not (old / JSON_FILE).exists():
            raise FileNotFoundError(f"no checkpoint at {path}")
        path = old  # a save was interrupted between its two renames: the previous one is here
    if not path.is_dir():
        raise CheckpointError(f"a checkpoint is a directory; {path} is not one")
    for name in (JSON_FILE, MODEL_FILE, STATE_FILE):
        if not (path / name).is_file():
            raise CheckpointError(f"incomplete checkpoint at {path}: {name} is missing")
    try:
        meta = json.loads((path / JSON_FILE).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"corrupt checkpoint: {path / JSON_FILE} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path / JSON_FILE}: not a {FORMAT} checkpoint")
    for name in (MODEL_FILE, STATE_FILE):
        if _sha256(path / name) != meta.get("sha256", {}).get(name):
            raise CheckpointError(f"corrupt checkpoint: {path / name} does not match its sha256 in {JSON_FILE}")
    weights = _load_tensors(path / MODEL_FILE)
    tensors = _load_tensors(path / STATE_FILE)

    config = ModelConfig.from_dict(meta["model_config"])
    model = TransformerLM(config)
    for alias, source in meta["tied"].items():
        weights[alias] = weights[source]
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{path / MODEL_FILE} does not fit the saved model config: {err}") from None
    model.to(device)

    tokenizer = None
    if meta["tokenizer"] is not None:
        from .tokenizer import Tokenizer
        tokenizer = Tokenizer.from_dict(meta["tokenizer"])
    return Checkpoint(
        model=model, model_config=config, step=meta["step"], tokenizer=tokenizer,
        optimizer_state=_from_json(meta["optimizer"], tensors),
        rng_state=_from_json(meta["rng"], tensors),
        data_state=_from_json(meta["data"], tensors),
        train_config=_from_json(meta["train_config"], tensors),
        extra=_from_json(meta["extra"], tensors))


def _load_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"corrupt checkpoint: cannot read {file} ({err})") from None


def load_model(path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from a checkpoint, the model in eval mode - for generation."""
    ckpt = load_checkpoint(path, device=device)
    ckpt.model.eval()
    return ckpt.model, ckpt.tokenizer
