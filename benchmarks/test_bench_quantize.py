"""Weight quantization: checkpoint bytes, decoding speed and validation bits/char, float32 vs INT8 vs INT4.

Run: ``pytest benchmarks/test_bench_quantize.py --benchmark-only -s``.

A model is trained on the built-in story corpus (``corpus.builtin_corpus()``: its training
documents, a BPE tokenizer trained on them), then quantized with ``quantize.quantize_model``:

- ``float32``: the trained model itself;
- ``int8``: per output channel (``bits=8``, ``group_size=None``);
- ``int4``: groups of ``INT4_GROUP`` input columns (``bits=4``); ``int4-row``: one group per row.

For each: the checkpoint file's bytes (float32: the state dict, the tied table once, as one
safetensors file; quantized: ``save_quantized``; neither holds the tokenizer), the validation
bits/char over the whole validation split (``corpus.stream_characters``: nats / ln 2 / characters),
and greedy decoding tokens/s with the KV cache (batch 1, ``decode`` new tokens, the best of 3
runs; smoke: one) for the written-out path and the ``fast=True`` path (the dequantized weight cached). Stored in the
benchmark's extra info; printed with ``-s``. With ``--benchmark-disable`` everything is tiny
(seconds): a smoke test of the pipeline.
"""

from __future__ import annotations

import copy
import math
import time

import torch
from safetensors.torch import save_file

from bare_lm.cli.finetune import encode, finetune
from reference import corpus, data, quantize
from reference.generate import generate
from reference.model import ModelConfig, TransformerLM
from reference.tokenizer import ENDOFTEXT, Tokenizer

INT4_GROUP = 32
SHAPES = {
    "smoke": dict(model=dict(context_length=32, n_layers=1, d_model=32, n_heads=2), vocab=300, docs=150,
                  val_docs=20, steps=3, batch=4, decode=8, repeats=1),
    "bench": dict(model=dict(context_length=128, n_layers=2, d_model=128, n_heads=4), vocab=512, docs=2000,
                  val_docs=200, steps=400, batch=16, decode=96, repeats=3),
}


def bits_per_char(model, stream, documents, context_length: int) -> float:
    """Total nats over sequential windows of the validation stream / ln 2 / its characters."""
    nats = 0.0
    with torch.no_grad():
        for x, y in data.evaluation_batches(stream, 16, context_length):
            _, loss = model(x, y)
            nats += float(loss) * int((y != -100).sum())
    return nats / math.log(2) / corpus.stream_characters(documents)


def float_file_bytes(model, path) -> int:
    seen, tensors = set(), {}
    for k, v in model.state_dict().items():
        if v.data_ptr() not in seen:
            seen.add(v.data_ptr())
            tensors[k] = v.detach().contiguous()
    save_file(tensors, str(path))
    return path.stat().st_size


def tokens_per_second(model, prompt, n: int, repeats: int = 3) -> float:
    """Greedy decoding with the KV cache: new tokens / the best of ``repeats`` wall times."""
    generate(model, prompt, 2, temperature=0.0)  # warm-up
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        out = generate(model, prompt, n, temperature=0.0)
        best = min(best, time.perf_counter() - start)
    return len(out) / best


def test_float_vs_int8_vs_int4(benchmark, tmp_path):
    """Checkpoint bytes, validation bits/char and decoding tokens/s: float32, INT8, INT4."""
    name = "bench" if benchmark.enabled else "smoke"
    shape = SHAPES[name]
    train_docs, val_docs = corpus.builtin_corpus()
    train_docs, val_docs = train_docs[: shape["docs"]], val_docs[: shape["val_docs"]]
    tokenizer = Tokenizer.train(train_docs, shape["vocab"], special_tokens=[ENDOFTEXT])
    train_stream, val_stream = encode(train_docs, tokenizer), encode(val_docs, tokenizer)
    torch.manual_seed(0)
    model = TransformerLM(ModelConfig(vocab_size=tokenizer.vocab_size, **shape["model"]))
    finetune(model, train_stream, val_stream, params=model.parameters(), steps=shape["steps"],
             batch_size=shape["batch"], lr=3e-3, warmup=shape["steps"] // 10, grad_clip=1.0, seed=1)
    model.eval()
    t = shape["model"]["context_length"]
    prompt = encode(val_docs[:1], tokenizer)[:8].tolist()
    n = min(shape["decode"], t - len(prompt))

    variants = {"float32": model}
    for label, bits, group in (("int8", 8, None), ("int4", 4, INT4_GROUP), ("int4-row", 4, None)):
        variants[label] = quantize.quantize_model(copy.deepcopy(model), bits=bits, group_size=group)
    info = dict(shape=name, steps=shape["steps"], int4_group=INT4_GROUP, decode_tokens=n)
    for label, m in variants.items():
        path = tmp_path / f"{label}.safetensors"
        size = float_file_bytes(m, path) if label == "float32" else quantize.save_quantized(m, path).stat().st_size
        info[f"{label}_bytes"] = size
        info[f"{label}_bpc"] = round(bits_per_char(m, val_stream, val_docs, t), 4)
        info[f"{label}_tok_s"] = round(tokens_per_second(m, prompt, n, shape["repeats"]), 1)
        if label != "float32":
            for layer in quantize.quantized_layers(m).values():
                layer.fast = True
            info[f"{label}_fast_tok_s"] = round(tokens_per_second(m, prompt, n, shape["repeats"]), 1)
            loaded, _ = quantize.load_quantized(path)
            assert torch.equal(loaded(torch.tensor([prompt]))[0], m(torch.tensor([prompt]))[0]), \
                f"{label}: the saved file must give the same logits"
    for label in ("int8", "int4", "int4-row"):
        info[f"{label}_bytes_ratio"] = round(info[f"{label}_bytes"] / info["float32_bytes"], 4)
        info[f"{label}_bpc_delta"] = round(info[f"{label}_bpc"] - info["float32_bpc"], 4)
    assert info["int4_bytes"] < info["int8_bytes"] < info["float32_bytes"], info
    benchmark.group = "weight quantization"
    benchmark.extra_info.update(info)
    fast_int4 = variants["int4"]
    x = torch.tensor([prompt])

    def forward():
        with torch.no_grad():
            return fast_int4(x)[0]

    logits = benchmark.pedantic(forward, rounds=5 if benchmark.enabled else 1, warmup_rounds=0)
    assert torch.isfinite(logits).all()
    print("\n" + "  ".join(f"{k}={v}" for k, v in info.items()))
