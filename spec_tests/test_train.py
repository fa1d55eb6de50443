"""Spec of ``train``: ``train_step`` (accumulation, clipping), ``evaluate``, ``train`` (loop, log, exact resume)."""

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import assert_close, assert_equal, randint, raises_clear, seed_all, seeds

TINY = dict(context_length=16, n_layers=1, d_model=16, n_heads=2)


@pytest.fixture(scope="module")
def train(impl):
    return impl.component("train")


@pytest.fixture(scope="module")
def corpus_docs(impl):
    """A small slice of the built-in corpus: (train_docs, val_docs)."""
    return impl.component("corpus").builtin_corpus(n_train=150, n_val=3)


@pytest.fixture(scope="module")
def tokenizer(impl, corpus_docs):
    tok = impl.component("tokenizer")
    return tok.Tokenizer.train(corpus_docs[0], 300, special_tokens=[tok.ENDOFTEXT])


def _model(impl, seed=0, **overrides):
    model = impl.component("model")
    seed_all(seed)
    cfg = dict(vocab_size=64, **TINY)
    cfg.update(overrides)
    return model.TransformerLM(model.ModelConfig(**cfg))


def _config(train, tmp_path, **overrides):
    cfg = dict(steps=6, batch_size=4, lr=1e-2, min_lr=1e-3, warmup=2, eval_interval=0, log_interval=1,
               seed=0, device="cpu", out_dir=str(tmp_path))
    cfg.update(overrides)
    return train.TrainConfig(**cfg)


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- train_step ---------------------------------------------------------------------------------

def test_overfits_one_batch(train, impl):
    """A tiny model trained on ONE batch with AdamW drives its loss to near zero."""
    optim = impl.component("optim")
    model = _model(impl, d_model=32, n_layers=2)
    opt = optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    x, y = randint(0, 64, (2, 16), 1), randint(0, 64, (2, 16), 2)
    first = None
    for _ in range(150):
        loss, _ = train.train_step(model, opt, [(x, y)], grad_clip=1.0)
        first = loss if first is None else first
    assert first > 3.0, f"initial loss should be about ln(64) = 4.16, got {first}"
    assert loss < 0.05, f"loss after 150 steps on one batch: expected < 0.05, got {loss} (started at {first})"


@given(k=st.sampled_from([2, 4]), seed=seeds)
@settings(max_examples=5)
def test_accumulation_equals_one_big_batch(train, impl, k, seed):
    """k micro-batches of b sequences give the same step as one batch of k*b (loss scaled by 1/k)."""
    big, acc = _model(impl, seed).double(), _model(impl, seed).double()
    x, y = randint(0, 64, (8, 16), seed), randint(0, 64, (8, 16), seed + 1)
    sgd_big = torch.optim.SGD(big.parameters(), lr=0.5)
    sgd_acc = torch.optim.SGD(acc.parameters(), lr=0.5)
    loss_acc, norm_acc = train.train_step(acc, sgd_acc, list(zip(x.chunk(k), y.chunk(k))))
    loss_big, norm_big = train.train_step(big, sgd_big, [(x, y)])
    assert_close(torch.tensor(loss_acc), torch.tensor(loss_big), what="returned loss (mean of micro-batches)",
                 atol=1e-6, rtol=1e-6)
    assert_close(torch.tensor(norm_acc), torch.tensor(norm_big), what="returned grad norm", atol=1e-6, rtol=1e-6)
    w_big, w_acc = _weights(big), _weights(acc)
    for name in w_big:
        assert_close(w_acc[name], w_big[name], what=f"{name} after an accumulated step vs one big batch")


def test_train_step_clips_and_reports_norm_before_clipping(train, impl):
    """train_step clips the global gradient norm to grad_clip and returns the norm before clipping."""
    model, ref = _model(impl, 3).double(), _model(impl, 3).double()
    x, y = randint(0, 64, (2, 16), 3), randint(0, 64, (2, 16), 4)
    before = _weights(model)
    sgd = torch.optim.SGD(model.parameters(), lr=1.0)
    _, norm = train.train_step(model, sgd, [(x, y)], grad_clip=1e-3)
    ref.train()
    ref(x, y)[1].backward()
    expected = math.sqrt(sum(float((p.grad ** 2).sum()) for p in ref.parameters()))
    assert_close(torch.tensor(norm), torch.tensor(expected), what="returned grad norm (before clipping)", rtol=1e-6)
    after = _weights(model)
    moved = 0.0
    for p_name, p in model.named_parameters():  # each distinct parameter once
        moved += float(((after[p_name] - before[p_name]) ** 2).sum())
    assert_close(torch.tensor(math.sqrt(moved)), torch.tensor(1e-3 * expected / (expected + 1e-6)),
                 what="norm of the SGD(lr=1) update = clipped gradient norm", rtol=1e-5)


# --- train --------------------------------------------------------------------------------------

def test_loss_goes_down_on_builtin_corpus(train, impl, corpus_docs, tokenizer, tmp_path):
    """A short run on the built-in corpus ends far below the uniform loss; val_bpc = nats / ln 2 / characters."""
    config = _config(train, tmp_path, steps=60, batch_size=16, warmup=5, lr=2e-2, min_lr=2e-3)
    result = train.train(config, dict(TINY), train_docs=corpus_docs[0], val_docs=corpus_docs[1],
                         tokenizer=tokenizer)
    uniform = math.log(tokenizer.vocab_size)
    assert result.val_loss < 0.7 * uniform, \
        f"val loss after 60 steps: expected < 0.7 * ln(V) = {0.7 * uniform:.3f}, got {result.val_loss:.3f}"
    targets = sum(len(tokenizer.encode(d)) + 1 for d in corpus_docs[1])  # + 1: the end-of-text after each
    chars = sum(len(d) + 1 for d in corpus_docs[1])
    expected = result.val_loss * targets / math.log(2) / chars
    assert_close(torch.tensor(result.val_bpc), torch.tensor(expected), what="val_bpc from val_loss", rtol=1e-6)
    assert_equal(result.step, 60, what="result.step")


def test_resume_is_bit_identical(train, impl, corpus_docs, tokenizer, tmp_path):
    """N steps + checkpoint + resume + N steps == 2N steps in one go, bit for bit (dropout on)."""
    model_cfg = dict(TINY, dropout=0.2)
    kw = dict(train_docs=corpus_docs[0], val_docs=corpus_docs[1], tokenizer=tokenizer)
    one = _config(train, tmp_path / "one", accum=2, eval_interval=2)
    straight = train.train(one, model_cfg, **kw)
    two = _config(train, tmp_path / "two", accum=2, eval_interval=2)
    first = train.train(two, model_cfg, stop_after=3, **kw)
    assert_equal(first.step, 3, what="step after stop_after=3")
    resumed = train.train(two, model_cfg, resume=True, **kw)
    assert_equal(resumed.step, 6, what="step after resuming")
    a, b = _weights(resumed.model), _weights(straight.model)
    differ = [k for k in b if not torch.equal(a[k], b[k])]
    assert not differ, f"resumed run differs from the straight run in {differ}"


def test_log_file(train, impl, corpus_docs, tokenizer, tmp_path):
    """log.jsonl: one record per logged step with step, loss, lr (the schedule's), grad_norm, tokens_per_s."""
    config = _config(train, tmp_path, steps=5, log_interval=2, eval_interval=4)
    train.train(config, dict(TINY), train_docs=corpus_docs[0], val_docs=corpus_docs[1], tokenizer=tokenizer)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines() if line.strip()]
    assert_equal([r["step"] for r in records], [2, 4, 5], what="logged steps (log_interval=2, last step 5)")
    for r in records:
        for key in ("loss", "lr", "grad_norm", "tokens_per_s"):
            assert key in r and math.isfinite(r[key]) and r[key] > 0, f"record {r}: bad or missing {key!r}"
        s = r["step"] - 1  # the 0-based step whose lr was used
        expected = 1e-2 * (s + 1) / 2 if s < 2 else 1e-3 + (1e-2 - 1e-3) * 0.5 * (1 + math.cos(math.pi * (s - 2) / 3))
        assert abs(r["lr"] - expected) < 1e-12, f"lr of step {r['step']}: expected {expected}, got {r['lr']}"
    assert_equal([("val_loss" in r, "val_bpc" in r) for r in records], [(False, False), (True, True), (True, True)],
                 what="(val_loss, val_bpc) present at steps 2, 4, 5 (eval_interval=4 and the end)")
    ckpt = impl.component("checkpoint").load_checkpoint(tmp_path / "checkpoint")
    assert_equal(ckpt.step, 5, what="step of the final checkpoint")


def test_evaluate_counts_every_target(train, impl):
    """evaluate returns (total nats, target count) over every target of the stream once, in eval mode."""
    model = _model(impl, 5, dropout=0.5)
    stream = randint(0, 64, (50,), 7)
    nats, n = train.evaluate(model, stream, batch_size=2)
    assert_equal(n, 49, what="number of targets of a 50-token stream")
    model.eval()
    logits = torch.cat([model(stream[i:i + 16][None])[0][0] for i in range(0, 49, 16)])[:49]
    expected = torch.nn.functional.cross_entropy(logits.double(), stream[1:], reduction="sum")
    assert_close(torch.tensor(nats, dtype=torch.float64), expected, what="total nats", atol=1e-3, rtol=1e-5)


def test_train_config_errors(train, tmp_path):
    """TrainConfig rejects nonsense with errors naming the field."""
    ok = dict(steps=100, warmup=10, out_dir=str(tmp_path))
    train.TrainConfig(**ok)
    for field, value in [("steps", 0), ("batch_size", 0), ("lr", -1.0), ("warmup", 101), ("grad_clip", 0.0),
                         ("weight_decay", -0.1), ("seed", -1), ("device", "tpu")]:
        with raises_clear(ValueError, field):
            train.TrainConfig(**{**ok, field: value})
    with raises_clear(ValueError, "min_lr"):
        train.TrainConfig(**ok, lr=1e-3, min_lr=1e-2)
    with raises_clear(ValueError, "accum"):
        train.TrainConfig(**ok, batch_size=6, accum=4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable_is_clear(train, corpus_docs, tokenizer, tmp_path):
    """device='cuda' without CUDA raises a ValueError naming cuda."""
    config = _config(train, tmp_path, device="cuda")
    with raises_clear(ValueError, "cuda"):
        train.train(config, dict(TINY), train_docs=corpus_docs[0], val_docs=corpus_docs[1], tokenizer=tokenizer)


def test_presets(train, impl):
    """PRESETS has "tiny" and "small", each a valid model (without vocab_size) and train config."""
    model = impl.component("model")
    for name in ("tiny", "small"):
        preset = train.PRESETS[name]
        model.ModelConfig(vocab_size=300, **preset["model"])
        train.TrainConfig(**preset["train"])
