"""The generated-mutant runner (bare_lm/mutgen.py) on a tiny fake implementation and a fake spec.

No torch in the children: the fake spec loads ``calc.py`` from the directory given by ``--impl``.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest

pytest.importorskip("cosmic_ray")

from bare_lm import mutgen  # noqa: E402

CALC = '''\
def add(a, b):
    return a + b


def count_to(n):
    i = 0
    while i != n:
        i = i + 1
    return i


def banner():
    return "=" * 3
'''

CONFTEST = '''\
import importlib.util
import pytest


def pytest_addoption(parser):
    parser.addoption("--impl")


@pytest.fixture
def calc(pytestconfig):
    path = pytestconfig.getoption("--impl") + "/calc.py"
    spec = importlib.util.spec_from_file_location("calc_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
'''

SPEC = '''\
def test_add(calc):
    assert calc.add(2, 3) == 5


def test_count_to(calc):
    assert calc.count_to(3) == 3
'''


@pytest.fixture
def fake(tmp_path, monkeypatch):
    # The children's pytest loads no installed plugin: Bare-LM's own (an entry point) would add the
    # --impl option the fake spec's conftest adds.
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    impl = tmp_path / "impl"
    impl.mkdir()
    (impl / "calc.py").write_text(CALC)
    spec = tmp_path / "spec"
    spec.mkdir()
    (spec / "conftest.py").write_text(CONFTEST)
    (spec / "test_calc.py").write_text(SPEC)
    (spec / "pytest.ini").write_text("[pytest]\n")
    # The fake spec defines its own --impl: keep the installed spec plugin (a pytest11 entry point) out.
    target = mutgen.Target(spec, ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:spec_tests.plugin",
                                  "--import-mode=importlib",
                                  "--rootdir", str(spec), "-c", str(spec / "pytest.ini")])
    return impl, target, tmp_path


def _pick(mutants, operator, line_text):
    """The one mutant of ``operator`` whose mutated line is ``line_text``."""
    found = [m for m in mutants
             if m.operator == operator and mutgen.mutate_source(CALC, m) and m.mutated == line_text]
    assert len(found) == 1, (operator, line_text, len(found))
    return found[0]


def _three(impl):
    mutants = mutgen.enumerate_mutants(impl / "calc.py", "calc")
    killed = _pick(mutants, "core/ReplaceBinaryOperator_Add_Sub", "return a - b")
    endless = _pick(mutants, "core/ReplaceBinaryOperator_Add_Sub", "i = i - 1")
    survivor = _pick(mutants, "core/NumberReplacer", 'return "=" * 4')
    return killed, endless, survivor


def test_executor_classifies_killed_survived_and_timeout(fake):
    """A mutant the spec catches is killed (with the catching test), one in untested code survives,
    an endless loop is killed by its timeout and reported as such."""
    impl, target, tmp = fake
    killed, endless, survivor = _three(impl)
    start = time.perf_counter()
    out = mutgen.run_mutants(None, [killed, endless, survivor], impl, target, tmp / "work", jobs=2,
                             budget=None, baseline={}, timeout=3.0)
    outcome = {m.job_id: o for m, o in out}
    assert outcome[killed.job_id].status == "killed"
    assert outcome[killed.job_id].caught_by.endswith("test_calc.py::test_add")
    assert outcome[survivor.job_id].status == "survived"
    assert 0 < outcome[survivor.job_id].cpu < 30  # the child's CPU seconds, from wait4
    assert outcome[endless.job_id].status == "timeout"
    assert 3.0 <= outcome[endless.job_id].seconds < 30
    assert time.perf_counter() - start < 60
    # every slot's copy is back to the original afterwards
    for slot in (tmp / "work").glob("slot*"):
        assert (slot / "impl" / "calc.py").read_text() == CALC


def test_an_executor_error_is_neither_killed_nor_recorded(fake, monkeypatch):
    """A child that ends before pytest writes its verdict (the executor failed, not a test) is an
    "error": not counted as killed, and a session keeps the mutant pending for a rerun."""
    impl, target, tmp = fake

    def broken_plugin(*args, **kwargs):  # raises in the forked child, before pytest runs
        raise RuntimeError("the executor's own failure")

    monkeypatch.setattr(mutgen, "_FirstFailure", broken_plugin)
    session = mutgen.Session(tmp / "state" / "session.sqlite")
    try:
        session.sync_module("calc", impl / "calc.py")
        (pending,) = [m for m in session.mutants(["calc"], pending_only=True)
                      if m.operator == "core/ReplaceBinaryOperator_Add_Sub" and m.line == 2]
        ((_, outcome),) = mutgen.run_mutants(session, [pending], impl, target, tmp / "work", jobs=1,
                                             budget=None, baseline={}, timeout=30.0)
        assert outcome.status == mutgen.ERROR, outcome
        assert "before pytest ended" in outcome.caught_by
        assert pending.job_id in {m.job_id for m in session.mutants(["calc"], pending_only=True)}
    finally:
        session.close()


def test_the_unmutated_spec_must_pass(fake):
    """A spec that fails on the unmutated implementation stops the run (every mutant would look killed)."""
    impl, target, tmp = fake
    (impl / "calc.py").write_text(CALC.replace("a + b", "a * b"))
    mutants = mutgen.enumerate_mutants(impl / "calc.py", "calc")
    with pytest.raises(RuntimeError, match="fails on the unmutated"):
        mutgen.run_mutants(None, mutants[:1], impl, target, tmp / "work", jobs=1, budget=None)


def test_session_resumes_and_regenerates_a_changed_module(fake):
    """Outcomes are stored in cosmic-ray's session as they finish: a rerun only runs what has no
    result; a module whose source changed gets fresh mutants."""
    impl, target, tmp = fake
    session = mutgen.Session(tmp / "state" / "session.sqlite")
    try:
        total = session.sync_module("calc", impl / "calc.py")
        assert total == len(mutgen.enumerate_mutants(impl / "calc.py", "calc")) > 3
        assert session.sync_module("calc", impl / "calc.py") == total  # unchanged: kept
        pending = session.mutants(["calc"], pending_only=True)
        first = [m for m in pending if m.operator == "core/ReplaceBinaryOperator_Add_Sub"
                 and m.line == 2]
        mutgen.run_mutants(session, first, impl, target, tmp / "work", jobs=1, budget=None,
                           baseline={}, timeout=5.0)
        left = session.mutants(["calc"], pending_only=True)
        assert len(left) == total - len(first)
        assert {m.job_id for m in first}.isdisjoint(m.job_id for m in left)
        # cosmic-ray's own store has the result (cr-report reads it)
        assert session.work_db.num_results == len(first)
        (done,) = [r for r in session.results(["calc"]) if r["status"]]
        assert (done["status"], done["mutated"]) == ("killed", "return a - b")
        # a budget of 0 s starts nothing and loses nothing
        assert mutgen.run_mutants(session, left, impl, target, tmp / "work", jobs=1, budget=0,
                                  baseline={}, timeout=5.0) == []
        assert len(session.mutants(["calc"], pending_only=True)) == len(left)
        # the source changes: old mutants and results go, new ones come
        (impl / "calc.py").write_text(CALC + "\n\ndef double(x):\n    return 2 * x\n")
        assert session.sync_module("calc", impl / "calc.py") > total
        assert session.work_db.num_results == 0
        assert all(r["status"] is None for r in session.results(["calc"]))
    finally:
        session.close()


def test_a_fresh_session_takes_committed_verdicts_of_unchanged_modules(fake):
    """results.json's verdicts seed a new session for a module whose source has the recorded sha256
    (a fresh checkout continues the committed run); a changed module starts over; --retry-survivors
    makes the survivors pending again, except those listed as equivalent."""
    import hashlib
    impl, target, tmp = fake
    first = mutgen.Session(tmp / "one" / "session.sqlite")
    try:
        first.sync_module("calc", impl / "calc.py")
        mutants = first.mutants(["calc"])
        killed = _pick(mutants, "core/ReplaceBinaryOperator_Add_Sub", "return a - b")
        survivor = _pick(mutants, "core/NumberReplacer", 'return "=" * 4')
        mutgen.run_mutants(first, [killed, survivor], impl, target, tmp / "work", jobs=1, budget=None,
                           baseline={}, timeout=5.0)
        rows = [r for r in first.results(["calc"]) if r["status"]]
    finally:
        first.close()
    assert sorted(r["status"] for r in rows) == ["killed", "survived"]
    recorded = {"sources": {"calc": hashlib.sha256((impl / "calc.py").read_bytes()).hexdigest()},
                "specs": {"calc": ["calc"]},
                "mutants": [{k: r[k] for k in ("module", "operator", "occurrence", "line", "status", "caught_by",
                                               "seconds")} for r in rows]}
    second = mutgen.Session(tmp / "two" / "session.sqlite")
    try:
        second.sync_module("calc", impl / "calc.py")
        assert second.seed("calc", impl / "calc.py", recorded) == 2
        assert second.seed("calc", impl / "calc.py", recorded) == 0   # never over verdicts it has
        seeded = {(r["operator"], r["occurrence"]): r for r in second.results(["calc"]) if r["status"]}
        assert {k: (r["status"], r["caught_by"], r["mutated"]) for k, r in seeded.items()} == \
            {(r["operator"], r["occurrence"]): (r["status"], r["caught_by"], r["mutated"]) for r in rows}
        pending = {m.job_id for m in second.mutants(["calc"], pending_only=True)}
        surv = next(r for r in second.results(["calc"]) if r["status"] == "survived")
        listed = [mutgen.Listed(kind="equivalent", module="calc", reason="listed", operator=surv["operator"],
                                occurrence=surv["occurrence"], original=surv["original"], mutated=surv["mutated"])]
        assert second.retry(["calc"], listed) == 0     # a survivor listed as equivalent is not rerun
        assert second.retry(["calc"]) == 1
        again = {m.job_id for m in second.mutants(["calc"], pending_only=True)} - pending
        assert [m.mutated for m in second.mutants(["calc"]) if m.job_id in again] == ['return "=" * 4']
    finally:
        second.close()
    (impl / "calc.py").write_text(CALC + "\n\ndef double(x):\n    return 2 * x\n")
    third = mutgen.Session(tmp / "three" / "session.sqlite")
    try:
        third.sync_module("calc", impl / "calc.py")
        assert third.seed("calc", impl / "calc.py", recorded) == 0   # the source changed: start over
    finally:
        third.close()


def test_equivalent_list_matches_by_line_text_and_reports_stale_entries(fake, tmp_path):
    """An entry names module, operator, occurrence and the original and mutated line: it follows its
    mutant when other lines move; an entry whose lines no longer exist is stale."""
    impl, _, _ = fake
    listed_file = tmp_path / "equivalent.toml"
    listed_file.write_text(textwrap.dedent('''\
        [[equivalent]]
        module = "calc"
        operator = "core/NumberReplacer"
        occurrence = 4
        original = 'return "=" * 3'
        mutated = 'return "=" * 4'
        reason = "the banner's width is not part of any contract"

        [[equivalent]]
        module = "calc"
        operator = "core/ReplaceBinaryOperator_Add_Sub"
        occurrence = 0
        original = "return a + b + 0"
        mutated = "return a - b + 0"
        reason = "a line that no longer exists"

        [[skip]]
        module = "calc"
        definition = "count_to"
        reason = "an example of skipping a whole function"
    '''))
    # a line above gains two NumberReplacer positions: the banner mutant's occurrence moves from 4 to 6
    (impl / "calc.py").write_text("LIMIT = 10\n" + CALC)
    text = (impl / "calc.py").read_text()
    results = []
    for m in mutgen.enumerate_mutants(impl / "calc.py", "calc"):
        mutgen.mutate_source(text, m)
        results.append({"module": m.module, "operator": m.operator, "occurrence": m.occurrence,
                        "original": m.original, "mutated": m.mutated, "definition": m.definition,
                        "line": m.line, "status": "survived", "caught_by": "", "seconds": 0.1})
    listed = mutgen.load_listed(listed_file)
    covered = mutgen.match_listed(listed, results)
    banner = [i for i, e in covered.items() if e.kind == "equivalent"]
    assert len(banner) == 1 and results[banner[0]]["mutated"] == 'return "=" * 4'
    assert results[banner[0]]["occurrence"] == 6
    assert all(results[i]["definition"] == "count_to" for i, e in covered.items() if e.kind == "skip")
    assert [e.reason for e in mutgen.stale(listed, results)] == ["a line that no longer exists"]
    rows, per = mutgen.tally(results, mutgen.load_listed(listed_file))
    assert per["calc"]["equivalent"] == len(covered)


def test_equivalent_entries_need_a_reason(tmp_path):
    """An entry without a reason is refused."""
    path = tmp_path / "equivalent.toml"
    path.write_text('[[equivalent]]\nmodule = "calc"\noperator = "x"\noriginal = "a"\nmutated = "b"\nreason = ""\n')
    with pytest.raises(ValueError, match="no reason"):
        mutgen.load_listed(path)


def test_changed_lines():
    """The changed lines of a mutation, stripped, both sides."""
    assert mutgen.changed_lines("a\n    x = 1\nb\n", "a\n    x = 2\nb\n") == ("x = 1", "x = 2")


def test_locate_follows_a_mutant_when_lines_move(fake):
    """The CI sample finds a recorded mutant by its lines even when its occurrence moved, and
    reports None for a mutant whose line no longer exists."""
    impl, _, _ = fake
    ident = {"module": "calc", "operator": "core/NumberReplacer", "occurrence": 4, "line": 13,
             "original": 'return "=" * 3', "mutated": 'return "=" * 4'}
    assert mutgen.locate(impl, ident).occurrence == 4
    mutgen._MODULE_CACHE.clear()
    (impl / "calc.py").write_text("LIMIT = 10\n" + CALC)
    assert mutgen.locate(impl, ident).occurrence == 6
    mutgen._MODULE_CACHE.clear()
    (impl / "calc.py").write_text(CALC.replace('"=" * 3', '"-" * 3'))
    assert mutgen.locate(impl, ident) is None
    mutgen._MODULE_CACHE.clear()


def test_tests_that_caught_earlier_mutants_run_first():
    """The child runs first the tests that caught mutants of the same line, then the module's most
    frequent catchers."""
    results = [{"module": "calc", "line": 2, "status": "killed", "caught_by": "test_calc.py::test_add"},
               {"module": "calc", "line": 7, "status": "killed", "caught_by": "test_calc.py::test_count_to"},
               {"module": "calc", "line": 8, "status": "killed", "caught_by": "test_calc.py::test_count_to"},
               {"module": "calc", "line": 9, "status": "killed", "caught_by": "pytest exited 4"}]
    catchers = mutgen.Catchers(results)
    mutant = mutgen.Mutant("id", "calc", "core/AddNot", 0, 2)
    assert catchers.first(mutant) == ("test_calc.py::test_add", "test_calc.py::test_count_to")
    assert catchers.first(mutgen.Mutant("id", "calc", "core/AddNot", 0, 5))[0] == "test_calc.py::test_count_to"


def test_mutants_in_annotations_are_marked(tmp_path):
    """With postponed annotations, a mutation inside a parameter or return annotation is marked ``annotation`` (the list can skip those); one in the code itself is not."""
    path = tmp_path / "typed.py"
    path.write_text("from __future__ import annotations\n\n\n"
                    "def f(a: int | None = None) -> int | None:\n"
                    "    y: int | None = a\n"
                    "    return y | 2\n")
    mutants = [m for m in mutgen.enumerate_mutants(path, "typed") if m.operator == "core/ReplaceBinaryOperator_BitOr_Add"]
    text = path.read_text()
    for m in mutants:
        mutgen.mutate_source(text, m)
    contexts = {m.mutated: m.context for m in mutants}
    assert contexts == {"def f(a: int + None = None) -> int | None:": "annotation",
                        "def f(a: int | None = None) -> int + None:": "annotation",
                        "return y + 2": ""}


def test_a_mutation_cosmic_ray_cannot_apply_is_incompetent_not_a_crash(tmp_path):
    """cosmic-ray's ExceptionReplacer fails on a dotted name in a tuple of exceptions (``except (ValueError, os.error)``): that
    mutant is incompetent, with the reason, and the run goes on."""
    path = tmp_path / "dotted.py"
    path.write_text("import os\n\n\ndef f():\n    try:\n        return 1\n    except (ValueError, os.error):\n        return 2\n")
    mutants = [m for m in mutgen.enumerate_mutants(path, "dotted") if "Exception" in m.operator]
    assert mutants
    codes = [mutgen.mutate_source(path.read_text(), m) for m in mutants]
    assert None in codes
    for m, code in zip(mutants, codes):
        assert code is not None or m.mutated.startswith("cosmic-ray cannot apply it")
