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

_VERSION = re.compile(r"v-[0-9a-f]{16}")
_LEFTOVER = re.compile(r"(v-[0-9a-f]{16}|\.CURRENT\.tmp-[0-9a-f]{16})")
_META_KEYS = ("format", "step", "model_config", "tied", "optimizer", "tokenizer", "rng", "data",
              "train_config", "extra", "sha256", "meta_sha256")


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
    version, internal, gauss = state  # gauss: the second normal of random.gauss's pair, or None
    return [version, list(internal), gauss]


# --- save ---------------------------------------------------------------------------------------

def save_checkpoint(path, model: torch.nn.Module, *, step: int, optimizer=None, tokenizer=None,
                    rng_state: dict | None = None, data_state: dict | None = None,
                    train_config: dict | None = None, extra: dict | None = None) -> Path:
    """Write a new version of the checkpoint ``path`` and commit it (see the module docstring); returns ``path``.

    ``model`` must have a ``config`` with ``to_dict()`` (a TransformerLM). ``rng_state`` defaults
    to ``get_rng_state()`` now. ``data_state``, ``train_config`` and ``extra`` hold JSON values
    (dicts, lists, str, numbers, bools, None) and tensors, nested freely. Leftovers of earlier
    (interrupted) saves in ``path`` are removed. One writer at a time per ``path``.
    """
    path = Path(path)
    checks.non_negative_int("step", step)
    if not hasattr(model, "config") or not hasattr(model.config, "to_dict"):
        raise TypeError(f"model must have a config with to_dict() (a TransformerLM), got {type(model).__name__}")
    if path.exists() and not path.is_dir():
        raise ValueError(f"path must be a checkpoint directory; {path} is a file")
    rng_state = get_rng_state() if rng_state is None else rng_state
    path.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    version = f"v-{uuid.uuid4().hex[:16]}"
    (path / version).mkdir()
    _write_files(path / version, model, step, optimizer, tokenizer, rng_state, data_state, train_config, extra)
    _fsync_dir(path)  # the new directory's entry is on disk before the pointer names it
    pointer = path / f".{POINTER_FILE}.tmp-{uuid.uuid4().hex[:16]}"
    _write_bytes(pointer, f"{version}\n".encode("ascii"))
    os.replace(pointer, path / POINTER_FILE)  # THE commit point
    _fsync_dir(path)
    remove_leftovers(path, keep=version)  # the previous version
    return path


def remove_leftovers(path, keep: str | None = None) -> list[Path]:
    """Remove what interrupted or superseded saves left in the checkpoint directory ``path``.

    Removes every version directory but ``keep`` (default: the one ``CURRENT`` names; when there is
    no readable pointer, only temporary pointer files go), every temporary pointer file, and - once
    there is a current version - the files of an old-layout (``bare-lm-checkpoint/1``) checkpoint
    lying directly in ``path``; entries with other names are left alone. Returns what it removed.
    ``save_checkpoint`` calls it; call it yourself only with no save running.
    """
    path = Path(path)
    if keep is None:
        try:
            keep = _read_pointer(path)
        except (OSError, CheckpointError):
            keep = None
    removed = []
    for entry in sorted(path.iterdir()) if path.is_dir() else []:
        old_layout = keep is not None and entry.name in (JSON_FILE, MODEL_FILE, STATE_FILE)
        if not (_LEFTOVER.fullmatch(entry.name) or old_layout) or entry.name == keep:
            continue
        if keep is None and entry.name.startswith("v-"):
            continue  # no pointer to tell the current version from a leftover: remove none
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def has_checkpoint(path) -> bool:
    """True when ``path`` holds a committed checkpoint (its ``CURRENT`` names an existing version).

    Cheap: reads the pointer only, not the files (``load_checkpoint`` checks those). False for a
    path that does not exist or whose first save never committed.
    """
    try:
        return (Path(path) / _read_pointer(Path(path)) / JSON_FILE).is_file()
    except (OSError, CheckpointError):
        return False


def _write_files(directory: Path, model, step, optimizer, tokenizer, rng_state, data_state, train_config,
                 extra) -> None:
    """The three files of a checkpoint, each fsynced, then the directory; the weights first."""
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
    meta["sha256"] = {name: _sha256((directory / name).read_bytes()) for name in (MODEL_FILE, STATE_FILE)}
    meta["meta_sha256"] = _meta_sha256(meta)
    _write_bytes(directory / JSON_FILE, json.dumps(meta, indent=1).encode("utf-8"))
    _fsync_dir(directory)


def _meta_sha256(meta: dict) -> str:
    """sha256 of the canonical JSON of every field but ``meta_sha256``: any edit changes it, formatting not."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return _sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("ascii"))


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


def _save_tensors(tensors: dict[str, torch.Tensor], file: Path) -> None:
    try:
        save_file(tensors, str(file))
    except SafetensorError as err:  # safetensors' own I/O error (a full disk, a file size limit)
        raise OSError(f"cannot write {file}: {err}") from None
    with open(file, "rb+") as f:
        os.fsync(f.fileno())


def _write_bytes(file: Path, data: bytes) -> None:
    with open(file, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- load ---------------------------------------------------------------------------------------

def load_checkpoint(path, device: str | torch.device = "cpu") -> Checkpoint:
    """Read the checkpoint ``CURRENT`` names in ``path`` (see ``Checkpoint`` for the fields).

    A save that commits while this reads makes it read again (``LOAD_ATTEMPTS`` reads in all, the first included): the
    result is always one whole checkpoint, current at some instant of the call. Leftovers of
    interrupted saves are ignored.

    Errors: ``FileNotFoundError`` naming ``path`` when there is no committed checkpoint;
    ``CheckpointError`` (a ValueError) naming the file (and the field) for a missing file, unreadable
    JSON or tensors, a sha256 mismatch (corrupt or altered), a field that is missing, unknown, of
    the wrong type or out of range, an unknown format, or weights that do not fit the saved config.
    """
    path = Path(path)
    for _ in range(LOAD_ATTEMPTS):
        version = _read_pointer(path)
        try:
            return _load_version(path / version, device)
        except (OSError, CheckpointError):
            try:
                moved_on = _read_pointer(path) != version
            except (OSError, CheckpointError):
                moved_on = False
            if not moved_on:
                raise  # nothing replaced it while we read: the error is the checkpoint's own
    raise CheckpointError(f"{path} was replaced {LOAD_ATTEMPTS} times while being loaded; "
                          f"is a writer saving it in a tight loop?")


def _read_pointer(path: Path) -> str:
    """The version ``path/CURRENT`` names; FileNotFoundError when there is no committed checkpoint."""
    pointer = path / POINTER_FILE
    try:
        text = pointer.read_bytes()
    except FileNotFoundError:
        if (path / JSON_FILE).is_file():
            raise CheckpointError(
                f"{path / JSON_FILE} is an old-layout checkpoint (bare-lm-checkpoint/1, no {POINTER_FILE} "
                f"pointer); this version reads {FORMAT} only: load it with the bare-lm version that "
                f"wrote it and save it again, or train again") from None
        raise FileNotFoundError(f"no checkpoint at {path} ({pointer} does not exist)") from None
    except NotADirectoryError:
        raise CheckpointError(f"a checkpoint is a directory; {path} is not one") from None
    version = text.decode("ascii", errors="replace").strip()
    if not _VERSION.fullmatch(version):
        raise CheckpointError(f"corrupt checkpoint: {pointer} must hold a version name v-<16 hex digits>, "
                              f"got {text[:40]!r}")
    return version


def _load_version(directory: Path, device) -> Checkpoint:
    from .model import ModelConfig, TransformerLM

    if not directory.is_dir():
        raise CheckpointError(f"incomplete checkpoint: {directory.parent / POINTER_FILE} names "
                              f"{directory.name}, which does not exist")
    data = {}
    for name in (JSON_FILE, MODEL_FILE, STATE_FILE):
        try:
            data[name] = (directory / name).read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"incomplete checkpoint at {directory}: {name} is missing") from None
    file = directory / JSON_FILE
    meta = _read_meta(data[JSON_FILE], file)
    for name in (MODEL_FILE, STATE_FILE):
        if _sha256(data[name]) != meta["sha256"][name]:
            raise CheckpointError(f"corrupt checkpoint: {directory / name} does not match its sha256 in {file}")
    weights = _load_tensors(data[MODEL_FILE], directory / MODEL_FILE)
    tensors = _load_tensors(data[STATE_FILE], directory / STATE_FILE)

    try:
        config = ModelConfig.from_dict(meta["model_config"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{file}: model_config: {err}") from None
    model = TransformerLM(config)
    for alias, source in meta["tied"].items():
        if source not in weights or alias in weights:
            raise CheckpointError(f"{file}: tied: {alias!r} -> {source!r} does not name a stored weight "
                                  f"of {MODEL_FILE} (or the alias is stored too)")
        weights[alias] = weights[source]
    try:
        model.load_state_dict(weights, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{directory / MODEL_FILE} does not fit the saved model config: {err}") from None
    model.to(device)

    tokenizer = None
    if meta["tokenizer"] is not None:
        from .tokenizer import Tokenizer
        try:
            tokenizer = Tokenizer.from_dict(meta["tokenizer"])
        except (TypeError, ValueError, KeyError, IndexError) as err:
            raise CheckpointError(f"{file}: tokenizer: {err}") from None
    fields = {key: _from_json(meta[key], tensors, key, file) for key in ("optimizer", "rng", "data",
                                                                         "train_config", "extra")}
    for key, kinds in (("optimizer", (dict, type(None))), ("rng", (dict, type(None))),
                       ("train_config", (dict, type(None))), ("extra", (dict,))):
        if not isinstance(fields[key], kinds):
            raise CheckpointError(f"{file}: {key} must be {' or '.join(_kind(k) for k in kinds)}, "
                                  f"got {_kind(type(fields[key]))}")
    if fields["rng"] is not None and not isinstance(fields["rng"].get("torch"), torch.Tensor):
        raise CheckpointError(f"{file}: rng must hold the torch RNG state as a tensor under 'torch'")
    return Checkpoint(
        model=model, model_config=config, step=meta["step"], tokenizer=tokenizer,
        optimizer_state=fields["optimizer"], rng_state=fields["rng"], data_state=fields["data"],
        train_config=fields["train_config"], extra=fields["extra"])


def _read_meta(data: bytes, file: Path) -> dict:
    """``checkpoint.json`` parsed, its ``meta_sha256`` verified and every field checked."""
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"corrupt checkpoint: {file} is not valid JSON ({err})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{file}: must hold a JSON object, got {_kind(type(meta))}")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{file}: format must be {FORMAT!r}, got {meta.get('format')!r}")
    missing = [k for k in _META_KEYS if k not in meta]
    unknown = sorted(set(meta) - set(_META_KEYS))
    if missing or unknown:
        raise CheckpointError(f"{file}: " + "; ".join(
            ([f"missing key(s) {missing}"] if missing else []) + ([f"unknown key(s) {unknown}"] if unknown else [])))
    if meta["meta_sha256"] != _meta_sha256(meta):
        raise CheckpointError(f"corrupt or altered checkpoint: the content of {file} does not match its "
                              f"meta_sha256 (a field was edited after the save)")
    if isinstance(meta["step"], bool) or not isinstance(meta["step"], int) or meta["step"] < 0:
        raise CheckpointError(f"{file}: step must be an int >= 0, got {meta['step']!r}")
    for key in ("model_config", "tied", "sha256"):
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"{file}: {key} must be a JSON object, got {_kind(type(meta[key]))}")
    if not all(isinstance(a, str) and isinstance(s, str) for a, s in meta["tied"].items()):
        raise CheckpointError(f"{file}: tied must map weight names to weight names (strings)")
    if sorted(meta["sha256"]) != sorted((MODEL_FILE, STATE_FILE)) or not all(
            isinstance(h, str) and re.fullmatch(r"[0-9a-f]{64}", h) for h in meta["sha256"].values()):
        raise CheckpointError(f"{file}: sha256 must map {MODEL_FILE} and {STATE_FILE} to 64 hex digits")
    if meta["tokenizer"] is not None and not isinstance(meta["tokenizer"], dict):
        raise CheckpointError(f"{file}: tokenizer must be a JSON object or null, got {_kind(type(meta['tokenizer']))}")
    return meta


def _from_json(value, tensors: dict, where: str, file: Path):
    """The inverse of ``_to_json``; a malformed node is a CheckpointError naming its place."""
    if isinstance(value, dict):
        if set(value) == {"__tensor__"}:
            key = value["__tensor__"]
            if not isinstance(key, str) or key not in tensors:
                raise CheckpointError(f"{file}: {where}: tensor {key!r} is missing from {STATE_FILE}")
            return tensors[key]
        pairs = value.get("__dict__") if set(value) == {"__dict__"} else None
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise CheckpointError(f"{file}: {where}: an encoded value must be {{\"__tensor__\": key}} or "
                                  f"{{\"__dict__\": [[key, value], ...]}}, got keys {sorted(value)}")
        out = {}
        for i, (k, v) in enumerate(pairs):
            k = _from_json(k, tensors, f"{where}.k{i}", file)
            try:
                out[k] = _from_json(v, tensors, f"{where}.{i}", file)
            except TypeError:
                raise CheckpointError(f"{file}: {where}: key {k!r} cannot be a dict key") from None
        return out
    if isinstance(value, list):
        return [_from_json(v, tensors, f"{where}.{i}", file) for i, v in enumerate(value)]
    return value


def _kind(t: type) -> str:
    return {dict: "a JSON object", list: "a list", str: "a string", int: "an int", float: "a number",
            bool: "a bool", type(None): "null"}.get(t, t.__name__)


def _load_tensors(data: bytes, file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_tensors_from_bytes(data)
    except (SafetensorError, OSError, ValueError, KeyError) as err:  # KeyError: a dtype torch lacks
        raise CheckpointError(f"corrupt checkpoint: cannot read {file} ({err})") from None


def load_model(path, device: str | torch.device = "cpu"):
    """``(model, tokenizer)`` from a checkpoint, the model in eval mode - for generation."""
    ckpt = load_checkpoint(path, device=device)
    ckpt.model.eval()
    return ckpt.model, ckpt.tokenizer
