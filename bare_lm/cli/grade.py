"""``bare-lm grade``: grade a submission against the spec (see ``bare_lm/grade.py``)."""

from __future__ import annotations

import sys


def register(commands) -> None:
    from bare_lm import grade

    parser = commands.add_parser(
        "grade", help="grade a submission: reproducible, isolated, with points per component",
        description="Grade a submission (a directory with one module per component) against the spec, each "
                    "component in its own process with time limits; write Gradescope's results.json, "
                    "grade.json and a roster CSV row.")
    parser.add_argument("submission", help="the submission's directory")
    parser.add_argument("--rubric", default=None, metavar="FILE", help="points per component (TOML)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="where to write results.json, grade.json and grades.csv (default: grade-<name>)")
    parser.add_argument("--csv", default=None, metavar="FILE",
                        help="append the submission's row to this roster CSV (default: DIR/grades.csv)")
    parser.add_argument("--component", "-c", action="append", default=[],
                        help="grade only this component (repeatable; default: all)")
    parser.add_argument("--test-timeout", type=float, default=grade.DEFAULT_TEST_TIMEOUT_S, metavar="S",
                        help=f"limit per test in CPU seconds (default {grade.DEFAULT_TEST_TIMEOUT_S:g}; "
                             f"wall-clock backstop {grade.WALL_BACKSTOP}x that)")
    parser.add_argument("--component-timeout", type=float, default=grade.DEFAULT_COMPONENT_TIMEOUT_S,
                        metavar="S", help=f"time limit per component (default {grade.DEFAULT_COMPONENT_TIMEOUT_S:g})")
    parser.add_argument("--quiet", "-q", action="store_true", help="print only the total")
    parser.set_defaults(run=run)


def run(args) -> int:
    from pathlib import Path

    from bare_lm import grade

    try:
        rubric = grade.Rubric.load(args.rubric)
        progress = None if args.quiet else (lambda line: print(line, flush=True))
        report = grade.grade(args.submission, components=args.component or None, rubric=rubric,
                             test_timeout=args.test_timeout, component_timeout=args.component_timeout,
                             progress=progress)
    except ValueError as err:
        print(f"bare-lm grade: {err}", file=sys.stderr)
        return 2
    out = Path(args.out or f"grade-{Path(args.submission).resolve().name}")
    grade.write(report, out, args.csv, rubric)
    print(f"{report['submission']}: {report['score']:g} / {report['max_score']:g} "
          f"(spec {report['spec_version']}, {report['duration_s']:.0f} s); written to {out}/")
    return 0
