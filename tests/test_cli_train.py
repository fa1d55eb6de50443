"""Self-tests of ``bare-lm train`` / ``generate`` / ``tokenizer train`` as a user meets them: runs are
never lost or overwritten, resume is honest (bit-identical), bad input is one clear line.

Most runs go through ``bare_lm.cli.main`` in this process (one torch start-up); signals, locks, pipes
and kill -9 need real subprocesses. Every run is tiny (batch 4, a dozen steps, 1 torch thread).
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bare_lm import soak
from bare_lm.cli import main

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
RUN = ["--config", "tiny", "--batch-size", "4", "--vocab-size", "262", "--eval-interval", "0",
       "--log-interval", "1", "--samples", "0", "--no-progress"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on a shared 2-core machine oversubscribed threads are 20x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return soak.write_corpus(tmp_path_factory.mktemp("data") / "data.jsonl")


def cli(*argv) -> tuple[int, str, str]:
    """``bare-lm ARGV`` in this process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main([str(a) for a in argv])
        except SystemExit as exit_:
            status = exit_.code
    return status, out.getvalue(), err.getvalue()


def train(data, out, *extra) -> tuple[int, str, str]:
    return cli("train", "--data", data, "--out", out, *RUN, *extra)


def spawn(data, out, *extra) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bare_lm.cli", "train", "--data", str(data), "--out", str(out), *RUN, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def weights(run: Path) -> dict:
    from reference.checkpoint import load_checkpoint
    return load_checkpoint(run / "checkpoint").model.state_dict()


def assert_same_weights(a: Path, b: Path):
    wa, wb = weights(a), weights(b)
    differ = [k for k in wb if not torch.equal(wa[k], wb[k])]
    assert not differ, f"{a} and {b} differ in {differ}"


def one_line_error(err: str, *words):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, f"expected one error line, got:\n{err}"
    for w in words:
        assert w in lines[0], f"the error should mention {w!r}: {lines[0]}"


def wait_for_step(log: Path, step: int, proc: subprocess.Popen, timeout: float = 120.0):
    """Poll until ``log`` records ``step`` (the process is then mid-run)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the trainer ended early: {proc.communicate()}")
        if step in soak.logged_steps(log):
            return
        time.sleep(0.05)
    raise AssertionError(f"step {step} never appeared in {log}")


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """An uninterrupted 8-step run: the reference for every resume test."""
    out = tmp_path_factory.mktemp("straight") / "run"
    status, _, err = train(data, out, "--steps", "8")
    assert status == 0, err
    return out


# --- runs are never overwritten -----------------------------------------------------------------

def test_fresh_run_over_an_existing_run_is_refused(data, straight, tmp_path):
    """A fresh run into a directory holding a run exits 2 and leaves its log and checkpoint alone."""
    log_before = (straight / "log.jsonl").read_bytes()
    ckpt_before = _files(straight / "checkpoint")
    status, _, err = train(data, straight, "--steps", "8")
    assert status == 2
    one_line_error(err, str(straight), "--resume", "--force")
    assert (straight / "log.jsonl").read_bytes() == log_before
    assert _files(straight / "checkpoint") == ckpt_before


def _files(directory):
    """Every file under ``directory`` with its bytes (whatever the checkpoint's inner layout)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_force_replaces_the_run(data, straight, tmp_path):
    """--force starts over: the result equals a fresh run in an empty directory."""
    out = tmp_path / "run"
    assert train(data, out, "--steps", "3")[0] == 0
    status, _, err = train(data, out, "--steps", "8", "--force")
    assert status == 0, err
    assert_same_weights(out, straight)
    assert soak.logged_steps(out / "log.jsonl") == list(range(1, 9))


def test_out_that_is_a_file(data, tmp_path):
    """--out naming a file is one error line naming it, exit 2."""
    f = tmp_path / "file"
    f.write_text("x")
    status, _, err = train(data, f, "--steps", "2")
    assert status == 2
    one_line_error(err, str(f), "not a run directory")


def test_second_trainer_fails_at_once_and_sigterm_saves(data, tmp_path):
    """While a trainer runs, a second one on the same --out exits 1 naming the lock; SIGTERM then
    makes the first save and exit 143 with the resume command."""
    out = tmp_path / "run"
    first = spawn(data, out, "--steps", "5000")
    try:
        wait_for_step(out / "log.jsonl", 2, first)
        status, _, err = train(data, out, "--steps", "5000", "--resume")
        assert status in (1, 2), err      # 2 when it finds no checkpoint yet to resume; else the lock
        status, _, err = train(data, out, "--steps", "5000", "--force")
        assert status == 1
        one_line_error(err, "in use", ".lock")
        first.send_signal(signal.SIGTERM)
        _, err = first.communicate(timeout=120)
    finally:
        first.kill()
    assert first.returncode == 143, err
    assert "resume with: bare-lm train --resume --out" in err
    from reference.checkpoint import load_checkpoint
    step = load_checkpoint(out / "checkpoint").step
    assert step >= 2 and soak.logged_steps(out / "log.jsonl")[-1] == step


# --- divergence -----------------------------------------------------------------------------------

def test_divergence_keeps_the_last_good_checkpoint(data, tmp_path):
    """lr 1e6: the run stops at the first non-finite loss/gradient before the update, exits 1 with one
    line naming the step and --lr, and the checkpoint left holds finite weights."""
    out = tmp_path / "run"
    status, _, err = train(data, out, "--steps", "30", "--lr", "1e6", "--min-lr", "0", "--warmup", "0",
                           "--checkpoint-every", "1")
    assert status == 1
    one_line_error(err, "diverged at step", "--lr")
    from reference.checkpoint import load_checkpoint
    ckpt = load_checkpoint(out / "checkpoint")
    assert all(bool(torch.isfinite(p).all()) for p in ckpt.model.parameters())
    diverged_at = int(err.split("diverged at step ")[1].split()[0])
    assert ckpt.step == diverged_at - 1, f"checkpoint at {ckpt.step}, diverged at {diverged_at}"


# --- honest resume ------------------------------------------------------------------------------

def test_stop_and_resume_is_bit_identical(data, straight, tmp_path):
    """README's claim: --steps 8 --stop-after 4, then --resume == --steps 8 in one go, bit for bit;
    the log holds every step once."""
    out = tmp_path / "run"
    status, stdout, err = train(data, out, "--steps", "8", "--stop-after", "4")
    assert status == 0, err
    assert "resume with: bare-lm train --resume" in stdout
    status, _, err = train(data, out, "--resume")
    assert status == 0, err
    assert_same_weights(out, straight)
    assert soak.logged_steps(out / "log.jsonl") == list(range(1, 9))


def test_sigint_saves_and_resume_is_bit_identical(data, tmp_path):
    """Ctrl-C mid-run: exit 130, a checkpoint, the exact resume command; running it ends bit-identical
    to the run done in one go, and the log holds every step once."""
    straight, out = tmp_path / "straight", tmp_path / "run"
    assert train(data, straight, "--steps", "60")[0] == 0
    proc = spawn(data, out, "--steps", "60", "--checkpoint-every", "0")
    try:
        wait_for_step(out / "log.jsonl", 2, proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    command = next(line for line in err.splitlines() if line.startswith("resume with: ")).split(": ", 1)[1]
    words = command.split()
    assert words[:3] == ["bare-lm", "train", "--resume"]
    from reference.checkpoint import load_checkpoint
    assert 2 <= load_checkpoint(out / "checkpoint").step < 60
    status, _, err = cli(*words[1:], "--no-progress", "--samples", "0")
    assert status == 0, err
    assert_same_weights(out, straight)
    assert soak.logged_steps(out / "log.jsonl") == list(range(1, 61))


def test_resume_with_other_steps_is_refused(data, tmp_path):
    """--steps 4, then --resume --steps 8 exits 2 (naming --steps and --extend); the checkpoint stays."""
    out = tmp_path / "run"
    assert train(data, out, "--steps", "4")[0] == 0
    status, _, err = train(data, out, "--resume", "--steps", "8")
    assert status == 2
    one_line_error(err, "--steps", "--extend")
    status, _, err = train(data, out, "--resume", "--lr", "1")
    assert status == 2
    one_line_error(err, "--lr")


def test_extend_continues_at_the_floor_lr(data, tmp_path):
    """--resume --extend --steps 6 after 4 steps: steps 5 and 6 log lr == --min-lr, and the weights equal
    a run of 6 steps whose schedule spans 4 (TrainConfig.schedule_steps=4)."""
    out = tmp_path / "run"
    assert train(data, out, "--steps", "4")[0] == 0
    status, _, err = train(data, out, "--resume", "--extend", "--steps", "6")
    assert status == 0, err
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5, 6]
    from reference.train import PRESETS
    assert [r["lr"] for r in records[4:]] == [PRESETS["tiny"]["train"]["min_lr"]] * 2
    from reference.checkpoint import load_checkpoint
    cfg = load_checkpoint(out / "checkpoint").train_config
    assert (cfg["steps"], cfg["schedule_steps"]) == (6, 4)


def test_resume_on_other_data_is_refused(data, tmp_path):
    """--resume with a different --data exits 2 naming --allow-new-data; with it the run continues."""
    out = tmp_path / "run"
    assert train(data, out, "--steps", "4", "--stop-after", "2")[0] == 0
    other = soak.write_corpus(tmp_path / "other.jsonl", seed=1)
    status, _, err = train(other, out, "--resume")
    assert status == 2
    one_line_error(err, "differs", "allow-new-data")
    status, _, err = train(other, out, "--resume", "--allow-new-data")
    assert status == 0, err


# --- failures that used to be tracebacks --------------------------------------------------------

def test_full_disk_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    """A write failing with ENOSPC at the second checkpoint: exit 1, one line saying the step-2
    checkpoint is kept, and that checkpoint still loads."""
    import reference.train as rt
    real_save = rt.save_checkpoint
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(kwargs.get("step"))
        if len(calls) < 2:
            return real_save(*args, **kwargs)

        def enospc(*a, **k):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        with monkeypatch.context() as m:
            m.setattr(os, "fsync", enospc)
            m.setattr(os, "replace", enospc)
            return real_save(*args, **kwargs)

    monkeypatch.setattr(rt, "save_checkpoint", full_disk)
    out = tmp_path / "run"
    status, _, err = train(data, out, "--steps", "6", "--checkpoint-every", "2")
    assert status == 1
    one_line_error(err, "could not write the checkpoint", "step 2 is kept")
    from reference.checkpoint import load_checkpoint
    assert load_checkpoint(out / "checkpoint").step == 2


def test_corrupt_token_cache_is_rebuilt(data, straight, tmp_path):
    """A truncated token cache gives a warning and a rebuild; the run equals one without the damage."""
    out = tmp_path / "run"
    assert train(data, out, "--steps", "1")[0] == 0
    caches = sorted((out / "tokens").glob("*.npz"))
    assert caches
    for f in caches:
        f.write_bytes(f.read_bytes()[:50])
    status, stdout, err = train(data, out, "--steps", "8", "--force")
    assert status == 0, err
    assert "token cache" in stdout and "rebuilding" in stdout
    assert_same_weights(out, straight)


def test_special_token_text_in_data(data, tmp_path):
    """A literal <|endoftext|> in the data: exit 2 naming FILE:LINE; --special-in-text text trains."""
    bad = tmp_path / "bad.jsonl"
    lines = data.read_text().splitlines()
    lines[2] = json.dumps({"text": "a cat <|endoftext|> a dog"})
    bad.write_text("\n".join(lines) + "\n")
    status, _, err = train(bad, tmp_path / "run", "--steps", "2")
    assert status == 2
    one_line_error(err, f"{bad}:3", "--special-in-text")
    status, _, err = train(bad, tmp_path / "run", "--steps", "2", "--special-in-text", "text")
    assert status == 0, err


def test_bad_data_file_is_one_line(tmp_path):
    """Invalid JSON in --data: one error line naming the file and the line; exit 2."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{"text": \n')
    status, _, err = train(bad, tmp_path / "run", "--steps", "2")
    assert status == 2
    one_line_error(err, str(bad), "line 2")


def test_tokenizer_train_keeps_crlf(tmp_path):
    """tokenizer train on a CRLF file equals Tokenizer.train on its exact text (CRLF kept)."""
    from reference.tokenizer import Tokenizer
    text = "hello world\r\nhello there\r\n" * 20
    f = tmp_path / "crlf.txt"
    f.write_bytes(text.encode())
    status, _, err = cli("tokenizer", "train", f, "--vocab-size", "270", "--out", tmp_path / "t.json", "--no-progress")
    assert status == 0, err
    assert Tokenizer.load(tmp_path / "t.json").to_dict() == Tokenizer.train(text, 270).to_dict()


def test_tokenizer_train_into_a_missing_directory(tmp_path):
    """tokenizer train --out into a missing directory fails before training, one line naming it."""
    f = tmp_path / "a.txt"
    f.write_text("some text " * 10)
    status, _, err = cli("tokenizer", "train", f, "--vocab-size", "260", "--out", tmp_path / "nope" / "t.json",
                         "--no-progress")
    assert status == 2
    one_line_error(err, str(tmp_path / "nope"), "does not exist")


def test_generate_into_a_closed_pipe_is_quiet(straight):
    """bare-lm generate ... | head -c 5: no traceback, exit 0."""
    cmd = (f"{sys.executable} -m bare_lm.cli generate --checkpoint {straight / 'checkpoint'} --prompt 'the cat' "
           f"--max-new-tokens 2000 --seed 0 | head -c 5 >/dev/null; echo ${{PIPESTATUS[0]}}")
    proc = subprocess.run(["bash", "-c", cmd], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "0" and "Traceback" not in proc.stderr, proc.stderr


def test_generate_special_token_text_in_prompt(straight):
    """A prompt holding <|endoftext|> is an error unless --allow-special."""
    ckpt = straight / "checkpoint"
    status, _, err = cli("generate", "--checkpoint", ckpt, "--prompt", "a<|endoftext|>b", "--max-new-tokens", "2")
    assert status == 2
    assert "--allow-special" in err
    status, _, err = cli("generate", "--checkpoint", ckpt, "--prompt", "a<|endoftext|>b", "--max-new-tokens", "2",
                         "--allow-special", "--seed", "0")
    assert status == 0, err


# --- soak -----------------------------------------------------------------------------------------

def test_soak_kill_9_and_resume(tmp_path):
    """kill -9 at 2 seeded random moments, resume each time: every checkpoint loads, the final weights
    equal an uninterrupted run's bit for bit (``python -m bare_lm.soak --kills 50`` for the long one)."""
    summary = soak.soak(kills=2, seed=0, steps=8, workdir=tmp_path, say=lambda *a: None)
    assert summary["bit_identical"]
