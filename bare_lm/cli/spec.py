"""``bare-lm status`` (run the spec, print the progress table) and ``bare-lm mutants``."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(commands) -> None:
    status = commands.add_parser(
        "status", help="run the spec against an implementation and print its progress table",
        description="Run the spec against an implementation (reference, kata, a package or a directory) "
                    "and print the progress table. Extra arguments go to pytest.")
    status.add_argument("--impl", default="kata", help="implementation to check (default: kata)")
    status.add_argument("--component", "-c", action="append", default=[],
                        help="only this component's spec (repeatable)")
    status.add_argument("pytest_args", nargs=argparse.REMAINDER, help="further pytest arguments")
    status.set_defaults(run=run_status)

    from bare_lm import mutate

    mutants = commands.add_parser(
        "mutants", help="prove the spec bites: every classic bug in the catalogue must be caught",
        description=mutate.__doc__)
    mutate.add_arguments(mutants)
    mutants.set_defaults(run=mutate.run)


def run_status(args) -> int:
    import pytest

    import spec_tests

    spec_dir = Path(spec_tests.__file__).resolve().parent
    targets = [str(spec_dir / f"test_{c}.py") for c in args.component] or [str(spec_dir)]
    return int(pytest.main([*targets, "-p", "spec_tests.plugin", "--impl", args.impl, "-q", "--tb=line",
                            "--no-header", "-p", "no:cacheprovider", *args.pytest_args]))

