"""The spec's pytest plugin: choosing the implementation, hypothesis profiles, learner-facing output.

- ``--impl NAME_OR_PATH`` (or ``BARE_LM_IMPL``) picks the implementation; see ``spec_tests/impl.py``.
- ``--hypothesis-profile dev|ci|thorough`` picks how hard hypothesis searches (``dev`` by default).
- Tests run in curriculum order and carry a marker per component (``-m norm``).
- A ``NotImplementedError`` from a stub is reported as *not started*, in one line.
- A failing property is reported on one screen: the property, the shrunk input, expected vs got,
  and where in the implementation it went wrong (``--tb=long`` gives pytest's full traceback).
- The run ends with a progress table per component and the next thing to work on;
  ``--progress-json PATH`` writes the same data for tools (the mutant runner, graders).
"""

from __future__ import annotations

import json
import os
import traceback
from collections import Counter
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, settings

from .components import COMPONENTS, component_of
from .impl import ENV_VAR, Implementation, chosen

# --- hypothesis profiles -----------------------------------------------------------------------
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# No "explain" phase outside `thorough`: it costs ~0.7 s per failing test, a stub fails them all.
_quick = [Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink]
settings.register_profile("dev", max_examples=15, phases=_quick, **_common)
settings.register_profile("ci", max_examples=40, derandomize=True, print_blob=False, phases=_quick, **_common)
settings.register_profile("thorough", max_examples=400, **_common)
# The mutant runner only needs to know *whether* a property fails: no shrinking.
settings.register_profile("mutants", max_examples=40, derandomize=True, print_blob=False,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate], **_common)
settings.load_profile(os.environ.get("BARE_LM_HYPOTHESIS_PROFILE", "dev"))

NOT_STARTED = "not started"
SPEC_ROOT = Path(__file__).resolve().parent


def pytest_addoption(parser):
    group = parser.getgroup("bare-lm")
    group.addoption("--impl", default=None, metavar="NAME_OR_PATH",
                    help=f"implementation to test: reference (default), kata, a package name or a "
                         f"directory; also from ${ENV_VAR}")
    group.addoption("--progress-json", default=None, metavar="PATH",
                    help="write every test's outcome, per component, as JSON")


def pytest_configure(config):
    # The spec's tensors are tiny: one thread is faster than two, and far faster on a busy machine.
    torch.set_num_threads(int(os.environ.get("BARE_LM_THREADS", "1")))
    for name in COMPONENTS:
        config.addinivalue_line("markers", f"{name}: the spec of the '{name}' component")
    try:
        config._bare_lm_impl = Implementation(chosen(config.getoption("--impl")))
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None
    config._bare_lm_results = []


def pytest_report_header(config):
    impl = config._bare_lm_impl
    return f"bare-lm implementation: {impl.spec} ({impl.root})"


@pytest.fixture(scope="session")
def impl(pytestconfig) -> Implementation:
    """The implementation under test; ``impl.component("norm")`` gives its norm module."""
    return pytestconfig._bare_lm_impl


# --- collection: markers and curriculum order ---------------------------------------------------

@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    order = {name: i for i, name in enumerate(COMPONENTS)}
    for item in items:
        component = component_of(item.path.name)
        if component:
            item.add_marker(getattr(pytest.mark, component))
    items.sort(key=lambda item: order.get(component_of(item.path.name), len(order)))


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
                return f"{_relative(path)}:{frame.lineno} in {frame.name}"
            if root == SPEC_ROOT and path.parent == SPEC_ROOT and path.name.startswith("test_"):
                return f"{_relative(path)}:{frame.lineno} in {frame.name}"
    return f"{_relative(Path(frames[-1].filename))}:{frames[-1].lineno}" if frames else "?"


def _relative(path: Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:
        return str(path)


def _property(item) -> str:
    doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
    return doc.strip().split("\n")[0] or item.name


def _explain(item, exc: BaseException, impl_root: Path | None) -> str:
    lines = [f"Property: {_property(item)}"]
    for leaf in _leaves(exc):
        for note in getattr(leaf, "__notes__", []):
            if "Falsifying example" in note or "Failing test case" in note or note.startswith("Explanation"):
                example = note.split(":", 1)[1].strip().split("\n")
                # Fixtures (the implementation's modules) are not part of the input.
                example = [line for line in example if "=<module '" not in line]
                lines.append("Input (shrunk by hypothesis): " + "\n".join(example))
        message = str(leaf).strip()
        lines.append(f"{type(leaf).__name__}: {message}" if message else type(leaf).__name__)
        lines.append(f"  at {_location(leaf, [impl_root, SPEC_ROOT])}")
    lines.append("(full traceback: add --tb=long)")
    return "\n".join(lines)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is not None and report.failed:
        _describe_failure(item, call, report)
    _record(item.config, item, report)


def _describe_failure(item, call, report) -> None:
    impl = item.config._bare_lm_impl
    leaves = _leaves(call.excinfo.value)
    if all(isinstance(leaf, NotImplementedError) for leaf in leaves):
        leaf = leaves[0]
        hint = (str(leaf).strip().split("\n")[0]) or "stub raises NotImplementedError"
        where = _location(leaf, [impl.root]) if impl.root else "?"
        report.longrepr = f"{NOT_STARTED}: {where}: {hint}"
        report.bare_lm_not_started = True
    elif item.config.getoption("tbstyle") == "auto":
        report.longrepr = _explain(item, call.excinfo.value, impl.root)


def pytest_report_teststatus(report, config):
    if getattr(report, "bare_lm_not_started", False):
        return NOT_STARTED, "N", ("NOT STARTED", {"yellow": True})
    return None


def _record(config, item, report) -> None:
    """Keep one outcome per spec test: the first failure of any phase, else skipped, else passed."""
    component = component_of(item.path.name)
    if component is None:
        return
    if getattr(report, "bare_lm_not_started", False):
        status = NOT_STARTED
    elif report.failed:
        status = "failed"
    elif report.skipped:
        status = "skipped"
    elif report.when == "call":
        status = "passed"
    else:
        return
    results = config._bare_lm_results
    detail = "" if status == "passed" else str(report.longrepr or "")
    if results and results[-1]["nodeid"] == report.nodeid:
        if results[-1]["status"] == "passed" and status != "passed":
            results[-1].update(status=status, detail=detail)
        return
    results.append({"nodeid": report.nodeid, "component": component,
                    "status": status, "detail": detail})


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    results = config._bare_lm_results
    if not results:
        return
    impl = config._bare_lm_impl
    write = terminalreporter.write_line
    counts: dict[str, Counter] = {}
    for r in results:
        counts.setdefault(r["component"], Counter())[r["status"]] += 1
    order = [c for c in COMPONENTS if c in counts]
    terminalreporter.section(f"Bare-LM progress: {impl.spec}", sep="=", bold=True)
    write(f"{'component':<14}{'passed':>8}{'failed':>8}{'not started':>13}{'skipped':>9}  state")
    for c in order:
        n = counts[c]
        total = n["passed"] + n["failed"] + n[NOT_STARTED]
        if n["failed"]:
            state = "FAILING"
        elif n[NOT_STARTED] == total and total:
            state = "not started"
        elif n[NOT_STARTED]:
            state = "in progress"
        elif total:
            state = "done"
        else:
            state = "skipped"
        write(f"{c:<14}{n['passed']:>8}{n['failed']:>8}{n[NOT_STARTED]:>13}{n['skipped']:>9}  {state}")
    todo = next((r for c in order for r in results
                 if r["component"] == c and r["status"] in ("failed", NOT_STARTED)), None)
    if todo is None:
        write("Next: every collected spec passes.", green=True, bold=True)
    elif todo["status"] == NOT_STARTED:
        write(f"Next: {todo['component']}: {todo['detail'].removeprefix(NOT_STARTED + ': ')}",
              yellow=True, bold=True)
    else:
        first = todo["detail"].split("\n")[0].removeprefix("Property: ")
        write(f"Next: {todo['component']}: fix {todo['nodeid']} ({first})", red=True, bold=True)
    path = config.getoption("--progress-json")
    if path:
        Path(path).write_text(json.dumps({"impl": impl.spec, "results": results}, indent=1))
