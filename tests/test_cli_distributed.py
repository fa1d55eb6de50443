"""Self-tests of ``bare-lm train --nproc N`` and of ``bare-lm train`` under torchrun: the launch, its
clear errors, and a run that crosses world sizes (2 processes, then 1) as the README shows it."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from .test_cli_train import ENV, ROOT, RUN, cli, data, one_thread, train, weights  # noqa: F401 (fixtures)


def test_nproc_that_does_not_divide_the_batch_is_one_clear_line(data, tmp_path):
    status, _, err = train(data, tmp_path / "run", "--nproc", "3")
    assert status == 2, err
    assert "--nproc" in err and "[1, 2, 4]" in err and "Traceback" not in err, err


def test_nproc_below_one_is_refused(data, tmp_path):
    status, _, err = train(data, tmp_path / "run", "--nproc", "0")
    assert status == 2 and "--nproc must be >= 1" in err, err


def test_torchrun_variables_without_a_rendezvous_are_one_clear_line(data, tmp_path, monkeypatch):
    """Launched as a torchrun process (WORLD_SIZE set) without MASTER_ADDR / MASTER_PORT: exit 2
    naming them, no traceback, nothing written."""
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    status, _, err = train(data, tmp_path / "run")
    assert status == 2, err
    assert "MASTER_ADDR" in err and "torchrun" in err and "Traceback" not in err, err
    assert not torch.distributed.is_initialized()
    assert not (tmp_path / "run" / "checkpoint").exists()


@pytest.mark.timeout(600)
def test_two_processes_then_one_resume(data, tmp_path):
    """``--nproc 2 --stop-after 3`` then ``--resume`` in one process: every step logged once, the
    validation loss of a one-process run with the same global batch (within float32 rounding)."""
    cmd = [sys.executable, "-m", "bare_lm.cli", "train", "--data", str(data), *RUN, "--steps", "6"]
    two = subprocess.run([*cmd, "--out", str(tmp_path / "ddp"), "--nproc", "2", "--stop-after", "3"], cwd=ROOT,
                         env=ENV, capture_output=True, text=True, timeout=500)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-3000:]
    assert "process group of 2 ranks, backend gloo" in two.stdout, two.stdout[-2000:]
    assert "resume with:" in two.stdout and "--nproc 2" in two.stdout, two.stdout[-2000:]
    status, out, err = train(data, tmp_path / "ddp", "--resume", "--steps", "6")
    assert status == 0, err
    status, single, err = train(data, tmp_path / "one", "--steps", "6")
    assert status == 0, err
    steps = [json.loads(line)["step"] for line in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6], steps
    got, expected = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    worst = max(float((got[k] - expected[k]).abs().max()) for k in expected)
    assert worst < 5e-5, f"2 processes + 1 process vs 1 process: weights differ by {worst}"
