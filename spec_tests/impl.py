"""Finding and loading the implementation under test.

An implementation is a package or a plain directory with one module per component (``norm.py``,
``feedforward.py``, ...). It is chosen with ``pytest --impl NAME_OR_PATH`` or the environment variable
``BARE_LM_IMPL``; the default is ``reference``. Tests reach it only through the ``impl`` fixture.

- ``reference`` and ``kata`` name the directories that ship beside ``spec_tests/``;
- a path to a directory loads that directory as a package (it may lack ``__init__.py``), so a
  copied implementation works wherever it lies, as long as its modules import each other
  relatively (``from .norm import LayerNorm``);
- anything else is imported as a dotted module name (``my_lab.my_impl``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

ENV_VAR = "BARE_LM_IMPL"
DEFAULT = "reference"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ComponentMissing(NotImplementedError):
    """The implementation has no module for a component: reported as "not started"."""


class Implementation:
    """The implementation under test; ``impl.component("norm")`` returns its ``norm`` module."""

    def __init__(self, spec: str):
        self.spec = spec
        self.package, self.root = _load_package(spec)
        self.name = self.package.__name__

    def component(self, name: str) -> types.ModuleType:
        try:
            return importlib.import_module(f"{self.name}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{self.name}.{name}":
                raise
            raise ComponentMissing(
                f"the implementation at {self.root} has no module '{name}' "
                f"(create {name}.py; the contract is in spec_tests/CONTRACT.md)"
            ) from None

    def __repr__(self) -> str:
        return f"Implementation({self.spec!r} at {self.root})"


def _load_package(spec: str) -> tuple[types.ModuleType, Path | None]:
    if spec in ("reference", "kata") and (REPO_ROOT / spec).is_dir():
        return _load_directory(REPO_ROOT / spec), REPO_ROOT / spec
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_directory(path), path.resolve()
    if os.sep in spec or spec.endswith(".py") or path.exists():
        raise ValueError(f"--impl {spec!r}: not a directory (give a package name or a directory path)")
    try:
        module = importlib.import_module(spec)
    except ImportError as err:
        raise ValueError(f"--impl {spec!r}: neither a directory nor an importable package ({err})") from None
    file = getattr(module, "__file__", None)
    return module, Path(file).resolve().parent if file else None


def _load_directory(path: Path) -> types.ModuleType:
    """Load a directory as a package under a name unique to its path (two copies never collide)."""
    path = path.resolve()
    name = "bare_lm_impl_" + path.name.replace("-", "_") + "_" + hashlib.sha1(str(path).encode()).hexdigest()[:8]
    if name in sys.modules:
        return sys.modules[name]
    init = path / "__init__.py"
    if init.exists():
        spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[str(path)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    else:
        module = types.ModuleType(name)
        module.__path__ = [str(path)]
        module.__file__ = None
        sys.modules[name] = module
    return module


def chosen(cli_value: str | None) -> str:
    return cli_value or os.environ.get(ENV_VAR) or DEFAULT
