"""Self-tests of ``bare-lm grade``: planted submissions (copies of reference/ with small edits) get the
right grade, with a one-line reason, and the same grade every time."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bare_lm import grade

ROOT = Path(__file__).resolve().parent.parent


def _submission(tmp_path, name="sub", edits=(), append=None, remove=()):
    """A copy of reference/ with ``edits`` (file, old, new) applied (each ``old`` exactly once)."""
    path = tmp_path / name
    shutil.copytree(ROOT / "reference", path, ignore=shutil.ignore_patterns("__pycache__"))
    for file, old, new in edits:
        text = (path / file).read_text()
        assert text.count(old) == 1, (file, old)
        (path / file).write_text(text.replace(old, new))
    for file, text in (append or {}).items():
        with (path / file).open("a") as f:
            f.write(text)
    for file in remove:
        (path / file).unlink()
    return path


def _component(report, name):
    return next(c for c in report["components"] if c["component"] == name)


def _without_times(data):
    if isinstance(data, dict):
        return {k: _without_times(v) for k, v in data.items()
                if not (k.endswith("duration_s") or k == "execution_time")}
    if isinstance(data, list):
        return [_without_times(v) for v in data]
    return data


def test_correct_submission_gets_full_marks_twice_identically(tmp_path):
    """The same correct submission graded twice: full marks, and identical output apart from durations."""
    sub = _submission(tmp_path)
    outputs = []
    for run in ("a", "b"):
        report = grade.grade(sub, components=["linear"])
        assert report["score"] == report["max_score"] == grade.DEFAULT_POINTS, report
        grade.write(report, tmp_path / run, tmp_path / "roster.csv")
        outputs.append({name: _without_times(json.loads((tmp_path / run / name).read_text()))
                        for name in ("results.json", "grade.json")})
    assert outputs[0] == outputs[1]
    results = outputs[0]["results.json"]
    assert set(results["tests"][0]) >= {"name", "score", "max_score", "output", "visibility"}
    assert results["extra_data"]["profile"] == "grade" and results["extra_data"]["spec_version"]
    rows = list(csv.DictReader((tmp_path / "roster.csv").open()))
    assert len(rows) == 2 and rows[0]["linear"] == rows[1]["linear"] == "10.0"
    assert {"spec_version", "profile", "torch", "python", "duration_s"} <= set(rows[0])


def test_forged_init_is_not_graded(tmp_path):
    """An __init__.py that replaces the spec's assert_close gets no points, and the reason says what it replaced."""
    sub = _submission(tmp_path, append={"__init__.py": "\nimport spec_tests.support as _s\n"
                                                        "_s.assert_close = lambda *a, **k: None\n"})
    report = grade.grade(sub, components=["linear"])
    linear = _component(report, "linear")
    assert linear["score"] == 0 and "spec_tests.support.assert_close" in linear["reason"], linear["reason"]
    assert "\n" not in linear["reason"]


def test_patched_torch_function_is_not_graded(tmp_path):
    """A submission that monkeypatches a torch function (here from its linear module) gets no points."""
    sub = _submission(tmp_path, append={"linear.py": "\nimport torch.nn.functional as _F\n"
                                                      "_F.linear = lambda x, w, b=None: x @ w.T\n"})
    linear = _component(grade.grade(sub, components=["linear"]), "linear")
    assert linear["score"] == 0 and "torch.nn.functional.linear" in linear["reason"], linear["reason"]


def test_oracle_in_written_out_path_fails_the_component(tmp_path):
    """A written-out LayerNorm that calls F.layer_norm fails 'norm', naming the function and the line."""
    sub = _submission(tmp_path, edits=[(
        "norm.py", "        h = _upcast(x)                                           # (..., C)\n",
        "        return F.layer_norm(x, (self.d_model,), self.weight, self.bias, self.eps)\n"
        "        h = _upcast(x)                                           # (..., C)\n")])
    norm = _component(grade.grade(sub, components=["norm"]), "norm")
    assert norm["score"] == 0, norm
    assert "torch.nn.functional.layer_norm" in norm["reason"] and "submission/norm.py:" in norm["reason"]


def test_import_of_the_reference_is_reported(tmp_path):
    """A submission that imports reference/ (instead of its own code) gets no points for that component."""
    sub = _submission(tmp_path, edits=[("linear.py", "from . import checks",
                                        "from . import checks\nfrom reference.linear import Linear as _L")])
    linear = _component(grade.grade(sub, components=["linear"]), "linear")
    assert linear["score"] == 0 and "imports reference" in linear["reason"], linear["reason"]


def test_infinite_loop_costs_its_tests_not_the_run(tmp_path):
    """A forward pass that never returns fails the tests that call it, by time limit; the rest is graded."""
    sub = _submission(tmp_path, edits=[("linear.py", "        y = x @ self.weight.T",
                                        "        while True:\n            pass\n        y = x @ self.weight.T")])
    report = grade.grade(sub, components=["linear"], test_timeout=2, component_timeout=60)
    linear = _component(report, "linear")
    statuses = {t["test"]: t["status"] for t in linear["tests"]}
    assert statuses["test_equals_torch_linear"] == "timeout" and statuses["test_parameter_shapes"] == "passed"
    assert 0 < linear["score"] < linear["max_score"]
    assert "limit of 2 CPU seconds" in linear["reason"] and "submission/linear.py:" in linear["reason"], \
        linear["reason"]


def test_waiting_is_not_counted_against_the_limit(tmp_path):
    """The per-test limit counts CPU seconds, not the wall clock: a submission that is slow because
    it waits (here a sleep in every Linear's constructor: several wall seconds per test, almost no
    CPU) keeps full marks under a 2 s limit, as it would on a loaded machine."""
    sub = _submission(tmp_path, edits=[("linear.py", "from . import checks", "import time\n\nfrom . import checks"),
                                       ("linear.py", "        self.weight = nn.Parameter(",
                                        "        time.sleep(0.15)\n        self.weight = nn.Parameter(")])
    linear = _component(grade.grade(sub, components=["linear"], test_timeout=2, component_timeout=300), "linear")
    assert linear["score"] == linear["max_score"], linear["reason"]


def test_a_test_that_waits_for_ever_is_stopped_by_the_wall_clock_backstop(tmp_path):
    """A forward pass that blocks without computing spends no CPU time: the wall-clock backstop
    (``WALL_BACKSTOP`` times the limit) stops it, with a reason that says so."""
    sub = _submission(tmp_path, edits=[("linear.py", "from . import checks", "import time\n\nfrom . import checks"),
                                       ("linear.py", "        y = x @ self.weight.T",
                                        "        time.sleep(10**6)\n        y = x @ self.weight.T")])
    linear = _component(grade.grade(sub, components=["linear"], test_timeout=1, component_timeout=300), "linear")
    statuses = {t["test"]: t["status"] for t in linear["tests"]}
    assert statuses["test_equals_torch_linear"] == "timeout" and statuses["test_parameter_shapes"] == "passed"
    assert "wall-clock limit of 10 s" in linear["reason"] and "submission/linear.py:" in linear["reason"], \
        linear["reason"]


def test_syntax_error_and_partial_submission(tmp_path):
    """A syntax error costs its component (reason: file, line, error); a missing module reads not started;
    points come from the rubric."""
    sub = _submission(tmp_path, edits=[("linear.py", "    def forward(self, x: torch.Tensor) -> torch.Tensor:",
                                        "    def forward(self, x: torch.Tensor) -> torch.Tensor")],
                      remove=["embedding.py"])
    rubric_path = tmp_path / "rubric.toml"
    rubric_path.write_text("[components.linear]\npoints = 4\n[components.embedding]\npoints = 6\n")
    report = grade.grade(sub, components=["linear", "embedding"], rubric=grade.Rubric.load(rubric_path))
    linear, embedding = _component(report, "linear"), _component(report, "embedding")
    assert linear["score"] == 0 and linear["max_score"] == 4
    assert "submission/linear.py:" in linear["reason"] and "SyntaxError" in linear["reason"], linear["reason"]
    assert embedding["score"] == 0 and embedding["max_score"] == 6 and embedding["reason"] == "not started"
    assert report["max_score"] == 10


def test_bad_rubric_is_a_clear_error(tmp_path):
    path = tmp_path / "rubric.toml"
    path.write_text("[components.nrom]\npoints = 3\n")
    with pytest.raises(ValueError, match="nrom"):
        grade.Rubric.load(path)


def test_grade_command(tmp_path):
    """`bare-lm grade SUB --out DIR` writes results.json, grade.json and grades.csv."""
    sub = _submission(tmp_path, remove=["linear.py"])
    proc = subprocess.run([sys.executable, "-m", "bare_lm.cli", "grade", str(sub), "-c", "linear",
                           "--out", str(tmp_path / "out"), "-q"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "0 / 10" in proc.stdout
    assert {p.name for p in (tmp_path / "out").iterdir()} == {"results.json", "grade.json", "grades.csv"}


@pytest.mark.slow
def test_reference_written_out_paths_use_no_oracle(tmp_path):
    """The whole reference gets full marks: its written-out paths never trip the oracle table."""
    report = grade.grade(ROOT / "reference")
    bad = [f"{c['component']}: {c['reason']}" for c in report["components"] if c["score"] != c["max_score"]]
    assert not bad, bad


def test_oracle_table_names_real_torch_functions():
    """Every entry of the oracle table is a torch function or module that exists (a typo would make it toothless)."""
    import importlib

    import torch
    for component, names in grade.ORACLES.items():
        for name in names:
            parts = name.split(".")
            obj = None
            for i in range(len(parts), 0, -1):  # the longest importable module, then attributes
                try:
                    obj = importlib.import_module(".".join(parts[:i]))
                except ImportError:
                    continue
                for attr in parts[i:]:
                    obj = getattr(obj, attr, None)
                break
            assert obj is not None, f"ORACLES[{component!r}]: {name} is not a torch name"
    assert torch  # imported for the names above
