"""The spec's pytest plugin: choosing the implementation, hypothesis profiles, learner-facing output.

- ``--impl NAME_OR_PATH`` (or ``BARE_LM_IMPL``) picks the implementation; see ``spec_tests/impl.py``.
- ``--hypothesis-profile dev|ci|thorough|grade`` picks how hard hypothesis searches (``dev`` by
  default; ``grade`` is ``ci`` without an example database, for reproducible grades).
- Tests run in curriculum order and carry a marker per component (``-m norm``); within a component
  the fast-path tests (``test_fast_*``, ``*fast_path*``) run last.
- A ``NotImplementedError`` from a stub is reported as *not started*, in one line.
- A module of the implementation that does not import (syntax error, bad import) is reported once,
  with its file and line; the other tests that need it read *blocked*.
- A fast-path test whose written-out path already failed in the same component reads *blocked by*
  that failure: the fast path is compared against the written-out one, so it cannot be judged yet.
- A failing property is reported on one screen: the property, the shrunk input, expected vs got,
  and where in the implementation it went wrong (``--tb=long`` gives pytest's full traceback).
- The run ends with a progress table per component and the next thing to work on;
  ``--progress-json PATH`` writes the same data for tools (the mutant runner, graders).

The plugin is installed as a ``pytest11`` entry point: it stays idle (no torch import, no change of
hypothesis profile or thread count) in a pytest run that collects no spec test and has no ``--impl``.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import platform
import re
import time
import traceback
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings

from .components import COMPONENTS, component_of
from .impl import ENV_VAR, ComponentBroken, Implementation, chosen

# --- hypothesis profiles -----------------------------------------------------------------------
# On a CI machine hypothesis loads its own "ci" profile at import; registering the spec's "ci" would
# change that profile in force, also in a project that merely has this plugin installed. Keep the
# settings in force under another name, so that only a spec run (or --hypothesis-profile) changes them.
_outer_name, _outer = settings.get_current_profile_name(), settings.default
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# No "explain" phase outside `thorough`: it costs ~0.7 s per failing test, a stub fails them all.
_quick = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]
settings.register_profile("dev", max_examples=15, phases=_quick, **_common)
settings.register_profile("ci", max_examples=40, derandomize=True, database=None, print_blob=False,
                          phases=_quick, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
# Grading: ci's examples, derandomized, and no example database, so that no earlier run (another
# student's, say) replays its failures into this one: the same submission always gets the same grade.
settings.register_profile("grade", max_examples=40, derandomize=True, database=None, print_blob=False,
                          phases=_quick, **_common)
# The mutant runner only needs to know *whether* a property fails: no shrinking.
settings.register_profile("mutants", max_examples=40, derandomize=True, database=None, print_blob=False,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], **_common)
if _outer_name in ("dev", "ci", "thorough", "grade", "mutants"):
    settings.register_profile(f"{_outer_name}-before-bare-lm", _outer)
    settings.load_profile(f"{_outer_name}-before-bare-lm")
PROFILE_ENV = "BARE_LM_HYPOTHESIS_PROFILE"

NOT_STARTED = "not started"
BLOCKED = "blocked"
BROKEN = "broken"
SPEC_ROOT = Path(__file__).resolve().parent
FAILING = ("failed", BROKEN, BLOCKED, NOT_STARTED)


def spec_version() -> str:
    """The package version and a digest of the spec's files (tests, harness, contract)."""
    try:
        from importlib.metadata import version
        base = version("bare-lm")
    except Exception:  # noqa: BLE001 - not installed (a copied spec)
        base = "0"
    digest = hashlib.sha256()
    for path in sorted([*SPEC_ROOT.glob("*.py"), *SPEC_ROOT.glob("*.md"), *SPEC_ROOT.glob("contract/*.md")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return f"{base}+spec.{digest.hexdigest()[:12]}"


def is_spec_item(item) -> bool:
    path = Path(str(item.path))
    return path.parent == SPEC_ROOT and component_of(path.name) is not None


def is_fast_path_test(item) -> bool:
    """Fast-path tests run ``fast=True``: named ``test_fast_*`` or ``*fast_path*`` (they compare it with the
    written-out path), or parametrized with ``fast=True``; compiled runs (``test_compiled_*``: torch.compile
    itself calls torch's functions) count as fast paths too. Every other test runs written-out paths only."""
    name = getattr(getattr(item, "function", None), "__name__", item.name)
    params = getattr(getattr(item, "callspec", None), "params", {})
    return (name.startswith(("test_fast_", "test_compiled_")) or "fast_path" in name
            or params.get("fast") is True)


class _State:
    """What the plugin keeps per run: the implementation (loaded on first use) and the outcomes."""

    def __init__(self, config):
        self.config = config
        self.spec = chosen(config.getoption("--impl"))
        self._impl: Implementation | None = None
        self.active = False
        self.results: list[dict] = []
        self.broken: dict[str, str] = {}          # location of a module that does not import -> summary
        self.written_out_failed: dict[str, str] = {}  # component -> first failed written-out test
        self.started = time.perf_counter()

    @property
    def impl(self) -> Implementation:
        if self._impl is None:
            try:
                self._impl = Implementation(self.spec)
            except ValueError as err:
                raise pytest.UsageError(str(err)) from None
            except Exception as err:  # noqa: BLE001 - the package's __init__.py does not import
                broken = ComponentBroken("__init__", err, Path(self.spec).resolve())
                raise pytest.UsageError(f"--impl {self.spec}: {broken.summary}") from None
        return self._impl

    def activate(self) -> None:
        """The run has spec tests: load the profile, one torch thread, the implementation."""
        if self.active:
            return
        self.active = True
        if not self.config.getoption("hypothesis_profile", None):
            settings.load_profile(os.environ.get(PROFILE_ENV, "dev"))
        import torch
        # The spec's tensors are tiny: one thread is faster than two, and far faster on a busy machine.
        torch.set_num_threads(int(os.environ.get("BARE_LM_THREADS", "1")))
        self.impl  # noqa: B018 - a bad --impl is a usage error before any test runs


def _state(config) -> _State:
    return config._bare_lm


def pytest_addoption(parser):
    group = parser.getgroup("bare-lm")
    group.addoption("--impl", default=None, metavar="NAME_OR_PATH",
                    help=f"implementation to test: reference (default), kata, a package name or a "
                         f"directory; also from ${ENV_VAR}")
    group.addoption("--progress-json", default=None, metavar="PATH",
                    help="write every test's outcome, per component, as JSON")


def pytest_configure(config):
    for name in COMPONENTS:
        config.addinivalue_line("markers", f"{name}: the spec of the '{name}' component")
    config._bare_lm = _State(config)
    if config.getoption("--impl") or os.environ.get(ENV_VAR):
        _state(config).activate()


def pytest_report_header(config):
    state = _state(config)
    if not state.active:
        return None
    impl = state.impl
    return f"bare-lm implementation: {impl.spec} ({impl.root})"


@pytest.fixture(scope="session")
def impl(pytestconfig) -> Implementation:
    """The implementation under test; ``impl.component("norm")`` gives its norm module."""
    state = _state(pytestconfig)
    state.activate()
    return state.impl


# --- collection: markers, curriculum order, readable ids ------------------------------------------

@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    """A spec module is about to be imported: activate first, so that its ``@settings`` decorators
    (which copy the profile in force when they run) start from the spec's profile."""
    path = Path(str(module_path))
    if path.parent == SPEC_ROOT and component_of(path.name):
        _state(parent.config).activate()


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    spec_items = [item for item in items if is_spec_item(item)]
    if not spec_items:
        return
    _state(config).activate()
    order = {name: i for i, name in enumerate(COMPONENTS)}
    position = {id(item): i for i, item in enumerate(items)}

    def key(item):
        if not is_spec_item(item):
            return (len(order), 0, position[id(item)])
        return (order[component_of(item.path.name)], is_fast_path_test(item), position[id(item)])

    _check_settings_follow_the_profile(spec_items)
    cheap = config.getoption("tbstyle") in ("auto", "short", "line", "no")
    for item in spec_items:
        item.add_marker(getattr(pytest.mark, component_of(item.path.name)))
        if cheap:
            item.repr_failure = _one_line_failure
    items.sort(key=key)


def _check_settings_follow_the_profile(items) -> None:
    """A test's ``@settings(...)`` copies the profile in force when its module was imported. If a spec
    module was imported before the profile was loaded (by a tool that imports the spec itself), its
    tests keep hypothesis's own defaults (a 200 ms deadline among them) and a slow example fails on
    correct code: refuse to run rather than give such verdicts."""
    fields = ("deadline", "derandomize", "phases", "suppress_health_check")  # no spec test sets these itself
    profile = tuple(getattr(settings.default, f) for f in fields)
    wrong = sorted({item.path.name for item in items
                    if getattr(getattr(item, "obj", None), "_hypothesis_internal_use_settings", None) is not None
                    and tuple(getattr(item.obj._hypothesis_internal_use_settings, f) for f in fields) != profile})
    if wrong:
        raise pytest.UsageError(
            f"{', '.join(wrong)} imported before the hypothesis profile was loaded: their @settings carry "
            f"another profile's {', '.join(fields)}; load the profile first")


def _one_line_failure(excinfo, style=None) -> str:
    """A spec test's failure text before ``_describe_failure`` replaces it. pytest's own (which
    re-parses the source of every traceback entry, twice per failing test with hypothesis) would be
    thrown away, and costs ~0.05 s a failure: most of a run against an unstarted kata. Only used
    when the traceback style is one that ``_describe_failure`` replaces (--tb=long/native keep
    pytest's)."""
    return excinfo.exconly()


@pytest.hookimpl(hookwrapper=True)
def pytest_pycollect_makeitem(collector, name, obj):
    """Note while a spec module's tests are generated, so that only their ids are rewritten."""
    state = _state(collector.config)
    state.collecting_spec = Path(str(collector.path)).parent == SPEC_ROOT
    yield
    state.collecting_spec = False


def pytest_make_parametrize_id(config, val, argname):
    """Readable ids for the spec's parameters: a lambda by its body, a short list by its items."""
    if not getattr(_state(config), "collecting_spec", False):
        return None
    if inspect.isfunction(val) and val.__name__ == "<lambda>":
        return _lambda_id(val)
    if isinstance(val, (list, tuple)) and val and all(isinstance(v, (str, int, float, bool)) for v in val):
        text = "-".join(str(v) for v in val)
        return text if len(text) <= 40 else text[:37] + "..."
    return None


def _lambda_id(fn) -> str | None:
    try:
        lines, _ = inspect.getsourcelines(fn)
    except (OSError, TypeError):
        return None
    source = "".join(lines)
    start = source.find("lambda")
    colon = source.find(":", start)
    if start < 0 or colon < 0:
        return None
    depth, body = 0, []
    for ch in source[colon + 1:]:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0 or ch == "\n":
            break
        body.append(ch)
    text = re.sub(r"\s+", "", "".join(body)).replace('"', "").replace("'", "")
    text = text.removeprefix("d.")
    return (text if len(text) <= 48 else text[:45] + "...") or None


# --- reporting ----------------------------------------------------------------------------------

def _leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside an exception group (hypothesis raises one for distinct failures)."""
    inner = getattr(exc, "exceptions", None)
    if not inner:
        return [exc]
    return [leaf for sub in inner for leaf in _leaves(sub)]


def _location(exc: BaseException, roots: list[Path]) -> str:
    """The innermost traceback frame inside one of ``roots`` (the implementation, then the spec)."""
    frames = traceback.extract_tb(exc.__traceback__)
    for root in roots:
        for frame in reversed(frames):
            path = Path(frame.filename)
            if root is not None and path.is_relative_to(root) and path.parent != SPEC_ROOT:
                return f"{relative(path)}:{frame.lineno} in {frame.name}"
            if root == SPEC_ROOT and path.parent == SPEC_ROOT and path.name.startswith("test_"):
                return f"{relative(path)}:{frame.lineno} in {frame.name}"
    return f"{relative(Path(frames[-1].filename))}:{frames[-1].lineno}" if frames else "?"


def relative(path: Path) -> str:
    """A path to show: relative to the working directory when inside it; the spec's as ``spec_tests/...``."""
    path = Path(path)
    try:
        if path.is_relative_to(SPEC_ROOT) and not path.resolve().is_relative_to(Path.cwd()):
            return str(Path("spec_tests") / path.relative_to(SPEC_ROOT))
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _property(item) -> str:
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    return doc.strip().split("\n")[0] or item.name


#: Lines of pytest's assertion rewriting that say nothing to a learner (``+ where <built-in ...>``).
_NOISE = re.compile(r"^\s*(\+\s|-\s|\?\s|where\s|Use -v to get|Full diff:|Omitting \d+ identical)")


def _clean(message: str) -> str:
    lines = [line for line in message.split("\n") if not _NOISE.match(line)]
    if lines and not lines[0].startswith("assert "):  # the test's own message says it: drop pytest's echo
        lines = [line for line in lines if not line.startswith("assert ")]
    return "\n".join(lines).strip()


def _explain(item, exc: BaseException, impl_root: Path | None) -> str:
    lines = [f"Property: {_property(item)}"]
    inputs_shown = set()
    for leaf in _leaves(exc):
        for note in getattr(leaf, "__notes__", []):
            if "Falsifying example" in note or "Failing test case" in note or note.startswith("Explanation"):
                example = note.split(":", 1)[1].strip().split("\n")
                # Fixtures (the implementation's modules) are not part of the input.
                example = [line for line in example if "=<module '" not in line]
                text = "Input (shrunk by hypothesis): " + "\n".join(example)
                if text not in inputs_shown:
                    inputs_shown.add(text)
                    lines.append(text)
        message = _clean(str(leaf))
        lines.append(f"{type(leaf).__name__}: {message}" if message else type(leaf).__name__)
        lines.append(f"  at {_location(leaf, [impl_root, SPEC_ROOT])}")
    lines.append("(full traceback: add --tb=long)")
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if not is_spec_item(item):
        return
    if call.excinfo is not None and report.failed:
        _describe_failure(item, call, report)
    _record(item.config, item, report)


def _describe_failure(item, call, report) -> None:
    state = _state(item.config)
    impl = state.impl
    component = component_of(item.path.name)
    leaves = _leaves(call.excinfo.value)
    broken = next((leaf for leaf in leaves if isinstance(leaf, ComponentBroken)), None)
    if broken is not None:
        if broken.location in state.broken:
            report.longrepr = f"{BLOCKED}: {broken.summary} (reported above)"
            report.bare_lm_status = BLOCKED
        else:
            state.broken[broken.location] = broken.summary
            report.longrepr = broken.report()
            report.bare_lm_status = BROKEN
    elif all(isinstance(leaf, NotImplementedError) for leaf in leaves):
        leaf = leaves[0]
        hint = (str(leaf).strip().split("\n")[0]) or "stub raises NotImplementedError"
        where = _location(leaf, [impl.root]) if impl.root else "?"
        report.longrepr = f"{NOT_STARTED}: {where}: {hint}"
        report.bare_lm_status = NOT_STARTED
    elif is_fast_path_test(item) and component in state.written_out_failed:
        report.longrepr = (f"{BLOCKED} by {state.written_out_failed[component]}: this test compares fast=True "
                           f"with the written-out path, which fails; fix that first")
        report.bare_lm_status = BLOCKED
    else:
        if not is_fast_path_test(item):
            state.written_out_failed.setdefault(component, item.nodeid.split("::", 1)[-1])
        if item.config.getoption("tbstyle") in ("auto", "short", "line"):
            report.longrepr = _explain(item, call.excinfo.value, impl.root)


def pytest_report_teststatus(report, config):
    status = getattr(report, "bare_lm_status", None)
    if status == NOT_STARTED:
        return NOT_STARTED, "N", ("NOT STARTED", {"yellow": True})
    if status == BLOCKED:
        return BLOCKED, "B", ("BLOCKED", {"yellow": True})
    return None


def _record(config, item, report) -> None:
    """Keep one outcome per spec test: the first failure of any phase, else skipped, else passed."""
    component = component_of(item.path.name)
    status = getattr(report, "bare_lm_status", None)
    if status is None:
        if report.failed:
            status = "failed"
        elif report.skipped:
            status = "skipped"
        elif report.when == "call":
            status = "passed"
    results = _state(config).results
    detail = "" if status in (None, "passed") else str(report.longrepr or "")
    if results and results[-1]["nodeid"] == report.nodeid:
        last = results[-1]
        last["duration_s"] = round(last["duration_s"] + report.duration, 4)
        if status is not None and status != "passed" and last["status"] in ("passed", None):
            last.update(status=status, detail=detail)
        elif status == "passed" and last["status"] is None:
            last["status"] = status
        return
    results.append({"nodeid": report.nodeid, "component": component, "test": item.name,
                    "spec": f"spec_tests/{item.path.name}::{item.name}",
                    "status": status, "detail": detail, "duration_s": round(report.duration, 4)})


def _counts(results) -> dict[str, Counter]:
    counts: dict[str, Counter] = {}
    for r in results:
        if r["status"] is not None:
            counts.setdefault(r["component"], Counter())[r["status"]] += 1
    return counts


def _component_state(n: Counter) -> str:
    total = sum(n[s] for s in ("passed", *FAILING))
    if n[BROKEN]:
        return "BROKEN"
    if n["failed"] or n[BLOCKED]:
        return "FAILING"
    if n[NOT_STARTED] == total and total:
        return "not started"
    if n[NOT_STARTED]:
        return "in progress"
    return "done" if total else "skipped"


def next_step(results: list[dict], impl_spec: str) -> tuple[str, str]:
    """The line that tells the learner what to do next, and its colour."""
    counts = _counts(results)
    order = [c for c in COMPONENTS if c in counts]
    for c in order:
        rows = [r for r in results if r["component"] == c]
        broken = next((r for r in rows if r["status"] == BROKEN), None)
        if broken:
            return f"Next: {c}: fix {broken['detail'].splitlines()[0]}", "red"
        failed = next((r for r in rows if r["status"] == "failed"), None)
        if failed:
            first = failed["detail"].split("\n")[0].removeprefix("Property: ")
            return f"Next: {c}: fix {failed.get('spec', failed['nodeid'])} ({first})", "red"
        todo = next((r for r in rows if r["status"] == NOT_STARTED), None)
        if todo:
            return f"Next: {c}: {todo['detail'].removeprefix(NOT_STARTED + ': ')}", "yellow"
    last = max((COMPONENTS.index(c) for c in order), default=-1)
    later = COMPONENTS[last + 1:]
    if later:
        c = later[0]
        return (f"Next: {c}: every spec run here passes; go on with {c} "
                f"(pytest --impl {impl_spec} spec_tests/test_{c}.py; contract: spec_tests/contract/{c}.md)",
                "green")
    missing = [c for c in COMPONENTS if c not in counts]
    if missing:
        return (f"Next: {missing[0]}: every spec run here passes; {missing[0]} was not run "
                f"(pytest --impl {impl_spec} spec_tests/test_{missing[0]}.py)", "green")
    return "Next: nothing: every component's spec passes.", "green"


def summary(config) -> dict:
    """The run as data: per-component totals, every test, and what was run how."""
    import torch
    state = _state(config)
    counts = _counts(state.results)
    components = {c: {"passed": n["passed"], "failed": n["failed"], BROKEN: n[BROKEN], BLOCKED: n[BLOCKED],
                      NOT_STARTED: n[NOT_STARTED], "skipped": n["skipped"], "state": _component_state(n),
                      "duration_s": round(sum(r["duration_s"] for r in state.results if r["component"] == c), 3)}
                  for c, n in ((c, counts[c]) for c in COMPONENTS if c in counts)}
    return {"impl": state.impl.spec, "impl_root": str(state.impl.root), "spec_version": spec_version(),
            "profile": settings._current_profile, "torch": torch.__version__,
            "python": platform.python_version(),
            "duration_s": round(time.perf_counter() - state.started, 3),
            "components": components, "results": state.results}


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    state = _state(config)
    results = state.results
    if not results:
        return
    write = terminalreporter.write_line
    counts = _counts(results)
    order = [c for c in COMPONENTS if c in counts]
    blocked: dict[str, list[str]] = {}
    for r in results:
        if r["status"] == BLOCKED:
            blocked.setdefault(r["detail"], []).append(r["test"])
    if blocked:
        terminalreporter.section("blocked (not judged until what they need passes)", sep="-")
        for detail, tests in blocked.items():
            names = ", ".join(tests[:2]) + (f" and {len(tests) - 2} more" if len(tests) > 2 else "")
            write(f"{names}: {detail.removeprefix(BLOCKED + ': ')}", yellow=True)
    terminalreporter.section(f"Bare-LM progress: {state.impl.spec}", sep="=", bold=True)
    write(f"{'component':<14}{'passed':>8}{'failed':>8}{'blocked':>9}{'not started':>13}{'skipped':>9}  state")
    for c in order:
        n = counts[c]
        write(f"{c:<14}{n['passed']:>8}{n['failed'] + n[BROKEN]:>8}{n[BLOCKED]:>9}{n[NOT_STARTED]:>13}"
              f"{n['skipped']:>9}  {_component_state(n)}")
    line, colour = next_step(results, state.impl.spec)
    write(line, **{colour: True, "bold": True})
    path = config.getoption("--progress-json")
    if path:
        Path(path).write_text(json.dumps(summary(config), indent=1))
