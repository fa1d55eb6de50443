"""Run the mutant catalogue: each classic bug must make its component's spec fail.

``bare-lm mutants`` (or ``python -m bare_lm.mutate``): for each mutant, copy ``reference/``, apply
the edit, run the mutant's spec files against the copy with ``pytest --impl COPY -x``, and report
which test caught it, or SURVIVED. Exits 1 if any mutant survives or no longer applies.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from spec_tests.impl import REPO_ROOT

from .mutants import Mutant, all_mutants

SPEC_DIR = REPO_ROOT / "spec_tests"
TIMEOUT_S = 300


@dataclass
class Outcome:
    mutant: Mutant
    status: str          # "caught", "SURVIVED", "TIMEOUT", "BROKEN" (the edit no longer applies to the
                         # reference), "N/A" (it does not apply to the --source code: not a failure)
    caught_by: str = ""
    seconds: float = 0.0


def apply(mutant: Mutant, impl_dir: Path) -> None:
    path = impl_dir / mutant.file
    text = path.read_text()
    count = text.count(mutant.old)
    if count != 1:
        raise ValueError(f"mutant {mutant.name}: its 'old' text occurs {count} times in {mutant.file} (needs 1)")
    path.write_text(text.replace(mutant.old, mutant.new))


def run_one(mutant: Mutant, source: Path, workdir: Path, profile: str) -> Outcome:
    start = time.perf_counter()
    impl_dir = workdir / mutant.name / "impl"
    shutil.copytree(source, impl_dir, ignore=shutil.ignore_patterns("__pycache__"))
    try:
        apply(mutant, impl_dir)
    except (ValueError, FileNotFoundError) as err:
        if source != (REPO_ROOT / "reference").resolve():  # other code: the edit need not fit it
            return Outcome(mutant, "N/A", "does not apply to this code")
        return Outcome(mutant, "BROKEN", str(err))
    report = workdir / mutant.name / "report.json"
    specs = [str(SPEC_DIR / f"test_{c}.py") for c in mutant.components]
    cmd = [sys.executable, "-m", "pytest", *specs, "--impl", str(impl_dir), "-x", "-q", "--tb=no",
           "-p", "no:cacheprovider", "--no-header", f"--hypothesis-profile={profile}",
           "--progress-json", str(report), "--rootdir", str(REPO_ROOT), "-c", str(REPO_ROOT / "pyproject.toml")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S, cwd=REPO_ROOT, env=env)
    except subprocess.TimeoutExpired:
        return Outcome(mutant, "TIMEOUT", f"spec ran over {TIMEOUT_S} s", time.perf_counter() - start)
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return Outcome(mutant, "SURVIVED", "", seconds)
    caught_by = ""
    if report.exists():
        results = json.loads(report.read_text())["results"]
        failed = [r for r in results if r["status"] in ("failed", "broken", "blocked", "not started")]
        if failed:
            caught_by = failed[0]["nodeid"].split("/")[-1]
    if not caught_by:  # pytest itself failed (collection error, usage error): show why
        return Outcome(mutant, "BROKEN", (proc.stdout + proc.stderr).strip().splitlines()[-1:][0] if
                       (proc.stdout + proc.stderr).strip() else f"pytest exited {proc.returncode}", seconds)
    return Outcome(mutant, "caught", caught_by, seconds)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--component", action="append", default=[],
                        help="only the mutants of this component (repeatable)")
    parser.add_argument("--name", action="append", default=[], help="only this mutant (repeatable)")
    parser.add_argument("--source", default=str(REPO_ROOT / "reference"),
                        help="the implementation to mutate (default: reference/)")
    parser.add_argument("-j", "--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--profile", default="mutants", help="hypothesis profile (default: mutants)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    from . import mutgen  # --generated: cosmic-ray's generated mutants (bare_lm/mutgen.py)
    mutgen.add_arguments(parser)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bare-lm mutants", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


def run(args: argparse.Namespace) -> int:
    if getattr(args, "generated", False) or getattr(args, "ci_sample", False):
        from . import mutgen
        return mutgen.run(args)
    mutants = [m for m in all_mutants()
               if (not args.component or set(m.components) & set(args.component) or
                   m.file.removesuffix(".py") in args.component)
               and (not args.name or m.name in args.name)]
    if args.list:
        for m in mutants:
            print(f"{m.name:<40} {m.file:<16} {m.description}")
        return 0
    if not mutants:
        print("no mutant matches")
        return 1
    source = Path(args.source).resolve()
    print(f"Running {len(mutants)} mutants of {source} with {args.jobs} jobs...", flush=True)
    with tempfile.TemporaryDirectory(prefix="bare-lm-mutants-") as tmp:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outcomes = []
            for outcome in pool.map(lambda m: run_one(m, source, Path(tmp), args.profile), mutants):
                outcomes.append(outcome)
                mark = {"caught": "ok ", "N/A": "-- "}.get(outcome.status, "!! ")
                print(f"{mark}{outcome.mutant.name:<40} {outcome.status:<9} {outcome.seconds:5.1f} s  "
                      f"{outcome.caught_by}", flush=True)
    return report(outcomes)


def report(outcomes: list[Outcome]) -> int:
    width = max(len(o.mutant.name) for o in outcomes)
    print()
    print(f"{'mutant':<{width}}  {'bug':<55}  caught by")
    for o in outcomes:
        verdict = o.caught_by if o.status == "caught" else f"{o.status} {o.caught_by}".strip()
        print(f"{o.mutant.name:<{width}}  {o.mutant.description[:55]:<55}  {verdict}")
    skipped = [o for o in outcomes if o.status == "N/A"]
    bad = [o for o in outcomes if o.status not in ("caught", "N/A")]
    applied = len(outcomes) - len(skipped)
    total = sum(o.seconds for o in outcomes)
    print(f"\n{applied - len(bad)} of {applied} mutants caught ({total:.0f} s of spec runs)")
    if skipped:
        print(f"{len(skipped)} do not apply to this code (their 'old' text is not in it once; not counted): "
              + ", ".join(o.mutant.name for o in skipped))
    if bad:
        print("NOT caught: " + ", ".join(o.mutant.name for o in bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
