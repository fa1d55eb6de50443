"""Finding and loading the implementation under test.

An implementation is a package or a plain directory with one module per component (``norm.py``,
``feedforward.py``, ...). It is chosen with ``pytest --impl NAME_OR_PATH`` or the environment variable
``BARE_LM_IMPL``; the default is ``reference``. Tests reach it only through the ``impl`` fixture.

- a path to a directory loads that directory as a package (it may lack ``__init__.py``), so a
  copied implementation works wherever it lies, as long as its modules import each other
  relatively (``from .norm import LayerNorm``);
- ``kata`` is the working directory's ``kata/`` when there is one (a learner's clone), else the
  one beside ``spec_tests/``; ``reference`` is the one beside ``spec_tests/``;
- anything else is imported as a dotted module name (``my_lab.my_impl``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
import traceback
import types
from pathlib import Path

ENV_VAR = "BARE_LM_IMPL"
DEFAULT = "reference"
REPO_ROOT = Path(__file__).resolve().parent.parent


class ComponentMissing(NotImplementedError):
    """The implementation has no module for a component: reported as "not started"."""


class ComponentBroken(Exception):
    """A module of the implementation does not import (syntax error, failing import, error at import).

    ``location`` is the file and line of the learner's error; ``summary`` one line saying what it is.
    """

    def __init__(self, component: str, error: BaseException, root: Path | None):
        self.component = component
        self.error = error
        file, line, source = _error_site(error, root)
        self.location = f"{_show(file)}:{line}" if file else component
        kind = type(error).__name__
        message = getattr(error, "msg", None) if isinstance(error, SyntaxError) else str(error)
        self.summary = f"{self.location}: {kind}: {message}"
        self.source = source
        super().__init__(self.summary)

    def report(self) -> str:
        lines = [self.summary]
        if self.source:
            lines.append(f"    {self.source.strip()}")
        lines.append(f"{self.component}: this module does not import, so no test that needs it can run "
                     f"(they read 'blocked'); fix this first.")
        return "\n".join(lines)


def _error_site(error: BaseException, root: Path | None) -> tuple[str | None, int | None, str | None]:
    """The file, line and source line of an import error, preferring the implementation's own files."""
    if isinstance(error, SyntaxError) and error.filename:
        return error.filename, error.lineno, error.text
    frames = traceback.extract_tb(error.__traceback__)
    inside = [f for f in frames if root is not None and Path(f.filename).is_relative_to(root)]
    frame = (inside or frames or [None])[-1]
    if frame is None:
        return None, None, None
    return frame.filename, frame.lineno, frame.line


def _show(file: str) -> str:
    try:
        return os.path.relpath(file)
    except ValueError:
        return file


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
                raise ComponentBroken(name, err, self.root) from err
            raise ComponentMissing(
                f"the implementation at {self.root} has no module '{name}' "
                f"(create {name}.py; the contract is in spec_tests/CONTRACT.md)"
            ) from None
        except NotImplementedError:
            raise
        except Exception as err:  # noqa: BLE001 - a syntax error or any error while importing
            raise ComponentBroken(name, err, self.root) from err

    def __repr__(self) -> str:
        return f"Implementation({self.spec!r} at {self.root})"


def _load_package(spec: str) -> tuple[types.ModuleType, Path | None]:
    path = Path(spec).expanduser()
    # `--impl kata` in a learner's clone means that clone's kata/, not the installed one.
    if spec == "reference" and (REPO_ROOT / spec).is_dir() or spec == "kata" and not path.is_dir() \
            and (REPO_ROOT / spec).is_dir():
        return _load_directory(REPO_ROOT / spec), REPO_ROOT / spec
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
    """The implementation asked for; without one, ``reference`` (or ``kata`` where no reference ships)."""
    default = DEFAULT if (REPO_ROOT / DEFAULT).is_dir() else "kata"
    return cli_value or os.environ.get(ENV_VAR) or default
