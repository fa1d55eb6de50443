"""The flake check (bare_lm/flake.py) counts failures per test over runs in separate processes."""

from __future__ import annotations

from bare_lm import flake


def test_failures_are_counted_per_test_over_concurrent_runs(tmp_path, capsys):
    """Three runs, two at a time: a test that always fails is counted 3 times, one that passes never;
    the exit status is 1."""
    spec = tmp_path / "test_fake.py"
    spec.write_text("def test_fails():\n    assert False\n\n\ndef test_passes():\n    pass\n")
    assert flake.run(3, "default", [str(spec)], ["--rootdir", str(tmp_path)], seed=1, jobs=2) == 1
    out = capsys.readouterr().out
    (line,) = [row for row in out.splitlines() if row.startswith("test_fake.py::test_fails")]
    assert "3/3" in line
    assert "test_passes" not in out


def test_only_the_specs_profiles_are_accepted(capsys):
    """Hypothesis's own "default" profile keeps a 200 ms deadline: the check refuses it by name and
    lists the spec's profiles, instead of silently measuring the machine's load."""
    import pytest
    with pytest.raises(SystemExit) as exit_info:
        flake.main(["--profile", "default", "--runs", "1"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--profile" in err and "'default'" in err and "'dev'" in err and "'thorough'" in err
