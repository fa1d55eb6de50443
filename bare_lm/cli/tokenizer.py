"""``bare-lm tokenizer``: train a byte-level BPE tokenizer, and inspect encodings.

  bare-lm tokenizer train FILE --vocab-size N --out tok.json [--special TOKEN ...] [--pattern gpt2|none]
  bare-lm tokenizer encode --tokenizer tok.json TEXT      tokens separated by '|', each with its id
  bare-lm tokenizer decode --tokenizer tok.json IDS...
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(commands) -> None:
    p = commands.add_parser("tokenizer", help="train a BPE tokenizer, encode or decode text",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="tokenizer_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="train a tokenizer on a UTF-8 text file")
    t.add_argument("file", help="UTF-8 text file")
    t.add_argument("--vocab-size", type=int, required=True, help="256 bytes + merges + special tokens")
    t.add_argument("--out", required=True, help="output JSON file")
    t.add_argument("--special", action="append", default=[], metavar="TOKEN",
                   help="a special token (repeatable), e.g. '<|endoftext|>'")
    t.add_argument("--pattern", choices=("gpt2", "none"), default="gpt2",
                   help="pre-tokenization: GPT-2's regex (default) or none")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(run=run_train)

    e = sub.add_parser("encode", help="show the tokens of a text")
    e.add_argument("--tokenizer", required=True, help="tokenizer JSON file")
    e.add_argument("text", help="text to encode")
    e.add_argument("--ids-only", action="store_true", help="print only the ids")
    e.add_argument("--allow-special", action="store_true",
                   help="a special token's text (<|endoftext|>) is that token (default: an error)")
    e.set_defaults(run=_quiet_on_broken_pipe(run_encode))

    d = sub.add_parser("decode", help="decode token ids to text")
    d.add_argument("--tokenizer", required=True, help="tokenizer JSON file")
    d.add_argument("ids", nargs="+", help="token ids (ints)")
    d.set_defaults(run=_quiet_on_broken_pipe(run_decode))


def _load(path):
    from reference.tokenizer import Tokenizer
    return Tokenizer.load(path)


def run_train(args) -> int:
    """Train on the file's text exactly as it is (bytes decoded as UTF-8: CRLF stays CRLF); the
    output path is checked before training, so a bad --out fails at once."""
    from reference.tokenizer import GPT2_PATTERN, Tokenizer

    def fail(message: str) -> int:
        print(f"bare-lm tokenizer train: {message}", file=sys.stderr)
        return 2

    pattern = GPT2_PATTERN if args.pattern == "gpt2" else None
    out = Path(args.out)
    if out.is_dir():
        return fail(f"--out {out} is a directory; give a file name such as {out / 'tokenizer.json'}")
    if not out.parent.is_dir():
        return fail(f"--out {out}: the directory {out.parent} does not exist")
    try:
        raw = Path(args.file).read_bytes()
    except OSError as err:
        return fail(f"{args.file}: {err.strerror or err}")
    try:
        text = raw.decode("utf-8")          # not open(): universal newlines would turn CRLF into LF
    except UnicodeDecodeError as err:
        return fail(f"{args.file}: not UTF-8 text ({err.reason} at byte {err.start})")
    start = time.perf_counter()
    try:
        tok = Tokenizer.train(text, args.vocab_size, special_tokens=args.special,
                              pattern=pattern, progress=not args.no_progress)
    except (ValueError, TypeError) as err:
        return fail(str(err))
    try:
        tok.save(out)
    except OSError as err:
        return fail(f"cannot write {out}: {err.strerror or err}")
    print(f"trained {tok!r} in {time.perf_counter() - start:.2f} s -> {args.out}")
    return 0


def _quiet_on_broken_pipe(run):
    """``run(args)``, but a closed stdout (``| head``) ends it quietly with status 0."""
    def wrapped(args) -> int:
        try:
            return run(args)
        except BrokenPipeError:
            import os
            try:
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                pass
            return 0
    return wrapped


def _show(tok, ids) -> str:
    """Tokens separated by '|', each shown as its text (escaped if not valid UTF-8) and its id."""
    parts = []
    for i in ids:
        raw = tok.vocab[i]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = "".join(f"\\x{b:02x}" for b in raw)
        text = text.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "\u2423")
        parts.append(f"{text}({i})")
    return "|".join(parts)


def run_encode(args) -> int:
    try:
        tok = _load(args.tokenizer)
        ids = tok.encode(args.text, allowed_special="all" if args.allow_special else ())
    except (ValueError, OSError) as err:
        hint = "; pass --allow-special to use it as that token" if "allowed_special" in str(err) else ""
        print(f"bare-lm tokenizer encode: {err}{hint}", file=sys.stderr)
        return 2
    if args.ids_only:
        print(" ".join(map(str, ids)))
    else:
        print(_show(tok, ids))
        print(f"{len(ids)} tokens, {len(args.text.encode('utf-8'))} bytes")
    return 0


def run_decode(args) -> int:
    try:
        tok = _load(args.tokenizer)
        ids = [int(x) for x in " ".join(args.ids).replace(",", " ").split()]
        text = tok.decode(ids)
    except (ValueError, OSError) as err:
        print(f"bare-lm tokenizer decode: {err}", file=sys.stderr)
        return 2
    print(_show(tok, ids), file=sys.stderr)
    print(text)
    return 0
