"""``bare-lm generate``: not written yet."""

from __future__ import annotations


def register(commands) -> None:
    parser = commands.add_parser("generate", help="(not written yet)")
    parser.set_defaults(run=lambda args: print("bare-lm generate: not written yet") or 1)
