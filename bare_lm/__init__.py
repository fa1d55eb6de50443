"""Bare-LM's tooling: the ``bare-lm`` command and what stands around the implementation.

``reference/`` is the implementation alone (what a learner compares with, what an instructor
strips); this package holds everything else that ships as a tool: the command line
(``bare_lm.cli``), the mutant catalogue and its runner (``bare_lm.mutants``, ``bare_lm.mutate``).
"""
