"""Self-tests of ``bare-lm finetune`` (LoRA adapters) and ``bare-lm generate --adapter``: the base
checkpoint is only read (bit-identical files), the adapter file is small and holds the adapters
alone, generation with it equals the base while B = 0 and differs once the adapters have changed;
bad input is one clear line, never a traceback.

One tiny base run (``bare-lm train --config tiny``, 6 steps) is shared by the module; every
command runs in this process (``bare_lm.cli.main``) with one torch thread.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from bare_lm import soak
from tests.test_cli_train import cli

RUN = ["--config", "tiny", "--batch-size", "4", "--vocab-size", "262", "--eval-interval", "0",
       "--log-interval", "1", "--samples", "0", "--no-progress", "--steps", "6"]
FINETUNE = ["--steps", "4", "--batch-size", "2", "--log-interval", "0"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> tuple[Path, Path]:
    """(run directory, second corpus): a tiny base run, and other text to fine-tune on."""
    root = tmp_path_factory.mktemp("lora")
    data = soak.write_corpus(root / "data.jsonl")
    status, out, err = cli("train", "--data", data, "--out", root / "run", *RUN)
    assert status == 0, out + err
    from reference import corpus
    other = root / "other.txt"
    other.write_text("\n\n".join(corpus.story_grammar().documents(120, seed=4242)))
    return root / "run", other


def _generate(run, *extra) -> str:
    status, out, err = cli("generate", "--checkpoint", run, "--prompt", "Once", "--max-new-tokens", "24",
                           "--seed", "3", "--temperature", "1.0", *extra)
    assert status == 0, err
    return out


def test_finetune_keeps_base_and_writes_small_adapter(base, tmp_path):
    """finetune trains the adapters, leaves every checkpoint file bit-identical, and writes a
    safetensors file holding the lora_A / lora_B tensors alone (far smaller than the model)."""
    run, other = base
    before = _digest(run)
    adapter = tmp_path / "a.safetensors"
    status, out, err = cli("finetune", "--checkpoint", run, "--data", other, "--separator", "\n\n",
                           "--lora-rank", "4", "--out", adapter, *FINETUNE)
    assert status == 0, out + err
    assert "Traceback" not in err and "held-out loss" in out, out + err
    assert _digest(run) == before, "the base run's files changed"
    from safetensors import safe_open
    with safe_open(str(adapter), framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.endswith((".lora_A", ".lora_B")) for k in keys), keys
    model_bytes = sum(p.stat().st_size for p in run.rglob("*.safetensors"))
    assert adapter.stat().st_size < model_bytes / 5, (adapter.stat().st_size, model_bytes)


def test_adapter_size_grows_with_rank(base, tmp_path):
    """Twice the rank, about twice the adapter file (the header aside)."""
    run, other = base
    sizes = {}
    for rank in (2, 8):
        path = tmp_path / f"r{rank}.safetensors"
        status, out, err = cli("finetune", "--checkpoint", run, "--data", other, "--separator", "\n\n",
                               "--lora-rank", str(rank), "--out", path, "--steps", "1", "--log-interval", "0")
        assert status == 0, out + err
        sizes[rank] = path.stat().st_size
    assert 3.0 < sizes[8] / sizes[2] < 4.1, sizes


def test_generate_with_adapter(base, tmp_path):
    """generate --adapter: a zero-B adapter gives the base's text exactly; a changed adapter changes it."""
    run, _ = base
    from reference import lora
    from reference.checkpoint import load_checkpoint
    plain = _generate(run)
    model = load_checkpoint(run / "checkpoint").model
    lora.apply_lora(model, targets=("q", "v", "o", "w2"), rank=4)
    zero = lora.save_adapter(model, tmp_path / "zero.safetensors")
    assert _generate(run, "--adapter", zero) == plain, "B = 0: the adapted model must generate the base's text"
    with torch.no_grad():
        for p in lora.lora_parameters(model):
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 2.0)
    changed = lora.save_adapter(model, tmp_path / "changed.safetensors")
    assert _generate(run, "--adapter", changed) != plain, "a non-zero adapter must change the samples"


@pytest.mark.parametrize("args, words", [
    (["--lora-rank", "0"], ["--lora-rank", ">= 1"]),
    (["--lora-alpha", "-1"], ["--lora-alpha", "> 0"]),
    (["--lora-dropout", "1.0"], ["--lora-dropout", "[0, 1)"]),
    (["--targets", "q,query"], ["--targets", "q, k, v, o, w1, w2, w3"]),
    (["--steps", "0"], ["--steps"]),
    (["--lr", "0"], ["--lr"]),
])
def test_bad_arguments_are_one_clear_line(base, tmp_path, args, words):
    """A bad option is exit status 2 and one line naming it and its allowed range."""
    run, other = base
    status, out, err = cli("finetune", "--checkpoint", run, "--data", other, "--out", tmp_path / "x.safetensors",
                           *args)
    assert status == 2, out + err
    assert "Traceback" not in err and err.count("\n") == 1, err
    for w in words:
        assert w in err, (w, err)


def test_bad_paths_are_clear_errors(base, tmp_path):
    """A missing checkpoint, missing data, an existing --out, a missing or foreign adapter file."""
    run, other = base
    status, _, err = cli("finetune", "--checkpoint", tmp_path / "nope", "--data", other)
    assert status == 2 and "--checkpoint" in err and "Traceback" not in err, err
    status, _, err = cli("finetune", "--checkpoint", run, "--data", tmp_path / "none.txt",
                         "--out", tmp_path / "y.safetensors")
    assert status == 2 and "none.txt" in err and "Traceback" not in err, err
    existing = tmp_path / "exists.safetensors"
    existing.write_bytes(b"x")
    status, _, err = cli("finetune", "--checkpoint", run, "--data", other, "--out", existing)
    assert status == 2 and "--force" in err, err
    status, _, err = cli("generate", "--checkpoint", run, "--prompt", "Once", "--adapter", tmp_path / "missing.st")
    assert status == 2 and "--adapter" in err and "Traceback" not in err, err
    status, _, err = cli("generate", "--checkpoint", run, "--prompt", "Once", "--adapter", existing)
    assert status == 2 and "--adapter" in err and "Traceback" not in err, err
