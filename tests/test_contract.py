"""Self-test: the contract documents every public name of every reference module."""

import importlib
import inspect
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MODULES = sorted(p.stem for p in (ROOT / "reference").glob("*.py") if p.stem not in ("__init__", "checks"))


@pytest.mark.parametrize("name", MODULES)
def test_every_public_name_is_documented(name):
    section = ROOT / "spec_tests" / "contract" / f"{name}.md"
    assert section.exists(), f"no contract section {section.relative_to(ROOT)} for reference/{name}.py"
    text = section.read_text()
    module = importlib.import_module(f"reference.{name}")
    missing = [attr for attr, obj in vars(module).items()
               if not attr.startswith("_") and not inspect.ismodule(obj)
               and getattr(obj, "__module__", module.__name__) == module.__name__ and attr not in text]
    assert not missing, f"contract/{name}.md does not mention: {missing}"
