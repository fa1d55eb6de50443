"""Run the mutant catalogue: each classic bug must make its component's spec fail.

``bare-lm mutants`` (or ``python -m bare_lm.mutate``): for each mutant, apply the edit to a copy of
``reference/`` and run the mutant's spec files against the copy (``pytest --impl COPY -x``), and
report which test caught it, or SURVIVED. Exits 1 if any mutant survives or no longer applies.

The mutants run in the warm forking executor of the generated mutants (``bare_lm/mutgen.py``): this
process imports torch, pytest, hypothesis and the specs once (and transformers, tokenizers and
tiktoken when a mutant's spec uses them), then per mutant writes the mutated file into a job slot's
copy of the implementation and forks; the child runs pytest on the mutant's specs and is killed
after ``TIMEOUT_S`` seconds. A mutant costs the tests it runs plus ~0.4 s, not a fresh interpreter.

Each child runs first the test that caught the mutant last time (``bare_lm/mutants/caught_by.json``,
rewritten by every run over ``reference/``), then the tests that caught other mutants of the same
file, then the rest in spec order. With ``-x`` a caught mutant then costs about one test. The order
changes the time, never the verdict: a mutant is caught when any test of its specs fails, and a
spec that no longer fails on the recorded test still runs every other one. A mutant that makes
some test run for ever (TIMEOUT) is run again in the spec's own order, so that it gets the verdict
it would get without the reordering.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from spec_tests.impl import REPO_ROOT

from .mutants import Mutant, all_mutants

SPEC_DIR = REPO_ROOT / "spec_tests"
# Which test caught each mutant last time (BARE_LM_CAUGHT_BY: another file, e.g. for self-tests).
CAUGHT_BY = Path(os.environ.get("BARE_LM_CAUGHT_BY") or Path(__file__).resolve().parent / "mutants" / "caught_by.json")
TIMEOUT_S = 300
# Peers a spec imports lazily (on its first test), imported once in this process instead of per child.
PEERS = {
    "interop": ("transformers", "transformers.models.auto.modeling_auto", "transformers.models.gpt2.modeling_gpt2",
                "transformers.models.llama.modeling_llama", "tokenizers", "safetensors.torch"),
    "tokenizer": ("tiktoken", "tokenizers"),
}


@dataclass
class Outcome:
    mutant: Mutant
    status: str          # "caught", "SURVIVED", "TIMEOUT", "BROKEN" (the edit no longer applies to the
                         # reference, or pytest failed without a failing test), "N/A" (it does not
                         # apply to the --source code: not a failure)
    caught_by: str = ""
    seconds: float = 0.0
    cpu: float = 0.0     # the child's CPU seconds (user + system): its cost on a free core


def apply(mutant: Mutant, impl_dir: Path) -> None:
    path = impl_dir / mutant.file
    path.write_text(mutated(mutant, path.read_text()))


def mutated(mutant: Mutant, text: str) -> str:
    """``text`` with the mutant's edit; ValueError unless its ``old`` text occurs exactly once."""
    count = text.count(mutant.old)
    if count != 1:
        raise ValueError(f"mutant {mutant.name}: its 'old' text occurs {count} times in {mutant.file} (needs 1)")
    return text.replace(mutant.old, mutant.new)


def peers(mutants: list[Mutant]) -> tuple[str, ...]:
    """The lazily imported peers that the specs of ``mutants`` use."""
    return tuple(dict.fromkeys(name for m in mutants for c in m.components for name in PEERS.get(c, ())))


class Catchers:
    """Which test to run first for a mutant: the one that caught it last time, then the tests that
    caught other mutants of the same file (this run's first, then the recorded ones, by count)."""

    def __init__(self, recorded: dict[str, str], mutants: list[Mutant]):
        from collections import Counter
        self.recorded = recorded
        self.file_of = {m.name: m.file for m in mutants}
        self.now: dict[str, Counter] = {}
        self.before: dict[str, Counter] = {}
        for m in mutants:
            if m.name in recorded:
                self.before.setdefault(m.file, Counter())[recorded[m.name]] += 1

    def add(self, mutant: Mutant, test: str) -> None:
        from collections import Counter
        self.now.setdefault(mutant.file, Counter())[test] += 1

    def first(self, mutant: Mutant) -> tuple[str, ...]:
        own = [self.recorded[mutant.name]] if mutant.name in self.recorded else []
        now = [t for t, _ in self.now.get(mutant.file, {}).most_common()] if mutant.file in self.now else []
        before = [t for t, _ in self.before[mutant.file].most_common()] if mutant.file in self.before else []
        return tuple(dict.fromkeys(own + now + before))


def read_caught_by(path: Path = CAUGHT_BY) -> dict[str, str]:
    """The recorded catcher of each mutant ({} if the file is missing or unreadable: only slower)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)} if isinstance(data, dict) else {}


def write_caught_by(outcomes: list["Outcome"], path: Path = CAUGHT_BY) -> None:
    """Record which test caught each mutant (kept for mutants not run this time; only names that
    are still in the catalogue)."""
    from .mutants import all_mutants as catalogue
    names = {m.name for m in catalogue()}
    data = {k: v for k, v in read_caught_by(path).items() if k in names}
    for o in outcomes:
        if o.status == "caught":
            data[o.mutant.name] = o.caught_by
    text = json.dumps(dict(sorted(data.items())), indent=1) + "\n"
    try:
        if not path.exists() or path.read_text() != text:
            path.write_text(text)
    except OSError:  # a read-only install: the record only saves time
        pass


def run_mutants(mutants: list[Mutant], source: Path, jobs: int, profile: str, timeout: float = TIMEOUT_S,
                on_outcome=None, caught_by: dict[str, str] | None = None) -> list[Outcome]:
    """Run each mutant against ``source`` in the warm forking executor; outcomes in catalogue order
    (``on_outcome`` is called as each one ends). ``caught_by``: the test that caught each mutant
    before, run first (default: the recorded ones)."""
    from . import mutgen
    is_reference = source == (REPO_ROOT / "reference").resolve()
    catchers = Catchers(read_caught_by() if caught_by is None else caught_by, mutants)
    outcomes: dict[str, Outcome] = {}
    queue: list[tuple[Mutant, str]] = []
    for m in mutants:
        try:
            queue.append((m, mutated(m, (source / m.file).read_text())))
        except (ValueError, FileNotFoundError) as err:
            outcome = (Outcome(m, "BROKEN", str(err)) if is_reference else  # other code: the edit need not fit it
                       Outcome(m, "N/A", "does not apply to this code"))
            outcomes[m.name] = outcome
            if on_outcome:
                on_outcome(outcome)
    if queue:
        target = mutgen.bare_lm_target(profile)
        also = peers([m for m, _ in queue])
        if also:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")        # as the spec sets them: never the network
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # no Rust thread pool across fork()
        mutgen.warm_up(target, [], tuple(sorted({c for m, _ in queue for c in m.components})), also)
        with tempfile.TemporaryDirectory(prefix="bare-lm-mutants-") as tmp:
            executor = mutgen.Executor(Path(tmp), source, jobs)
            try:
                in_spec_order: set[str] = set()  # mutants to rerun with the spec's own order
                while queue or executor.running:
                    while queue and executor.free:
                        m, code = queue.pop(0)
                        slot = executor.free.pop(0)
                        first = () if m.name in in_spec_order else catchers.first(m)
                        job = mutgen.Job(m, target.args_for(m.components, executor.impl_dir(slot)), timeout,
                                         specs=m.components, first=first)
                        executor.start(job, slot, (m.file, code))
                    for job, result in executor.wait():
                        if result.status == "timeout" and job.first:
                            # A test that never ends on this mutant came first: rerun it in the spec's
                            # order, so that the order never decides the verdict.
                            in_spec_order.add(job.key.name)
                            queue.insert(0, (job.key, mutated(job.key, (source / job.key.file).read_text())))
                            continue
                        outcome = _verdict(job.key, result)
                        if outcome.status == "caught":
                            catchers.add(outcome.mutant, outcome.caught_by)
                        outcomes[outcome.mutant.name] = outcome
                        if on_outcome:
                            on_outcome(outcome)
            finally:
                executor.kill_all()
    return [outcomes[m.name] for m in mutants]


def _verdict(mutant: Mutant, result) -> Outcome:
    """The catalogue's verdict from the executor's outcome (killed / survived / timeout)."""
    cpu = result.cpu or 0.0
    if result.status == "survived":
        return Outcome(mutant, "SURVIVED", "", result.seconds, cpu)
    if result.status == "error":  # the executor's own failure, not the spec's verdict
        return Outcome(mutant, "BROKEN", result.caught_by, result.seconds, cpu)
    if result.status == "timeout":
        return Outcome(mutant, "TIMEOUT", f"spec {result.caught_by}", result.seconds, cpu)
    if "::" not in result.caught_by:  # pytest itself failed (collection or usage error, a crash): show why
        return Outcome(mutant, "BROKEN", result.caught_by, result.seconds, cpu)
    return Outcome(mutant, "caught", result.caught_by, result.seconds, cpu)


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
    start = time.perf_counter()
    outcomes = run_mutants(mutants, source, max(1, args.jobs), args.profile, TIMEOUT_S, _print_outcome)
    if source == (REPO_ROOT / "reference").resolve():
        write_caught_by(outcomes)
    return report(outcomes, time.perf_counter() - start)


def _print_outcome(outcome: Outcome) -> None:
    mark = {"caught": "ok ", "N/A": "-- "}.get(outcome.status, "!! ")
    print(f"{mark}{outcome.mutant.name:<40} {outcome.status:<9} {outcome.seconds:5.1f} s  {outcome.caught_by}",
          flush=True)


def report(outcomes: list[Outcome], wall: float | None = None) -> int:
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
    cpu = sum(o.cpu for o in outcomes)
    took = f" in {wall:.0f} s" if wall is not None else ""
    print(f"\n{applied - len(bad)} of {applied} mutants caught{took} ({total:.0f} s of spec runs, "
          f"{cpu:.0f} s of CPU in them)")
    if skipped:
        print(f"{len(skipped)} do not apply to this code (their 'old' text is not in it once; not counted): "
              + ", ".join(o.mutant.name for o in skipped))
    if bad:
        print("NOT caught: " + ", ".join(o.mutant.name for o in bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
