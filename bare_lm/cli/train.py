"""``bare-lm train``: train a tokenizer and a model on a text (the built-in corpus by default).

With no ``--data`` it trains on the built-in story corpus (``corpus.builtin_corpus()``) and reports
the validation bits/char beside the corpus's entropy floor. Otherwise ``--data`` is anything
``data.load_documents`` reads (a text file, a directory of ``.txt`` files, a ``.jsonl`` file); the
last ``--val-fraction`` of the documents (or of the text, for a single document) is the validation
split. ``--resume`` continues the run in ``--out`` exactly where its checkpoint stopped.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

DEFAULT_OUT = "runs/latest"


def register(commands) -> None:
    p = commands.add_parser(
        "train", help="train a tokenizer and a small LM (built-in corpus by default)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="text file, directory of .txt files or .jsonl file "
                                                 "(default: the built-in story corpus)")
    p.add_argument("--config", default="small", help="model/train preset: tiny, small (default), medium")
    p.add_argument("--out", default=DEFAULT_OUT, help=f"run directory (default: {DEFAULT_OUT})")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of the whole run")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--accum", type=int, default=None, help="gradient accumulation micro-batches per step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--eval-interval", type=int, default=None)
    p.add_argument("--checkpoint-interval", type=int, default=None)
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share for --data (default 0.1)")
    p.add_argument("--separator", default=None, help="split a text file into documents on this string")
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--samples", type=int, default=3, help="samples to print at the end (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


OVERRIDES = ("steps", "batch_size", "accum", "lr", "min_lr", "warmup", "weight_decay", "grad_clip",
             "eval_interval", "checkpoint_interval", "vocab_size", "seed", "device")


def run(args) -> int:
    from reference import corpus
    from reference.checkpoint import load_checkpoint
    from reference.train import CHECKPOINT_DIR, PRESETS, TrainConfig, train

    started = time.perf_counter()
    if args.config not in PRESETS:
        print(f"bare-lm train: --config must be one of {', '.join(PRESETS)}; got {args.config!r}", file=sys.stderr)
        return 2
    preset = PRESETS[args.config]
    settings = dict(preset["train"])
    if args.resume:
        ckpt_path = Path(args.out) / CHECKPOINT_DIR
        try:
            settings = dict(load_checkpoint(ckpt_path).train_config)
        except (FileNotFoundError, ValueError) as err:
            print(f"bare-lm train --resume: {err}", file=sys.stderr)
            return 1
    settings.update({k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None})
    if args.warmup is None and args.steps is not None:  # a short run keeps a warmup that fits
        settings["warmup"] = min(settings.get("warmup", 0), args.steps)
    settings["out_dir"] = args.out
    try:
        config = TrainConfig(**settings)
        train_docs, val_docs = _documents(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"bare-lm train: {err}", file=sys.stderr)
        return 2

    from tqdm import tqdm
    source = args.data or "the built-in story corpus"
    print(f"bare-lm train: {args.config} preset, {config.steps} steps, device {config.device}, "
          f"{len(train_docs)} train / {len(val_docs)} val documents from {source}")
    try:
        result = train(config, preset["model"], train_docs=train_docs, val_docs=val_docs, resume=args.resume,
                       progress=not args.no_progress, print_fn=tqdm.write)
    except (ValueError, FileNotFoundError) as err:
        print(f"bare-lm train: {err}", file=sys.stderr)
        return 1

    m = result.model
    print(f"\nmodel: {m.num_parameters():,} parameters ({m.config.n_layers} layers, d_model {m.config.d_model}, "
          f"context {m.config.context_length}, vocab {m.config.vocab_size})")
    print(f"validation loss: {result.val_loss:.4f} nats/token, {result.val_bpc:.4f} bits/char")
    if args.data is None:
        floor = corpus.story_grammar().entropy_floor_bits_per_char(val_docs)
        print(f"entropy floor of the validation text: {floor:.4f} bits/char "
              f"(model / floor = {result.val_bpc / floor:.3f})")
    print(f"throughput: {result.tokens_per_s:,.0f} train tokens/s")
    for i, text in enumerate(_samples(result, args.samples, config.seed)):
        print(f"sample {i + 1}: {text!r}")
    print(f"checkpoint: {result.checkpoint}")
    print(f"log: {result.log_path}")
    plot = Path(config.out_dir) / "loss_curve.png"
    if plot.exists():
        print(f"loss curve: {plot}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _documents(args) -> tuple[list[str], list[str]]:
    from reference import corpus, data

    if args.data is None:
        return corpus.builtin_corpus()
    if not 0.0 < args.val_fraction < 1.0:
        raise ValueError(f"--val-fraction must be in (0, 1), got {args.val_fraction}")
    docs = [d for d in data.load_documents(args.data, field=args.field, separator=args.separator) if d]
    if not docs:
        raise ValueError(f"no text in {args.data}")
    if len(docs) == 1:  # one long text: its last val_fraction of characters is the validation split
        text = docs[0]
        cut = int(len(text) * (1.0 - args.val_fraction))
        return [text[:cut]], [text[cut:]]
    n_val = max(1, round(len(docs) * args.val_fraction))
    return docs[:-n_val], docs[-n_val:]


def _samples(result, n: int, seed: int) -> list[str]:
    """``n`` continuations of the end-of-text token (the start of a document), temperature 0.8, top-k 40."""
    if n <= 0:
        return []
    from reference.generate import generate
    from reference.tokenizer import ENDOFTEXT

    tok = result.tokenizer
    eot = tok.special_tokens[ENDOFTEXT]
    max_new = min(result.model.config.context_length - 1, 120)
    texts = []
    for i in range(n):
        ids = generate(result.model, [eot], max_new, temperature=0.8, top_k=40, stop_ids=(eot,), seed=seed + i)
        texts.append(tok.decode([t for t in ids if t != eot]))
    return texts

