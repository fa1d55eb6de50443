# The spec's pytest plugin (--impl, hypothesis profiles, the progress table): spec_tests/plugin.py.
# Registered here, at the root, so that `pytest --impl kata` works from a checkout that is not installed.
# An installed project registers it as the pytest11 entry point "spec_tests.plugin": the same name,
# so pytest loads it once.
pytest_plugins = ["spec_tests.plugin"]
