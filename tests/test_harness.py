"""Self-tests of the spec's machinery: choosing implementations, the mutant catalogue, the CLI."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from spec_tests.components import COMPONENTS
from bare_lm.mutants import all_mutants

ROOT = Path(__file__).resolve().parent.parent


def _pytest(*args, cwd=ROOT):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          capture_output=True, text=True, cwd=cwd)


def test_copied_reference_directory_passes(tmp_path):
    """A copy of reference/ anywhere, given by path, passes the spec (modules import relatively)."""
    copy = tmp_path / "my_impl"
    shutil.copytree(ROOT / "reference", copy, ignore=shutil.ignore_patterns("__pycache__"))
    proc = _pytest(str(ROOT / "spec_tests" / "test_norm.py"), str(ROOT / "spec_tests" / "test_feedforward.py"),
                   "--impl", str(copy), cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert str(copy) in proc.stdout or "my_impl" in proc.stdout


def test_environment_variable_and_dotted_name(tmp_path):
    """BARE_LM_IMPL chooses the implementation; a dotted package name works too."""
    import os
    env = {**os.environ, "BARE_LM_IMPL": "reference"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", str(ROOT / "spec_tests" / "test_linear.py"),
                           "--impl", "reference"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:]


def test_bad_impl_is_a_usage_error(tmp_path):
    """--impl naming nothing importable is a usage error that says so, not a crash in every test."""
    proc = _pytest(str(ROOT / "spec_tests" / "test_linear.py"), "--impl", "no_such_package_xyz", cwd=tmp_path)
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert "no_such_package_xyz" in proc.stderr


def test_mutants_apply_once_and_have_specs():
    """Every mutant's edit applies exactly once to its reference file, and its spec exists."""
    names = [m.name for m in all_mutants()]
    assert len(names) == len(set(names)), "mutant names must be unique"
    for m in all_mutants():
        text = (ROOT / "reference" / m.file).read_text()
        assert text.count(m.old) == 1, f"{m.name}: 'old' occurs {text.count(m.old)} times in {m.file}"
        assert m.old != m.new, m.name
        for component in m.components:
            assert component in COMPONENTS and (ROOT / "spec_tests" / f"test_{component}.py").exists(), m.name


def test_every_spec_file_is_a_component():
    """Each spec file is named after a component, so the table and -m COMPONENT see it."""
    for path in (ROOT / "spec_tests").glob("test_*.py"):
        assert path.stem.removeprefix("test_") in COMPONENTS, path.name


def test_cli_help():
    proc = subprocess.run([sys.executable, "-m", "bare_lm.cli", "--help"], capture_output=True, text=True,
                          cwd=ROOT)
    assert proc.returncode == 0 and "status" in proc.stdout, proc.stderr


def test_reference_is_the_implementation_alone():
    """reference/ imports nothing from the spec, the benchmarks or the tooling: it is what a learner
    compares with and what an instructor strips, nothing more."""
    import ast
    for path in sorted((ROOT / "reference").rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            for name in names:
                top = name.split(".")[0]
                assert top not in ("spec_tests", "benchmarks", "bare_lm", "kata"), \
                    f"{path.relative_to(ROOT)} imports {name}"


# --- learner-facing output -------------------------------------------------------------------------

def _planted(tmp_path, name, edits):
    path = tmp_path / name
    shutil.copytree(ROOT / "reference", path, ignore=shutil.ignore_patterns("__pycache__"))
    for file, old, new in edits:
        text = (path / file).read_text()
        assert text.count(old) == 1, (file, old)
        (path / file).write_text(text.replace(old, new))
    return path


def test_syntax_error_is_one_short_report(tmp_path):
    """A module that does not import gives one report with its file and line; its other tests read blocked."""
    impl = _planted(tmp_path, "impl", [("norm.py", "    def forward(self, x: torch.Tensor) -> torch.Tensor:\n"
                                                   "        checks.tensor(\"x\", x, min_dim=1, last_dim=self.d_model, "
                                                   "floating=True)\n        if self.fast and x.dtype == self.weight."
                                                   "dtype:\n            return F.layer_norm",
                                        "    def forward(self, x: torch.Tensor) -> torch.Tensor\n"
                                        "        checks.tensor(\"x\", x, min_dim=1, last_dim=self.d_model, "
                                        "floating=True)\n        if self.fast and x.dtype == self.weight."
                                        "dtype:\n            return F.layer_norm")])
    proc = _pytest(str(ROOT / "spec_tests" / "test_norm.py"), "--impl", str(impl), cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert proc.stdout.count("ERROR at setup") == 1, proc.stdout  # one report, not one per test
    assert "impl/norm.py:44: SyntaxError" in proc.stdout and "Property:" not in proc.stdout
    collected = _pytest(str(ROOT / "spec_tests" / "test_norm.py"), "--collect-only", "-q", cwd=tmp_path).stdout
    n_tests = int(re.search(r"test_norm\.py: (\d+)", collected).group(1))  # "-q -q": one count per file
    assert f"{n_tests - 1} blocked" in proc.stdout, proc.stdout  # every other norm test
    assert "Next: norm: fix impl/norm.py:44: SyntaxError" in proc.stdout


def test_fast_path_is_blocked_by_a_failing_written_out_path(tmp_path):
    """A wrong written-out LayerNorm fails its own tests; the fast-path test reads 'blocked by' it, and plain
    asserts print no pytest introspection (`+ where <built-in ...>`)."""
    impl = _planted(tmp_path, "impl", [
        ("norm.py", "torch.sqrt(var + self.eps)).to(x.dtype)", "(torch.sqrt(var) + self.eps)).to(x.dtype)"),
        ("norm.py", "        self.weight = nn.Parameter(torch.ones(d_model))                  # (C,)",
         "        self.weight = nn.Parameter(torch.ones(d_model) * 2)              # (C,)")])
    proc = _pytest(str(ROOT / "spec_tests" / "test_norm.py"), "--impl", str(impl), "--hypothesis-profile=ci",
                   cwd=tmp_path)
    assert proc.returncode == 1
    assert "blocked by test_" in proc.stdout and "1 blocked" in proc.stdout, proc.stdout[-3000:]
    assert "test_fast_path_equals_written_out - " not in proc.stdout
    assert "+ where" not in proc.stdout and " at 0x" not in proc.stdout, proc.stdout
    assert "LayerNorm.weight must start as ones" in proc.stdout


def test_next_names_the_next_component(tmp_path):
    """One component's spec passing ends with the next component in curriculum order."""
    proc = _pytest(str(ROOT / "spec_tests" / "test_linear.py"), cwd=tmp_path)
    assert proc.returncode == 0
    assert "Next: embedding:" in proc.stdout, proc.stdout[-1000:]


def test_readable_parameter_ids():
    """Parametrized spec tests have ids a learner can read and select with -k (no `<lambda>`, no `words3`)."""
    proc = _pytest("--co", str(ROOT / "spec_tests" / "test_tokenizer.py"), "-k", "bad_tokenizer_data")
    assert "<lambda>" not in proc.stdout and "words" not in proc.stdout, proc.stdout
    assert "update(merges=abc)-merges" in proc.stdout, proc.stdout


def test_assert_equal_names_the_first_difference():
    """support.assert_equal points at the first differing index of long sequences and tensors."""
    import pytest
    import torch
    from spec_tests.support import assert_equal
    expected = list(range(200))
    got = expected[:120] + [7] + expected[121:]
    with pytest.raises(AssertionError, match=r"first difference at index 120: expected 120, got 7"):
        assert_equal(got, expected, what="ids")
    with pytest.raises(AssertionError, match=r"got has 1 more, from index 3"):
        assert_equal([1, 2, 3, 4], [1, 2, 3], what="ids")
    with pytest.raises(AssertionError, match=r"first at index \(1, 0\): expected 5, got 3"):
        assert_equal(torch.tensor([[1, 2], [3, 4]]), torch.tensor([[1, 2], [5, 4]]), what="ids")


def test_status_tests_the_working_directorys_kata_and_passes_pytest_options(tmp_path):
    """`bare-lm status` in a clone tests that clone's kata/, and hands -x and --progress-json to pytest."""
    shutil.copytree(ROOT / "kata", tmp_path / "kata", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "reference" / "linear.py", tmp_path / "kata" / "linear.py")
    report = tmp_path / "status.json"
    proc = subprocess.run([sys.executable, "-m", "bare_lm.cli", "status", "-c", "linear", "-c", "norm", "-x",
                           "--progress-json", str(report)], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    import json
    data = json.loads(report.read_text())
    assert data["impl_root"] == str((tmp_path / "kata").resolve())
    assert data["components"]["linear"]["state"] == "done"
    assert data["components"]["norm"]["not started"] == 1, "-x stops at the first not-started test"
    assert data["profile"] and data["spec_version"] and data["torch"]


def test_failure_screen_in_status_shows_property_and_input_once(tmp_path):
    """`bare-lm status` prints a failure's Property and Input lines, once each."""
    impl = _planted(tmp_path, "impl", [("linear.py", "            y = y + self.bias", "            y = y")])
    proc = subprocess.run([sys.executable, "-m", "bare_lm.cli", "status", "--impl", str(impl), "-c", "linear"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 1
    screen = proc.stdout.split(" test_equals_torch_linear _")[1].split("\n____")[0].split("=====")[0]
    assert screen.count("Property: Linear(x) equals torch.nn.functional.linear") == 1, proc.stdout
    assert screen.count("Input (shrunk by hypothesis)") == 1, proc.stdout


def test_plugin_is_idle_in_unrelated_projects(tmp_path):
    """Installed as a pytest11 entry point, the plugin neither imports torch nor changes hypothesis' profile
    nor reorders tests in a project that has no spec tests (even one with a test_norm.py)."""
    from importlib.metadata import entry_points
    import pytest
    if not [e for e in entry_points(group="pytest11") if e.name == "spec_tests.plugin"]:
        pytest.skip("the project is not installed with its pytest11 entry point (pip install -e .)")
    (tmp_path / "test_norm.py").write_text(
        "import sys\nfrom hypothesis import given, settings, strategies as st\n"
        "ORDER = []\n"
        "def test_b():\n    ORDER.append('b')\n"
        "def test_a():\n    ORDER.append('a')\n    assert ORDER == ['b', 'a']\n"
        "def test_untouched():\n    assert 'torch' not in sys.modules\n"
        "    assert settings().max_examples == 100, settings()\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "Bare-LM" not in proc.stdout and "bare-lm implementation" not in proc.stdout


def test_mutants_that_do_not_apply_to_other_code_are_not_failures(tmp_path):
    """`bare-lm mutants --source DIR`: a mutant whose edit is not in DIR's code is listed as not applying."""
    source = _planted(tmp_path, "mine", [("linear.py", "            y = y + self.bias", "            y += self.bias")])
    proc = subprocess.run([sys.executable, "-m", "bare_lm.cli", "mutants", "--source", str(source),
                           "--name", "linear-bias-dropped", "--name", "linear-init-std-1", "-j", "1"],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-1000:]
    assert "1 of 1 mutants caught" in proc.stdout
    assert "1 do not apply to this code" in proc.stdout and "linear-bias-dropped" in proc.stdout
    assert "NOT caught" not in proc.stdout


def test_plugin_leaves_other_projects_ids_alone(tmp_path):
    """Readable ids are the spec's own: another project's parametrized lambdas keep pytest's ids."""
    (tmp_path / "test_ids.py").write_text("import pytest\n@pytest.mark.parametrize('f', [lambda x: x])\n"
                                          "def test_f(f):\n    pass\n")
    proc = subprocess.run([sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider",
                           "-p", "spec_tests.plugin", str(tmp_path / "test_ids.py")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert "test_f[<lambda>]" in proc.stdout, proc.stdout


def test_plugin_registered_once_however_it_is_named():
    """The pytest11 entry point, the root conftest's pytest_plugins and -p all name `spec_tests.plugin`:
    pytest loads it once (twice would fail on the duplicate --impl option)."""
    proc = _pytest("-p", "spec_tests.plugin", "--co", str(ROOT / "spec_tests" / "test_linear.py"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test_equals_torch_linear" in proc.stdout


WARM_CATALOGUE = '''
import os, sys
from bare_lm import mutate
from bare_lm.mutants import Mutant, all_mutants

caught = next(m for m in all_mutants() if m.name == "linear-weight-in-out")
comment = Mutant("linear-comment-only", "linear.py", "a comment changes nothing observable",
                 "        return y\\n", "        return y  # the output\\n")
endless = Mutant("linear-forward-never-returns", "linear.py", "forward loops for ever",
                 "        return y\\n", "        while True:\\n            pass\\n")
mutate.all_mutants = lambda: [caught, comment, endless]
mutate.TIMEOUT_S = float(os.environ.get("MUTANT_TIMEOUT_S", "600"))
sys.exit(mutate.main(sys.argv[1:]))
'''


def _warm(*args: str, timeout_s: float = 600, caught_by: Path | None = None) -> subprocess.CompletedProcess:
    record = caught_by or Path(os.devnull)  # never the repository's own record
    return subprocess.run([sys.executable, "-c", WARM_CATALOGUE, *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "MUTANT_TIMEOUT_S": str(timeout_s), "BARE_LM_CAUGHT_BY": str(record)})


def _lines(out: str) -> dict[str, str]:
    return {line.split()[1]: line for line in out.splitlines() if line[:3] in ("ok ", "!! ")}


def test_spec_imported_before_its_profile_is_refused():
    """A tool that imports a spec module before the hypothesis profile is loaded leaves its
    ``@settings`` tests with hypothesis's 200 ms deadline (a slow example then fails correct code):
    the plugin refuses such a run instead of giving its verdicts."""
    code = ("import sys, pytest, spec_tests.test_generate\n"
            "sys.exit(pytest.main(['spec_tests/test_generate.py', '-q', '-p', 'no:cacheprovider']))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 4, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "test_generate.py imported before the hypothesis profile was loaded" in proc.stderr, proc.stderr[-2000:]


def test_warm_catalogue_runner_classifies_caught_and_survived():
    """`bare-lm mutants` (the warm forking executor): a real mutant is caught by the test that
    fails, an edit that changes nothing observable SURVIVED (exit 1), and every mutant gets its seconds."""
    proc = _warm("-j", "2", "--name", "linear-weight-in-out", "--name", "linear-comment-only")
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-2000:]
    lines = _lines(out)
    assert lines["linear-weight-in-out"].split()[2] == "caught", out
    assert "test_linear.py::" in lines["linear-weight-in-out"], out
    assert lines["linear-comment-only"].split()[2] == "SURVIVED", out
    assert all(" s " in line for line in lines.values()), out
    assert "1 of 2 mutants caught" in out
    assert "NOT caught: linear-comment-only" in out


def test_warm_catalogue_runner_runs_the_recorded_catcher_first(tmp_path):
    """The test that caught a mutant last time runs first (a caught mutant then costs one test),
    and the run records which test caught it. The order changes the time, never the verdict."""
    record = tmp_path / "caught_by.json"
    later = "test_linear.py::test_gradients_reach_every_parameter"  # not the spec's first failing test
    record.write_text(json.dumps({"linear-weight-in-out": later}))
    proc = _warm("--name", "linear-weight-in-out", caught_by=record)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-2000:]
    assert _lines(out)["linear-weight-in-out"].split()[-1] == later, out
    record.write_text("not json")  # an unreadable record only costs time
    proc = _warm("--name", "linear-weight-in-out", caught_by=record)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    caught_by = _lines(proc.stdout)["linear-weight-in-out"].split()[-1]
    assert json.loads(record.read_text()) == {"linear-weight-in-out": caught_by}


def test_warm_catalogue_runner_stops_an_endless_mutant_at_its_timeout():
    """A mutant whose spec never ends (an endless loop) is killed at the per-mutant timeout: TIMEOUT, exit 1
    (the loop never returns, so the verdict holds however loaded the machine is)."""
    proc = _warm("--name", "linear-forward-never-returns", timeout_s=3)
    out = proc.stdout
    assert proc.returncode == 1, out[-3000:] + proc.stderr[-2000:]
    assert _lines(out)["linear-forward-never-returns"].split()[2] == "TIMEOUT", out
    assert "NOT caught: linear-forward-never-returns" in out


def test_warm_catalogue_runner_lists_without_running():
    """`bare-lm mutants --list` lists the chosen mutants and runs nothing."""
    proc = _warm("--list")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert [line.split()[0] for line in proc.stdout.splitlines()] == \
        ["linear-weight-in-out", "linear-comment-only", "linear-forward-never-returns"]
