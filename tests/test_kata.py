"""Self-tests: the kata keeps the reference's contract, and the pristine kata passes no spec test."""

import ast
import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (ROOT / "reference").glob("*.py") if p.stem != "__init__")


def _public(module):
    return {name: obj for name, obj in vars(module).items()
            if not name.startswith("_") and getattr(obj, "__module__", module.__name__) == module.__name__
            and not inspect.ismodule(obj)}


def _signature(obj):
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return None


@pytest.mark.parametrize("name", MODULES)
def test_kata_has_the_reference_contract(name):
    """Every public name of a reference module exists in the kata module, with the same signature."""
    ref = importlib.import_module(f"reference.{name}")
    kata = importlib.import_module(f"kata.{name}")
    ref_names, kata_names = _public(ref), _public(kata)
    assert sorted(ref_names) == sorted(kata_names), f"{name}: public names differ"
    for attr, obj in ref_names.items():
        other = kata_names[attr]
        assert type(obj) is type(other) or (inspect.isclass(obj) and inspect.isclass(other)), f"{name}.{attr}"
        if inspect.isclass(obj):
            if issubclass(obj, Exception):
                assert issubclass(other, tuple(b for b in obj.__bases__)), f"{name}.{attr} bases"
                continue
            skip = {"extra_repr"}  # printing nicety of nn.Module, not part of the contract
            ref_members = {m for m in vars(obj) if (not m.startswith("_") or m == "__init__") and m not in skip}
            kata_members = {m for m in vars(other) if (not m.startswith("_") or m == "__init__") and m not in skip}
            assert ref_members == kata_members, f"{name}.{attr}: members differ"
            for member in ref_members:
                assert _signature(getattr(obj, member)) == _signature(getattr(other, member)), \
                    f"{name}.{attr}.{member}: signature differs"
        elif callable(obj):
            assert _signature(obj) == _signature(other), f"{name}.{attr}: signature differs"
        else:
            assert obj == other, f"{name}.{attr}: constant differs"


def test_checks_is_given_complete():
    """kata/checks.py is the reference's, unchanged (it is a given, not an exercise)."""
    assert (ROOT / "kata" / "checks.py").read_text() == (ROOT / "reference" / "checks.py").read_text()


@pytest.mark.parametrize("name", MODULES)
def test_kata_bodies_are_stubs(name):
    """Every kata function that the reference implements raises NotImplementedError and nothing else."""
    if name == "checks":
        return
    tree = ast.parse((ROOT / "kata" / f"{name}.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_") \
                or isinstance(node, ast.FunctionDef) and node.name == "__init__":
            raises = [n for n in ast.walk(node) if isinstance(n, ast.Raise)]
            text = ast.unparse(node)
            if "NotImplementedError" not in text and "property" not in ast.unparse(node.decorator_list):
                pytest.fail(f"kata/{name}.py: {node.name} has no NotImplementedError stub")
            assert raises, f"kata/{name}.py: {node.name} raises nothing"


def test_pristine_kata_passes_nothing(tmp_path):
    """Against the pristine kata, every spec test is 'not started' (or skipped): none passes, none crashes."""
    report = tmp_path / "kata.json"
    proc = subprocess.run([sys.executable, "-m", "pytest", str(ROOT / "spec_tests"), "--impl", "kata", "-q",
                           "-p", "no:cacheprovider", "--progress-json", str(report), "--hypothesis-profile=dev"],
                          capture_output=True, text=True, cwd=ROOT)
    results = json.loads(report.read_text())["results"]
    assert results, proc.stdout[-2000:]
    wrong = [f"{r['nodeid']}: {r['status']} {r['detail'][:200]}" for r in results
             if r["status"] not in ("not started", "skipped")]
    assert not wrong, "spec tests that do not read as 'not started' against the kata:\n" + "\n".join(wrong)
    assert "Traceback" not in proc.stdout, proc.stdout[-3000:]
