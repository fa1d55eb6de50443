"""Generated mutants: cosmic-ray's operators mutate ``reference/``, the spec must kill every mutant.

``bare-lm mutants --generated [--component X ...] [--budget SECONDS] [--jobs N] [--sample N --seed S]``

- **Generation and storage** are cosmic-ray's: its operators enumerate every mutation of each module
  (``core/NumberReplacer``, ``core/ReplaceComparisonOperator_Lt_LtE``, ...), and the work items and
  their results live in its SQLite session (``.mutation/session.sqlite`` by default), so
  ``cr-report .mutation/session.sqlite`` works on it. The session is resumable: a rerun continues with
  the mutants that have no result yet; a module whose source changed gets its mutants regenerated.
- **Execution** is ours, because a fresh interpreter per mutant spends ~3 s importing torch: this
  process imports torch, pytest, hypothesis and the spec once, then per mutant writes the mutated
  module into a private copy of the implementation (one copy per job slot), FORKS, and the child runs
  ``pytest.main([spec files, "--impl", copy, "-x", ...])``. The parent never imports the
  implementation, so every child loads the mutated package afresh. A child that runs past its
  timeout is killed (outcome ``timeout``, reported apart from ``killed``).
- **Which spec runs**: the mutated module's own component spec; for ``checks.py``, the specs of
  cheap components that use it (``CHECKS_SPECS``), except its functions that only heavier components
  call, or that only they reach at a boundary (``CHECKS_SPECS_BY_DEFINITION``); for ``train()`` and
  its loop, the distributed spec as well (``TRAIN_SPECS_BY_DEFINITION``: several ranks).
- **Equivalent mutants** are listed with a reason in ``docs/mutation/equivalent.toml``; a mutant is
  identified by module, operator, occurrence and the original and mutated line, so an edit elsewhere
  in the file never re-points an entry silently: an entry that matches nothing is reported stale.
- ``--report`` writes ``docs/mutation/REPORT.md`` and ``docs/mutation/results.json`` from the session;
  ``--ci-sample`` reruns a fixed, seeded sample of mutants that results.json lists as killed and
  exits 1 if any of them now survives.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import sys
import time
import uuid
from dataclasses import dataclass, field, replace
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = REPO_ROOT / "reference"
DEFAULT_STATE = REPO_ROOT / ".mutation"
DOCS = REPO_ROOT / "docs" / "mutation"
EQUIVALENT_FILE = DOCS / "equivalent.toml"
RESULTS_FILE = DOCS / "results.json"

# Smallest first: the order a partial run (``--budget``) covers the components in.
ORDER = ("linear", "embedding", "norm", "feedforward", "loss", "positional", "optim", "checks", "corpus",
         "data", "checkpoint", "attention", "generate", "model", "train", "tokenizer")
# checks.py has no spec of its own: the specs of cheap components that validate their arguments with it.
CHECKS_SPECS = ("linear", "embedding", "norm", "feedforward", "positional", "loss", "corpus", "optim", "data")
# Functions of checks.py that only the heavier components call run those components' specs instead.
# tensor() also runs attention's and generate's (the only callers of its floating=None and min..max ranks),
# number_in_range() train's (the only inclusive upper bound: min_lr <= lr).
CHECKS_SPECS_BY_DEFINITION = {"compile_backend": ("generate",), "compiled": ("generate",),
                              "tensor": (*CHECKS_SPECS, "attention", "generate"),
                              "number_in_range": (*CHECKS_SPECS, "train")}
# train(), the loop it runs and _world (rank and world size) behave differently on several ranks (who logs,
# locks, writes, shards the data): their mutants also run the distributed spec, which trains on 2 processes.
TRAIN_SPECS_BY_DEFINITION = {"train": ("train", "distributed"), "_train_locked": ("train", "distributed"),
                             "_world": ("train", "distributed")}
CI_SAMPLE_SIZE = 300
CI_SAMPLE_SEED = 20261202
STATUSES = ("killed", "timeout", "survived", "equivalent", "incompetent")
# A child that ended before pytest wrote its verdict (an exception in the executor itself, not a test
# failure) is an "error": neither killed nor survived. It is never recorded, so a rerun runs it again.
ERROR = "error"


# --- mutants ---------------------------------------------------------------------------------------

@dataclass
class Mutant:
    job_id: str
    module: str                 # "norm" (the file is <source>/norm.py)
    operator: str               # cosmic-ray's operator name
    occurrence: int             # index among this operator's positions in the module (cosmic-ray's)
    line: int                   # first line of the mutated node
    definition: str | None = None
    context: str | None = None   # "annotation" for a node inside a type annotation, else ""
    original: str | None = None  # the original line(s), stripped; filled when the mutant is applied
    mutated: str | None = None

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.module, self.operator, self.occurrence)


def _operators():
    """(name, instance) for every cosmic-ray operator that needs no arguments (cosmic-ray's defaults)."""
    import cosmic_ray.plugins
    for name in cosmic_ray.plugins.operator_names():
        cls = cosmic_ray.plugins.get_operator(name)
        if not cls.arguments():
            yield name, cls()


def enumerate_mutants(path: Path, module: str) -> list[Mutant]:
    """Every mutation cosmic-ray's operators can make in one file, as its ``init`` enumerates them."""
    from cosmic_ray.ast import ast_nodes, get_ast_from_path
    from cosmic_ray.ast.ast_query import ASTQuery
    tree = get_ast_from_path(path)
    nodes = list(ast_nodes(tree))
    postponed = "from __future__ import annotations" in path.read_text()
    mutants = []
    for name, operator in _operators():
        occurrence = 0
        for node in nodes:
            for start, _end in operator.mutation_positions(node):
                context = "annotation" if postponed and in_annotation(node) else ""
                mutants.append(Mutant(uuid.uuid4().hex, module, name, occurrence, start[0],
                                      ASTQuery(node).get_definition_name(), context))
                occurrence += 1
    return mutants


def in_annotation(node) -> bool:
    """Whether a parso node lies in a parameter, return or variable annotation."""
    child, parent = node, node.parent
    while parent is not None:
        siblings = parent.children
        if parent.type == "tfpdef" and len(siblings) == 3 and child is siblings[2]:
            return True
        if parent.type == "annassign" and child is siblings[1]:
            return True
        if parent.type == "funcdef":
            i = siblings.index(child)
            return i > 0 and siblings[i - 1].type == "operator" and siblings[i - 1].value == "->"
        child, parent = parent, parent.parent
    return False


def mutate_source(source: str, mutant: Mutant) -> str | None:
    """The module's text with this mutation applied (None if the occurrence no longer exists);
    fills ``mutant.original`` / ``mutant.mutated`` with the changed line(s)."""
    import cosmic_ray.plugins
    from cosmic_ray.mutating import mutate_code
    try:
        code = mutate_code(source, cosmic_ray.plugins.get_operator(mutant.operator)(), mutant.occurrence)
    except Exception as err:  # an operator that cannot rewrite this node (ExceptionReplacer on `except a.B`)
        mutant.original, mutant.mutated = None, f"cosmic-ray cannot apply it: {type(err).__name__}: {err}"
        return None
    if code is None:
        return None
    mutant.original, mutant.mutated = changed_lines(source, code)
    return code


def changed_lines(before: str, after: str) -> tuple[str, str]:
    """The lines that differ between two versions of a file, each side stripped and joined with ' / '."""
    import difflib
    a, b = before.splitlines(), after.splitlines()
    old, new = [], []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if tag != "equal":
            old += [s.strip() for s in a[i1:i2]]
            new += [s.strip() for s in b[j1:j2]]
    return " / ".join(old), " / ".join(new)


# --- the session: cosmic-ray's WorkDB plus one table of ours ---------------------------------------

class Session:
    """cosmic-ray's WorkDB (work items, results: ``cr-report`` reads it) and a ``bare_lm`` table with
    what cosmic-ray does not keep: the module's hash, the outcome (timeout apart), the catching test,
    the seconds and the changed lines."""

    def __init__(self, path: Path):
        from cosmic_ray.work_db import WorkDB
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.work_db = WorkDB(str(path), WorkDB.Mode.create)
        self.db = sqlite3.connect(str(path))
        self.db.executescript("""
            CREATE TABLE IF NOT EXISTS bare_lm_modules (module TEXT PRIMARY KEY, sha TEXT, path TEXT);
            CREATE TABLE IF NOT EXISTS bare_lm_mutants (
                job_id TEXT PRIMARY KEY, module TEXT, operator TEXT, occurrence INTEGER, line INTEGER,
                definition TEXT, original TEXT, mutated TEXT, status TEXT, caught_by TEXT,
                seconds REAL, specs TEXT);
        """)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(bare_lm_mutants)")}
        if "context" not in columns:
            self.db.execute("ALTER TABLE bare_lm_mutants ADD COLUMN context TEXT")
        if "cpu" not in columns:
            self.db.execute("ALTER TABLE bare_lm_mutants ADD COLUMN cpu REAL")
        self.db.execute("UPDATE bare_lm_mutants SET status = 'skipped' WHERE caught_by LIKE 'skipped:%'")
        self.db.execute("UPDATE work_results SET worker_outcome = 'SKIPPED', test_outcome = NULL WHERE job_id IN "
                        "(SELECT job_id FROM bare_lm_mutants WHERE status = 'skipped')")
        self.db.commit()

    def close(self):
        self.db.close()
        self.work_db.close()

    def sync_module(self, module: str, path: Path) -> int:
        """Make sure the session holds this module's mutants for its current source; returns how
        many it holds. A changed source discards the module's old mutants and results."""
        import hashlib
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        row = self.db.execute("SELECT sha FROM bare_lm_modules WHERE module = ?", (module,)).fetchone()
        if row and row[0] == sha:
            if self.db.execute("SELECT COUNT(*) FROM bare_lm_mutants WHERE module = ? AND context IS NULL",
                               (module,)).fetchone()[0]:  # a session from before contexts were kept
                self.db.executemany(
                    "UPDATE bare_lm_mutants SET context = ? WHERE module = ? AND operator = ? AND occurrence = ?",
                    [(m.context, module, m.operator, m.occurrence) for m in enumerate_mutants(path, module)])
                self.db.commit()
            return self.db.execute("SELECT COUNT(*) FROM bare_lm_mutants WHERE module = ?", (module,)).fetchone()[0]
        old = [r[0] for r in self.db.execute("SELECT job_id FROM bare_lm_mutants WHERE module = ?", (module,))]
        for table in ("work_results", "mutation_specs", "work_items"):
            self.db.executemany(f"DELETE FROM {table} WHERE job_id = ?", [(j,) for j in old])
        self.db.execute("DELETE FROM bare_lm_mutants WHERE module = ?", (module,))
        self.db.commit()
        mutants = enumerate_mutants(path, module)
        self._add_work_items(mutants, path)
        self.db.executemany(
            "INSERT INTO bare_lm_mutants (job_id, module, operator, occurrence, line, definition, context) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(m.job_id, m.module, m.operator, m.occurrence, m.line, m.definition, m.context) for m in mutants])
        self.db.execute("INSERT OR REPLACE INTO bare_lm_modules VALUES (?, ?, ?)", (module, sha, str(path)))
        self.db.commit()
        return len(mutants)

    def _add_work_items(self, mutants: list[Mutant], path: Path):
        from cosmic_ray.work_item import MutationSpec, WorkItem
        self.work_db.add_work_items(
            WorkItem.single(m.job_id, MutationSpec(module_path=str(path), operator_name=m.operator,
                                                   occurrence=m.occurrence, start_pos=(m.line, 0),
                                                   end_pos=(m.line, 1), definition_name=m.definition))
            for m in mutants)

    def mutants(self, modules: list[str], pending_only: bool = False) -> list[Mutant]:
        marks = ",".join("?" * len(modules))
        sql = (f"SELECT job_id, module, operator, occurrence, line, definition, context, original, mutated "
               f"FROM bare_lm_mutants WHERE module IN ({marks})")
        if pending_only:
            sql += " AND status IS NULL"
        rows = self.db.execute(sql + " ORDER BY module, operator, occurrence", modules).fetchall()
        return [Mutant(*r) for r in rows]

    def record(self, mutant: Mutant, outcome: "Outcome", diff: str = ""):
        from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult
        test_outcome = {"survived": TestOutcome.SURVIVED, "incompetent": TestOutcome.INCOMPETENT,
                        "skipped": None}.get(outcome.status, TestOutcome.KILLED)
        worker = {"incompetent": WorkerOutcome.NO_TEST, "skipped": WorkerOutcome.SKIPPED}.get(
            outcome.status, WorkerOutcome.NORMAL)
        self.work_db.set_result(mutant.job_id, WorkResult(
            worker_outcome=worker, test_outcome=test_outcome, diff=diff,
            output=f"{outcome.status}: {outcome.caught_by}".strip(": ")))
        self.db.execute(
            "UPDATE bare_lm_mutants SET original = ?, mutated = ?, status = ?, caught_by = ?, seconds = ?, "
            "specs = ?, cpu = ? WHERE job_id = ?",
            (mutant.original, mutant.mutated, outcome.status, outcome.caught_by, outcome.seconds,
             ",".join(outcome.specs), outcome.cpu, mutant.job_id))
        self.db.commit()

    def seed(self, module: str, path: Path, recorded: dict) -> int:
        """Take the verdicts of results.json (``recorded``) for a module whose source is the one they
        were recorded for (same sha256) and that has no verdicts in this session yet, so that a fresh
        checkout continues a committed run instead of starting over. Returns how many it took. A
        killed mutant stays killed while tests are only added; survivors are taken as survivors:
        ``--retry-survivors`` runs them again against the current spec."""
        import hashlib
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        if recorded.get("sources", {}).get(module) != sha:
            return 0
        if self.db.execute("SELECT COUNT(*) FROM bare_lm_mutants WHERE module = ? AND status IS NOT NULL",
                           (module,)).fetchone()[0]:
            return 0
        by_key = {(module, m.operator, m.occurrence): m for m in self.mutants([module])}
        source, taken = path.read_text(), 0
        for r in recorded.get("mutants", []):
            m = by_key.get((r["module"], r["operator"], r["occurrence"]))
            if m is None or r["status"] not in STATUSES:
                continue
            if r.get("original") is None and mutate_source(source, m) is None:
                continue
            m.original, m.mutated = r.get("original", m.original), r.get("mutated", m.mutated)
            # a survivor that the list calls equivalent was recorded as such: its verdict is "survived"
            status = "survived" if r["status"] == "equivalent" else r["status"]
            self.record(m, Outcome(status, r.get("caught_by") or "", r.get("seconds") or 0.0,
                                   tuple(recorded.get("specs", {}).get(module, (module,))), r.get("cpu")))
            taken += 1
        return taken

    def seed_runs(self, recorded: dict, modules: list[str]) -> None:
        """Take results.json's run records (wall seconds, jobs, CPU) whose modules were all seeded, so
        that the report's measured wall time covers the seeded verdicts too."""
        self._runs_table()
        have = {(at, mods) for at, mods in self.db.execute("SELECT at, modules FROM bare_lm_runs")}
        for r in recorded.get("runs", []):
            if set(r["modules"].split(",")) <= set(modules) and (r["at"], r["modules"]) not in have:
                self.db.execute("INSERT INTO bare_lm_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                                (r["at"], r["modules"], r["mutants"], r["seconds"], r["jobs"], r.get("parent_cpu"),
                                 r.get("child_cpu")))
        self.db.commit()

    def _runs_table(self) -> None:
        self.db.execute("CREATE TABLE IF NOT EXISTS bare_lm_runs (at TEXT, modules TEXT, mutants INTEGER, "
                        "seconds REAL, jobs INTEGER)")
        if "parent_cpu" not in {r[1] for r in self.db.execute("PRAGMA table_info(bare_lm_runs)")}:
            self.db.execute("ALTER TABLE bare_lm_runs ADD COLUMN parent_cpu REAL")
            self.db.execute("ALTER TABLE bare_lm_runs ADD COLUMN child_cpu REAL")

    def retry(self, modules: list[str], listed: list["Listed"] = ()) -> int:
        """Make the survivors of these modules pending again (the spec has changed since they ran), except
        those that an ``[[equivalent]]`` entry of ``listed`` names: rerunning them could only confirm it."""
        marks = ",".join("?" * len(modules))
        cur = self.db.execute(
            f"SELECT job_id, module, operator, occurrence, original, mutated FROM bare_lm_mutants "
            f"WHERE status = 'survived' AND module IN ({marks})", modules)
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, row)) for row in cur.fetchall()]
        entries = [replace(e, matched=0) for e in listed if e.kind == "equivalent"]
        covered = match_listed(entries, rows)
        jobs = [r["job_id"] for i, r in enumerate(rows) if i not in covered]
        self.db.executemany("DELETE FROM work_results WHERE job_id = ?", [(j,) for j in jobs])
        self.db.executemany("UPDATE bare_lm_mutants SET status = NULL, caught_by = NULL, seconds = NULL "
                            "WHERE job_id = ?", [(j,) for j in jobs])
        self.db.commit()
        return len(jobs)

    def unskip(self, job_ids: list[str]) -> None:
        """Make skipped mutants pending again (their entry left the list)."""
        self.db.executemany("DELETE FROM work_results WHERE job_id = ?", [(j,) for j in job_ids])
        self.db.executemany("UPDATE bare_lm_mutants SET status = NULL, caught_by = NULL, seconds = NULL "
                            "WHERE job_id = ?", [(j,) for j in job_ids])
        self.db.commit()

    def results(self, modules: list[str]) -> list[dict]:
        marks = ",".join("?" * len(modules))
        cur = self.db.execute(
            f"SELECT module, operator, occurrence, line, definition, context, original, mutated, status, caught_by, "
            f"seconds, cpu FROM bare_lm_mutants WHERE module IN ({marks}) ORDER BY module, line, operator, occurrence",
            modules)
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]


# --- the equivalent list ---------------------------------------------------------------------------

@dataclass
class Listed:
    """One entry of equivalent.toml: ``[[equivalent]]`` names one mutant; ``[[skip]]`` names a
    function (``definition``) of a module (``"*"``: every module), or a ``context`` (``annotation``),
    whose mutants no spec can reach by contract."""
    kind: str
    module: str
    reason: str
    operator: str = ""
    occurrence: int = -1
    original: str = ""
    mutated: str = ""
    definition: str = ""
    context: str = ""
    matched: int = 0

    def skips(self, module: str, definition: str | None, context: str | None) -> bool:
        return (self.kind == "skip" and self.module in ("*", module)
                and (not self.definition or self.definition == definition)
                and (not self.context or self.context == context))


def load_listed(path: Path) -> list[Listed]:
    if not path.exists():
        return []
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10: cosmic-ray depends on the toml package
        import toml as tomllib
    data = tomllib.loads(path.read_text())
    listed = []
    for kind in ("equivalent", "skip"):
        for entry in data.get(kind, []):
            if not entry.get("reason"):
                raise ValueError(f"{path}: an [[{kind}]] entry for {entry.get('module')} has no reason")
            listed.append(Listed(kind=kind, **entry))
    return listed


def match_listed(listed: list[Listed], results: list[dict]) -> dict[int, Listed]:
    """Which results the list covers (index into results -> entry). An [[equivalent]] entry matches
    the mutant with its module, operator, original and mutated line; among several such mutants, the
    one at its occurrence (none there: the entry is ambiguous and matches nothing, so it shows up stale)."""
    covered: dict[int, Listed] = {}
    for entry in listed:
        if entry.kind == "skip":
            for i, r in enumerate(results):
                if entry.skips(r["module"], r["definition"], r.get("context")):
                    covered[i] = entry
                    entry.matched += 1
            continue
        candidates = [i for i, r in enumerate(results)
                      if r["module"] == entry.module and r["operator"] == entry.operator
                      and r["original"] == entry.original and r["mutated"] == entry.mutated]
        if len(candidates) > 1:
            candidates = [i for i in candidates if results[i]["occurrence"] == entry.occurrence]
        if len(candidates) == 1:
            covered[candidates[0]] = entry
            entry.matched = 1
    return covered


def stale(listed: list[Listed], results: list[dict]) -> list[Listed]:
    """Entries that matched nothing, among the modules whose every mutant has run (a mutant's lines
    are known once it has run)."""
    incomplete = {r["module"] for r in results if not r["status"]}
    complete = {r["module"] for r in results} - incomplete
    return [e for e in listed if (e.module in complete or e.module == "*" and complete) and not e.matched]


# --- the warm forking executor ----------------------------------------------------------------------

@dataclass
class Outcome:
    status: str          # killed, timeout, survived, incompetent (the mutation no longer applies)
    caught_by: str = ""
    seconds: float = 0.0
    specs: tuple[str, ...] = ()
    cpu: float | None = None   # the child's CPU seconds (user + system): its cost on a free core


@dataclass
class Job:
    """What one forked child runs: pytest's arguments, in a slot whose implementation copy holds the
    mutated module."""
    key: object
    args: list[str]
    timeout: float
    slot: int = -1
    pid: int = 0
    start: float = 0.0
    restore: tuple[Path, str] | None = None
    specs: tuple[str, ...] = ()
    first: tuple[str, ...] = ()   # test ids to run first


class _FirstFailure:
    """A pytest plugin for the child: the first failing test's id; at the session's end it writes the
    verdict and leaves at once (pytest's teardown, a full garbage collection among it, costs ~0.5 s)."""

    def __init__(self, verdict: Path, first: tuple[str, ...] = ()):
        self.nodeid = ""
        self.verdict = verdict
        self.first = {name: i for i, name in enumerate(first)}

    def pytest_collection_modifyitems(self, items):
        """The tests that caught earlier mutants of this module run first (with ``-x`` a killed
        mutant then costs one test, not the tests before it); the rest keep their order."""
        if self.first:
            rank = {id(item): self.first.get(item.nodeid.split("/")[-1], len(self.first)) for item in items}
            items.sort(key=lambda item: rank[id(item)])  # stable

    def pytest_sessionfinish(self, session, exitstatus):
        self.verdict.write_text(json.dumps({"exit": int(exitstatus), "failed": self.nodeid}))
        sys.stdout.flush()
        os._exit(0)

    def pytest_runtest_logreport(self, report):
        if report.failed and not self.nodeid:
            self.nodeid = report.nodeid

    def pytest_collectreport(self, report):
        if report.failed and not self.nodeid:
            self.nodeid = f"collecting {report.nodeid}"


def _child(args: list[str], workdir: Path, first: tuple[str, ...] = ()) -> None:
    """In the forked child: run pytest quietly, write its verdict, and leave without cleanup."""
    code = 70
    try:
        os.setpgrp()
        sys.dont_write_bytecode = True
        os.chdir(workdir)
        log = os.open(workdir / "pytest.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(log, 1)
        os.dup2(log, 2)
        import pytest
        first = _FirstFailure(workdir / "verdict.json", first)
        exit_code = int(pytest.main(args, plugins=[first]))  # usage errors end here, not in sessionfinish
        first.verdict.write_text(json.dumps({"exit": exit_code, "failed": first.nodeid}))
        code = 0
    finally:
        os._exit(code)


class Executor:
    """Runs jobs in up to ``slots`` forked children at once; each slot has its own work directory
    (``<state>/slot<i>``) holding a private copy of the implementation (``impl/``)."""

    def __init__(self, state: Path, source: Path, slots: int):
        import shutil
        self.slots = max(1, slots)
        self.dirs = []
        for i in range(self.slots):
            d = state / f"slot{i}"
            if (d / "impl").exists():
                shutil.rmtree(d / "impl")
            d.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, d / "impl", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            self.dirs.append(d)
        self.free = list(range(self.slots))
        self.running: dict[int, Job] = {}

    def impl_dir(self, slot: int) -> Path:
        return self.dirs[slot] / "impl"

    def start(self, job: Job, slot: int, mutated: tuple[str, str] | None = None) -> None:
        """Fork a child for ``job`` in ``slot``; ``mutated`` = (file name, text) to write first."""
        workdir = self.dirs[slot]
        (workdir / "verdict.json").unlink(missing_ok=True)
        if mutated:
            path = self.impl_dir(slot) / mutated[0]
            job.restore = (path, path.read_text())
            path.write_text(mutated[1])
        job.slot, job.start = slot, time.perf_counter()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _child(job.args, workdir, job.first)
        job.pid = pid
        self.running[pid] = job

    def wait(self) -> list[tuple[Job, Outcome]]:
        """Block until at least one child ends (or is killed for its timeout); their outcomes."""
        done = []
        while not done:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                now = time.perf_counter()
                for job in list(self.running.values()):
                    if now - job.start > job.timeout:
                        try:
                            os.killpg(job.pid, signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                        _, _, usage = os.wait4(job.pid, 0)
                        done.append((self._finish(job), Outcome("timeout", f"ran over {job.timeout:.0f} s",
                                                                now - job.start, job.specs,
                                                                usage.ru_utime + usage.ru_stime)))
                if not done:
                    time.sleep(0.02)
                continue
            job = self.running.get(pid)
            if job is None:
                continue
            seconds = time.perf_counter() - job.start
            verdict_path = self.dirs[job.slot] / "verdict.json"
            if os.WIFSIGNALED(status):
                outcome = Outcome("killed", f"child crashed (signal {os.WTERMSIG(status)})", seconds, job.specs)
            elif not verdict_path.exists():
                outcome = Outcome(ERROR, f"child exited {os.WEXITSTATUS(status)} before pytest ended "
                                  f"(see {self.dirs[job.slot] / 'pytest.log'})", seconds, job.specs)
            else:
                verdict = json.loads(verdict_path.read_text())
                outcome = _classify(verdict["exit"], verdict["failed"], seconds, job.specs)
            outcome.cpu = usage.ru_utime + usage.ru_stime
            done.append((self._finish(job), outcome))
        return done

    def _finish(self, job: Job) -> Job:
        try:
            os.killpg(job.pid, signal.SIGKILL)  # anything the child left behind
        except (ProcessLookupError, PermissionError):
            pass
        self.running.pop(job.pid, None)
        if job.restore:
            job.restore[0].write_text(job.restore[1])
        self.free.append(job.slot)
        return job

    def kill_all(self) -> None:
        for job in list(self.running.values()):
            try:
                os.killpg(job.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(job.pid, 0)
            self._finish(job)


def _classify(exit_code: int, failed: str, seconds: float, specs) -> Outcome:
    if exit_code == 0:
        return Outcome("survived", "", seconds, specs)
    if exit_code == 5:  # no tests collected: the executor's error, not the mutant's
        raise RuntimeError("pytest collected no tests: check the spec files")
    name = failed.split("/")[-1] if failed else f"pytest exited {exit_code}"
    return Outcome("killed", name, seconds, specs)


# --- the run ---------------------------------------------------------------------------------------

@dataclass
class Target:
    """How to run the spec against a slot's implementation copy: pytest arguments per module."""
    spec_dir: Path
    extra: list[str] = field(default_factory=list)
    specs_of: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # (module, function) -> its spec files, where a function is used by other components than the rest
    specs_of_definition: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)

    def specs(self, module: str, definition: str | None = None) -> tuple[str, ...]:
        return self.specs_of_definition.get((module, definition or ""), self.specs_of.get(module, (module,)))

    def spec_sets(self, modules: list[str]) -> list[tuple[str, ...]]:
        """Every spec set a mutant of these modules can run."""
        return sorted({self.specs(m) for m in modules} |
                      {s for (m, _), s in self.specs_of_definition.items() if m in modules})

    def args(self, module: str, impl_dir: Path) -> list[str]:
        return self.args_for(self.specs(module), impl_dir)

    def args_for(self, specs: tuple[str, ...], impl_dir: Path) -> list[str]:
        """pytest's arguments for the spec files of ``specs`` (component names) against ``impl_dir``."""
        return [*(str(self.spec_dir / f"test_{c}.py") for c in specs), "--impl", str(impl_dir), *self.extra]


def bare_lm_target(profile: str = "mutants") -> Target:
    return Target(REPO_ROOT / "spec_tests",
                  ["-x", "-q", "--tb=no", "--no-header", "-p", "no:cacheprovider", "-p", "_hypothesis_pytestplugin",
                   "--assert=plain", f"--hypothesis-profile={profile}",
                   "--rootdir", str(REPO_ROOT), "-c", str(REPO_ROOT / "pyproject.toml")],
                  {"checks": CHECKS_SPECS},
                  {**{("checks", d): s for d, s in CHECKS_SPECS_BY_DEFINITION.items()},
                   **{("train", d): s for d, s in TRAIN_SPECS_BY_DEFINITION.items()}})


def warm_up(target: Target, modules: list[str], components: tuple[str, ...] = (), also: tuple[str, ...] = ()) -> None:
    """Import what every child needs once, in this process (never the implementation itself): the
    specs of ``modules`` and of ``components``, and the modules named in ``also`` (peers the spec
    imports lazily, e.g. ``transformers``; one that is not installed is left out)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    # Third-party pytest plugins (anyio, benchmark, ...) cost a second per child: load only hypothesis's.
    os.environ["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    import importlib
    import pytest  # noqa: F401
    if target.spec_dir == REPO_ROOT / "spec_tests":
        import torch
        torch.set_num_threads(1)
        import _hypothesis_pytestplugin  # noqa: F401
        import hypothesis  # noqa: F401
        try:
            import hypothesis.extra._patching  # noqa: F401  (imported on a test's first failure: ~1.8 s)
        except ImportError:  # it needs libcst, which hypothesis does without (no patch suggestions)
            pass
        torch.unravel_index(torch.tensor(5), (2, 3))  # lazily imports ~1 s of torch (support.assert_close)
        for name in also:  # before the constants scan below, so that it covers them too
            try:
                importlib.import_module(name)
            except ImportError:
                pass
        try:  # hypothesis scans the loaded modules for constants once per process: scan these now
            import warnings
            from hypothesis.internal.conjecture.providers import _get_local_constants
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _get_local_constants()
        except Exception:  # noqa: BLE001  (an internal of hypothesis: only a speed-up)
            pass
        import spec_tests.plugin  # noqa: F401  (registers the profiles)
        # The spec's @settings decorators copy the profile in force when its module is imported:
        # load the children's profile first (else they keep hypothesis's 200 ms deadline, and a
        # slow example fails on correct code).
        profile = next((a.split("=", 1)[1] for a in target.extra if a.startswith("--hypothesis-profile=")), None)
        if profile:
            hypothesis.settings.load_profile(profile)
        for c in sorted({c for specs in target.spec_sets(modules) for c in specs} | set(components)):
            importlib.import_module(f"spec_tests.test_{c}")
    import gc
    gc.collect()
    gc.freeze()  # the children's collections skip everything imported here


def baselines(executor: Executor, target: Target, modules: list[str]) -> dict[tuple[str, ...], float]:
    """Run each spec set once against the unmutated copy: it must pass (else every mutant would look
    killed); its time sets the mutants' timeout."""
    sets = target.spec_sets(modules)
    seconds: dict[tuple[str, ...], float] = {}
    queue = list(sets)
    while queue or executor.running:
        while queue and executor.free:
            specs = queue.pop(0)
            slot = executor.free.pop(0)
            executor.start(Job(specs, target.args_for(specs, executor.impl_dir(slot)), 1800, specs=specs), slot)
        for job, outcome in executor.wait():
            if outcome.status != "survived":
                raise RuntimeError(f"the spec {', '.join(job.key)} fails on the unmutated implementation "
                                   f"({outcome.status}: {outcome.caught_by}); fix that first")
            seconds[job.key] = outcome.seconds
    return seconds


def timeout_for(baseline: float) -> float:
    return 3 * baseline + 20


class Catchers:
    """Which tests caught a module's mutants so far: those of the same line first, then by count."""

    def __init__(self, results: list[dict]):
        from collections import Counter
        self.by_module: dict[str, Counter] = {}
        self.by_line: dict[tuple[str, int], list[str]] = {}
        self._counter = Counter
        for r in results:
            if r["status"] == "killed":
                self._add(r["module"], r["line"], r["caught_by"])

    def _add(self, module: str, line: int, test: str) -> None:
        if "::" not in test:  # a crash, a usage error: no test to prefer
            return
        self.by_module.setdefault(module, self._counter())[test] += 1
        on_line = self.by_line.setdefault((module, line), [])
        if test not in on_line:
            on_line.append(test)

    def add(self, module: str, line: int, outcome: "Outcome") -> None:
        if outcome.status == "killed":
            self._add(module, line, outcome.caught_by)

    def first(self, mutant: Mutant) -> tuple[str, ...]:
        same_line = self.by_line.get((mutant.module, mutant.line), [])
        counted = [t for t, _ in self.by_module.get(mutant.module, self._counter()).most_common()]
        return tuple(dict.fromkeys(same_line + counted))


def run_mutants(session: Session | None, mutants: list[Mutant], source: Path, target: Target, state: Path,
                jobs: int, budget: float | None, baseline: dict | None = None,
                on_outcome=None, timeout: float | None = None,
                known: list[dict] | None = None) -> list[tuple[Mutant, Outcome]]:
    """Run ``mutants`` (recording each outcome in ``session`` if given) until done or ``budget``
    seconds have passed; returns (mutant, outcome) in the order they finished. Each mutant's timeout
    is ``timeout`` if given, else derived from its spec's time on the unmutated implementation
    (``baseline``, measured here if not given). ``known``: earlier results (rows of results.json)
    whose catchers run first, besides the session's."""
    start = time.perf_counter()  # the budget counts from here, the baselines included
    modules = sorted({m.module for m in mutants})
    executor = Executor(state, source, jobs)
    texts = {mod: (source / f"{mod}.py").read_text() for mod in modules}
    if baseline is None:
        baseline = baselines(executor, target, modules)
    queue = list(mutants)
    finished: list[tuple[Mutant, Outcome]] = []

    catchers = Catchers((session.results(modules) if session else []) + list(known or []))

    def _stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        while queue or executor.running:
            while queue and executor.free and (budget is None or time.perf_counter() - start < budget):
                mutant = queue.pop(0)
                code = mutate_source(texts[mutant.module], mutant)
                specs = target.specs(mutant.module, mutant.definition)
                if code is None:
                    outcome = Outcome("incompetent", mutant.mutated if mutant.original is None and mutant.mutated
                                      else "the mutation no longer applies", 0.0, specs)
                    finished.append((mutant, outcome))
                    if session:
                        session.record(mutant, outcome)
                    if on_outcome:
                        on_outcome(mutant, outcome)
                    continue
                slot = executor.free.pop(0)
                job = Job((mutant, code), target.args_for(specs, executor.impl_dir(slot)),
                          timeout or timeout_for(baseline.get(specs, 60.0)), specs=specs,
                          first=catchers.first(mutant))
                executor.start(job, slot, (f"{mutant.module}.py", code))
            if not executor.running:
                break
            for job, outcome in executor.wait():
                mutant, code = job.key
                finished.append((mutant, outcome))
                catchers.add(mutant.module, mutant.line, outcome)
                if session and outcome.status != ERROR:  # an executor error stays pending
                    session.record(mutant, outcome, _diff(texts[mutant.module], code, mutant.module))
                if on_outcome:
                    on_outcome(mutant, outcome)
    except KeyboardInterrupt:
        print(f"stopped: {len(finished)} mutants done, the rest stay pending", flush=True)
    finally:
        executor.kill_all()
        signal.signal(signal.SIGTERM, previous)
    return finished


def _diff(before: str, after: str, module: str) -> str:
    import difflib
    return "\n".join(difflib.unified_diff(before.split("\n"), after.split("\n"), f"a/{module}.py",
                                          f"b/{module}.py", lineterm=""))


def _print_outcome(mutant: Mutant, outcome: Outcome) -> None:
    mark = "!! " if outcome.status in ("survived", ERROR) else "   "
    print(f"{mark}{mutant.module}.py:{mutant.line:<4} {outcome.status:<9} {outcome.seconds:5.1f} s  "
          f"{mutant.operator.removeprefix('core/'):<36} {(mutant.mutated or '')[:60]:<60} {outcome.caught_by}",
          flush=True)


def modules_of(source: Path, wanted: list[str]) -> list[str]:
    present = {p.stem for p in source.glob("*.py") if p.stem != "__init__"}
    unknown = set(wanted) - present
    if unknown:
        raise SystemExit(f"no module {', '.join(sorted(unknown))} in {source}")
    chosen = wanted or sorted(present)
    return sorted(chosen, key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m))


def run(args: argparse.Namespace) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)   # each verdict reaches a log file as it is printed
    try:
        import cosmic_ray  # noqa: F401
    except ImportError:
        raise SystemExit("bare-lm mutants --generated needs cosmic-ray (in the test extra): "
                         "pip install -e '.[test]'") from None
    source = Path(args.source).resolve() if getattr(args, "source", None) else DEFAULT_SOURCE
    state = Path(args.state).resolve()
    if args.ci_sample:
        return ci_sample(args, source, state)
    modules = modules_of(source, args.component)
    session = Session(state / "session.sqlite")
    try:
        total = 0
        recorded = json.loads(RESULTS_FILE.read_text()) if source == DEFAULT_SOURCE and RESULTS_FILE.exists() else {}
        seeded = 0
        for module in modules:
            total += session.sync_module(module, source / f"{module}.py")
            seeded += session.seed(module, source / f"{module}.py", recorded)
        if seeded:
            print(f"took {seeded} verdicts from {RESULTS_FILE.relative_to(REPO_ROOT)} (modules unchanged since)")
            session.seed_runs(recorded, modules)
        if args.report:
            write_report(session, modules, source)
            return 0
        listed = load_listed(EQUIVALENT_FILE)
        was_skipped = session.db.execute(
            f"SELECT job_id, module, definition, context FROM bare_lm_mutants WHERE status = 'skipped' "
            f"AND module IN ({','.join('?' * len(modules))})", modules).fetchall()
        session.unskip([j for j, mod, d, c in was_skipped if not any(e.skips(mod, d, c) for e in listed)])
        if args.retry_survivors:
            print(f"{session.retry(modules, listed)} survivors to run again against the current spec "
                  f"(those listed as equivalent stay as they are)")
        pending = session.mutants(modules, pending_only=True)
        skipped = [m for m in pending if any(e.skips(m.module, m.definition, m.context) for e in listed)]
        for m in skipped:
            session.record(m, Outcome("skipped", "skipped: listed in equivalent.toml", 0.0))
        pending = [m for m in pending if m not in skipped]
        if args.sample:
            everything = session.mutants(modules)
            chosen = {m.job_id for m in random.Random(args.seed).sample(everything, min(args.sample, len(everything)))}
            pending = [m for m in pending if m.job_id in chosen]
        pending.sort(key=lambda m: (modules.index(m.module), m.line, m.operator, m.occurrence))
        print(f"{total} mutants of {len(modules)} modules in {session.path}; {len(pending)} to run "
              f"with {args.jobs} jobs" + (f", budget {args.budget:.0f} s" if args.budget else ""), flush=True)
        if not pending:
            summary(session, modules)
            return 0
        target = bare_lm_target(args.profile)
        warm_up(target, modules)
        start, cpu_start = time.perf_counter(), time.process_time()
        finished = run_mutants(session, pending, source, target, state / "work", args.jobs, args.budget,
                               on_outcome=_print_outcome)
        wall = time.perf_counter() - start
        print(f"\n{len(finished)} mutants in {wall:.0f} s ({len(finished) / max(wall, 1e-9):.2f} mutants/s, "
              f"{args.jobs} jobs); {len(pending) - len(finished)} left for a rerun")
        session._runs_table()
        session.db.execute("INSERT INTO bare_lm_runs VALUES (datetime('now'), ?, ?, ?, ?, ?, ?)",
                           (",".join(sorted({m.module for m, _ in finished})), len(finished), wall, args.jobs,
                            time.process_time() - cpu_start, sum(o.cpu or 0.0 for _, o in finished)))
        session.db.commit()
        return summary(session, modules)
    finally:
        session.close()


# --- reporting -------------------------------------------------------------------------------------

def tally(results: list[dict], listed: list[Listed]) -> tuple[list[dict], dict[str, dict]]:
    """Final status per result (survivors on the list become ``equivalent``) and per-module counts."""
    covered = match_listed(listed, results)
    rows = []
    for i, r in enumerate(results):
        r = dict(r)
        if i in covered and (r["status"] in ("survived", "skipped") or
                             r["status"] is None and covered[i].kind == "skip"):  # skipped when it comes up
            r["status"], r["reason"] = "equivalent", covered[i].reason
        elif i in covered and r["status"] in ("killed", "timeout"):
            r["listed_but_killed"] = covered[i].reason
        elif r["status"] == "skipped":  # its entry left the list: it has not run
            r["status"] = None
        rows.append(r)
    per: dict[str, dict] = {}
    for r in rows:
        c = per.setdefault(r["module"], {"generated": 0, "run": 0, **{s: 0 for s in STATUSES}, "skipped": 0,
                                         "seconds": 0.0, "cpu": 0.0})
        c["generated"] += 1
        if r["status"]:
            c[r["status"]] += 1
            if r["status"] != "equivalent" or r["seconds"]:
                c["run"] += 1
            else:  # skipped: never ran
                c["skipped"] += 1
            c["seconds"] += r["seconds"] or 0.0
            c["cpu"] += r.get("cpu") or 0.0
    for c in per.values():
        c["seconds"], c["cpu"] = round(c["seconds"], 1), round(c["cpu"], 1)
        judged = c["killed"] + c["timeout"] + c["survived"]
        c["score"] = round((c["killed"] + c["timeout"]) / judged, 4) if judged else None
    return rows, per


def summary(session: Session, modules: list[str]) -> int:
    listed = load_listed(EQUIVALENT_FILE)
    rows, per = tally(session.results(modules), listed)
    print(f"\n{'module':<12} {'generated':>9} {'run':>6} {'killed':>6} {'timeout':>7} {'survived':>8} "
          f"{'equiv':>5} {'score':>6} {'seconds':>8}")
    for module in modules:
        c = per.get(module)
        if c:
            score = f"{c['score']:.3f}" if c["score"] is not None else "-"
            print(f"{module:<12} {c['generated']:>9} {c['run']:>6} {c['killed']:>6} {c['timeout']:>7} "
                  f"{c['survived']:>8} {c['equivalent']:>5} {score:>6} {c['seconds']:>8.0f}")
    for e in stale(listed, rows):
        print(f"STALE {e.kind} entry: {e.module} {e.operator or e.definition} {e.original!r} -> {e.mutated!r}")
    return 0


def write_report(session: Session, modules: list[str], source: Path) -> None:
    listed = load_listed(EQUIVALENT_FILE)
    rows, per = tally(session.results(modules), listed)
    runs = session.db.execute("SELECT name FROM sqlite_master WHERE name = 'bare_lm_runs'").fetchone()
    run_rows = session.db.execute("SELECT mutants, seconds, jobs FROM bare_lm_runs").fetchall() if runs else []
    done = sum(r[0] for r in run_rows)
    wall = sum(r[1] for r in run_rows)
    core_s = sum(r[1] * r[2] for r in run_rows)
    generated = sum(c["generated"] for c in per.values())
    rate = done / wall if wall else None
    est_cpu, cpu_ratio = estimate_cpu(per, rows)
    parent = _parent_share(session)
    est_2 = est_cpu * (1 + parent) / 2 if done else None  # 2 jobs on 2 free cores, plus the parent's share
    baseline = _baseline_from_rows(rows)
    stale_entries = stale(listed, rows)
    DOCS.mkdir(parents=True, exist_ok=True)
    killed = [r for r in rows if r["status"] in ("killed",)]
    sample = sorted(random.Random(CI_SAMPLE_SEED).sample(killed, min(CI_SAMPLE_SIZE, len(killed))),
                    key=lambda r: (r["module"], r["line"], r["operator"], r["occurrence"]))
    import hashlib
    session._runs_table()
    run_records = [dict(zip(("at", "modules", "mutants", "seconds", "jobs", "parent_cpu", "child_cpu"), r))
                   for r in session.db.execute("SELECT * FROM bare_lm_runs ORDER BY at")]
    data = {
        "tool": "cosmic-ray (default operators) + bare_lm.mutgen's forking executor",
        # the sha256 of each module's source the verdicts are for: a fresh session takes them over
        "sources": {m: hashlib.sha256((source / f"{m}.py").read_bytes()).hexdigest() for m in modules},
        "runs": run_records,
        "profile": "mutants",
        "specs": {m: list(bare_lm_target().specs(m)) for m in modules},
        "components": per,
        "measured": {"parent_cpu_share": round(parent, 3), "mutants_run": done, "wall_seconds": round(wall, 1), "core_seconds": round(core_s, 1),
                     "mutants_per_second": round(rate, 3) if rate else None,
                     "child_cpu_over_wall": round(cpu_ratio, 3),
                     "estimated_full_core_seconds": round(est_cpu),
                     "estimated_full_wall_seconds_2_cores": round(est_2) if est_2 else None},
        "spec_seconds": baseline,
        "ci_sample": [_ident(r) for r in sample],
        # every mutant that ran; the changed lines for those not killed (survivors, equivalent, timeout)
        "mutants": [{**(_ident(r) if r["status"] != "killed" else
                        {k: r[k] for k in ("module", "operator", "occurrence", "line")}),
                     "status": r["status"], "caught_by": r["caught_by"], "seconds": round(r["seconds"], 2),
                     **({"cpu": round(r["cpu"], 2)} if r.get("cpu") else {}),
                     **({"reason": r["reason"]} if r.get("reason") else {})}
                    for r in rows if r["status"] and r["seconds"]],  # (skipped ones never ran)
    }
    mutant_rows = data.pop("mutants")
    text = json.dumps(data, indent=1)[:-2]  # one mutant per line: readable diffs, a small file
    text += ',\n "mutants": [\n' + ",\n".join("  " + json.dumps(m) for m in mutant_rows) + "\n ]\n}\n"
    (DOCS / "results.json").write_text(text)
    lines = ["# Generated mutants over reference/", "",
             "Generated by cosmic-ray's default operators over `reference/`, each run against the spec by "
             "`bare-lm mutants --generated` (bare_lm/mutgen.py: a warm process that imports torch and the spec "
             "once and forks per mutant). Profile `mutants` (40 derandomized examples, no shrinking), `-x`.",
             "Regenerate: `bare-lm mutants --generated [--component X]` (resumable), then "
             "`bare-lm mutants --generated --report`.", "",
             "Score = (killed + timeout) / (killed + timeout + survived), i.e. killed / (generated - "
             "equivalent) over the mutants judged. *run*: mutants executed (skipped ones, listed in "
             "equivalent.toml by function or as annotations, are counted as equivalent without running). *timeout*: the mutant made the spec "
             "run past 3x its normal time + 20 s and was killed (an infinite loop, a huge allocation); "
             "*incompetent*: the mutation no longer applies. Mutants of `checks.py` run the specs of "
             f"{', '.join(CHECKS_SPECS)}, except the functions that heavier components reach too ("
             + "; ".join(f"{d}: {', '.join(c)}" for d, c in CHECKS_SPECS_BY_DEFINITION.items())
             + "); every other module runs its own component's spec.", "",
             "For a module not fully run, the counts and the score are over the mutants run so far "
             "(for the larger modules a seeded random sample, `--sample`), so the score is an estimate.", "",
             "*equivalent (skipped)*: listed as equivalent, of which skipped without running. *wall s*, *CPU s*: "
             "the children's wall and CPU seconds, summed (CPU seconds only for runs since they were kept).", "",
             "| component | generated | run | killed | timeout | survived | equivalent (skipped) | score | wall s | CPU s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for module in modules:
        c = per.get(module)
        if not c:
            continue
        score = f"{c['score']:.3f}" if c["score"] is not None else "-"
        lines.append(f"| {module} | {c['generated']} | {c['run']} | {c['killed']} | {c['timeout']} | "
                     f"{c['survived']} | {c['equivalent']} ({c['skipped']}) | {score} | {c['seconds']:.0f} | "
                     f"{c['cpu']:.0f} |")
    t = {k: sum(c[k] for c in per.values()) for k in ("generated", "run", "killed", "timeout", "survived",
                                                      "equivalent", "incompetent", "skipped")}
    den = t["killed"] + t["timeout"] + t["survived"]
    lines.append(f"| **all** | {t['generated']} | {t['run']} | {t['killed']} | {t['timeout']} | {t['survived']} | "
                 f"{t['equivalent']} ({t['skipped']}) | {(t['killed'] + t['timeout']) / den if den else 0:.3f} | "
                 f"{sum(c['seconds'] for c in per.values()):.0f} | {sum(c['cpu'] for c in per.values()):.0f} |")
    lines += ["", "## Wall time", ""]
    if done:
        lines.append(f"Measured: {done} mutants in {wall:.0f} s of wall time ({rate:.2f} mutants/s; "
                     f"{core_s / done:.2f} core-seconds per mutant, on 2 cores shared with other work). "
                     f"The children's CPU time was {cpu_ratio:.0%} of their wall time (the cores were shared). "
                     f"Estimated full run ({generated} mutants, less those skipped by the list) with "
                     f"`--jobs 2` on 2 free cores: about {est_2 / 3600:.1f} h = {est_cpu / 3600:.1f} core-hours "
                     f"of children / 2 + {parent:.0%} for the parent (measured: mutating, forking, recording) (per module: the mean CPU seconds of its mutants run so far, times the "
                     f"mutants it must run; a module not run yet at the overall mean). A module's survivors "
                     f"dominate: each runs its whole spec.")
    not_run = [m for m in modules if per.get(m) and per[m]["run"] + per[m]["skipped"] < per[m]["generated"]]
    if not_run:
        lines += ["", "Not (fully) run yet (run of those to run): " + ", ".join(
            f"{m} ({per[m]['run']} of {per[m]['generated'] - per[m]['skipped']})" for m in not_run) + "."]
    lines += ["", "## Survivors", "",
              "Each survivor is a change to `reference/` that the spec does not notice: either a missing "
              "property (a test to add) or an equivalent mutant (add it to `docs/mutation/equivalent.toml` "
              "with the reason no observable behaviour changes).", ""]
    for module in modules:
        surv = [r for r in rows if r["module"] == module and r["status"] == "survived"]
        if not surv:
            continue
        lines += [f"### {module} ({len(surv)})", "", "| line | in | operator | original | mutated |",
                  "|---:|---|---|---|---|"]
        for r in surv:
            lines.append(f"| {module}.py:{r['line']} | {r['definition'] or ''} | {r['operator'].removeprefix('core/')} | "
                         f"`{_md(r['original'])}` | `{_md(r['mutated'])}` |")
        lines.append("")
    tos = [r for r in rows if r["status"] == "timeout"]
    if tos:
        lines += ["## Killed by timeout", "", "| line | operator | mutated |", "|---:|---|---|"]
        lines += [f"| {r['module']}.py:{r['line']} | {r['operator'].removeprefix('core/')} | `{_md(r['mutated'])}` |"
                  for r in tos]
        lines.append("")
    eq = [r for r in rows if r["status"] == "equivalent"]
    lines += ["## Equivalent (from equivalent.toml)", "", f"{len(eq)} mutants; reasons in "
              "`docs/mutation/equivalent.toml`."]
    bad = [r for r in rows if r.get("listed_but_killed")]
    if bad or stale_entries:
        lines += ["", "## Problems with the equivalent list", ""]
        lines += [f"- listed as equivalent but killed: {r['module']}.py:{r['line']} {r['operator']} `{_md(r['mutated'])}`"
                  for r in bad]
        lines += [f"- stale (matches no mutant): {e.module} {e.operator or e.definition} `{_md(e.original)}`"
                  for e in stale_entries]
    lines += ["", "## CI sample", "", f"`bare-lm mutants --generated --ci-sample` reruns {len(sample)} mutants "
              f"(seed {CI_SAMPLE_SEED}) that this report lists as killed and fails if any survives.", ""]
    (DOCS / "REPORT.md").write_text("\n".join(lines))
    print(f"wrote {DOCS / 'REPORT.md'} and {DOCS / 'results.json'}")


def _parent_share(session: Session) -> float:
    """The parent's CPU seconds (mutating, forking, recording) per child CPU second, from the runs
    that kept both; 0.25 where none did."""
    try:
        runs = session.db.execute("SELECT parent_cpu, child_cpu FROM bare_lm_runs "
                                  "WHERE parent_cpu IS NOT NULL AND child_cpu > 0").fetchall()
    except sqlite3.OperationalError:
        return 0.25
    child = sum(r[1] for r in runs)
    return sum(r[0] for r in runs) / child if child else 0.25


def estimate_cpu(per: dict[str, dict], rows: list[dict]) -> tuple[float, float]:
    """(core-seconds a full run needs, CPU/wall ratio of the children measured). Per module: the mean
    CPU seconds of its mutants run so far (where only wall time was kept: wall x the measured ratio;
    a module not run yet: the overall mean) times the mutants it must run (skipped ones excluded)."""
    timed = [r for r in rows if r["status"] and r["seconds"]]
    with_cpu = [r for r in timed if r.get("cpu")]
    ratio = sum(r["cpu"] for r in with_cpu) / sum(r["seconds"] for r in with_cpu) if with_cpu else 1.0
    cost = {id(r): r["cpu"] if r.get("cpu") else r["seconds"] * ratio for r in timed}
    if not timed:
        return 0.0, ratio
    overall = sum(cost.values()) / len(cost)
    total = 0.0
    for module, c in per.items():
        mine = [cost[id(r)] for r in timed if r["module"] == module]
        mean = sum(mine) / len(mine) if mine else overall
        total += mean * (c["generated"] - c["skipped"])
    return total, ratio


def _md(text: str | None) -> str:
    return (text or "").replace("|", "\\|").replace("`", "'")[:120]


def _ident(r: dict) -> dict:
    return {"module": r["module"], "operator": r["operator"], "occurrence": r["occurrence"], "line": r["line"],
            "original": r["original"], "mutated": r["mutated"]}


def _baseline_from_rows(rows: list[dict]) -> dict[str, float]:
    """The slowest survivor per module (a survivor ran the whole spec): the CI sample's timeout basis."""
    out: dict[str, float] = {}
    for r in rows:
        if r["status"] in ("survived", "equivalent") and r["seconds"]:
            out[r["module"]] = round(max(out.get(r["module"], 0.0), r["seconds"]), 1)
    return out


# --- the CI sample ---------------------------------------------------------------------------------

def ci_sample(args: argparse.Namespace, source: Path, state: Path) -> int:
    data = json.loads((DOCS / "results.json").read_text())
    wanted = data["ci_sample"]
    if args.component:
        wanted = [w for w in wanted if w["module"] in args.component]
    if args.sample:
        wanted = random.Random(args.seed).sample(wanted, min(args.sample, len(wanted)))
    chosen: list[Mutant] = []
    missing = []
    for w in wanted:
        found = locate(source, w)
        (chosen if found else missing).append(found or w)
    print(f"CI sample: {len(chosen)} mutants listed as killed in docs/mutation/results.json"
          + (f"; {len(missing)} no longer exist in {source} (the report is out of date)" if missing else ""),
          flush=True)
    target = bare_lm_target(args.profile)
    modules = sorted({m.module for m in chosen})
    warm_up(target, modules)
    spec_seconds = data.get("spec_seconds", {})
    # spec_seconds is per module (the time of the module's own spec set); a function's set, per component
    baseline = {specs: sum(spec_seconds.get(c, 60.0) for c in specs) for specs in target.spec_sets(modules)}
    baseline.update({target.specs(m): spec_seconds.get(m, 60.0) for m in modules})
    start = time.perf_counter()
    # The tests that killed them in the full run go first: a killed mutant then costs about one test.
    finished = run_mutants(None, chosen, source, target, state / "ci-work", args.jobs, args.budget, baseline,
                           on_outcome=_print_outcome if args.verbose else None, known=data.get("mutants", []))
    survivors = [(m, o) for m, o in finished if o.status == "survived"]
    errors = [(m, o) for m, o in finished if o.status == ERROR]
    print(f"{len(finished)} mutants in {time.perf_counter() - start:.0f} s with {args.jobs} jobs; "
          f"{len(survivors)} survived" + (f", {len(errors)} could not be run" if errors else ""))
    for m, _ in survivors:
        print(f"REGRESSION: {m.module}.py:{m.line} {m.operator} `{m.mutated}` was killed, now survives")
    for m, o in errors:
        print(f"ERROR: {m.module}.py:{m.line} {m.operator} `{m.mutated}`: {o.caught_by}")
    return 1 if survivors or errors or len(finished) < len(chosen) else 0


_MODULE_CACHE: dict[Path, tuple[str, list[Mutant]]] = {}


def locate(source: Path, ident: dict) -> Mutant | None:
    """The mutant of ``source`` that an identity from results.json names (module, operator, original
    and mutated line; the occurrence breaks ties), or None. Tries the recorded occurrence first and
    applies other mutations of that operator only if it no longer fits."""
    path = source / f"{ident['module']}.py"
    if path not in _MODULE_CACHE:
        _MODULE_CACHE[path] = (path.read_text(), enumerate_mutants(path, ident["module"]))
    text, mutants = _MODULE_CACHE[path]
    same_op = [m for m in mutants if m.operator == ident["operator"]]

    def fits(m: Mutant) -> bool:
        if m.mutated is None:
            mutate_source(text, m)
        return (m.original, m.mutated) == (ident["original"], ident["mutated"])

    at = [m for m in same_op if m.occurrence == ident["occurrence"]]
    if at and fits(at[0]):
        return at[0]  # (where several mutants have these lines, the occurrence picks one)
    matches = [m for m in same_op if fits(m)]
    return matches[0] if len(matches) == 1 else None


# --- command line ----------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bare-lm mutants --generated`` (``--component``, ``--source``, ``--jobs`` and
    ``--profile`` are shared with the catalogue runner)."""
    group = parser.add_argument_group("generated mutants (--generated)")
    group.add_argument("--generated", action="store_true",
                       help="run cosmic-ray's generated mutants instead of the catalogue")
    group.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                       help="start no new mutant after this many seconds (a rerun continues)")
    group.add_argument("--sample", type=int, default=0, metavar="N", help="only a random sample of N mutants")
    group.add_argument("--seed", type=int, default=0, help="the sample's seed")
    group.add_argument("--state", default=str(DEFAULT_STATE), help="session directory (default: .mutation/)")
    group.add_argument("--report", action="store_true",
                       help="write docs/mutation/REPORT.md and results.json from the session")
    group.add_argument("--retry-survivors", action="store_true",
                       help="run the session's survivors again (after the spec gained tests)")
    group.add_argument("--ci-sample", action="store_true",
                       help="rerun the sample of killed mutants listed in results.json; fail if one survives")
    group.add_argument("--verbose", action="store_true", help="with --ci-sample: a line per mutant")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bare-lm mutants --generated", description=__doc__.split("\n\n")[0])
    parser.add_argument("--component", action="append", default=[])
    parser.add_argument("--source", default=str(DEFAULT_SOURCE))
    parser.add_argument("-j", "--jobs", type=int, default=1)
    parser.add_argument("--profile", default="mutants")
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
