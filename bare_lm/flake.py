"""Flake check: run the spec N times, each with a fresh random hypothesis seed and no example database.

``python -m bare_lm.flake --runs N [--jobs J] [--profile dev] [--component C ...] [-- PYTEST ARGS]``

Each run is ``python -m pytest <spec files> --hypothesis-seed=<random> --hypothesis-profile=<profile>
-p bare_lm.flake`` in a fresh process. Loaded as a pytest plugin (``-p bare_lm.flake``), this module
re-registers the active hypothesis profile with ``database=None``, so no run replays an example
that an earlier run (or a learner's ``.hypothesis/`` folder) saved: every run is an independent
draw. Failures are counted per test (from a JUnit XML report of each run); a table of the tests
that failed at least once is printed, with the seeds that reproduce them. Exits 1 if any test
failed in any run, 0 otherwise.

Without ``--component`` and without pytest arguments the whole spec (``spec_tests/``) runs.
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SPEC_DIR = REPO_ROOT / "spec_tests"
PROFILE = "bare-lm-flake"
# The profiles spec_tests/plugin.py registers. Hypothesis's own ("default", its "ci") keep a 200 ms
# deadline, which a loaded machine exceeds on correct code: a flake check under them measures load.
SPEC_PROFILES = ("dev", "ci", "thorough", "grade", "mutants")


# --- the pytest plugin half (loaded in each run with -p bare_lm.flake) ---------------------------

@pytest.hookimpl(trylast=True)
def pytest_configure(config):
    """After hypothesis has loaded the chosen profile: the same settings without an example database."""
    from hypothesis import settings
    settings.register_profile(PROFILE, parent=settings.default, database=None)
    settings.load_profile(PROFILE)


# --- the runner ----------------------------------------------------------------------------------

def _failed_tests(report: Path) -> list[str]:
    """Node-like names (``file::test``) of the failed or erroring test cases in a JUnit XML report."""
    if not report.exists():
        return []
    failed = []
    for case in ET.parse(report).getroot().iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            file = case.get("file") or case.get("classname", "").replace(".", "/") + ".py"
            failed.append(f"{Path(file).name}::{case.get('name')}")
    return failed


def run(runs: int, profile: str, targets: list[str], pytest_args: list[str], seed: int | None = None,
        jobs: int = 1) -> int:
    from concurrent.futures import ThreadPoolExecutor
    rng = random.Random(seed)
    hypothesis_seeds = [rng.randrange(2**32) for _ in range(runs)]
    failures: Counter = Counter()
    seeds: dict[str, list[int]] = defaultdict(list)
    broken_runs = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        def one(i: int):
            hypothesis_seed = hypothesis_seeds[i]
            report = Path(tmp) / f"run-{i}.xml"
            cmd = [sys.executable, "-m", "pytest", *targets, *pytest_args, "-q", "--no-header", "--tb=no",
                   "-p", "no:cacheprovider", "-p", "bare_lm.flake", f"--hypothesis-seed={hypothesis_seed}",
                   f"--hypothesis-profile={profile}", f"--junitxml={report}"]
            proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                                  env={**os.environ, "PYTHONHASHSEED": str(hypothesis_seed % 2**31)})
            return i, hypothesis_seed, proc, _failed_tests(report)

        done = 0
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:   # each run is its own process
            for i, hypothesis_seed, proc, failed in pool.map(one, range(runs)):
                done += 1
                for name in failed:
                    failures[name] += 1
                    seeds[name].append(hypothesis_seed)
                if proc.returncode not in (0, 1):
                    broken_runs.append((i, proc.returncode, (proc.stdout + proc.stderr)[-500:]))
                print(f"run {done}/{runs}: seed {hypothesis_seed}, exit {proc.returncode}, "
                      f"{len(failed)} failed", flush=True)
    elapsed = time.perf_counter() - start
    print()
    if failures:
        width = max(len(name) for name in failures)
        print(f"{'test':<{width}}  failed/runs  hypothesis seeds")
        for name, count in failures.most_common():
            print(f"{name:<{width}}  {count:>6}/{runs:<4}  {', '.join(map(str, seeds[name][:5]))}")
    else:
        print(f"no test failed in {runs} runs")
    for i, code, tail in broken_runs:
        print(f"run {i + 1} exited {code} (not a test failure):\n{tail}")
    print(f"{runs} runs of profile {profile!r} in {elapsed:.0f} s")
    return 1 if failures or broken_runs else 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pytest_args = []
    if "--" in argv:
        k = argv.index("--")
        argv, pytest_args = argv[:k], argv[k + 1:]
    parser = argparse.ArgumentParser(prog="python -m bare_lm.flake", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="number of runs (default 10)")
    parser.add_argument("--profile", default="dev", choices=SPEC_PROFILES,
                        help="one of the spec's hypothesis profiles (default dev, what `pytest` runs)")
    parser.add_argument("--component", action="append", default=[],
                        help="only spec_tests/test_COMPONENT.py (repeatable)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the seeds (default: random)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process (default 1)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error(f"--runs must be >= 1, got {args.runs}")
    targets = [str(SPEC_DIR / f"test_{c}.py") for c in args.component]
    for t in targets:
        if not Path(t).exists():
            parser.error(f"no spec file {t}")
    if not targets and not pytest_args:
        targets = [str(SPEC_DIR)]
    return run(args.runs, args.profile, targets, pytest_args, args.seed, args.jobs)


if __name__ == "__main__":
    sys.exit(main())
