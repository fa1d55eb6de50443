"""The ``bare-lm`` command.

Subcommands, one module each: ``train`` (train.py), ``finetune`` (finetune.py: LoRA adapters),
``generate`` (generate.py), ``tokenizer``
(tokenizer.py), ``convert`` (convert.py: to and from Hugging Face directories), ``status``, ``kata``
and ``mutants`` (spec.py), ``grade`` (grade.py), ``bench`` (bench.py), ``quantize`` (quantize.py: INT8 / INT4 weights).
"""

from __future__ import annotations

import argparse
import sys

from . import bench, convert, finetune, generate, grade, quantize, spec, tokenizer, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bare-lm",
        description="Bare-LM: an executable specification of a small decoder-only language model.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (train, finetune, generate, tokenizer, convert, spec, grade, bench, quantize):
        module.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)   # what `train --nproc` hands to torchrun
    try:
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
