"""The mutant catalogue: classic bugs, each a small edit of one reference file.

A mutant is proof that the spec bites: ``bare-lm mutants`` copies ``reference/``, applies one mutant,
runs that component's spec against the copy (``pytest --impl COPY``), and expects a failure. One
module per component (``mutants/norm.py``) holds a ``MUTANTS`` list.

To add one: find a line of the reference a learner could plausibly get wrong, write the wrong
version, and describe the bug in one line. ``old`` must occur exactly once in ``file``.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from spec_tests.components import COMPONENTS


@dataclass(frozen=True)
class Mutant:
    name: str          # unique, kebab-case: "layernorm-eps-outside-sqrt"
    file: str          # reference file to edit: "norm.py"
    description: str   # the bug, in one line, as a learner would make it
    old: str           # exact text of the reference, occurring once in `file`
    new: str           # what the bug writes instead
    specs: tuple[str, ...] = field(default=())  # components whose spec must catch it (default: file's)

    @property
    def components(self) -> tuple[str, ...]:
        return self.specs or (self.file.removesuffix(".py"),)


def all_mutants() -> list[Mutant]:
    """Every mutant, in curriculum order of the components."""
    mutants = []
    for component in COMPONENTS:
        try:
            module = importlib.import_module(f"{__name__}.{component}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{component}":
                raise
            continue
        mutants.extend(module.MUTANTS)
    return mutants
