"""``bare-lm train``: train a tokenizer and a small LM on a text (the built-in corpus by default).

With no ``--data`` it trains on the built-in story corpus (``corpus.builtin_corpus()``) and reports
the validation bits/char beside the corpus's entropy floor. Otherwise ``--data`` is anything
``data.load_documents`` reads (a text file, a directory of ``.txt`` files, a ``.jsonl`` file); the
last ``--val-fraction`` of the documents (or of the text, for a single document) is the validation
split.

Runs are never lost or overwritten by accident:
  * a fresh run into a directory that holds a run is refused: ``--resume`` it or ``--force`` a new one;
    a second trainer on a directory in use fails at once (a lock file, ``OUT/.lock``);
  * a checkpoint is written every ``--checkpoint-every`` steps, at least every ``--checkpoint-minutes``
    minutes and at the end; Ctrl-C (SIGINT) or SIGTERM finishes the step, saves, and prints the
    command that resumes the run;
  * a non-finite loss or gradient stops the run before the update (exit 1) and keeps the last
    checkpoint; a failed write (a full disk) keeps the previous checkpoint and says so.

``--resume`` continues the run in ``--out`` exactly where its checkpoint stopped, on ITS schedule:
the schedule (steps, warmup, lr, min-lr) and the other settings that shape the weights are fixed
when the run starts. Stopping a run (``--stop-after K``, Ctrl-C, a kill) and resuming it gives
weights bit-identical to the run done in one go. A different ``--steps`` on resume is refused
unless ``--extend`` is given: ``--resume --extend --steps M`` continues the finished schedule past
its end, the extra steps at the floor learning rate ``--min-lr`` (the schedule is not rebuilt).
Resuming on other data (its sha256 is stored) is refused unless ``--allow-new-data`` is given.

A special token's text (``<|endoftext|>``) inside the data is an error naming the file and line;
``--special-in-text text`` trains on it as plain text instead.

``--nproc N`` trains data-parallel in N processes on this machine: it runs
``python -m torch.distributed.run --standalone --nproc_per_node N -m bare_lm.cli train ...`` (the
same arguments), each process trains on its shard of every global batch (``--batch-size`` stays
the global batch: N x accum must divide it), DistributedDataParallel averages the gradients, rank 0
alone prints, logs and saves. The run directory is the same as a one-process run's: a run started
with one ``--nproc`` may be resumed with another. Launched by ``torchrun`` directly (``torchrun
--nproc_per_node N -m bare_lm.cli train ...``, several machines too), the command joins the process
group from torchrun's variables; with ``--device cuda`` every rank uses its own GPU
(``cuda:LOCAL_RANK``, backend NCCL), on CPU the backend is gloo.

Exit status: 0 done, 1 the run failed (diverged, disk full, run in use), 2 bad arguments or data,
130 / 143 stopped by SIGINT / SIGTERM (after saving).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
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
    p.add_argument("--force", action="store_true", help="start a fresh run even if --out holds one (it is replaced)")
    p.add_argument("--extend", action="store_true",
                   help="with --resume --steps M: train past the run's end, the extra steps at --min-lr")
    p.add_argument("--allow-new-data", action="store_true", help="with --resume: continue on different --data")
    p.add_argument("--stop-after", type=int, default=None, metavar="K",
                   help="stop after step K (saved; the schedule still spans --steps), as an interruption would")
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--nproc", type=int, default=None, metavar="N",
                   help="train data-parallel in N processes on this machine (torchrun; N x accum must divide "
                        "--batch-size)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps of the whole run")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--accum", type=int, default=None, help="gradient accumulation micro-batches per step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate")
    p.add_argument("--min-lr", type=float, default=None, help="floor learning rate (end of the cosine)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--eval-interval", type=int, default=None)
    p.add_argument("--log-interval", type=int, default=None)
    p.add_argument("--checkpoint-every", "--checkpoint-interval", dest="checkpoint_interval", type=int,
                   default=None, metavar="N", help="save every N steps (0: only timed saves and the end)")
    p.add_argument("--checkpoint-minutes", type=float, default=None, metavar="M",
                   help="save also when M minutes have passed since the last save (0: off; default 10)")
    p.add_argument("--vocab-size", type=int, default=None, help="BPE vocabulary size")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--val-fraction", type=float, default=0.1, help="validation share for --data (default 0.1)")
    p.add_argument("--separator", default=None, help="split a text file into documents on this string")
    p.add_argument("--field", default="text", help="JSONL field holding the text (default: text)")
    p.add_argument("--special-in-text", choices=("error", "text"), default="error",
                   help="a special token's text in the data: error (default) or encode it as plain text")
    p.add_argument("--label-smoothing", type=float, default=None, metavar="EPS",
                   help="train on label-smoothed cross-entropy, EPS in [0, 1) (default 0; fixed for the run)")
    p.add_argument("--z-loss", type=float, default=None, metavar="COEF",
                   help="add COEF * logsumexp(logits)^2 to the loss (PaLM's z-loss; default 0; fixed for the run)")
    p.add_argument("--compile", nargs="?", const=True, default=None, metavar="BACKEND",
                   help="run the training steps through torch.compile (default backend inductor; e.g. aot_eager); "
                        "not kept by --resume")
    p.add_argument("--samples", type=int, default=3, help="samples to print at the end (default 3)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=run)


OVERRIDES = ("steps", "batch_size", "accum", "lr", "min_lr", "warmup", "weight_decay", "grad_clip",
             "eval_interval", "log_interval", "checkpoint_interval", "checkpoint_minutes", "vocab_size",
             "seed", "device", "label_smoothing", "z_loss", "compile")


#: The library's words for its options, as the command's flags.
FLAGS = {"allow_new_data=True": "--allow-new-data", "overwrite=True": "--force", "resume=True": "--resume",
         "special_in_text='text'": "--special-in-text text"}


def _fail(message: str, status: int) -> int:
    for words, flag in FLAGS.items():
        message = message.replace(words, flag)
    print(f"bare-lm train: {message}", file=sys.stderr)
    return status


def run(args) -> int:
    try:
        return _run(args)
    except BrokenPipeError:  # stdout closed early (| head): stop quietly
        _silence_stdout()
        return 0


def _run(args) -> int:
    from reference import corpus
    from reference.checkpoint import load_checkpoint
    from reference.train import (CHECKPOINT_DIR, PRESETS, RUN_FIELDS, DivergenceError, RunInUseError,
                                 RunWriteError, TrainConfig, TrainingInterrupted, train)

    started = time.perf_counter()
    if args.config not in PRESETS:
        return _fail(f"--config must be one of {', '.join(PRESETS)}; got {args.config!r}", 2)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail(f"--out {out} is a file, not a run directory", 2)
    if args.resume and args.force:
        return _fail("--resume continues the run in --out and --force replaces it: give one of them", 2)
    if (args.extend or args.allow_new_data) and not args.resume:
        return _fail("--extend and --allow-new-data go with --resume", 2)
    preset = PRESETS[args.config]
    settings = dict(preset["train"])
    given = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    if args.resume:
        try:
            saved = dict(load_checkpoint(out / CHECKPOINT_DIR).train_config or {})
        except FileNotFoundError:
            return _fail(f"--resume: no run to resume in {out} (no checkpoint there)", 2)
        except ValueError as err:
            return _fail(f"--resume: {err}", 2)
        settings = dict(saved)
        settings.pop("compile", None)       # not a run setting: a resume is compiled only with --compile
        total = saved.get("schedule_steps") or saved.get("steps")
        for k, v in given.items():
            if k not in RUN_FIELDS or v == saved.get(k):
                continue
            flag = "--" + k.replace("_", "-")
            if k == "steps" and args.extend:
                if v <= saved["steps"]:
                    return _fail(f"--extend --steps {v}: the run already has {saved['steps']} steps; "
                                 f"give more", 2)
                settings["schedule_steps"] = total
                continue
            hint = (f"; to train past its end use --resume --extend --steps {v} (the extra steps at the floor "
                    f"lr {saved.get('min_lr')}), or to stop a run early and resume it start it with "
                    f"--stop-after" if k == "steps" else "")
            return _fail(f"--resume: {flag} {v} differs from the run's {saved.get(k)} (a resumed run keeps "
                         f"its settings){hint}", 2)
    settings.update(given)
    if not args.resume and args.warmup is None and args.steps is not None:  # a short run keeps a warmup that fits
        settings["warmup"] = min(settings.get("warmup", 0), args.steps)
    settings["out_dir"] = str(out)
    try:
        config = TrainConfig(**settings)
        train_docs, val_docs = _documents(args)
    except (ValueError, TypeError, FileNotFoundError) as err:
        return _fail(str(err), 2)
    except UnicodeDecodeError as err:
        return _fail(f"{args.data}: not UTF-8 text ({err.reason} at byte {err.start})", 2)
    except OSError as err:
        return _fail(f"{args.data}: {err.strerror or err}", 2)
    if args.special_in_text == "error":
        where = _special_location(args, train_docs + val_docs)
        if where:
            return _fail(f"{where}: contains the special token text '<|endoftext|>'; remove it, or train "
                         f"on it as plain text with --special-in-text text", 2)
    if args.stop_after is not None and args.stop_after < 1:
        return _fail(f"--stop-after must be >= 1, got {args.stop_after}", 2)
    launched = os.environ.get("WORLD_SIZE") is not None      # a process of a torchrun launch
    if args.nproc is not None and not launched:
        if args.nproc < 1:
            return _fail(f"--nproc must be >= 1, got {args.nproc}", 2)
        if args.nproc > 1:
            return _launch(args, config)
    rank = 0
    if launched:
        from reference import distributed
        try:
            distributed.check_world_size(config.batch_size, config.accum, int(os.environ["WORLD_SIZE"]))
            if config.device.startswith("cuda"):     # one GPU per rank
                config.device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
            rank, _ = distributed.setup(config.device)
        except ValueError as err:
            return _fail(str(err), 2)
        if rank != 0:
            _silence_stdout()                         # rank 0 alone prints
        import torch.distributed as dist
        print(f"bare-lm train: rank 0 of a process group of {dist.get_world_size()} ranks, backend "
              f"{dist.get_backend()}, device {config.device}; the batch of {config.batch_size} is split "
              f"{config.batch_size // dist.get_world_size()} per rank", flush=True)
        try:
            return _train(args, config, preset, train_docs, val_docs, started)
        finally:
            distributed.teardown()
    return _train(args, config, preset, train_docs, val_docs, started)


def _launch(args, config) -> int:
    """Run this command in ``args.nproc`` processes under torchrun (``torch.distributed.run``)."""
    from reference import distributed
    try:
        distributed.check_world_size(config.batch_size, config.accum, args.nproc)
    except ValueError as err:
        return _fail(f"--nproc {args.nproc}: {err}".replace("world_size", "--nproc"), 2)
    # --nproc goes (torchrun's parser would take it for its --nproc-per-node); the ranks learn it from
    # BARE_LM_NPROC, for the resume command they print
    rest, skip = [], False
    for word in getattr(args, "argv", sys.argv[1:]):
        if skip:
            skip = False
        elif word == "--nproc":
            skip = True
        elif not word.startswith("--nproc="):
            rest.append(word)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
               "-m", "bare_lm.cli", *rest]
    print(f"bare-lm train: launching {args.nproc} processes: {shlex.join(command)}", flush=True)
    try:
        return subprocess.call(command, env=dict(os.environ, BARE_LM_NPROC=str(args.nproc)))
    except KeyboardInterrupt:   # torchrun forwards the signal to the ranks, which save and stop
        return 130


def _train(args, config, preset, train_docs, val_docs, started) -> int:
    from reference import corpus
    from reference.train import (CHECKPOINT_DIR, DivergenceError, RunInUseError, RunWriteError,
                                 TrainingInterrupted, train)

    out = Path(args.out)

    from tqdm import tqdm
    source = args.data or "the built-in story corpus"
    print(f"bare-lm train: {args.config} preset, {config.steps} steps, device {config.device}, "
          f"{len(train_docs)} train / {len(val_docs)} val documents from {source}")
    try:
        result = train(config, preset["model"], train_docs=train_docs, val_docs=val_docs, resume=args.resume,
                       stop_after=args.stop_after, progress=not args.no_progress, print_fn=tqdm.write,
                       overwrite=args.force, allow_new_data=args.allow_new_data,
                       special_in_text=args.special_in_text)
    except TrainingInterrupted as err:
        print(f"\nbare-lm train: {err.signal_name}: stopped after step {err.step} of {config.steps}; "
              f"saved in {err.checkpoint}", file=sys.stderr)
        print(f"resume with: {_resume_command(args)}", file=sys.stderr)
        return 143 if err.signal_name == "SIGTERM" else 130
    except DivergenceError as err:
        clip = "--grad-clip 1.0" if config.grad_clip is None else f"a smaller --grad-clip (now {config.grad_clip:g})"
        kept = (f"the last checkpoint (step {err.checkpoint_step}) is kept in {out / CHECKPOINT_DIR}"
                if err.checkpoint_step is not None else "no checkpoint was written")
        what = (f"loss {err.loss}, gradient norm {err.grad_norm}" if err.loss is not None
                else "a weight is not finite")
        return _fail(f"training diverged at step {err.step} ({what}); "
                     f"the update was not applied and {kept}. Try a fresh run (--force) with a lower --lr "
                     f"(now {config.lr:g}, e.g. {config.lr / 10:g}) or {clip}", 1)
    except RunInUseError as err:
        return _fail(str(err), 1)
    except RunWriteError as err:
        return _fail(str(err), 1)
    except FileExistsError:
        return _fail(f"{out} already holds a run; continue it with --resume or replace it with --force", 2)
    except (ValueError, FileNotFoundError) as err:
        return _fail(str(err), 2)
    except OSError as err:   # e.g. the token cache cannot be written
        return _fail(f"{getattr(err, 'filename', None) or out}: {err.strerror or err}", 1)

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
    print(f"checkpoint: {result.checkpoint} (step {result.step} of {config.steps})")
    if result.step < config.steps:
        print(f"resume with: {_resume_command(args)}")
    print(f"log: {result.log_path}")
    plot = Path(config.out_dir) / "loss_curve.png"
    if plot.exists():
        print(f"loss curve: {plot}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _resume_command(args) -> str:
    """The command that continues this run: --out, --resume and the data options (not stored)."""
    words = ["bare-lm", "train", "--resume", "--out", args.out]
    if args.data is not None:
        words += ["--data", args.data]
        if args.field != "text":
            words += ["--field", args.field]
        if args.separator is not None:
            words += ["--separator", args.separator]
        if args.val_fraction != 0.1:
            words += ["--val-fraction", repr(args.val_fraction)]
    if args.special_in_text != "error":
        words += ["--special-in-text", args.special_in_text]
    if args.device is not None:
        words += ["--device", args.device]
    nproc = args.nproc or os.environ.get("BARE_LM_NPROC")
    if nproc is not None:
        words += ["--nproc", str(nproc)]
    return " ".join(shlex.quote(w) for w in words)


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


def _special_location(args, docs: list[str], special: str = "<|endoftext|>") -> str | None:
    """``FILE:LINE`` of the first special token text in the data files (the raw lines), or, when it
    hides in JSON escapes, the document; None when there is none."""
    if not any(special in d for d in docs):
        return None
    if args.data is not None:
        path = Path(args.data)
        files = sorted(p for p in path.rglob("*.txt") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            for number, line in enumerate(f.read_bytes().decode("utf-8", errors="replace").split("\n"), 1):
                if special in line:
                    return f"{f}:{number}"
    index = next(i for i, d in enumerate(docs) if special in d)
    return f"{args.data or 'the data'}: document {index + 1}"


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


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail again."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
