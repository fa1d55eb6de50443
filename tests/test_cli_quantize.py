"""Self-tests of ``bare-lm quantize`` and of ``bare-lm generate`` on its output: the run is only read
(bit-identical files), the file holds integers and scales (not float weights) and is smaller than
the float tensors (INT4 smaller than INT8), generation from it works and is reproducible, an
existing output is never overwritten without ``--force``; bad input is one clear line, exit status 2.

One tiny run (``bare-lm train --config tiny``, 6 steps) is shared by the module; every command runs
in this process (``bare_lm.cli.main``) with one torch thread.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from bare_lm import soak
from tests.test_cli_finetune import _digest, one_thread  # noqa: F401 (one_thread: an autouse fixture)
from tests.test_cli_train import cli

RUN = ["--config", "tiny", "--batch-size", "4", "--vocab-size", "262", "--eval-interval", "0",
       "--log-interval", "1", "--samples", "0", "--no-progress", "--steps", "6"]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("quant")
    data = soak.write_corpus(root / "data.jsonl")
    status, out, err = cli("train", "--data", data, "--out", root / "run", *RUN)
    assert status == 0, out + err
    return root / "run"


def _generate(checkpoint, *extra) -> tuple[int, str, str]:
    return cli("generate", "--checkpoint", checkpoint, "--prompt", "Once", "--max-new-tokens", "16",
               "--seed", "3", *extra)


def _float_bytes(run: Path) -> int:
    return sum(p.stat().st_size for p in (run / "checkpoint").rglob("model.safetensors"))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantize_writes_integers_and_generate_reads_them(run, tmp_path, bits):
    """quantize RUN --bits B: the run is untouched; the file holds int8 (INT8) or uint8 (INT4)
    qweights and float scales, no float Linear weight, and is smaller than the float model file;
    generate --checkpoint FILE samples from it, the same text twice with the same seed."""
    before = _digest(run)
    path = tmp_path / f"q{bits}.safetensors"
    status, out, err = cli("quantize", run, "--bits", str(bits), "--out", path)
    assert status == 0, out + err
    assert f"INT{bits}" in out and str(path) in out, out
    assert _digest(run) == before, "the run's files changed"
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    qweights = {k: v for k, v in dtypes.items() if k.endswith(".qweight")}
    assert qweights and set(qweights.values()) == {"I8" if bits == 8 else "U8"}, dtypes
    assert not any(k.endswith("proj.weight") or k.endswith(("w1.weight", "w2.weight")) for k in dtypes), dtypes
    assert path.stat().st_size < _float_bytes(run), (path.stat().st_size, _float_bytes(run))
    status, first, err = _generate(path)
    assert status == 0 and first.startswith("Once") and len(first) > len("Once\n"), first + err
    assert "Traceback" not in err, err
    status, second, _ = _generate(path)
    assert second == first, "the same seed must give the same text"


def test_int4_is_smaller_than_int8_and_default_out(run, tmp_path):
    """INT4 (groups of 32) is a smaller file than INT8; without --out the file is RUN.int8.safetensors
    next to the run, and a second run without --force refuses to overwrite it."""
    copy = tmp_path / "run"
    import shutil
    shutil.copytree(run, copy)
    status, out, err = cli("quantize", copy)
    assert status == 0, out + err
    default = tmp_path / "run.int8.safetensors"
    assert default.is_file(), list(tmp_path.iterdir())
    status, out, err = cli("quantize", copy, "--bits", "4")
    assert status == 0, out + err
    assert (tmp_path / "run.int4.safetensors").stat().st_size < default.stat().st_size
    digest = hashlib.sha256(default.read_bytes()).hexdigest()
    status, out, err = cli("quantize", copy)
    assert status == 2 and "--force" in err and "Traceback" not in err, out + err
    assert hashlib.sha256(default.read_bytes()).hexdigest() == digest, "an existing --out was changed"
    status, out, err = cli("quantize", copy, "--bits", "4", "--group-size", "16", "--out", default, "--force")
    assert status == 0, out + err
    assert "groups of 16" in out, out


@pytest.mark.parametrize("args, words", [
    (["--bits", "3"], ["--bits", "8 or 4"]),
    (["--bits", "16"], ["--bits", "8 or 4"]),
    (["--group-size", "0"], ["--group-size", ">= 1"]),
    (["--bits", "4", "--group-size", "5"], ["--group-size", "divide", "in_features"]),
    (["--bits", "4", "--group-size", "3"], ["--group-size"]),
    (["--out", "model.bin"], ["--out", ".safetensors"]),
])
def test_bad_arguments_are_one_clear_line(run, tmp_path, args, words):
    """A bad option is exit status 2 and one line naming it and what is allowed; nothing is written."""
    out_args = [] if "--out" in args else ["--out", tmp_path / "x.safetensors"]
    status, out, err = cli("quantize", run, *out_args, *args)
    assert status == 2, out + err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "x.safetensors").exists()


def test_bad_paths_are_clear_errors(run, tmp_path):
    """A missing run, a foreign .safetensors file given to generate, --adapter with a quantized file."""
    status, _, err = cli("quantize", tmp_path / "nope", "--out", tmp_path / "y.safetensors")
    assert status == 2 and "nope" in err and "Traceback" not in err, err
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"x": torch.zeros(2)}, str(foreign))
    status, _, err = _generate(foreign)
    assert status == 2 and "foreign.safetensors" in err and "Traceback" not in err, err
    path = tmp_path / "q.safetensors"
    assert cli("quantize", run, "--out", path)[0] == 0
    status, _, err = _generate(path, "--adapter", tmp_path / "a.safetensors")
    assert status == 2 and "--adapter" in err and "Traceback" not in err, err
