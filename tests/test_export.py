"""Self-tests of the installed flows, in one fresh virtual environment (slow: about 3 minutes).

1. The spec as a pytest plugin: after a plain (non-editable) ``pip install`` of the project, an
   implementation in another directory passes ``pytest --pyargs spec_tests --impl ./my_impl``.
2. ``bare-lm kata export``: the student repository has no reference and no mutants; installed in
   the same environment (after uninstalling the full project), ``pytest --impl kata`` reads every
   component *not started*, and its spec passes against a reference copied in from outside.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bare_lm import export

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=900):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory):
    """A fresh virtual environment with the project installed from a copy of its source, not editable."""
    base = tmp_path_factory.mktemp("installed")
    source = base / "source"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv*", ".git", "__pycache__", "*.egg-info",
                                                                  "build", "runs", ".hypothesis", ".benchmarks"))
    env_dir = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    proc = _run([env_dir / "bin" / "pip", "install", "-q", str(source)], cwd=base)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    shutil.rmtree(source)  # nothing may come from the source tree from now on
    return env_dir


def test_spec_is_a_pytest_plugin_after_a_plain_install(venv, tmp_path):
    """`pytest --pyargs spec_tests --impl ./my_impl` passes, from a directory that holds only the implementation."""
    shutil.copytree(ROOT / "reference", tmp_path / "my_impl", ignore=shutil.ignore_patterns("__pycache__"))
    report = tmp_path / "progress.json"
    proc = _run([venv / "bin" / "python", "-m", "pytest", "--pyargs", "spec_tests", "--impl", "./my_impl",
                 "-m", "linear or norm", "-q", "-p", "no:cacheprovider", "--progress-json", report], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(report.read_text())
    assert data["impl_root"] == str((tmp_path / "my_impl").resolve())
    assert {c: v["state"] for c, v in data["components"].items()} == {"linear": "done", "norm": "done"}
    contract = _run([venv / "bin" / "python", "-c", "import spec_tests, pathlib; "
                     "p = pathlib.Path(spec_tests.__file__).parent; print((p / 'contract' / 'norm.md').exists())"],
                    cwd=tmp_path)
    assert contract.stdout.strip() == "True", "the contract ships with the package"


def test_exported_kata_is_a_standalone_student_repository(venv, tmp_path):
    """The export holds no solution; installed alone, its kata reads not started and its spec passes a reference."""
    repo = export.export(tmp_path / "student")
    files = {p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file()}
    assert not any(f.startswith(("reference/", "bare_lm/")) for f in files), sorted(files)[:20]
    assert "spec_tests/CONTRACT.md" in files and "kata/norm.py" in files and "README.md" in files
    pip = venv / "bin" / "pip"
    assert _run([pip, "uninstall", "-y", "-q", "bare-lm"], cwd=tmp_path).returncode == 0
    proc = _run([pip, "install", "-q", str(repo)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    python = venv / "bin" / "python"
    solution = _run([python, "-c", "import reference"], cwd=tmp_path)
    assert solution.returncode != 0, "the student environment must not hold the reference"

    kata_report = tmp_path / "kata.json"
    proc = _run([python, "-m", "pytest", "--impl", "kata", "-q", "-p", "no:cacheprovider",
                 "--progress-json", kata_report], cwd=repo)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-2000:]
    data = json.loads(kata_report.read_text())
    assert data["impl_root"] == str((repo / "kata").resolve()), "the student's own kata/ is the one tested"
    states = {c: v["state"] for c, v in data["components"].items()}
    assert set(states.values()) == {"not started"}, states
    assert "Next: tokenizer:" in proc.stdout

    shutil.copytree(ROOT / "reference", repo / "my_solution", ignore=shutil.ignore_patterns("__pycache__"))
    proc = _run([python, "-m", "pytest", "--impl", "my_solution", "-q", "-p", "no:cacheprovider"], cwd=repo)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "Next: nothing: every component's spec passes." in proc.stdout
