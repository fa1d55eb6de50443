"""``bare-lm kata export DIR``: a standalone student repository, without the solution.

The repository holds the kata stubs (``kata/``), the spec with its harness and contract
(``spec_tests/``), a root ``conftest.py`` (so ``pytest`` works before installing), a student
README and its own ``pyproject.toml`` (package ``bare-lm-kata``, the spec's ``pytest11`` entry
point). It holds no reference implementation, no mutant catalogue and no grader: an instructor
hands it out as it is and grades submissions with ``bare-lm grade`` from the full project.
"""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache")
#: Runtime dependencies the spec and the kata need (the benchmarks are not exported).
DROP = ("pytest-benchmark", "tqdm")

README = """\
# Bare-LM kata

Build a small decoder-only language model from tensor primitives, one component at a time, until
its executable specification passes. Each component is a module of `kata/` whose bodies are stubs
(`raise NotImplementedError("<hint>")`); the docstrings state the contract and the maths. The
spec (`spec_tests/`) checks every behaviour with properties (hypothesis draws the inputs) and
compares with torch's own building blocks where they exist.

## Setup

```bash
python3 -m venv .venv && . .venv/bin/activate && pip install -e .
pytest
```

The first run reads *not started* for every component and its last line names the first stub.

## Workflow

1. `pytest` (or `pytest --impl kata`): the progress table, in curriculum order, and `Next:`.
2. Open the stub that `Next:` names. `kata/checks.py` (argument validation) is given complete.
3. Fill it in and rerun that component's spec, e.g. `pytest spec_tests/test_linear.py`; read the
   failure (the property, the input hypothesis shrank it to, expected vs got, where it broke), fix,
   repeat until the component reads *done*. `Next:` then names the next component.
4. The opt-in `fast=True` paths (torch's fused kernels, which must give your written-out results)
   are a few lines each: leave them for last. Until the written-out path passes, their tests read
   *blocked*.

Useful options: `-x` (stop at the first failure), `-k NAME`, `-m norm` (one component),
`--tb=long` (pytest's full traceback), `--hypothesis-profile=ci` (more examples, derandomized).

## The contract

[`spec_tests/CONTRACT.md`](spec_tests/CONTRACT.md) lists the components in order, each with a
section in `spec_tests/contract/` giving every public name, signature, shape, dtype, default and
error. In a written-out path, torch's `nn.functional`, `nn` layers and `optim` are off limits:
they are the spec's oracles (a grader checks it); only the `fast=True` paths may call them.

## Submitting

Hand in the `kata/` directory (or a copy of it under another name). It is graded with the same
spec, derandomized, each component in its own process with a time limit.
"""


def export(dest: str | Path) -> Path:
    """Write the student repository to ``dest`` (absent or empty); returns its path."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ValueError(f"{dest}: exists and is not an empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(ROOT / "kata", dest / "kata", ignore=IGNORE, dirs_exist_ok=True)
    shutil.copytree(ROOT / "spec_tests", dest / "spec_tests", ignore=IGNORE, dirs_exist_ok=True)
    (dest / "conftest.py").write_text(
        "# The spec's pytest plugin, for `pytest` run in this directory before the project is installed.\n"
        "pytest_plugins = [\"spec_tests.plugin\"]\n")
    (dest / "README.md").write_text(README)
    (dest / ".gitignore").write_text("__pycache__/\n*.egg-info/\n.venv*/\n.hypothesis/\n.pytest_cache/\n/build/\n")
    (dest / "pyproject.toml").write_text(_pyproject())
    return dest


def _pyproject() -> str:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = [d for d in project["dependencies"] if not d.startswith(DROP)]
    test = project.get("optional-dependencies", {}).get("test", [])
    quoted = ",\n".join(f'    "{d}"' for d in deps)
    return f"""\
[build-system]
requires = ["setuptools>=64"]
build-backend = "setuptools.build_meta"

[project]
name = "bare-lm-kata"
version = "{project['version']}"
description = "The Bare-LM kata: build a small language model until its executable specification passes."
readme = "README.md"
requires-python = "{project['requires-python']}"
dependencies = [
{quoted},
]

[project.optional-dependencies]
# Peers used only as test oracles (their tests are skipped without them).
test = [{", ".join(f'"{d}"' for d in test)}]

[project.entry-points.pytest11]
"spec_tests.plugin" = "spec_tests.plugin"

[tool.setuptools.packages.find]
include = ["kata*", "spec_tests*"]

[tool.setuptools.package-data]
spec_tests = ["*.md", "contract/*.md"]

[tool.pytest.ini_options]
testpaths = ["spec_tests"]
filterwarnings = ["ignore::DeprecationWarning:torch.*"]
"""
