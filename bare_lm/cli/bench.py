"""``bare-lm bench``: studies that compare design choices by training small models.

``bare-lm bench variants [--quick] [--out DIR] [--seeds N] [--only EXPERIMENT]`` runs the variants
study (norm placement, positional schemes, FFN activations, attention variants, tokenizer vocabulary
size) on the built-in corpus and writes ``RESULTS.md``, ``results.json`` and PNG plots (matplotlib,
optional) to ``docs/variants/`` of the checkout, or to ``--out``. The study lives in
``benchmarks/variants.py`` of a source checkout (it is not part of the installed package).
For speed comparisons of single layers use pytest-benchmark: ``pytest benchmarks --benchmark-only``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

EXPERIMENTS = ("norm", "positional", "activation", "attention", "tokenizer")


def register(commands) -> None:
    bench = commands.add_parser(
        "bench", help="studies comparing design choices (bare-lm bench variants)",
        description="Studies that compare design choices of the model by training it at a small budget.")
    studies = bench.add_subparsers(dest="study", metavar="STUDY", required=True)
    variants = studies.add_parser(
        "variants", help="norm placement, positions, activations, attention, vocabulary size",
        description="Train each variant at a small fixed budget on the built-in corpus with fixed seeds "
                    "and write Markdown tables (and PNG plots, with matplotlib) to the results folder. "
                    "The full study takes about 15 minutes on 2 CPU cores; --quick a few.")
    variants.add_argument("--quick", action="store_true",
                          help="a first look in a few minutes: 1 seed, 100 steps (default out: runs/variants-quick)")
    variants.add_argument("--out", default=None, metavar="DIR",
                          help="results folder (default: docs/variants of the checkout)")
    variants.add_argument("--seeds", type=int, default=None, metavar="N",
                          help="train with seeds 0..N-1 (default: 2 seeds, 1 with --quick)")
    variants.add_argument("--only", action="append", default=None, metavar="EXPERIMENT",
                          help=f"run only this experiment (repeatable, or comma-separated): {', '.join(EXPERIMENTS)}")
    variants.add_argument("--threads", type=int, default=None, metavar="N",
                          help="torch threads (default 2: the timings in the results are for 2 CPU cores)")
    variants.set_defaults(run=run)


def run(args) -> int:
    """Run the study chosen by ``args.study`` (only ``variants`` so far)."""
    module = _variants_module()
    if module is None:
        print("bare-lm bench variants: the study lives in benchmarks/variants.py of a source checkout "
              "(git clone, then pip install -e .); it is not part of an installed wheel", file=sys.stderr)
        return 2
    if args.seeds is not None and args.seeds < 1:
        print(f"bare-lm bench variants: --seeds must be >= 1, got {args.seeds}", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"bare-lm bench variants: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    return module.run_from_args(args)


def _variants_module():
    """``benchmarks.variants`` of the checkout this package was installed from (editable install)."""
    try:
        return importlib.import_module("benchmarks.variants")
    except ModuleNotFoundError as err:
        if err.name not in ("benchmarks", "benchmarks.variants"):
            raise
    root = Path(__file__).resolve().parents[2]
    if not (root / "benchmarks" / "variants.py").is_file():
        return None
    sys.path.insert(0, str(root))
    sys.modules.pop("benchmarks", None)
    return importlib.import_module("benchmarks.variants")
