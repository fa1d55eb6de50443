# The spec's pytest plugin (--impl, hypothesis profiles, the progress table): spec_tests/plugin.py.
# Registered here, at the root, so that `pytest --impl kata` works from any directory.
pytest_plugins = ["spec_tests.plugin"]
