"""Self-tests of ``bare-lm train --label-smoothing / --z-loss / --compile`` and ``bare-lm generate --compile``:
the objective is stored with the run and kept on resume, a compiled run saves an eager checkpoint.

Tiny runs (batch 4, 3 steps, 1 torch thread); the compiled ones use the cheap backends (aot_eager,
eager), which trace the model like inductor without its code generation.
"""

from __future__ import annotations

import pytest
import torch

from bare_lm import soak
from tests.test_cli_train import RUN, cli, one_thread  # noqa: F401 (autouse fixture)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return soak.write_corpus(tmp_path_factory.mktemp("data") / "data.jsonl")


def _config(out):
    from reference.checkpoint import load_checkpoint
    return load_checkpoint(out / "checkpoint").train_config


def test_objective_is_stored_and_kept_on_resume(data, tmp_path):
    """--label-smoothing / --z-loss go into the checkpoint; a resume with another value is refused, one line."""
    out = tmp_path / "run"
    status, stdout, err = cli("train", "--data", data, "--out", out, *RUN, "--steps", "4", "--stop-after", "2",
                              "--label-smoothing", "0.1", "--z-loss", "1e-3")
    assert status == 0, err
    saved = _config(out)
    assert (saved["label_smoothing"], saved["z_loss"]) == (0.1, 1e-3), saved
    status, _, err = cli("train", "--data", data, "--out", out, *RUN, "--steps", "4", "--resume",
                         "--label-smoothing", "0.2")
    assert status == 2 and "--label-smoothing 0.2" in err and "0.1" in err, err
    assert len(err.strip().splitlines()) == 1, err
    status, _, err = cli("train", "--data", data, "--out", out, *RUN, "--steps", "4", "--resume")
    assert status == 0, err
    assert _config(out)["label_smoothing"] == 0.1


@pytest.mark.parametrize("flag, value, words", [("--label-smoothing", "1.0", ("label_smoothing", "[0.0, 1.0)")),
                                                ("--z-loss", "-1", ("z_loss", "[0.0, inf]"))])
def test_bad_objective_is_one_line(data, tmp_path, flag, value, words):
    status, _, err = cli("train", "--data", data, "--out", tmp_path / "bad", *RUN, "--steps", "2", flag, value)
    assert status == 2 and all(w in err for w in words), err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "bad" / "checkpoint").exists()


def test_compiled_train_and_generate(data, tmp_path):
    """--compile aot_eager trains and saves a checkpoint an eager model loads; generate --compile eager samples from it."""
    out = tmp_path / "compiled"
    status, _, err = cli("train", "--data", data, "--out", out, *RUN, "--steps", "3", "--compile", "aot_eager")
    assert status == 0, err
    from reference.checkpoint import load_checkpoint
    state = load_checkpoint(out / "checkpoint").model.state_dict()
    assert not [k for k in state if k.startswith("_orig_mod")], sorted(state)
    assert _config(out)["compile"] == "aot_eager"
    status, _, err = cli("train", "--data", data, "--out", out, *RUN, "--steps", "4", "--resume", "--extend")
    assert status == 0, err
    assert _config(out)["compile"] is False, "a resume without --compile runs eager"
    args = ("generate", "--checkpoint", out / "checkpoint", "--prompt", "the cat", "--max-new-tokens", "5",
            "--seed", "0")
    status, eager, err = cli(*args)
    assert status == 0, err
    status, compiled, err = cli(*args, "--compile", "eager")
    assert status == 0, err
    assert compiled == eager, f"compiled generation differs from eager: {compiled!r} vs {eager!r}"
