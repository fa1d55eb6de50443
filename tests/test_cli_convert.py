"""The `bare-lm convert`, `bare-lm generate --hf` and `bare-lm tokenizer encode` commands, as a user meets them."""

import torch

from bare_lm.cli import main
from reference.checkpoint import save_checkpoint
from reference.model import ModelConfig, TransformerLM
from reference.tokenizer import ENDOFTEXT, Tokenizer


def _checkpoint(path):
    torch.manual_seed(0)
    tokenizer = Tokenizer.train(["the cat sat on the mat. " * 20], 300, special_tokens=[ENDOFTEXT])
    config = ModelConfig(vocab_size=tokenizer.vocab_size, context_length=32, n_layers=2, d_model=32,
                         n_heads=4, norm="layernorm", positional="learned", activation="gelu_tanh", bias=True)
    return save_checkpoint(path, TransformerLM(config).eval(), step=0, tokenizer=tokenizer)


def test_generate_from_a_converted_directory_equals_the_checkpoint(tmp_path, capsys):
    """A checkpoint converted to a transformers directory generates, with --hf, the same greedy text
    as the checkpoint itself."""
    ckpt = _checkpoint(tmp_path / "ckpt")
    assert main(["convert", "to-hf", str(ckpt), str(tmp_path / "hf")]) == 0
    capsys.readouterr()
    common = ["--prompt", "the cat", "--temperature", "0", "--max-new-tokens", "12"]
    assert main(["generate", "--checkpoint", str(ckpt), *common]) == 0
    from_checkpoint = capsys.readouterr().out
    assert main(["generate", "--hf", str(tmp_path / "hf"), *common]) == 0
    from_hf = capsys.readouterr().out
    assert from_hf == from_checkpoint and from_hf.startswith("the cat")


def test_generate_hf_missing_directory_is_one_clear_line(tmp_path, capsys):
    """--hf naming a directory without config.json: exit 2, one line naming the file."""
    status = main(["generate", "--hf", str(tmp_path / "nothing"), "--prompt", "x"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "config.json" in err, err


def test_tokenizer_encode_special_text_needs_allow_special(tmp_path, capsys):
    """`tokenizer encode` of text holding <|endoftext|>: one error line naming --allow-special; with
    the flag, the special token's id."""
    from reference.tokenizer import Tokenizer as Tok
    tok = Tok.train(["abc abc abd"], 260, special_tokens=[ENDOFTEXT])
    path = tmp_path / "tok.json"
    tok.save(path)
    assert main(["tokenizer", "encode", "--tokenizer", str(path), "ab" + ENDOFTEXT]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--allow-special" in err, err
    assert main(["tokenizer", "encode", "--tokenizer", str(path), "--ids-only", "--allow-special",
                 "ab" + ENDOFTEXT]) == 0
    assert str(tok.special_tokens[ENDOFTEXT]) in capsys.readouterr().out
