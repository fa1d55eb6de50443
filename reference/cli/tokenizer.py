"""``bare-lm tokenizer``: not written yet."""

from __future__ import annotations


def register(commands) -> None:
    parser = commands.add_parser("tokenizer", help="(not written yet)")
    parser.set_defaults(run=lambda args: print("bare-lm tokenizer: not written yet") or 1)
