"""The training loop: batches -> forward -> loss -> backward -> clip -> AdamW step, on a schedule.

One optimizer step (``train_step``) with gradient accumulation over ``k`` micro-batches::

    zero the gradients
    for each micro-batch (x, y):   loss_i = model(x, y).loss;   backward(loss_i / k)
                                   (with a loss_fn: loss_i = loss_fn(model(x).logits, y))
    N = clip_grad_norm(parameters, grad_clip)     (or just the norm when grad_clip is None)
    optimizer.step()

Dividing each micro-batch loss by ``k`` makes the accumulated gradient the gradient of the MEAN
loss, so ``k`` micro-batches of ``b`` sequences equal one batch of ``k * b`` (equal token counts).

``train(config, ...)``: batch ``s`` of the run is ``FixedLengthBatches(...).batch(s)`` (a pure
function of ``(seed, s)``), split into ``config.accum`` micro-batches; the learning rate of step
``s`` (0-based) is ``lr_schedule(s, lr, min_lr, warmup, schedule_steps or steps)``. Every ``eval_interval`` steps and
at the end the model is evaluated on the validation stream (``evaluate``)::

    val_loss = total nats / number of target tokens                        (loss per token)
    val_bpc  = total nats / ln 2 / number of characters of the val text     (bits per character)

where the characters are ``corpus.stream_characters(val_docs)`` (each document's characters plus
one for its end-of-text separator), the unit of the corpus's entropy floor.

**Exact resume.** The checkpoint (``out_dir/checkpoint``) holds the weights, the AdamW state, the
step, the torch RNG state (dropout), the batch sampler's state, the tokenizer, the train config
(whose ``steps``, ``warmup``, ``lr``, ``min_lr`` and ``schedule_steps`` fix the run's schedule when
it starts) and, in ``extra["data"]``, the fingerprint of the training data (``data_fingerprint``).
``train(config, resume=True)`` restores all of them and continues at the saved step, so N steps +
save + resume + N steps gives bit-identical weights to 2N steps in one go. (``stop_after`` ends a
run early, as an interruption would, without changing its schedule.) Resuming with a config whose
run-shaping fields (``RUN_FIELDS``) differ from the checkpoint's is a ValueError naming them; a
longer run is an *extension*: ``steps`` grows and ``schedule_steps`` keeps the old total, so the
extra steps run at the floor ``min_lr``. Resuming on other data is a ValueError unless
``allow_new_data=True``.

**Safety.** A fresh run refuses an ``out_dir`` that already holds a run (``FileExistsError``)
unless ``overwrite=True``. While ``train`` runs it holds an advisory lock (``fcntl.flock`` on
``out_dir/.lock``); a second trainer on the same directory gets ``RunInUseError`` at once.
A non-finite loss or gradient norm stops the step before the update (``DivergenceError``): nothing
is saved, the last checkpoint stays. A checkpoint is written every ``checkpoint_interval`` steps,
whenever ``checkpoint_minutes`` have passed since the last one, and at the end; SIGINT or SIGTERM
(in the main thread) finishes the current step, saves, and raises ``TrainingInterrupted``. A failed
write (a full disk) raises ``RunWriteError`` saying which checkpoint is left. A token cache that
cannot be read back is rebuilt with a warning.

**Log.** ``out_dir/log.jsonl``: one JSON object per logged step (every ``log_interval`` steps, every
evaluation step, the last step) with ``step`` (optimizer steps done), ``loss`` (train loss of that
step), ``lr``, ``grad_norm`` (before clipping), ``tokens_per_s`` (training throughput so far) and
``elapsed_s``; evaluation steps add ``val_loss`` and ``val_bpc``. A resumed run first drops the
records after its checkpoint's step (and a torn last line), then appends: every logged step once.
With matplotlib installed, ``out_dir/loss_curve.png`` plots the log at the end.

**Several processes.** Called in every process of a ``torchrun`` launch after
``distributed.setup()`` (a process group is initialized), ``train`` trains data-parallel: each rank
takes its shard of every global batch, the model is wrapped in ``DistributedDataParallel``, the
steps are ``distributed.train_step`` and the evaluations ``distributed.evaluate``; rank 0 alone
holds the lock and writes the log, the checkpoints and the token cache. ``batch_size`` stays the
GLOBAL batch (``world_size * accum`` must divide it), the sampler state is global, so a checkpoint
resumes under any world size (see ``distributed``). Without a process group nothing of it runs.
(Come back to this after the ``distributed`` component.)

Spec: ``pytest --impl kata spec_tests/test_train.py``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import signal
import threading
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checks
from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .corpus import stream_characters
from .data import (FixedLengthBatches, IGNORE_INDEX, cache_key, evaluation_batches, token_stream,
                   tokenize_documents)
from .model import ModelConfig, TransformerLM
from .optim import AdamW, clip_grad_norm, lr_schedule, param_groups

#: Named sizes: model fields (vocab_size comes from the tokenizer) and train fields.
PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {  # for tests: seconds
        "model": dict(context_length=32, n_layers=2, d_model=32, n_heads=2, dropout=0.0),
        "train": dict(steps=200, batch_size=16, lr=3e-3, min_lr=3e-4, warmup=20, eval_interval=100,
                      checkpoint_interval=50, vocab_size=300),
    },
    "small": {  # the default of `bare-lm train`: about 0.26 bits/char on the built-in corpus in minutes on 2 cores
        "model": dict(context_length=128, n_layers=2, d_model=64, n_heads=4, dropout=0.0, fast=True),
        "train": dict(steps=800, batch_size=16, lr=6e-3, min_lr=6e-4, warmup=50, eval_interval=200,
                      eval_batches=8, checkpoint_interval=100, vocab_size=512),
    },
    "medium": {  # a GPU, or patience
        "model": dict(context_length=256, n_layers=6, d_model=256, n_heads=8, dropout=0.1, fast=True),
        "train": dict(steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup=200, eval_interval=500,
                      eval_batches=20, checkpoint_interval=500, vocab_size=1024),
    },
}

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss_curve.png"
LOCK_FILE = ".lock"

#: TrainConfig fields that shape the weights of a run: fixed when it starts, checked on resume.
RUN_FIELDS = ("steps", "schedule_steps", "batch_size", "accum", "lr", "min_lr", "warmup", "weight_decay",
              "betas", "grad_clip", "vocab_size", "seed", "label_smoothing", "z_loss")


class DivergenceError(RuntimeError):
    """A non-finite loss, gradient norm or weight: the step was not applied. Attributes (None when
    unknown): ``step`` (the 1-based step that failed), ``loss``, ``grad_norm``, ``checkpoint_step``
    (the step of the checkpoint left in the run directory)."""

    step = loss = grad_norm = checkpoint_step = None


class TrainingInterrupted(KeyboardInterrupt):
    """SIGINT/SIGTERM stopped ``train`` after a step; the run was saved at ``step`` in ``checkpoint``
    (``signal_name``: "SIGINT" or "SIGTERM")."""

    step = checkpoint = signal_name = None


class RunInUseError(RuntimeError):
    """Another process holds the run directory's lock (``out_dir/.lock``)."""


class RunWriteError(OSError):
    """Writing the checkpoint or the log failed (a full disk, ...); the message says what is left."""


@dataclass
class TrainConfig:
    """Hyperparameters of a run (validated on construction; errors name the field).

    steps: optimizer steps of the whole run.
    schedule_steps: the schedule's total_steps (None: ``steps``); ``schedule_steps < steps`` is an
        extended run whose steps past ``schedule_steps`` use the floor ``min_lr``.
    batch_size: sequences per optimizer step, split into ``accum`` micro-batches (must divide it).
    lr, min_lr, warmup: ``lr_schedule(step, lr, min_lr, warmup, schedule_steps or steps)``;
        0 <= min_lr <= lr, warmup <= schedule_steps or steps.
    weight_decay, betas: AdamW's (decay only on ``param_groups``' first group).
    grad_clip: max global gradient norm, or None for no clipping.
    eval_interval: evaluate every this many steps (0: only at the end); eval_batches: batches per
        periodic evaluation (None: the whole validation stream; the final one always uses it all).
    log_interval: log every this many steps. checkpoint_interval: save every this many steps
        (0: no step-count saves); checkpoint_minutes: save also when this many minutes have passed
        since the last save (0: no timed saves); there is always a save at the end.
        vocab_size: of the BPE tokenizer trained when none is given.
    seed: model init, dropout and batches. device: "cpu", "cuda" or "cuda:N". out_dir: where the
        checkpoint, the log and the plot go.
    label_smoothing, z_loss: the training objective, ``loss.objective(label_smoothing, z_loss)``
        (label smoothing eps in [0, 1), z-loss coefficient >= 0); both 0: the model's own
        cross-entropy, exactly as without them. The validation loss stays the plain cross-entropy.
    compile: run the training steps through ``torch.compile`` (True: inductor; or a backend name
        such as "aot_eager"); False: eager. Not a run field: a run may resume either way.
    """

    steps: int = 1000
    batch_size: int = 32
    accum: int = 1
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0
    eval_interval: int = 250
    eval_batches: int | None = None
    log_interval: int = 10
    checkpoint_interval: int = 100
    checkpoint_minutes: float = 10.0
    schedule_steps: int | None = None
    vocab_size: int = 512
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs/latest"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    compile: bool | str = False

    def __post_init__(self):
        """Validate every field (ValueError/TypeError naming it): positive steps, batch_size, accum
        (dividing batch_size), log_interval, vocab_size; schedule_steps None or in [1, steps]; lr > 0;
        0 <= min_lr <= lr; 0 <= warmup <= total_schedule_steps; weight_decay >= 0; betas a pair in
        [0, 1); grad_clip None or > 0; eval_interval, checkpoint_interval, seed >= 0;
        checkpoint_minutes >= 0; eval_batches None or positive; device "cpu" / "cuda" / "cuda:N";
        label_smoothing in [0, 1); z_loss >= 0 (``checks.number_in_range``); compile a bool or a
        backend name (``checks.compile_backend("compile", ...)``)."""
        raise NotImplementedError("TrainConfig.__post_init__: check every field with checks.*")

    @property
    def total_schedule_steps(self) -> int:
        """The schedule's total_steps: ``schedule_steps`` when set, else ``steps``."""
        raise NotImplementedError("total_schedule_steps: schedule_steps when set, else steps")

    def to_dict(self) -> dict:
        """Every field by name (JSON-safe: betas as a list)."""
        raise NotImplementedError("TrainConfig.to_dict: dataclasses.asdict")

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of ``to_dict``; unknown keys are a ValueError naming them."""
        raise NotImplementedError("TrainConfig.from_dict: refuse unknown keys, then cls(**d)")


@dataclass
class TrainResult:
    """What ``train`` returns: the trained model and tokenizer, the final step, the final full
    validation ``val_loss`` (nats/token) and ``val_bpc`` (bits/char), the training throughput, the
    checkpoint directory, the log file, and the records logged by this call."""

    model: TransformerLM
    tokenizer: object
    step: int
    val_loss: float
    val_bpc: float
    tokens_per_s: float
    checkpoint: Path
    log_path: Path
    history: list[dict] = field(default_factory=list)


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, micro_batches: list,
               grad_clip: float | None = None, loss_fn=None) -> tuple[float, float]:
    """One optimizer step accumulated over ``micro_batches`` (a list of ``(x, y)``, each (b, T) long).

    ``loss_fn(logits (b, T, V), targets (b, T)) -> scalar tensor`` is the objective: each micro-batch
    loss is ``loss_fn(model(x)[0], y)`` (None: the model's own ``model(x, y)[1]``). Not callable:
    TypeError naming ``loss_fn``; a result that is not a 0-dim tensor: ValueError naming ``loss_fn``.

    Returns ``(loss, grad_norm)``: the mean of the micro-batch losses and the global gradient norm
    before clipping (``clip_grad_norm`` when ``grad_clip`` is set). The model is put in train mode.
    A non-finite loss or norm raises ``DivergenceError`` BEFORE ``optimizer.step()`` (weights and
    optimizer state unchanged; drop the gradients).
    """
    raise NotImplementedError("train_step: zero grads, backward(loss / k) per micro-batch, clip, check finite, step")


@torch.no_grad()
def evaluate(model: torch.nn.Module, stream: torch.Tensor, batch_size: int, max_batches: int | None = None,
             device: str | torch.device = "cpu") -> tuple[float, int]:
    """``(total nats, number of target tokens)`` of ``model`` on ``data.evaluation_batches(stream, ...)``
    (every target of ``stream`` once; only the first ``max_batches`` batches when given). Eval mode,
    no gradients; the model's previous mode is restored. Padded targets are ``IGNORE_INDEX``."""
    raise NotImplementedError("evaluate: sum loss * (number of real targets) over the evaluation batches")


def data_fingerprint(train_docs: list[str], val_docs: list[str]) -> str:
    """SHA-256 (hex) of the train and the validation documents (length-prefixed UTF-8, in order):
    b"train" + count (8 bytes little-endian), then per document its byte length (8 bytes) and bytes;
    the same for b"val"."""
    raise NotImplementedError("data_fingerprint: hashlib.sha256 over length-prefixed UTF-8 documents")


def find_special_text(docs: list[str], specials) -> tuple[int, int, str] | None:
    """The first ``(document index, 1-based line, special token)`` where a special token's TEXT
    occurs in ``docs``, or None."""
    raise NotImplementedError("find_special_text: str.find per special token; the line is 1 + the newlines before it")


def train(config: TrainConfig, model_config: ModelConfig | dict | None = None, *,
          train_docs: list[str] | None = None, val_docs: list[str] | None = None, tokenizer=None,
          resume: bool = False, stop_after: int | None = None, progress: bool = False,
          print_fn=None, overwrite: bool = False, allow_new_data: bool = False,
          special_in_text: str = "error") -> TrainResult:
    """Train (or, with ``resume``, continue) a run in ``config.out_dir``; see the module docstring.

    model_config: a ``ModelConfig`` or a dict of its fields without ``vocab_size`` (taken from the
        tokenizer); ignored when resuming (the checkpoint's is used).
    train_docs, val_docs: lists of documents (strings), both required.
    tokenizer: a trained Tokenizer with ``ENDOFTEXT``; None trains a BPE tokenizer of
        ``config.vocab_size`` on ``train_docs`` (ignored when resuming: the checkpoint's is used).
    stop_after: stop after this step (as an interruption would), with a checkpoint; the schedule
        still runs to ``config.steps``.
    progress: show a tqdm progress bar. print_fn: where evaluation lines and warnings go (default: nothing).
    overwrite: a fresh run may replace the run already in ``out_dir`` (its checkpoint and log).
    allow_new_data: resuming on documents other than the run's is allowed (the run continues on them).
    special_in_text: a special token's text inside a document: "error" (ValueError naming the
        document and line) or "text" (encoded as plain text, never as the special token).

    Errors: ``FileExistsError`` (fresh run over an existing run), ``RunInUseError`` (locked),
    ``ValueError`` (resume with other run fields or other data; ``out_dir`` a file),
    ``DivergenceError``, ``TrainingInterrupted``, ``RunWriteError``.

    Fresh run: ``torch.manual_seed(config.seed)`` right before building the model. The stream is
    ``data.token_stream(data.tokenize_documents(docs, tokenizer), eot)``; batches come from
    ``data.FixedLengthBatches(train_stream, batch_size, T, seed)``; the optimizer is
    ``AdamW(param_groups(model, weight_decay), lr, betas)``. Step ``s`` sets every group's lr to
    ``lr_schedule(s, lr, min_lr, warmup, config.total_schedule_steps)``. Checkpoint
    (``out_dir/checkpoint``) every ``checkpoint_interval`` steps, after ``checkpoint_minutes``, on a
    signal and at the end, with the RNG state, ``batches.state_dict()``, ``config.to_dict()`` and
    ``extra={"data": {"sha256": data_fingerprint(...), ...}}``. Resume: load it, check RUN_FIELDS
    and the data, drop the log records after its step, restore optimizer, sampler and RNG, continue.
    Hold ``out_dir/LOCK_FILE`` with ``fcntl.flock`` for the whole call. The model's device is
    ``config.device``; "cuda" without CUDA is a ValueError naming cuda.
    """
    raise NotImplementedError("train: build (or restore) everything, then loop: lr, batch, train_step, log, eval, save")
