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
"""

from __future__ import annotations

import contextlib
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
        checks.positive_int("steps", self.steps)
        if self.schedule_steps is not None:
            checks.positive_int("schedule_steps", self.schedule_steps)
            if self.schedule_steps > self.steps:
                raise ValueError(f"schedule_steps must be <= steps ({self.steps}), got {self.schedule_steps}")
        checks.positive_int("batch_size", self.batch_size)
        checks.positive_int("accum", self.accum)
        if self.batch_size % self.accum:
            raise ValueError(f"accum must divide batch_size ({self.batch_size}), got {self.accum}")
        checks.number_in_range("lr", self.lr, 0.0, None, low_inclusive=False)
        checks.number_in_range("min_lr", self.min_lr, 0.0, self.lr)
        checks.non_negative_int("warmup", self.warmup)
        if self.warmup > self.total_schedule_steps:
            raise ValueError(f"warmup must be <= steps ({self.total_schedule_steps}), got {self.warmup}")
        checks.number_in_range("weight_decay", self.weight_decay, 0.0, None)
        self.betas = tuple(self.betas)
        if len(self.betas) != 2:
            raise ValueError(f"betas must be a pair, got {self.betas!r}")
        for i, beta in enumerate(self.betas):
            checks.number_in_range(f"betas[{i}]", beta, 0.0, 1.0, high_inclusive=False)
        if self.grad_clip is not None:
            checks.number_in_range("grad_clip", self.grad_clip, 0.0, None, low_inclusive=False)
        checks.non_negative_int("eval_interval", self.eval_interval)
        if self.eval_batches is not None:
            checks.positive_int("eval_batches", self.eval_batches)
        checks.positive_int("log_interval", self.log_interval)
        checks.non_negative_int("checkpoint_interval", self.checkpoint_interval)
        checks.number_in_range("checkpoint_minutes", self.checkpoint_minutes, 0.0, None)
        checks.positive_int("vocab_size", self.vocab_size)
        checks.non_negative_int("seed", self.seed)
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.split(":")[0] == "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not isinstance(self.out_dir, (str, Path)):
            raise TypeError(f"out_dir must be a path, got {type(self.out_dir).__name__}")
        self.out_dir = str(self.out_dir)
        checks.number_in_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_inclusive=False)
        checks.number_in_range("z_loss", self.z_loss, 0.0, None)
        checks.compile_backend("compile", self.compile)

    @property
    def total_schedule_steps(self) -> int:
        """The schedule's total_steps: ``schedule_steps`` when set, else ``steps``."""
        return self.steps if self.schedule_steps is None else self.schedule_steps

    def to_dict(self) -> dict:
        """Every field by name (JSON-safe)."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        """The inverse of ``to_dict``; unknown keys are a ValueError naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**d)


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

    ``loss_fn(logits (b, T, V), targets (b, T)) -> scalar`` is the objective (e.g.
    ``loss.objective(label_smoothing=0.1)``); None: the model's own loss, ``model(x, y)[1]``
    (cross-entropy, targets -100 ignored). Returns ``(loss, grad_norm)``: the mean of the micro-batch losses and the global gradient norm
    before clipping. The model is put in train mode. A non-finite loss or norm raises
    ``DivergenceError`` BEFORE ``optimizer.step()``: weights and optimizer state stay as they were.
    """
    if not micro_batches:
        raise ValueError("micro_batches must hold at least one (x, y) pair")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable as loss_fn(logits, targets) -> scalar tensor, or None; "
                        f"got {type(loss_fn).__name__}")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    k = len(micro_batches)
    total = 0.0
    for x, y in micro_batches:
        loss = model(x, y)[1] if loss_fn is None else _objective(loss_fn, model(x)[0], y)   # ()
        (loss / k).backward()              # the mean over micro-batches, not the sum
        total += loss.item() / k
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip is not None:
        norm = clip_grad_norm(params, grad_clip)
    else:
        norm = math.sqrt(sum(float(p.grad.detach().double().pow(2).sum()) for p in params))
    if not (math.isfinite(total) and math.isfinite(norm)):
        optimizer.zero_grad(set_to_none=True)   # the divergent gradients are dropped, not applied
        raise _with(DivergenceError(f"non-finite loss ({total}) or gradient norm ({norm}); the update was not "
                                    f"applied"), loss=total, grad_norm=norm)
    optimizer.step()
    return total, norm


def _objective(loss_fn, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``loss_fn(logits (b, T, V), targets (b, T))``, which must be a scalar tensor."""
    loss = loss_fn(logits, targets)
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise ValueError(f"loss_fn must return a scalar tensor (shape ()), got {shape}")
    return loss


@torch.no_grad()
def evaluate(model: torch.nn.Module, stream: torch.Tensor, batch_size: int, max_batches: int | None = None,
             device: str | torch.device = "cpu") -> tuple[float, int]:
    """``(total nats, number of target tokens)`` of ``model`` on ``data.evaluation_batches(stream, ...)``
    (every target of ``stream`` once; only the first ``max_batches`` batches when given). Eval mode,
    no gradients; the model's previous mode is restored."""
    was_training = model.training
    model.eval()
    nats, count = 0.0, 0
    batches = evaluation_batches(stream, batch_size, model.config.context_length)
    for x, y in batches[:max_batches]:
        x, y = x.to(device), y.to(device)
        _, loss = model(x, y)                      # mean over the non-ignored targets
        n = int((y != IGNORE_INDEX).sum())
        nats += float(loss) * n
        count += n
    model.train(was_training)
    return nats, count


def data_fingerprint(train_docs: list[str], val_docs: list[str]) -> str:
    """SHA-256 (hex) of the train and the validation documents (length-prefixed UTF-8, in order)."""
    h = hashlib.sha256()
    for name, docs in ((b"train", train_docs), (b"val", val_docs)):
        h.update(name + len(docs).to_bytes(8, "little"))
        for doc in docs:
            data = doc.encode("utf-8", errors="surrogatepass")
            h.update(len(data).to_bytes(8, "little"))
            h.update(data)
    return h.hexdigest()


def find_special_text(docs: list[str], specials) -> tuple[int, int, str] | None:
    """The first ``(document index, 1-based line, special token)`` where a special token's TEXT
    occurs in ``docs``, or None."""
    for i, doc in enumerate(docs):
        hits = [(doc.find(s), s) for s in specials if s in doc]
        if hits:
            pos, s = min(hits)
            return i, doc.count("\n", 0, pos) + 1, s
    return None


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
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not train_docs or not val_docs:
        raise ValueError("train_docs and val_docs must both be non-empty lists of documents")
    if stop_after is not None:
        checks.positive_int("stop_after", stop_after)
    if special_in_text not in ("error", "text"):
        raise ValueError(f"special_in_text must be 'error' or 'text', got {special_in_text!r}")
    device = _device(config.device)
    rank, world_size = _world()
    if world_size > 1:
        from .distributed import check_world_size
        check_world_size(config.batch_size, config.accum, world_size)
    say = (print_fn if rank == 0 else None) or (lambda *args: None)
    progress = progress and rank == 0
    out = Path(config.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    lock = _lock_run(out) if rank == 0 else None       # one lock per run: rank 0's
    try:
        return _train_locked(config, model_config, train_docs, val_docs, tokenizer, resume, stop_after,
                             progress, say, overwrite, allow_new_data, special_in_text, device, out)
    finally:
        _unlock_run(lock)


def _train_locked(config, model_config, train_docs, val_docs, tokenizer, resume, stop_after, progress, say,
                  overwrite, allow_new_data, special_in_text, device, out) -> TrainResult:
    from .tokenizer import ENDOFTEXT, Tokenizer

    rank, world_size = _world()
    if world_size > 1:                       # data-parallel: the steps and evaluations of `distributed`
        from . import distributed
        step_fn, evaluate_fn, first = distributed.train_step, distributed.evaluate, distributed.rank_zero_first
    else:
        step_fn, evaluate_fn, first = train_step, evaluate, contextlib.nullcontext
    main = rank == 0                         # rank 0 alone writes the log and the checkpoints

    ckpt_path, log_path = out / CHECKPOINT_DIR, out / LOG_FILE
    fingerprint = data_fingerprint(train_docs, val_docs)

    # --- model, tokenizer, optimizer, sampler: fresh or restored ---
    if resume:
        ckpt = load_checkpoint(ckpt_path, device=device)
        _check_same_run(config, ckpt.train_config or {}, ckpt.step)
        saved_data = (ckpt.extra or {}).get("data", {})
        if saved_data.get("sha256") not in (None, fingerprint) and not allow_new_data:
            raise ValueError(f"resume: the training data differs from the data the run in {out} was trained on "
                             f"(sha256 {saved_data['sha256'][:12]}... vs {fingerprint[:12]}...); "
                             f"pass allow_new_data=True to continue on the new data")
        model, tokenizer, start = ckpt.model, ckpt.tokenizer, ckpt.step
        if main:
            _truncate_log(log_path, start)      # the records after the checkpoint are logged again
    else:
        if _holds_run(out) and not overwrite:
            raise FileExistsError(f"{out} already holds a run ({CHECKPOINT_DIR}/ or {LOG_FILE}); resume it "
                                  f"(resume=True) or replace it (overwrite=True)")
        if tokenizer is None and main:
            say(f"training a BPE tokenizer (vocab {config.vocab_size}) on {len(train_docs)} documents")
            tokenizer = Tokenizer.train(train_docs, config.vocab_size, special_tokens=[ENDOFTEXT])
        if world_size > 1:
            tokenizer = distributed.broadcast_object(tokenizer)    # rank 0's tokenizer on every rank
        if ENDOFTEXT not in tokenizer.special_tokens:
            raise ValueError(f"the tokenizer must have the special token {ENDOFTEXT!r}")
        if not isinstance(model_config, ModelConfig):
            model_config = ModelConfig(vocab_size=tokenizer.vocab_size, **(model_config or {}))
        torch.manual_seed(config.seed)
        model = TransformerLM(model_config).to(device)
        start = 0
        if main:
            shutil.rmtree(ckpt_path, ignore_errors=True)   # overwrite: the old run goes
            _write_log(log_path, "", "w")                  # a fresh run starts a fresh log
    eot = tokenizer.special_tokens[ENDOFTEXT]
    T = model.config.context_length
    encoder = _encoder(tokenizer, train_docs, val_docs, special_in_text)
    cache = out / "tokens"
    with first():                            # rank 0 writes the token cache, the others then read it
        train_stream = token_stream(_tokenize(train_docs, encoder, cache, say), eot)
        val_stream = token_stream(_tokenize(val_docs, encoder, cache, say), eot)
    val_chars = stream_characters(list(val_docs))
    batches = FixedLengthBatches(train_stream, config.batch_size, T, seed=config.seed)   # the GLOBAL batches
    net = distributed.wrap(model, device) if world_size > 1 else model     # what the steps run
    net = checks.compiled(net, checks.compile_backend("compile", config.compile))   # saved: `model`, never `net`
    step_kw = {}
    if config.label_smoothing or config.z_loss:                        # both 0: the model's own loss
        from .loss import objective
        step_kw["loss_fn"] = objective(config.label_smoothing, config.z_loss)
    optimizer = AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    saved_step = None
    if resume:
        batches.load_state_dict(ckpt.data_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        set_rng_state(ckpt.rng_state)
        saved_step = start
    data_info = {"sha256": fingerprint, "train_documents": len(train_docs), "val_documents": len(val_docs),
                 "special_in_text": special_in_text}

    def val_metrics(max_batches=None):
        nats, n = evaluate_fn(model, val_stream, config.batch_size, max_batches, device)
        total_targets = val_stream.numel() - 1
        return nats / max(n, 1), nats / math.log(2) / (val_chars * n / total_targets)

    def save(step):
        nonlocal saved_step, saved_at
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise _with(DivergenceError(_diverged_message(step, "a weight is not finite", config, saved_step,
                                                          ckpt_path)), step=step, checkpoint_step=saved_step)
        if not main:
            saved_step, saved_at = step, time.monotonic()
            return
        try:
            save_checkpoint(ckpt_path, model, step=step, optimizer=optimizer, tokenizer=tokenizer,
                            rng_state=get_rng_state(), data_state=batches.state_dict(),
                            train_config=config.to_dict(), extra={"data": data_info})
        except OSError as err:
            raise RunWriteError(err.errno, f"could not write the checkpoint {ckpt_path} at step {step} "
                                f"({err.strerror or err}); {_what_is_left(ckpt_path)}") from err
        saved_step, saved_at = step, time.monotonic()

    # --- the loop ---
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    history, tokens, train_time, t0 = [], 0, 0.0, time.perf_counter()
    saved_at = time.monotonic()
    bar = _progress(range(start, end), progress, start, config.steps)
    with _DeferredSignals() as signals:
        for step in bar:
            lr = lr_schedule(step, config.lr, config.min_lr, config.warmup, config.total_schedule_steps)
            for group in optimizer.param_groups:
                group["lr"] = lr
            tick = time.perf_counter()
            x, y = next(batches)                                         # (B, T) each
            if world_size > 1:
                x, y = distributed.shard((x, y), rank, world_size)       # (B / W, T): this rank's rows
            x, y = x.to(device), y.to(device)
            micro = list(zip(x.chunk(config.accum), y.chunk(config.accum)))
            done = step + 1
            try:
                loss, grad_norm = step_fn(net, optimizer, micro, config.grad_clip, **step_kw)
            except DivergenceError as err:
                what = f"loss {err.loss}, gradient norm {err.grad_norm}"
                raise _with(DivergenceError(_diverged_message(done, what, config, saved_step, ckpt_path)), step=done,
                            loss=err.loss, grad_norm=err.grad_norm, checkpoint_step=saved_step) from None
            train_time += time.perf_counter() - tick
            tokens += x.numel() * world_size                             # every rank's tokens
            last = done == end
            evaluating = last or (config.eval_interval and done % config.eval_interval == 0)
            if evaluating or last or done % config.log_interval == 0:
                record = {"step": done, "loss": loss, "lr": lr, "grad_norm": grad_norm,
                          "tokens_per_s": tokens / max(train_time, 1e-9), "elapsed_s": time.perf_counter() - t0}
                if evaluating:
                    val_loss, val_bpc = val_metrics(None if last else config.eval_batches)
                    record.update(val_loss=val_loss, val_bpc=val_bpc)
                    say(f"step {done}: train loss {loss:.4f}, val loss {val_loss:.4f}, val bits/char {val_bpc:.4f}")
                history.append(record)
                if main:
                    _write_log(log_path, json.dumps(record) + "\n", "a")
                if progress:
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
            timed = config.checkpoint_minutes and time.monotonic() - saved_at >= 60 * config.checkpoint_minutes
            if last or timed or (config.checkpoint_interval and done % config.checkpoint_interval == 0):
                save(done)
            stop = distributed.any_rank(bool(signals.received)) if world_size > 1 else signals.received
            if stop and not last:
                if saved_step != done:
                    save(done)
                raise _with(TrainingInterrupted(f"{signals.received or 'SIGTERM'}: stopped after step {done}; the run is "
                                                f"saved in {ckpt_path}"), step=done, checkpoint=ckpt_path,
                            signal_name=signals.received or "SIGTERM")
    val_loss, val_bpc = (history[-1]["val_loss"], history[-1]["val_bpc"]) if history else val_metrics()
    try:
        if main:
            _plot(log_path, out / PLOT_FILE)
    except (OSError, ValueError) as err:
        say(f"warning: no loss curve ({err})")
    return TrainResult(model=model, tokenizer=tokenizer, step=max(start, end), val_loss=val_loss,
                       val_bpc=val_bpc, tokens_per_s=tokens / max(train_time, 1e-9), checkpoint=ckpt_path,
                       log_path=log_path, history=history)


# --- the run directory: lock, existing run, log -------------------------------------------------

def _lock_run(out: Path):
    """Hold ``out/.lock`` exclusively (advisory ``fcntl.flock``; no locking where fcntl is missing)."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    f = open(out / LOCK_FILE, "a")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise RunInUseError(f"{out} is in use by another trainer (it holds {out / LOCK_FILE}); wait for it "
                            f"to finish or choose another out_dir") from None
    return f


def _unlock_run(lock) -> None:
    if lock is not None:
        lock.close()   # closing the file releases the flock


def _holds_run(out: Path) -> bool:
    """Whether ``out`` holds a checkpoint (even one whose first save was interrupted) or a non-empty log."""
    log = out / LOG_FILE
    return (out / CHECKPOINT_DIR).exists() or (log.exists() and log.stat().st_size > 0)


def _check_same_run(config: TrainConfig, saved: dict, step: int) -> None:
    """A resumed run keeps its RUN_FIELDS; ``steps`` may grow only with ``schedule_steps`` pinned."""
    saved = TrainConfig.from_dict({**saved, "out_dir": config.out_dir}).to_dict()
    mine = config.to_dict()
    differ = [k for k in RUN_FIELDS if k not in ("steps", "schedule_steps") and mine[k] != saved[k]]
    saved_total = saved["schedule_steps"] or saved["steps"]
    if config.total_schedule_steps != saved_total:
        differ.append(f"schedule total steps ({config.total_schedule_steps} vs {saved_total})")
    if differ:
        raise ValueError(f"resume: the config differs from the run's in {differ}; a resumed run keeps its "
                         f"settings (to train past its {saved['steps']} steps set steps and "
                         f"schedule_steps={saved_total})")
    if config.steps < step:
        raise ValueError(f"resume: steps ({config.steps}) is below the checkpoint's step ({step})")


def _truncate_log(log_path: Path, step: int) -> None:
    """Keep the complete records of steps <= ``step`` (those after it are logged again)."""
    if not log_path.exists():
        return
    kept = []
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue                       # a line torn by a kill
        if line.endswith("\n") and isinstance(record, dict) and record.get("step", step + 1) <= step:
            kept.append(line)
    tmp = log_path.with_name(log_path.name + ".tmp")
    _write_log(tmp, "".join(kept), "w")
    os.replace(tmp, log_path)


def _write_log(path: Path, text: str, mode: str) -> None:
    try:
        with open(path, mode, encoding="utf-8") as f:
            f.write(text)
    except OSError as err:
        raise RunWriteError(err.errno, f"could not write the log {path} ({err.strerror or err}); "
                            f"{_what_is_left(path.parent / CHECKPOINT_DIR)}") from err


def _what_is_left(ckpt_path: Path) -> str:
    """What a reader finds at ``ckpt_path`` now, in words."""
    try:
        return f"the checkpoint at step {load_checkpoint(ckpt_path).step} is kept in {ckpt_path}"
    except FileNotFoundError:
        return "no checkpoint was written"
    except ValueError as err:
        return f"the checkpoint cannot be read ({err})"


def _diverged_message(step, what, config, saved_step, ckpt_path) -> str:
    kept = (f"the last checkpoint (step {saved_step}) is kept in {ckpt_path}" if saved_step is not None
            else "no checkpoint was written")
    clip = "a gradient clip" if config.grad_clip is None else f"a smaller grad_clip (now {config.grad_clip})"
    return (f"training diverged at step {step} ({what}); the update was not applied and {kept}. "
            f"Try a lower lr (now {config.lr:g}) or {clip}.")


# --- tokens -------------------------------------------------------------------------------------

def _encoder(tokenizer, train_docs, val_docs, special_in_text: str):
    """The tokenizer that encodes the documents: ``tokenizer``, or one without special tokens
    (special text encoded as plain text, same ids) for ``special_in_text="text"``."""
    hit = find_special_text(list(train_docs) + list(val_docs), list(tokenizer.special_tokens))
    if hit is None:
        return tokenizer
    i, line, s = hit
    n_train = len(train_docs)
    where = f"train_docs[{i}]" if i < n_train else f"val_docs[{i - n_train}]"
    if special_in_text == "error":
        raise ValueError(f"{where}, line {line}: contains the special token text {s!r}; remove it or encode "
                         f"it as plain text (special_in_text='text')")
    return type(tokenizer)(tokenizer.merges, (), tokenizer.pattern)


def _tokenize(docs, tokenizer, cache: Path, say) -> list[torch.Tensor]:
    """``tokenize_documents`` with its cache checked: an unreadable or inconsistent cache file
    (bad zip CRC, truncated, wrong document count or ids) is deleted and rebuilt, with a warning."""
    try:
        token_docs = tokenize_documents(docs, tokenizer, cache_dir=cache)
        _check_tokens(token_docs, docs, tokenizer)
        return token_docs
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        file = cache / f"tokens-{cache_key(list(docs), tokenizer)}.npz"
        if not file.exists():
            raise
        say(f"warning: the token cache {file} is corrupt ({err}); rebuilding it")
        file.unlink()
    token_docs = tokenize_documents(docs, tokenizer, cache_dir=cache)
    _check_tokens(token_docs, docs, tokenizer)
    return token_docs


def _check_tokens(token_docs, docs, tokenizer) -> None:
    if len(token_docs) != len(docs):
        raise ValueError(f"{len(token_docs)} token lists for {len(docs)} documents")
    V = tokenizer.vocab_size
    for t in token_docs:
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= V):
            raise ValueError(f"token ids outside [0, {V})")


# --- signals ------------------------------------------------------------------------------------

class _DeferredSignals:
    """While active (main thread only): the first SIGINT/SIGTERM is recorded in ``received`` and the
    loop stops after its current step; a second SIGINT interrupts at once (KeyboardInterrupt)."""

    SIGNALS = ("SIGINT", "SIGTERM")

    def __init__(self):
        self.received = None
        self._previous = {}

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.received is not None and name == "SIGINT":
            raise KeyboardInterrupt
        self.received = self.received or name

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for name in self.SIGNALS:
                sig = getattr(signal, name)
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _with(error: BaseException, **attributes) -> BaseException:
    """``error`` with the given attributes set (the exceptions' fields)."""
    for name, value in attributes.items():
        setattr(error, name, value)
    return error


def _world() -> tuple[int, int]:
    """``(rank, world_size)``: ``(0, 1)`` unless a torch.distributed process group is initialized."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} was requested but CUDA is not available on this machine "
                         f"(use device='cpu')")
    return torch.device(name)


def _progress(steps, enabled: bool, start: int, total: int):
    if not enabled:
        return steps
    from tqdm import tqdm
    return tqdm(steps, initial=start, total=total, desc="train", unit="step", dynamic_ncols=True)


def _plot(log_path: Path, png: Path) -> Path | None:
    """The train loss (and val loss points) against the step, when matplotlib is installed."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    if not records:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="train loss")
    val = [r for r in records if "val_loss" in r]
    ax.plot([r["step"] for r in val], [r["val_loss"] for r in val], "o-", label="val loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return png
