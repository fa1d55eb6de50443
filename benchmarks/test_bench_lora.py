"""LoRA against full fine-tuning: trainable parameters, step time and the held-out loss reached.

Run: ``pytest benchmarks/test_bench_lora.py --benchmark-only -s``.

A base model is pre-trained on the built-in story corpus (``corpus.builtin_corpus()``'s training
documents; its seed), then fine-tuned for the same number of steps on a SECOND corpus: the story
grammar drawn with another seed (``SECOND_SEED``), whose last 10% of documents is the held-out
split. Both start from the same base weights and see the same batches:

- ``lora``: ``lora.apply_lora(targets=("q", "v", "o", "w1", "w2"), rank=8, alpha=16)``, AdamW on
  the adapters only (lr ``LORA_LR``);
- ``full``: every parameter, AdamW (lr ``FULL_LR``).

Stored in the benchmark's extra info: ``trainable_lora``, ``trainable_full``, ``trainable_ratio``,
``lora_s_per_step``, ``full_s_per_step``, ``base_val_loss`` (the base model on the held-out split),
``lora_val_loss``, ``full_val_loss`` (nats/token). With ``--benchmark-disable`` everything is tiny
(seconds): a smoke test of the pipeline.
"""

from __future__ import annotations

import copy

import torch

from bare_lm.cli.finetune import encode, finetune, split_documents
from reference import corpus, lora
from reference.model import ModelConfig, TransformerLM
from reference.tokenizer import ENDOFTEXT, Tokenizer

SECOND_SEED = 20261202
TARGETS = ("q", "v", "o", "w1", "w2")
RANK, ALPHA = 8, 16.0
LORA_LR, FULL_LR = 3e-3, 1e-3
SHAPES = {
    "smoke": dict(model=dict(context_length=32, n_layers=1, d_model=32, n_heads=2), vocab=300, docs=150,
                  pretrain=3, steps=3, batch=4),
    "bench": dict(model=dict(context_length=64, n_layers=4, d_model=128, n_heads=4), vocab=512, docs=2000,
                  pretrain=300, steps=150, batch=16),
}


def test_lora_vs_full_finetuning(benchmark):
    """Trainable parameters, seconds per step and held-out loss: LoRA vs full fine-tuning."""
    shape = SHAPES["bench" if benchmark.enabled else "smoke"]
    train_docs, _ = corpus.builtin_corpus()
    train_docs = train_docs[: shape["docs"]]
    second = corpus.story_grammar().documents(max(shape["docs"] // 2, 40), seed=SECOND_SEED)
    ft_train, ft_val = split_documents(second, 0.1)
    tokenizer = Tokenizer.train(train_docs, shape["vocab"], special_tokens=[ENDOFTEXT])
    pre_stream = encode(train_docs, tokenizer)
    ft_stream, val_stream = encode(ft_train, tokenizer), encode(ft_val, tokenizer)

    torch.manual_seed(0)
    base = TransformerLM(ModelConfig(vocab_size=tokenizer.vocab_size, **shape["model"]))
    finetune(base, pre_stream, val_stream, params=base.parameters(), steps=shape["pretrain"],
             batch_size=shape["batch"], lr=3e-3, warmup=shape["pretrain"] // 10, grad_clip=1.0, seed=1)
    base_state = copy.deepcopy(base.state_dict())

    common = dict(steps=shape["steps"], batch_size=shape["batch"], warmup=shape["steps"] // 10, grad_clip=1.0,
                  seed=2)
    lora_model = lora.apply_lora(copy.deepcopy(base), targets=TARGETS, rank=RANK, alpha=ALPHA)
    lora_result = finetune(lora_model, ft_stream, val_stream, params=lora.lora_parameters(lora_model),
                           lr=LORA_LR, **common)
    full_model = copy.deepcopy(base)
    full_result = finetune(full_model, ft_stream, val_stream, params=full_model.parameters(), lr=FULL_LR, **common)

    changed = [k for k, v in lora_model.state_dict().items()
               if ".lora_" not in k and not torch.equal(v, base_state[k.replace(".base.", ".")])]
    assert not changed, f"LoRA fine-tuning changed base tensors {changed[:3]}"
    benchmark.group = "LoRA vs full fine-tuning"
    info = dict(
        shape="bench" if benchmark.enabled else "smoke", rank=RANK, alpha=ALPHA, targets=",".join(TARGETS),
        steps=shape["steps"], trainable_lora=lora_result.trainable, trainable_full=full_result.trainable,
        trainable_ratio=round(lora_result.trainable / full_result.trainable, 4),
        lora_s_per_step=round(lora_result.seconds_per_step, 4), full_s_per_step=round(full_result.seconds_per_step, 4),
        base_val_loss=round(lora_result.val_loss_before, 4), lora_val_loss=round(lora_result.val_loss, 4),
        full_val_loss=round(full_result.val_loss, 4))
    benchmark.extra_info.update(info)
    t = shape["model"]["context_length"]
    x, y = ft_stream[:t][None], ft_stream[1:t + 1][None]
    opt = torch.optim.SGD(lora.lora_parameters(lora_model), lr=0.0)

    def lora_step():
        opt.zero_grad(set_to_none=True)
        _, loss = lora_model(x, y)
        loss.backward()
        opt.step()
        return float(loss.detach())

    loss = benchmark.pedantic(lora_step, rounds=3 if benchmark.enabled else 1, warmup_rounds=0)
    assert loss == loss
    print("\n" + "  ".join(f"{k}={v}" for k, v in info.items()))
