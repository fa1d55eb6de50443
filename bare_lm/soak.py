"""Soak test of ``bare-lm train``: kill -9 at random moments, resume, and compare with a clean run.

    python -m bare_lm.soak --kills 50 [--seed 0] [--steps 30] [--dir DIR]

1. An uninterrupted run of ``--steps`` steps (checkpoint every step, tiny preset, a small seeded
   JSONL corpus) gives the reference weights.
2. The same run is started again and again in a second directory, each time killed with SIGKILL
   at a random moment (seeded): one kill in five during start-up (uniform over the clean run's
   time to its first logged step), the others once the run trains again (a step past its
   checkpoint is logged), uniform over 1.2 times the clean run's time from its first to its last
   logged step - so kills land in start-up,
   steps, log appends and checkpoint writes. It is started fresh (``--force``) while
   there is no checkpoint yet, with ``--resume`` afterwards. After every kill the checkpoint must
   load (``load_checkpoint``), or be absent before the first save, and every complete log line
   must parse. A run that reaches its last step is removed and started over, so the kills keep
   landing in live runs.
3. After ``--kills`` kills the run is resumed to its end. Its final weights must equal the
   reference's bit for bit, and its log must hold each logged step exactly once, as the clean run's.

Prints one line per kill and a summary; exit status 0 when every check holds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the cat sat on a mat and then ran to the big red house where it ate some fish while "
         "a small dog slept under an old tree").split()


def write_corpus(path: Path, n_docs: int = 120, seed: int = 0) -> Path:
    """A small seeded JSONL corpus (``{"text": ...}`` per line)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n_docs):
            f.write(json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 30)))}) + "\n")
    return path


def train_command(data: Path, out: Path, steps: int, *extra: str) -> list[str]:
    """The ``bare-lm train`` command of the soak run (tiny preset, checkpoint every step)."""
    return [sys.executable, "-m", "bare_lm.cli", "train", "--data", str(data), "--config", "tiny",
            "--steps", str(steps), "--batch-size", "4", "--vocab-size", "262", "--eval-interval", "0",
            "--log-interval", "1", "--checkpoint-every", "1", "--samples", "0", "--no-progress",
            "--out", str(out), *extra]


def weights(checkpoint: Path) -> dict:
    from reference.checkpoint import load_checkpoint
    return {k: v.clone() for k, v in load_checkpoint(checkpoint).model.state_dict().items()}


def logged_steps(log: Path) -> list[int]:
    """The steps of the complete records of a log (a torn last line is skipped)."""
    if not log.exists():
        return []
    steps = []
    for line in log.read_text(encoding="utf-8").splitlines(keepends=True):
        if line.endswith("\n"):
            steps.append(json.loads(line)["step"])
    return steps


def check_loadable(out: Path) -> int | None:
    """The step of the run's checkpoint (None before the first save); raises if it does not load."""
    from reference.checkpoint import load_checkpoint
    try:
        return load_checkpoint(out / "checkpoint").step
    except FileNotFoundError:
        return None


def _wait_for_log(log: Path, past: int, proc: subprocess.Popen, timeout: float = 600.0) -> float | None:
    """Wait until ``log`` records a step > ``past``; the time then, or None if ``proc`` ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if any(s > past for s in logged_steps(log)):
                return time.monotonic()
        except (ValueError, KeyError):
            pass                                # a line being written
        time.sleep(0.02)
    return None


def soak(kills: int, seed: int = 0, steps: int = 30, workdir: Path | None = None, say=print) -> dict:
    """Run the soak test (see the module docstring); returns a summary dict, raises AssertionError
    when a check fails."""
    rng = random.Random(seed)
    own = workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bare-lm-soak-")) if own else Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")  # 1 thread: no oversubscription
    try:
        data = write_corpus(workdir / "data.jsonl", seed=seed)
        clean, victim = workdir / "clean", workdir / "victim"
        for d in (clean, victim):
            shutil.rmtree(d, ignore_errors=True)
        t0 = time.monotonic()
        proc = subprocess.Popen(train_command(data, clean, steps), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        first = _wait_for_log(clean / "log.jsonl", 0, proc) or time.monotonic()
        last = _wait_for_log(clean / "log.jsonl", steps - 1, proc) or time.monotonic()
        _, err = proc.communicate()
        if proc.returncode:
            raise subprocess.CalledProcessError(proc.returncode, proc.args, stderr=err)
        startup, training = first - t0, max(last - first, 0.05) * 1.2   # 1.2: some kills land in the final save
        say(f"clean run: {steps} steps, start-up {startup:.1f} s, training {training:.1f} s")
        steps_seen, cycles = [], 0
        for k in range(kills):
            step = check_loadable(victim)
            cmd = train_command(data, victim, steps, "--resume" if step is not None else "--force")
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started = time.monotonic()
            if rng.random() < 0.2:
                phase, delay = "start-up", rng.uniform(0.0, startup)
            else:
                phase, delay = "training", rng.uniform(0.0, training)
                past = max([step or 0, *logged_steps(victim / "log.jsonl")])  # stale records do not count
                if _wait_for_log(victim / "log.jsonl", past, proc) is None:
                    phase = "start-up"           # it ended (or never trained) before the wait was over
            try:
                proc.wait(timeout=delay)
                finished = True
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                finished = False
            delay = time.monotonic() - started
            after = check_loadable(victim)          # raises when the checkpoint is unreadable
            logged_steps(victim / "log.jsonl")      # raises when a complete line does not parse
            steps_seen.append(after)
            say(f"kill {k + 1}/{kills} ({phase}): after {delay:.2f} s, checkpoint at step {after}"
                + (" (the run had finished)" if finished else ""))
            if after == steps:
                shutil.rmtree(victim)               # start over: there is nothing left to interrupt
                cycles += 1
        step = check_loadable(victim)
        subprocess.run(train_command(data, victim, steps, "--resume" if step is not None else "--force"),
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        a, b = weights(victim / "checkpoint"), weights(clean / "checkpoint")
        differ = [name for name in b if not bool((a[name] == b[name]).all())]
        assert not differ, f"the killed-and-resumed run differs from the clean run in {differ}"
        assert logged_steps(victim / "log.jsonl") == logged_steps(clean / "log.jsonl"), \
            "the resumed run's log does not hold each step exactly once"
        summary = {"kills": kills, "seed": seed, "steps": steps, "checkpoint_steps_after_kills": steps_seen,
                   "restarts": cycles, "bit_identical": True}
        say(f"soak: {kills} kills ({cycles} runs completed and restarted on the way), every checkpoint "
            f"loadable, final weights bit-identical to the clean run, log complete")
        return summary
    finally:
        if own:
            shutil.rmtree(workdir, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bare_lm.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=50, help="SIGKILLs before the final resume (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill delays and the corpus")
    parser.add_argument("--steps", type=int, default=30, help="steps of the run (default 30)")
    parser.add_argument("--dir", default=None, help="work directory (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    if args.kills < 0 or args.steps < 1:
        parser.error("--kills must be >= 0 and --steps >= 1")
    try:
        soak(args.kills, args.seed, args.steps, Path(args.dir) if args.dir else None)
    except (AssertionError, subprocess.CalledProcessError, ValueError) as err:
        detail = getattr(err, "stderr", None)
        print(f"soak FAILED: {err}" + (f"\n{detail.decode(errors='replace')}" if detail else ""), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
