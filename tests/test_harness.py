"""Self-tests of the spec's machinery: choosing implementations, the mutant catalogue, the CLI."""

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
