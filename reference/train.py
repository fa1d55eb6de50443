"""The training loop: batches -> forward -> loss -> backward -> clip -> AdamW step, on a schedule.

One optimizer step (``train_step``) with gradient accumulation over ``k`` micro-batches::

    zero the gradients
    for each micro-batch (x, y):   loss_i = model(x, y).loss;   backward(loss_i / k)
    N = clip_grad_norm(parameters, grad_clip)     (or just the norm when grad_clip is None)
    optimizer.step()

Dividing each micro-batch loss by ``k`` makes the accumulated gradient the gradient of the MEAN
loss, so ``k`` micro-batches of ``b`` sequences equal one batch of ``k * b`` (equal token counts).

``train(config, ...)``: batch ``s`` of the run is ``FixedLengthBatches(...).batch(s)`` (a pure
function of ``(seed, s)``), split into ``config.accum`` micro-batches; the learning rate of step
``s`` (0-based) is ``lr_schedule(s, lr, min_lr, warmup, steps)``. Every ``eval_interval`` steps and
at the end the model is evaluated on the validation stream (``evaluate``)::

    val_loss = total nats / number of target tokens                        (loss per token)
    val_bpc  = total nats / ln 2 / number of characters of the val text     (bits per character)

where the characters are ``corpus.stream_characters(val_docs)`` (each document's characters plus
one for its end-of-text separator), the unit of the corpus's entropy floor.

**Exact resume.** The checkpoint (``out_dir/checkpoint``) holds the weights, the AdamW state, the
step, the torch RNG state (dropout), the batch sampler's state, the tokenizer and the train config.
``train(config, resume=True)`` restores all of them and continues at the saved step, so N steps +
save + resume + N steps gives bit-identical weights to 2N steps in one go. (``stop_after`` ends a
run early, as an interruption would, without changing its schedule.)

**Log.** ``out_dir/log.jsonl``: one JSON object per logged step (every ``log_interval`` steps, every
evaluation step, the last step) with ``step`` (optimizer steps done), ``loss`` (train loss of that
step), ``lr``, ``grad_norm`` (before clipping), ``tokens_per_s`` (training throughput so far) and
``elapsed_s``; evaluation steps add ``val_loss`` and ``val_bpc``. A resumed run appends.
With matplotlib installed, ``out_dir/loss_curve.png`` plots the log at the end.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checks
from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .corpus import stream_characters
from .data import FixedLengthBatches, IGNORE_INDEX, evaluation_batches, token_stream, tokenize_documents
from .model import ModelConfig, TransformerLM
from .optim import AdamW, clip_grad_norm, lr_schedule, param_groups

#: Named sizes: model fields (vocab_size comes from the tokenizer) and train fields.
PRESETS: dict[str, dict[str, dict]] = {
    "tiny": {  # for tests: seconds
        "model": dict(context_length=32, n_layers=2, d_model=32, n_heads=2, dropout=0.0),
        "train": dict(steps=200, batch_size=16, lr=3e-3, min_lr=3e-4, warmup=20, eval_interval=100,
                      vocab_size=300),
    },
    "small": {  # the default of `bare-lm train`: about 0.26 bits/char on the built-in corpus in minutes on 2 cores
        "model": dict(context_length=128, n_layers=2, d_model=64, n_heads=4, dropout=0.0, fast=True),
        "train": dict(steps=800, batch_size=16, lr=6e-3, min_lr=6e-4, warmup=50, eval_interval=200,
                      eval_batches=8, vocab_size=512),
    },
    "medium": {  # a GPU, or patience
        "model": dict(context_length=256, n_layers=6, d_model=256, n_heads=8, dropout=0.1, fast=True),
        "train": dict(steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup=200, eval_interval=500,
                      eval_batches=20, vocab_size=1024),
    },
}

CHECKPOINT_DIR = "checkpoint"
LOG_FILE = "log.jsonl"
PLOT_FILE = "loss_curve.png"


@dataclass
class TrainConfig:
    """Hyperparameters of a run (validated on construction; errors name the field).

    steps: optimizer steps of the whole run (the schedule's total_steps).
    batch_size: sequences per optimizer step, split into ``accum`` micro-batches (must divide it).
    lr, min_lr, warmup: ``lr_schedule(step, lr, min_lr, warmup, steps)``; 0 <= min_lr <= lr, warmup <= steps.
    weight_decay, betas: AdamW's (decay only on ``param_groups``' first group).
    grad_clip: max global gradient norm, or None for no clipping.
    eval_interval: evaluate every this many steps (0: only at the end); eval_batches: batches per
        periodic evaluation (None: the whole validation stream; the final one always uses it all).
    log_interval: log every this many steps. checkpoint_interval: save every this many steps
        (0: only at the end). vocab_size: of the BPE tokenizer trained when none is given.
    seed: model init, dropout and batches. device: "cpu", "cuda" or "cuda:N". out_dir: where the
        checkpoint, the log and the plot go.
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
    checkpoint_interval: int = 0
    vocab_size: int = 512
    seed: int = 0
    device: str = "cpu"
    out_dir: str = "runs/latest"

    def __post_init__(self):
        checks.positive_int("steps", self.steps)
        checks.positive_int("batch_size", self.batch_size)
        checks.positive_int("accum", self.accum)
        if self.batch_size % self.accum:
            raise ValueError(f"accum must divide batch_size ({self.batch_size}), got {self.accum}")
        checks.number_in_range("lr", self.lr, 0.0, None, low_inclusive=False)
        checks.number_in_range("min_lr", self.min_lr, 0.0, self.lr)
        checks.non_negative_int("warmup", self.warmup)
        if self.warmup > self.steps:
            raise ValueError(f"warmup must be <= steps ({self.steps}), got {self.warmup}")
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
        checks.positive_int("vocab_size", self.vocab_size)
        checks.non_negative_int("seed", self.seed)
        if not isinstance(self.device, str) or not (self.device == "cpu" or self.device.split(":")[0] == "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {self.device!r}")
        if not isinstance(self.out_dir, (str, Path)):
            raise TypeError(f"out_dir must be a path, got {type(self.out_dir).__name__}")
        self.out_dir = str(self.out_dir)

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
               grad_clip: float | None = None) -> tuple[float, float]:
    """One optimizer step accumulated over ``micro_batches`` (a list of ``(x, y)``, each (b, T) long).

    Returns ``(loss, grad_norm)``: the mean of the micro-batch losses and the global gradient norm
    before clipping. The model is put in train mode.
    """
    if not micro_batches:
        raise ValueError("micro_batches must hold at least one (x, y) pair")
    model.train()
    optimizer.zero_grad(set_to_none=True)
    k = len(micro_batches)
    total = 0.0
    for x, y in micro_batches:
        _, loss = model(x, y)
        (loss / k).backward()              # the mean over micro-batches, not the sum
        total += loss.item() / k
    params = [p for p in model.parameters() if p.grad is not None]
    if grad_clip is not None:
        norm = clip_grad_norm(params, grad_clip)
    else:
        norm = math.sqrt(sum(float(p.grad.detach().double().pow(2).sum()) for p in params))
    optimizer.step()
    return total, norm


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


def train(config: TrainConfig, model_config: ModelConfig | dict | None = None, *,
          train_docs: list[str] | None = None, val_docs: list[str] | None = None, tokenizer=None,
          resume: bool = False, stop_after: int | None = None, progress: bool = False,
          print_fn=None) -> TrainResult:
    """Train (or, with ``resume``, continue) a run in ``config.out_dir``; see the module docstring.

    model_config: a ``ModelConfig`` or a dict of its fields without ``vocab_size`` (taken from the
        tokenizer); ignored when resuming (the checkpoint's is used).
    train_docs, val_docs: lists of documents (strings), both required.
    tokenizer: a trained Tokenizer with ``ENDOFTEXT``; None trains a BPE tokenizer of
        ``config.vocab_size`` on ``train_docs`` (ignored when resuming: the checkpoint's is used).
    stop_after: stop after this step (as an interruption would), with a checkpoint; the schedule
        still runs to ``config.steps``.
    progress: show a tqdm progress bar. print_fn: where evaluation lines go (default: nothing).
    """
    from .tokenizer import ENDOFTEXT, Tokenizer

    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not train_docs or not val_docs:
        raise ValueError("train_docs and val_docs must both be non-empty lists of documents")
    if stop_after is not None:
        checks.positive_int("stop_after", stop_after)
    device = _device(config.device)
    say = print_fn or (lambda *args: None)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path, log_path = out / CHECKPOINT_DIR, out / LOG_FILE

    # --- model, tokenizer, optimizer, sampler: fresh or restored ---
    if resume:
        ckpt = load_checkpoint(ckpt_path, device=device)
        model, tokenizer, start = ckpt.model, ckpt.tokenizer, ckpt.step
    else:
        if tokenizer is None:
            say(f"training a BPE tokenizer (vocab {config.vocab_size}) on {len(train_docs)} documents")
            tokenizer = Tokenizer.train(train_docs, config.vocab_size, special_tokens=[ENDOFTEXT])
        if ENDOFTEXT not in tokenizer.special_tokens:
            raise ValueError(f"the tokenizer must have the special token {ENDOFTEXT!r}")
        if not isinstance(model_config, ModelConfig):
            model_config = ModelConfig(vocab_size=tokenizer.vocab_size, **(model_config or {}))
        torch.manual_seed(config.seed)
        model = TransformerLM(model_config).to(device)
        start = 0
        log_path.write_text("")  # a fresh run starts a fresh log
    eot = tokenizer.special_tokens[ENDOFTEXT]
    T = model.config.context_length
    cache = out / "tokens"
    train_stream = token_stream(tokenize_documents(train_docs, tokenizer, cache_dir=cache), eot)
    val_stream = token_stream(tokenize_documents(val_docs, tokenizer, cache_dir=cache), eot)
    val_chars = stream_characters(list(val_docs))
    batches = FixedLengthBatches(train_stream, config.batch_size, T, seed=config.seed)
    optimizer = AdamW(param_groups(model, config.weight_decay), lr=config.lr, betas=config.betas)
    if resume:
        batches.load_state_dict(ckpt.data_state)
        if ckpt.optimizer_state is not None:
            optimizer.load_state_dict(ckpt.optimizer_state)
        set_rng_state(ckpt.rng_state)

    def val_metrics(max_batches=None):
        nats, n = evaluate(model, val_stream, config.batch_size, max_batches, device)
        total_targets = val_stream.numel() - 1
        return nats / max(n, 1), nats / math.log(2) / (val_chars * n / total_targets)

    def save(step):
        save_checkpoint(ckpt_path, model, step=step, optimizer=optimizer, tokenizer=tokenizer,
                        rng_state=get_rng_state(), data_state=batches.state_dict(),
                        train_config=config.to_dict())

    # --- the loop ---
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    history, tokens, train_time, t0 = [], 0, 0.0, time.perf_counter()
    bar = _progress(range(start, end), progress, start, config.steps)
    for step in bar:
        lr = lr_schedule(step, config.lr, config.min_lr, config.warmup, config.steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        tick = time.perf_counter()
        x, y = next(batches)                                         # (B, T) each
        x, y = x.to(device), y.to(device)
        micro = list(zip(x.chunk(config.accum), y.chunk(config.accum)))
        loss, grad_norm = train_step(model, optimizer, micro, config.grad_clip)
        train_time += time.perf_counter() - tick
        tokens += x.numel()
        done = step + 1
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
            with open(log_path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
            if progress:
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")
        if last or (config.checkpoint_interval and done % config.checkpoint_interval == 0):
            save(done)
    val_loss, val_bpc = (history[-1]["val_loss"], history[-1]["val_bpc"]) if history else val_metrics()
    _plot(log_path, out / PLOT_FILE)
    return TrainResult(model=model, tokenizer=tokenizer, step=max(start, end), val_loss=val_loss,
                       val_bpc=val_bpc, tokens_per_s=tokens / max(train_time, 1e-9), checkpoint=ckpt_path,
                       log_path=log_path, history=history)


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
