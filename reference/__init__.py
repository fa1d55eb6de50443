"""Bare-LM's reference implementation: a small decoder-only language model, one component per module.

Every module follows the contract in ``spec_tests/CONTRACT.md`` and passes the spec in ``spec_tests/``.
Modules import each other relatively, so a copy of this directory is itself an implementation.
"""
