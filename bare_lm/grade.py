"""Grading submissions against the spec: reproducible, isolated, honest.

``bare-lm grade SUBMISSION [--rubric FILE] [--out DIR]`` grades one submission (a directory with one
module per component, as the contract says) and writes ``DIR/results.json`` (Gradescope's format),
``DIR/grade.json`` (every test, its outcome and points) and a row of ``DIR/grades.csv`` (or
``--csv FILE``, one row per submission for a roster).

- **Reproducible**: the ``grade`` hypothesis profile (derandomized, 40 examples, no example
  database), ``PYTHONHASHSEED=0``, one thread, torch's RNG seeded before each test, and no
  file left from an earlier run: grading the same submission twice gives the same grade and output.
- **Isolated**: the submission is copied to a temporary directory; each component runs in its own
  pytest subprocess with a per-test limit in CPU seconds and a per-component one, so an infinite
  loop costs its tests (and at worst its component), never the run. The per-test limit counts the
  CPU time the test's process spends, not the wall clock: a loaded machine slows a test but does
  not change its CPU seconds, so the same submission gets the same grade however busy the machine
  is. A test that waits without computing (a deadlock) is stopped by pytest-timeout at
  ``WALL_BACKSTOP`` times the limit in wall-clock seconds. In that process
  ``reference``, ``kata`` and ``bare_lm.mutants`` cannot be imported: a submission that imports them
  is reported and its component gets no points.
- **Honest**: while a written-out path runs (every test but the fast-path ones), a
  ``torch.overrides.TorchFunctionMode`` records the torch functions that the submission's own code
  calls, however aliased; a call to an oracle that the contract forbids there (``ORACLES`` below)
  fails the component with the function and the line. After the submission is imported, and after
  every test, torch's functions, the spec's modules and this grader are checked to be the originals:
  a submission that patches any of them is reported, not graded.

Threat model: this stops students from copying the reference in by import and from patching torch
or the spec to forge a grade. It is not a sandbox: a submission is code that runs with the
grader's rights (it could read files, or undo the checks on purpose). Grade untrusted code inside a
container or a throwaway machine.
"""

from __future__ import annotations

import csv
import importlib.abc
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

SPEC_DIR = Path(__file__).resolve().parent.parent / "spec_tests"

# --- the oracles the contract forbids in written-out paths ----------------------------------------
#
# Torch's own nn.functional, nn layers and optim are the spec's oracles (spec_tests/CONTRACT.md);
# an implementation may use them only on the opt-in fast paths (``fast=True``), which the
# fast-path tests check against the written-out ones. Each entry is a torch function or module
# path; a call matches when the function, or a torch frame it went through, is that name or lies
# under it (``torch.nn.modules.normalization`` covers ``nn.LayerNorm`` and ``nn.RMSNorm``).

_LINEAR = ("torch.nn.functional.linear", "torch.nn.functional.bilinear", "torch.nn.modules.linear", "torch.addmm")
_EMBEDDING = ("torch.nn.functional.embedding", "torch.embedding", "torch.nn.modules.sparse")
_NORM = ("torch.nn.functional.layer_norm", "torch.nn.functional.rms_norm", "torch.nn.functional.group_norm",
         "torch.layer_norm", "torch.rms_norm", "torch.native_layer_norm", "torch.nn.modules.normalization")
_ACTIVATIONS = ("torch.nn.functional.relu", "torch.nn.functional.gelu", "torch.nn.functional.silu",
                "torch.nn.functional.glu", "torch.relu", "torch.Tensor.relu", "torch.nn.modules.activation")
_SOFTMAX = ("torch.nn.functional.softmax", "torch.softmax", "torch.Tensor.softmax", "torch.nn.modules.activation")
_ATTENTION = ("torch.nn.functional.scaled_dot_product_attention",
              "torch.nn.functional.multi_head_attention_forward", *_SOFTMAX)
_LOSS = ("torch.nn.functional.cross_entropy", "torch.nn.functional.nll_loss", "torch.nn.functional.log_softmax",
         "torch.log_softmax", "torch.Tensor.log_softmax", "torch.nn.modules.loss",
         "torch.logsumexp", "torch.Tensor.logsumexp")   # the z-loss oracle
_MODEL = (*_LINEAR, *_EMBEDDING, *_NORM, *_ACTIVATIONS, *_ATTENTION, *_LOSS, "torch.nn.modules.transformer")
_OPTIM = ("torch.optim.adamw", "torch.optim.adam", "torch.optim._functional", "torch.optim.lr_scheduler",
          "torch.nn.utils.clip_grad")

ORACLES: dict[str, tuple[str, ...]] = {
    "tokenizer": (),
    "linear": _LINEAR,
    "embedding": _EMBEDDING,
    "positional": _EMBEDDING,
    "norm": _NORM,
    "feedforward": (*_LINEAR, *_ACTIVATIONS),
    "attention": (*_LINEAR, *_ATTENTION),
    "loss": _LOSS,
    "model": _MODEL,
    "data": (),
    "corpus": (),
    "optim": _OPTIM,
    "checkpoint": (*_MODEL, *_OPTIM),
    "train": (*_MODEL, *_OPTIM),
    "distributed": (*_MODEL, *_OPTIM),
    "generate": (*_MODEL, *_SOFTMAX),
    "lora": (*_MODEL, *_OPTIM),
    "quantize": _MODEL,
}

def _spec_compiles(component: str) -> bool:
    """Whether the component's spec runs ``torch.compile`` (it has ``test_compiled_*`` tests, the
    ones the oracle watch exempts): dynamo patches ``torch.nn.Module.__init__`` (its generation
    tagging) on the first compile, so such a graded process installs that patch before it
    snapshots torch; any other change still shows."""
    path = SPEC_DIR / f"test_{component}.py"
    return path.exists() and "def test_compiled_" in path.read_text(encoding="utf-8")


#: What a submission may not import while it is graded.
FORBIDDEN_IMPORTS = ("reference", "kata", "bare_lm.mutants", "bare_lm.mutate")

DEFAULT_POINTS = 10.0
DEFAULT_TEST_TIMEOUT_S = 60.0          # CPU seconds per test
DEFAULT_COMPONENT_TIMEOUT_S = 1800.0   # wall-clock seconds per component: the last resort
WALL_BACKSTOP = 10                     # a test's wall-clock limit, in multiples of its CPU limit
CPU_LIMIT_MARK = "bare-lm-grade: CPU time limit"
PROFILE = "grade"


# --- the rubric -----------------------------------------------------------------------------------

@dataclass
class Rubric:
    """Points per component, split evenly over its tests unless ``weights`` say otherwise.

    TOML::

        default_points = 10          # a component the file does not name
        visibility = "visible"       # Gradescope's: visible, hidden, after_due_date, after_published

        [components.norm]
        points = 20
        [components.norm.weights]    # optional: relative weight of a test (by function name)
        test_fast_path_equals_written_out = 2
    """

    default_points: float = DEFAULT_POINTS
    points: dict[str, float] = field(default_factory=dict)
    weights: dict[str, dict[str, float]] = field(default_factory=dict)
    visibility: str = "visible"

    @classmethod
    def load(cls, path: str | Path | None) -> "Rubric":
        if path is None:
            return cls()
        try:
            data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"rubric {path}: {err}") from None
        from spec_tests.components import COMPONENTS
        components = data.get("components", {})
        unknown = sorted(set(components) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"rubric {path}: unknown components {unknown} (known: {', '.join(COMPONENTS)})")
        rubric = cls(default_points=float(data.get("default_points", DEFAULT_POINTS)),
                     visibility=str(data.get("visibility", "visible")))
        for name, section in components.items():
            if "points" in section:
                rubric.points[name] = float(section["points"])
            rubric.weights[name] = {k: float(v) for k, v in section.get("weights", {}).items()}
        return rubric

    def points_of(self, component: str) -> float:
        return self.points.get(component, self.default_points)

    def weight_of(self, component: str, test: str) -> float:
        return self.weights.get(component, {}).get(test.split("[")[0], 1.0)


# --- grading (the parent process) -------------------------------------------------------------------

def grade(submission: str | Path, *, components: list[str] | None = None, rubric: Rubric | None = None,
          test_timeout: float = DEFAULT_TEST_TIMEOUT_S, component_timeout: float = DEFAULT_COMPONENT_TIMEOUT_S,
          progress=None) -> dict:
    """Grade ``submission`` (a directory); returns the grade as data (see ``write``)."""
    from spec_tests.components import COMPONENTS
    from spec_tests.plugin import spec_version

    import torch

    source = Path(submission)
    if not source.is_dir():
        raise ValueError(f"submission {submission}: not a directory (give the directory with its modules)")
    components = list(components or COMPONENTS)
    unknown = [c for c in components if c not in COMPONENTS]
    if unknown:
        raise ValueError(f"unknown components {unknown} (known: {', '.join(COMPONENTS)})")
    rubric = rubric or Rubric()
    start = time.perf_counter()
    graded = []
    with tempfile.TemporaryDirectory(prefix="bare-lm-grade-") as tmp:
        work = Path(tmp).resolve()
        copy = work / "submission"
        shutil.copytree(source, copy, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis",
                                                                     ".pytest_cache", ".git"))
        (work / "pytest.ini").write_text("[pytest]\n")
        for component in components:
            if progress:
                progress(f"grading {component}...")
            result = _grade_component(component, work, copy, test_timeout, component_timeout)
            _score(result, rubric)
            graded.append(result)
            if progress:
                progress(f"  {component}: {result['score']:g} / {result['max_score']:g}  {result['reason']}")
    return {"submission": source.resolve().name, "spec_version": spec_version(), "profile": PROFILE,
            "torch": torch.__version__, "python": platform.python_version(),
            "score": round(sum(c["score"] for c in graded), 4),
            "max_score": round(sum(c["max_score"] for c in graded), 4),
            "duration_s": round(time.perf_counter() - start, 2),
            "test_timeout_s": test_timeout, "component_timeout_s": component_timeout,
            "components": graded}


def _grade_component(component: str, work: Path, copy: Path, test_timeout: float, component_timeout: float) -> dict:
    spec = SPEC_DIR / f"test_{component}.py"
    deadline = time.perf_counter() + component_timeout
    start = time.perf_counter()
    collected: list[str] | None = None
    results: dict[str, dict] = {}
    problems: dict[str, list[dict]] = {"tamper": [], "import": [], "oracle": []}
    notes: list[str] = []
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            break
        events_path = work / f"{component}.{attempt}.events.jsonl"
        cmd = [sys.executable, "-c", "import sys; from bare_lm.grade import child_main; sys.exit(child_main())",
               str(events_path), str(copy), component,
               str(spec), "--impl", str(copy), "-p", "_hypothesis_pytestplugin", "-p", "pytest_timeout",
               "-p", "spec_tests.plugin", "-p", "no:cacheprovider", "-c", str(work / "pytest.ini"),
               "--rootdir", str(work), "--confcutdir", str(SPEC_DIR), f"--hypothesis-profile={PROFILE}",
               "-q", "--no-header", "-rN", f"--timeout={WALL_BACKSTOP * test_timeout:g}", "--timeout-method=thread",
               "--timeout-disable-debugger-detection", f"--bare-lm-cpu-limit={test_timeout:g}"]
        for nodeid in results:
            cmd += ["--deselect", nodeid]
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("BARE_LM_", "PYTEST_", "HYPOTHESIS_", "PYTHON"))}
        # The spec this grader belongs to comes first on the path, installed or not.
        env.update(PYTHONPATH=str(SPEC_DIR.parent), PYTHONHASHSEED="0", OMP_NUM_THREADS="1",
                   MKL_NUM_THREADS="1", BARE_LM_THREADS="1", PYTEST_DISABLE_PLUGIN_AUTOLOAD="1")
        killed = False
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env=env, timeout=remaining)
            output = proc.stdout + proc.stderr
        except subprocess.TimeoutExpired as err:
            killed = True
            output = _text(err.stdout) + _text(err.stderr)
        events = _read_events(events_path)
        for event in events:
            kind = event["event"]
            if kind == "collected" and collected is None:
                collected = event["nodeids"]
            elif kind == "result":
                results[event["nodeid"]] = event
            elif kind in problems:
                if event not in problems[kind]:
                    problems[kind].append(event)
        started = [e["nodeid"] for e in events if e["event"] == "start" and e["nodeid"] not in results]
        if collected is None:  # pytest stopped before running anything: say why
            notes.append(_last_lines(output, work))
            break
        if not started:  # every selected test reported: done
            break
        hung = started[0]
        where = _stuck_at(output, work)
        if killed:
            detail = f"ran over the component's time limit of {component_timeout:g} s{where}"
        elif CPU_LIMIT_MARK in output:
            detail = f"ran over the time limit of {test_timeout:g} CPU seconds per test (an infinite loop?){where}"
        elif "Timeout" in output:
            detail = (f"ran over the wall-clock limit of {WALL_BACKSTOP * test_timeout:g} s per test without "
                      f"using its CPU time (waiting for something that never comes?){where}")
        else:
            detail = f"the test ended the Python process (exit code {proc.returncode}){where}"
        results[hung] = {"nodeid": hung, "status": "timeout", "detail": detail, "duration_s": 0.0}
        if killed:
            break
    for nodeid in collected or []:
        if nodeid not in results:
            results[nodeid] = {"nodeid": nodeid, "status": "not run",
                               "detail": f"not run: the component ran over its time limit of {component_timeout:g} s",
                               "duration_s": 0.0}
    tests = [_clean_result(results[n], work) for n in (collected or [])]
    return {"component": component, "tests": tests, "problems": problems, "notes": notes,
            "duration_s": round(time.perf_counter() - start, 2)}


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def _read_events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    events = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            events.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line cut by a kill
    return events


def _sanitize(text: str, work: Path) -> str:
    """Outputs name the submission as ``submission/...``, never the temporary directory."""
    text = text.replace(str(work) + os.sep, "").replace(str(work), ".")
    return re.sub(r"bare_lm_impl_submission_[0-9a-f]{8}", "submission", text)


def _stuck_at(output: str, work: Path) -> str:
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', output)
    inside = [f for f in frames if f[0].startswith(str(work / "submission"))]
    if not inside:
        return ""
    file, line, name = inside[-1]
    return f" (at {_sanitize(file, work)}:{line} in {name})"


def _last_lines(output: str, work: Path) -> str:
    lines = [line for line in _sanitize(output, work).strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or ["pytest collected nothing"])[-1].strip()


def _clean_result(result: dict, work: Path) -> dict:
    nodeid = result["nodeid"]
    return {"test": nodeid.split("::", 1)[-1], "status": result["status"],
            "detail": _sanitize(result.get("detail") or "", work),
            "duration_s": result.get("duration_s", 0.0)}


def _score(result: dict, rubric: Rubric) -> None:
    """Points per test, and the component's one-line reason."""
    component = result["component"]
    tests = result["tests"]
    graded = [t for t in tests if t["status"] != "skipped"]
    max_score = rubric.points_of(component)
    total_weight = sum(rubric.weight_of(component, t["test"]) for t in graded)
    reason, disqualified = _reason(result)
    earned = 0.0
    for t in tests:
        share = 0.0 if t["status"] == "skipped" or not total_weight else \
            max_score * rubric.weight_of(component, t["test"]) / total_weight
        t["max_score"] = round(share, 4)
        t["score"] = t["max_score"] if t["status"] == "passed" and not disqualified else 0.0
        earned += share if t["status"] == "passed" and not disqualified else 0.0
    result["max_score"] = round(max_score, 4)
    result["score"] = round(earned, 4)
    result["passed"] = sum(t["status"] == "passed" for t in tests)
    result["total"] = len(graded)
    result["reason"] = reason
    result["disqualified"] = disqualified


def _reason(result: dict) -> tuple[str, bool]:
    """One line saying why the component got its points; True when it gets none whatever passed."""
    problems = result["problems"]
    if problems["tamper"]:
        what = ", ".join(sorted({e["what"] for e in problems["tamper"]}))
        return (f"not graded: the submission replaces {what} (the spec and torch must be the originals)", True)
    if problems["import"]:
        e = problems["import"][0]
        return (f"not graded: the submission imports {e['name']}{_at(e)} (a submission must be its own code)",
                True)
    if problems["oracle"]:
        e = problems["oracle"][0]
        others = sorted({o["name"] for o in problems["oracle"]} - {e["name"]})
        also = f" (also: {', '.join(others)})" if others else ""
        return (f"failed: the written-out path calls {e['name']}{_at(e)}, an oracle the contract forbids there "
                f"(only fast=True may use it){also}", True)
    tests = result["tests"]
    if not tests:
        return (f"not graded: {result['notes'][0] if result['notes'] else 'no test ran'}", True)
    broken = next((t for t in tests if t["status"] == "broken"), None)
    if broken:
        return f"does not import: {broken['detail'].splitlines()[0].strip()}", False
    graded = [t for t in tests if t["status"] != "skipped"]
    passed = sum(t["status"] == "passed" for t in graded)
    if passed == len(graded):
        return f"all {len(graded)} tests pass", False
    timeout = next((t for t in tests if t["status"] in ("timeout", "not run")), None)
    if timeout:
        return f"{passed} of {len(graded)} tests pass; {timeout['test']}: {timeout['detail']}", False
    if all(t["status"] in ("not started", "passed", "skipped") for t in tests):
        return (f"not started" if passed == 0 else f"{passed} of {len(graded)} tests pass; the rest not started",
                False)
    failed = next(t for t in tests if t["status"] == "failed" or t["status"] not in ("passed", "skipped"))
    first = failed["detail"].splitlines()[0].removeprefix("Property: ") if failed["detail"] else failed["status"]
    return f"{passed} of {len(graded)} tests pass; first failure: {failed['test']} ({first})", False


def _at(event: dict) -> str:
    return f" at {event['where']}" if event.get("where") else ""


# --- outputs -----------------------------------------------------------------------------------------

def gradescope(report: dict, rubric: Rubric | None = None) -> dict:
    """Gradescope's ``results.json``: one test per component, the overall score, the run's metadata."""
    visibility = (rubric or Rubric()).visibility
    tests = []
    for c in report["components"]:
        lines = [c["reason"]]
        for t in c["tests"]:
            if t["status"] not in ("passed", "skipped") and not c["disqualified"]:
                first = t["detail"].splitlines()[0] if t["detail"] else ""
                lines.append(f"- {t['test']}: {t['status']}{': ' + first if first and first != t['status'] else ''}")
        failure = next((t["detail"] for t in c["tests"] if t["status"] == "failed"), None)
        if failure and not c["disqualified"]:
            lines += ["", failure]
        tests.append({"name": c["component"], "score": c["score"], "max_score": c["max_score"],
                      "output": "\n".join(lines), "visibility": visibility})
    return {"score": report["score"], "max_score": report["max_score"], "execution_time": report["duration_s"],
            "output": f"Bare-LM spec {report['spec_version']}: {report['score']:g} / {report['max_score']:g}",
            "visibility": visibility, "stdout_visibility": "hidden",
            "extra_data": _metadata(report), "tests": tests}


def _metadata(report: dict) -> dict:
    return {"submission": report["submission"], "spec_version": report["spec_version"],
            "profile": report["profile"], "torch": report["torch"], "python": report["python"],
            "duration_s": report["duration_s"],
            "component_duration_s": {c["component"]: c["duration_s"] for c in report["components"]}}


def csv_row(report: dict) -> dict:
    row = {"submission": report["submission"], "score": report["score"], "max_score": report["max_score"]}
    row.update({c["component"]: c["score"] for c in report["components"]})
    row.update({"spec_version": report["spec_version"], "profile": report["profile"], "torch": report["torch"],
                "python": report["python"], "duration_s": report["duration_s"],
                "reasons": "; ".join(f"{c['component']}: {c['reason']}" for c in report["components"]
                                     if c["score"] < c["max_score"])})
    return row


def write(report: dict, out: str | Path, csv_path: str | Path | None = None, rubric: Rubric | None = None) -> None:
    """``out/results.json`` (Gradescope), ``out/grade.json`` (everything), a row of the roster CSV."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(gradescope(report, rubric), indent=1))
    (out / "grade.json").write_text(json.dumps(report, indent=1))
    path = Path(csv_path) if csv_path else out / "grades.csv"
    row = csv_row(report)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


# --- the graded process (the child) -----------------------------------------------------------------

class _ImportBlocker(importlib.abc.MetaPathFinder):
    """Refuses ``reference``, ``kata`` and the mutant catalogue; tells the guard who asked."""

    def __init__(self, guard: "_Guard"):
        self.guard = guard

    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in FORBIDDEN_IMPORTS):
            self.guard.event("import", name=name.split(".")[0] if not name.startswith("bare_lm") else name,
                             where=self.guard.submission_frame())
            raise ModuleNotFoundError(f"No module named {name!r} (a graded submission may not import it)",
                                      name=name)
        return None


class _Guard:
    """The pytest plugin of the graded process: events, integrity checks, the oracle watch."""

    def __init__(self, events_path: str, submission: str, component: str):
        import torch
        self.torch_dir = str(Path(torch.__file__).resolve().parent) + os.sep
        self.root = str(Path(submission).resolve()) + os.sep
        self.component = component
        self.forbidden = ORACLES.get(component, ())
        self.events = open(events_path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - lives as long as the run
        self.reported: set[str] = set()
        if _spec_compiles(component):
            import torch._dynamo.mutation_guard
            torch._dynamo.mutation_guard.install_generation_tagging_init()
        self._snapshot = _snapshot(_watched_modules())
        self._watch = _make_watch(self) if self.forbidden else None

    def event(self, kind: str, **data) -> None:
        self.events.write(json.dumps({"event": kind, **data}) + "\n")

    def submission_frame(self, depth: int = 2) -> str:
        frame = sys._getframe(depth)
        while frame is not None:
            if frame.f_code.co_filename.startswith(self.root):
                return f"submission/{frame.f_code.co_filename[len(self.root):]}:{frame.f_lineno}"
            frame = frame.f_back
        return ""

    def check_integrity(self, when: str) -> None:
        for what in _changed(self._snapshot):
            if what not in self.reported:
                self.reported.add(what)
                self.event("tamper", what=what, when=when)

    # pytest hooks
    import pytest as _pytest

    @_pytest.hookimpl(trylast=True)
    def pytest_configure(self, config):
        self.check_integrity("after importing the submission")

    def pytest_collection_finish(self, session):
        from spec_tests.plugin import is_spec_item
        modules = {item.module for item in session.items if is_spec_item(item)}
        self._snapshot.update(_snapshot({m.__name__: m for m in modules}))
        self.event("collected", nodeids=[item.nodeid for item in session.items if is_spec_item(item)])

    def pytest_runtest_logstart(self, nodeid, location):
        self.event("start", nodeid=nodeid)

    def pytest_runtest_setup(self, item):
        import torch
        torch.manual_seed(0)

    @_pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        from spec_tests.plugin import is_fast_path_test
        if self._watch is None or is_fast_path_test(item):
            yield
            return
        self.current = item.nodeid
        with self._watch():
            yield

    @_pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_teardown(self, item):
        yield
        self.check_integrity(f"after {item.nodeid.split('::', 1)[-1]}")

    def pytest_runtest_logfinish(self, nodeid, location):
        from spec_tests import plugin
        state = plugin._state(self.config) if hasattr(self, "config") else None
        rows = [r for r in (state.results if state else []) if r["nodeid"] == nodeid]
        row = rows[-1] if rows else {"status": "failed", "detail": "no outcome recorded", "duration_s": 0.0}
        self.event("result", nodeid=nodeid, status=row["status"] or "failed", detail=row["detail"],
                   duration_s=row["duration_s"])

    def pytest_sessionstart(self, session):
        self.config = session.config

    del _pytest


def _make_watch(guard: _Guard):
    """A TorchFunctionMode factory: it records the forbidden torch functions the submission calls."""
    from torch.overrides import TorchFunctionMode

    import torch
    import torch.nn.functional as F

    aliases: dict = {}
    for namespace, prefix in ((torch, "torch"), (F, "torch.nn.functional")):
        for name, obj in vars(namespace).items():
            if callable(obj) and not isinstance(obj, type) and not name.startswith("__"):
                try:
                    aliases[obj] = f"{prefix}.{name}"
                except TypeError:  # unhashable
                    pass
    matches: dict[str, str | None] = {}
    modules: dict = {}
    forbidden = guard.forbidden
    torch_dir, root = guard.torch_dir, guard.root

    def name_of(func) -> str:
        try:
            return aliases[func]
        except (KeyError, TypeError):
            pass
        qual = getattr(func, "__qualname__", getattr(func, "__name__", repr(func)))
        if qual.startswith(("TensorBase.", "Tensor.")):
            return "torch.Tensor." + qual.split(".", 1)[1]
        return f"{getattr(func, '__module__', None) or 'torch'}.{qual}"

    def match(name: str) -> str | None:
        if name not in matches:
            matches[name] = next((f for f in forbidden if name == f or name.startswith(f + ".")), None)
        return matches[name]

    def module_of(code) -> str:
        if code not in modules:
            rel = code.co_filename[len(torch_dir):].removesuffix(".py").replace(os.sep, ".")
            modules[code] = "torch." + rel.removesuffix(".__init__")
        return modules[code]

    class Watch(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            frame = sys._getframe(1)
            chain = []
            while frame is not None and frame.f_code.co_filename.startswith(torch_dir):
                chain.append(frame.f_code)
                frame = frame.f_back
            if frame is not None and frame.f_code.co_filename.startswith(root):
                hit = match(name_of(func))
                for code in chain:
                    if hit:
                        break
                    hit = match(f"{module_of(code)}.{code.co_name}")
                if hit:
                    where = f"submission/{frame.f_code.co_filename[len(root):]}:{frame.f_lineno}"
                    key = f"{hit}@{where}"
                    if key not in guard.reported:
                        guard.reported.add(key)
                        guard.event("oracle", name=hit, where=where, test=getattr(guard, "current", ""))
            return func(*args, **(kwargs or {}))

    return Watch


def _watched_modules() -> dict:
    """The modules whose functions a submission must not replace: torch's, the spec's, this grader's."""
    import _pytest.python
    import _pytest.reports
    import _pytest.runner
    import hypothesis
    import pytest

    import torch
    import torch.nn.functional
    import torch.optim
    import torch.testing

    import spec_tests.components
    import spec_tests.impl
    import spec_tests.plugin
    import spec_tests.support
    modules = {m.__name__: m for m in (torch, torch.nn.functional, torch.nn.init, torch.optim, torch.testing,
                                         torch.autograd, spec_tests.components, spec_tests.impl, spec_tests.plugin,
                                         spec_tests.support, hypothesis, pytest, _pytest.runner, _pytest.reports,
                                         _pytest.python, sys.modules[__name__])}
    classes = {"torch.Tensor": torch.Tensor, "torch.nn.Module": torch.nn.Module,
               "torch.optim.Optimizer": torch.optim.Optimizer, "torch.optim.AdamW": torch.optim.AdamW,
               "torch.Generator": torch.Generator, "spec_tests.impl.Implementation": spec_tests.impl.Implementation,
               "spec_tests.plugin._State": spec_tests.plugin._State, "_pytest.reports.TestReport":
               _pytest.reports.TestReport, "bare_lm.grade._Guard": _Guard, "hypothesis.settings": hypothesis.settings}
    return {**modules, **classes}


def _snapshot(objects: dict) -> dict:
    """(what, name) -> the object, or the repr of plain data (a tolerance table changed in place shows)."""
    snap = {}
    for label, obj in objects.items():
        if isinstance(obj, type(sys)):
            snap[("module", label)] = (sys.modules.get(label), None)
        data = vars(obj)
        # Plain data too (a tolerance table changed in place) in the harness; the test modules keep
        # caches of their own, so only their functions are checked.
        plain_data = label in _DATA_CHECKED
        for name, value in list(data.items()):
            if name.startswith("__") and name not in ("__call__", "__init__", "__torch_function__"):
                continue
            if callable(value) or isinstance(value, (staticmethod, classmethod, property, type(sys))):
                snap[(label, name)] = (value, None)
            elif plain_data and isinstance(value, (int, float, str, bytes, tuple, list, dict, frozenset, set)):
                snap[(label, name)] = (value, repr(value))
        snap[("object", label)] = (obj, None)
    return snap


def _changed(snap: dict) -> list[str]:
    changed = []
    for (label, name), (value, text) in snap.items():
        if label == "module":
            now = sys.modules.get(name)
            if now is not value:
                changed.append(f"sys.modules[{name!r}]")
            continue
        if label == "object":
            continue
        owner = snap[("object", label)][0]
        current = vars(owner).get(name, _MISSING)
        if current is not value and _torch_wrapper_of(current, value):
            snap[(label, name)] = (current, text)  # torch wraps some of its functions on first use
            continue
        if current is not value or (text is not None and repr(current) != text):
            changed.append(f"{label}.{name}")
    return changed


def _torch_wrapper_of(new, old) -> bool:
    """torch itself re-binds a few functions on a lazy import (``torch._dynamo`` wraps
    ``torch.manual_seed``): a wrapper whose code is torch's and whose ``__wrapped__`` is the original."""
    import torch
    code = getattr(new, "__code__", None)
    return (getattr(new, "__wrapped__", None) is old and code is not None
            and Path(code.co_filename).resolve().is_relative_to(Path(torch.__file__).resolve().parent))


_MISSING = object()
_DATA_CHECKED = ("spec_tests.support", "spec_tests.components", "spec_tests.impl", "spec_tests.plugin", __name__)


def child_main(argv: list[str] | None = None) -> int:
    """Entry of the graded process: ``EVENTS SUBMISSION COMPONENT PYTEST_ARGS...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    events, submission, component, pytest_args = argv[0], argv[1], argv[2], argv[3:]
    for name in list(sys.modules):
        if any(name == b or name.startswith(b + ".") for b in FORBIDDEN_IMPORTS):
            del sys.modules[name]
    import pytest

    import spec_tests.plugin  # noqa: F401 - imported before the snapshot, so it is checked too
    guard = _Guard(events, submission, component)
    sys.meta_path.insert(0, _ImportBlocker(guard))
    return int(pytest.main(pytest_args, plugins=[guard, _CpuLimit()]))


class _CpuLimit:
    """The graded process's per-test limit in CPU seconds (``--bare-lm-cpu-limit``).

    A watchdog thread reads the process's CPU time (every thread's, ``time.process_time``) while a
    test runs; past the limit it prints every thread's stack (the parent finds the submission's
    line in it) and ends the process, as pytest-timeout's thread method does with wall time. The
    parent then records that test as timed out and runs the rest in a new process."""

    def __init__(self):
        self.limit = None
        self.started: float | None = None
        self.config = None
        self.lock = __import__("threading").Lock()

    def pytest_addoption(self, parser):
        parser.addoption("--bare-lm-cpu-limit", type=float, default=None, help="CPU seconds per test")

    def pytest_configure(self, config):
        self.limit = config.getoption("--bare-lm-cpu-limit")
        self.config = config
        if self.limit:
            import threading
            threading.Thread(target=self._watch, name="bare-lm-cpu-limit", daemon=True).start()

    import pytest as _pytest

    @_pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_protocol(self, item, nextitem):
        with self.lock:
            self.started = time.process_time()
        try:
            yield
        finally:
            with self.lock:
                self.started = None

    def _watch(self) -> None:
        import threading
        import traceback
        me = threading.get_ident()
        while True:
            time.sleep(0.2)
            with self.lock:
                over = self.started is not None and time.process_time() - self.started > self.limit
            if over:
                stacks = ["".join(traceback.format_stack(frame)) for ident, frame in sys._current_frames().items()
                          if ident != me]  # most recent call last, as the parent reads them
                capture = self.config.pluginmanager.getplugin("capturemanager")
                if capture is not None:  # back to the real stderr, as pytest-timeout does
                    capture.suspend_global_capture(in_=True)
                sys.stderr.write(f"\n{CPU_LIMIT_MARK} of {self.limit:g} s per test\n" + "\n".join(stacks))
                sys.stderr.flush()
                os._exit(1)
