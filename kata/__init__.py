"""Bare-LM kata: the reference's modules with their bodies replaced by guided stubs.

Fill in one stub at a time and rerun ``pytest --impl kata``: the table at the end shows each
component's progress and the next thing to work on. ``checks.py`` is given complete.
"""
