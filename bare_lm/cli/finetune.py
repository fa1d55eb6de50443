"""``bare-lm finetune``: train LoRA adapters on a trained checkpoint; the base stays untouched.

``bare-lm finetune --checkpoint RUN --data FILE [--lora-rank 8] [--lora-alpha 16] [--lora-dropout 0]
[--targets q,v] [--steps 200] [--batch-size 8] [--lr 1e-3] [--out adapter.safetensors]``

The base model (``--checkpoint``, a run directory of ``bare-lm train``) is loaded, frozen and wrapped
with ``reference.lora.apply_lora``; only the adapters train (AdamW, a linear warm-up then a cosine
to ``--lr / 10``), on random windows of the training split of ``--data`` (anything
``data.load_documents`` reads; the last ``--val-fraction`` is held out, as in ``bare-lm train``).
The adapters alone are saved (``lora.save_adapter``: safetensors, a size proportional to the rank);
the checkpoint directory is only read. Use them with ``bare-lm generate --checkpoint RUN --adapter FILE``.

Exit status: 0 done, 1 the loss diverged (nothing saved), 2 bad arguments or data.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUT = "adapter.safetensors"


def register(commands) -> None:
    p = commands.add_parser(
        "finetune", help="train LoRA adapters on a checkpoint (saves the adapters alone)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="the base run directory (only read)")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="text file, directory of .txt files or .jsonl file to fine-tune on")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="FILE",
                   help=f"adapter file to write (default: {DEFAULT_OUT})")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--lora-rank", type=int, default=8, metavar="R", help="adapter rank r >= 1 (default 8)")
    p.add_argument("--lora-alpha", type=float, default=None, metavar="A",
                   help="adapter scale numerator, > 0; the update is (alpha / r) B A (default 2 r)")
    p.add_argument("--lora-dropout", type=float, default=0.0, metavar="P",
                   help="dropout on the adapters' input, in [0, 1) (default 0)")
    p.add_argument("--targets", default="q,v",
                   help="comma-separated projections to adapt: q, k, v, o, w1, w2, w3 (default q,v)")
    p.add_argument("--steps", type=int, default=200, help="optimizer steps (default 200)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default steps / 10)")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out share of --data (default 0.1)")
    p.add_argument("--separator", default=None, help="split a text file into documents on this string")
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--log-interval", type=int, default=20, help="print the loss every N steps (0: never)")
    p.set_defaults(run=run)


@dataclass
class FinetuneResult:
    losses: list[float] = field(default_factory=list)   # the training loss of each step
    val_loss_before: float = float("nan")                # held-out nats/token of the base model
    val_loss: float = float("nan")                       # ... after fine-tuning
    trainable: int = 0                                   # parameters that received updates
    total: int = 0                                       # every parameter of the (wrapped) model
    seconds_per_step: float = 0.0


def split_documents(docs: list[str], val_fraction: float) -> tuple[list[str], list[str]]:
    """The last ``val_fraction`` of the documents (of the characters, for one document) is held out."""
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {val_fraction}")
    docs = [d for d in docs if d]
    if not docs:
        raise ValueError("the data holds no text")
    if len(docs) == 1:
        cut = int(len(docs[0]) * (1.0 - val_fraction))
        return [docs[0][:cut]], [docs[0][cut:]]
    n_val = max(1, round(len(docs) * val_fraction))
    return docs[:-n_val], docs[-n_val:]


def encode(docs: list[str], tokenizer):
    """One long token stream of ``docs``, each document followed by ``<|endoftext|>`` when the
    tokenizer has it."""
    import torch

    from reference import data
    eot = getattr(tokenizer, "special_tokens", {}).get("<|endoftext|>")
    token_docs = data.tokenize_documents(docs, tokenizer)
    if eot is None:
        return torch.cat([torch.as_tensor(t, dtype=torch.long) for t in token_docs])
    return data.token_stream(token_docs, eot)


def held_out_loss(model, stream, batch_size: int, max_batches: int = 50) -> float:
    """Mean nats/token of ``model`` over (the first ``max_batches``) sequential windows of ``stream``."""
    import torch

    from reference import data
    was_training = model.training
    model.eval()
    nats, count = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for x, y in data.evaluation_batches(stream, batch_size, model.config.context_length)[:max_batches]:
            _, loss = model(x.to(device), y.to(device))
            n = int((y != -100).sum())
            nats, count = nats + float(loss) * n, count + n
    model.train(was_training)
    return nats / max(count, 1)


def finetune(model, train_stream, val_stream, *, params, steps: int, batch_size: int, lr: float,
             warmup: int, grad_clip: float | None, seed: int, log=None) -> FinetuneResult:
    """Train ``params`` of ``model`` (the adapters, or every parameter for full fine-tuning) for
    ``steps`` AdamW steps on random windows of ``train_stream``; held-out loss before and after."""
    import torch

    from reference import data, optim
    params = list(params)
    result = FinetuneResult(trainable=sum(p.numel() for p in params),
                            total=sum(p.numel() for p in model.parameters()))
    result.val_loss_before = held_out_loss(model, val_stream, batch_size)
    device = next(model.parameters()).device
    batches = data.FixedLengthBatches(train_stream, batch_size, model.config.context_length, seed=seed)
    opt = optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = optim.lr_schedule(step, lr, lr / 10, warmup, steps)
        x, y = batches.batch(step)
        opt.zero_grad(set_to_none=True)
        _, loss = model(x.to(device), y.to(device))
        loss.backward()
        if grad_clip is not None:
            optim.clip_grad_norm(params, grad_clip)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise FloatingPointError(f"the loss diverged at step {step + 1} ({value}); nothing was saved")
        opt.step()
        result.losses.append(value)
        if log is not None:
            log(step + 1, value)
    if device.type == "cuda":
        torch.cuda.synchronize()
    result.seconds_per_step = (time.perf_counter() - start) / max(steps, 1)
    result.val_loss = held_out_loss(model, val_stream, batch_size)
    return result


def checkpoint_path(run) -> Path:
    """``RUN/checkpoint`` when ``RUN`` is a run directory of ``bare-lm train``, else ``RUN`` itself."""
    from reference.checkpoint import has_checkpoint
    path = Path(run)
    return path / "checkpoint" if not has_checkpoint(path) and has_checkpoint(path / "checkpoint") else path


def parse_targets(text: str) -> tuple[str, ...]:
    from reference.lora import TARGETS
    targets = tuple(t.strip() for t in text.split(",") if t.strip())
    unknown = [t for t in targets if t not in TARGETS]
    if unknown or not targets:
        raise ValueError(f"--targets must be a comma-separated list of {', '.join(TARGETS)}; got {text!r}")
    return targets


def _check(args) -> None:
    if args.lora_rank < 1:
        raise ValueError(f"--lora-rank must be an int >= 1, got {args.lora_rank}")
    if args.lora_alpha is not None and not (math.isfinite(args.lora_alpha) and args.lora_alpha > 0):
        raise ValueError(f"--lora-alpha must be a number > 0, got {args.lora_alpha}")
    if not 0.0 <= args.lora_dropout < 1.0:
        raise ValueError(f"--lora-dropout must be in [0, 1), got {args.lora_dropout}")
    for name in ("steps", "batch_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be an int >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise ValueError(f"--lr must be a number > 0, got {args.lr}")
    if args.warmup is not None and not 0 <= args.warmup <= args.steps:
        raise ValueError(f"--warmup must be in [0, --steps={args.steps}], got {args.warmup}")
    if args.grad_clip is not None and not args.grad_clip > 0:
        raise ValueError(f"--grad-clip must be > 0, got {args.grad_clip}")
    if args.log_interval < 0:
        raise ValueError(f"--log-interval must be >= 0, got {args.log_interval}")


def _fail(message: str, status: int = 2) -> int:
    print(f"bare-lm finetune: {message}", file=sys.stderr)
    return status


def run(args) -> int:
    from reference import data, lora
    from reference.checkpoint import load_checkpoint

    try:
        _check(args)
        targets = parse_targets(args.targets)
    except ValueError as err:
        return _fail(str(err))
    out = Path(args.out)
    if out.exists() and not args.force:
        return _fail(f"{out} exists; pass --force to overwrite it or choose another --out")
    if out.suffix != ".safetensors":
        return _fail(f"--out must name a .safetensors file, got {out}")
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            return _fail("--device cuda, but CUDA is not available")
    try:
        ckpt = load_checkpoint(checkpoint_path(args.checkpoint), device=args.device)
    except (FileNotFoundError, ValueError, OSError) as err:
        return _fail(f"cannot load --checkpoint {args.checkpoint}: {err}")
    model, tokenizer = ckpt.model, ckpt.tokenizer
    if tokenizer is None:
        return _fail(f"{args.checkpoint} has no tokenizer")
    try:
        docs = data.load_documents(args.data, field=args.field, separator=args.separator)
        train_docs, val_docs = split_documents(docs, args.val_fraction)
        train_stream, val_stream = encode(train_docs, tokenizer), encode(val_docs, tokenizer)
        t = model.config.context_length
        if train_stream.numel() < t + 1:
            raise ValueError(f"the training split of {args.data} has {train_stream.numel()} tokens, fewer than "
                             f"context_length + 1 = {t + 1}")
        if val_stream.numel() < 2:
            raise ValueError(f"the held-out split of {args.data} has fewer than 2 tokens; give more data")
        alpha = 2.0 * args.lora_rank if args.lora_alpha is None else args.lora_alpha
        lora.apply_lora(model, targets=targets, rank=args.lora_rank, alpha=alpha, dropout=args.lora_dropout)
    except (FileNotFoundError, ValueError, TypeError, OSError) as err:
        return _fail(str(err))

    warmup = args.steps // 10 if args.warmup is None else args.warmup
    every = args.log_interval

    def log(step, loss):
        if every and (step % every == 0 or step == args.steps):
            print(f"step {step:>5}/{args.steps}  loss {loss:.4f}", flush=True)

    params = lora.lora_parameters(model)
    print(f"fine-tuning {sum(p.numel() for p in params):,} adapter parameters (rank {args.lora_rank}, "
          f"alpha {alpha:g}, targets {','.join(targets)}) of {sum(p.numel() for p in model.parameters()):,}; "
          f"{len(train_docs)} train / {len(val_docs)} held-out documents")
    try:
        result = finetune(model, train_stream, val_stream, params=params, steps=args.steps,
                          batch_size=args.batch_size, lr=args.lr, warmup=warmup, grad_clip=args.grad_clip,
                          seed=args.seed, log=log)
    except FloatingPointError as err:
        return _fail(str(err), 1)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        lora.save_adapter(model, out)
    except OSError as err:
        return _fail(f"cannot write {out}: {err}", 1)
    print(f"held-out loss: {result.val_loss_before:.4f} -> {result.val_loss:.4f} nats/token")
    print(f"saved the adapters to {out} ({out.stat().st_size:,} bytes); use them with "
          f"bare-lm generate --checkpoint {args.checkpoint} --adapter {out} --prompt TEXT")
    return 0
