"""``bare-lm status`` (run the spec, print the progress table), ``bare-lm mutants`` and ``bare-lm kata export``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands) -> None:
    status = commands.add_parser(
        "status", help="run the spec against an implementation and print its progress table",
        description="Run the spec against an implementation (default: ./kata when the working directory has "
                    "one, else the installed kata; or reference, a package or a directory) and print the "
                    "progress table. Other arguments (-x, -k EXPR, --progress-json PATH, ...) go to pytest.")
    status.add_argument("--impl", default="kata", help="implementation to check (default: kata)")
    status.add_argument("--component", "-c", action="append", default=[],
                        help="only this component's spec (repeatable)")
    status.add_argument("pytest_args", nargs=argparse.REMAINDER, help="further pytest arguments")
    status.set_defaults(run=run_status)
    _pass_unknown_options_through(status)

    from bare_lm import mutate

    mutants = commands.add_parser(
        "mutants", help="prove the spec bites: every classic bug in the catalogue must be caught",
        description=mutate.__doc__)
    mutate.add_arguments(mutants)
    mutants.set_defaults(run=mutate.run)

    kata = commands.add_parser("kata", help="the kata: export it as a standalone student repository")
    actions = kata.add_subparsers(dest="kata_command", metavar="ACTION", required=True)
    export = actions.add_parser(
        "export", help="write a student repository: kata stubs, spec, contract, harness, README; no reference",
        description="Write a standalone student repository to DIR: the kata stubs, the spec with its "
                    "contract and harness, a student README and its own pyproject.toml. It holds no "
                    "reference implementation and no mutant catalogue.")
    export.add_argument("dir", help="the directory to create (must not exist, or be empty)")
    export.set_defaults(run=run_export)


def _pass_unknown_options_through(parser: argparse.ArgumentParser) -> None:
    """Options that ``status`` does not know (``-x``, ``--progress-json PATH``) are pytest's."""
    parse = parser.parse_known_args

    def parse_known_args(args=None, namespace=None):
        namespace, extra = parse(args, namespace)
        namespace.pytest_args = [*extra, *(namespace.pytest_args or [])]
        return namespace, []

    parser.parse_known_args = parse_known_args


def run_status(args) -> int:
    import pytest

    import spec_tests

    spec_dir = Path(spec_tests.__file__).resolve().parent
    targets = [str(spec_dir / f"test_{c}.py") for c in args.component] or [str(spec_dir)]
    extra = [a for a in args.pytest_args if a != "--"]
    # -q keeps pytest's own lines short and -rN drops its one-line repeat of each failure: the failure
    # screens (Property, Input, expected/got) stay whole, once, and the table names what to do next.
    return int(pytest.main([*targets, "-p", "spec_tests.plugin", "--impl", args.impl, "-q", "-rN", "--no-header",
                            "-p", "no:cacheprovider", *extra]))


def run_export(args) -> int:
    from bare_lm import export

    try:
        path = export.export(args.dir)
    except ValueError as err:
        print(f"bare-lm kata export: {err}", file=sys.stderr)
        return 2
    print(f"student repository written to {path}\n"
          f"  cd {path} && python3 -m venv .venv && . .venv/bin/activate && pip install -e . && pytest")
    return 0
