"""Spec of ``train``: ``train_step`` (accumulation, clipping), ``evaluate``, ``train`` (loop, log, exact resume)."""

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from .support import (TwoParams, assert_close, assert_equal, file_size_limit, randint, raises_clear, seed_all,
                      seeds, step_clock)

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
    train.TrainConfig(**ok, lr=1e-3, min_lr=1e-3)   # min_lr <= lr: equal is a constant rate, allowed
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



# The documented presets and defaults (spec_tests/contract/train.md), restated: what
# `bare-lm train --preset NAME` and a plain TrainConfig() run with.
DOCUMENTED_PRESETS = {
    "tiny": {"model": dict(context_length=32, n_layers=2, d_model=32, n_heads=2, dropout=0.0),
             "train": dict(steps=200, batch_size=16, lr=3e-3, min_lr=3e-4, warmup=20, eval_interval=100,
                           checkpoint_interval=50, vocab_size=300)},
    "small": {"model": dict(context_length=128, n_layers=2, d_model=64, n_heads=4, dropout=0.0, fast=True),
              "train": dict(steps=800, batch_size=16, lr=6e-3, min_lr=6e-4, warmup=50, eval_interval=200,
                            eval_batches=8, checkpoint_interval=100, vocab_size=512)},
    "medium": {"model": dict(context_length=256, n_layers=6, d_model=256, n_heads=8, dropout=0.1, fast=True),
               "train": dict(steps=5000, batch_size=64, lr=1e-3, min_lr=1e-4, warmup=200, eval_interval=500,
                             eval_batches=20, checkpoint_interval=500, vocab_size=1024)},
}
DOCUMENTED_DEFAULTS = dict(steps=1000, batch_size=32, accum=1, lr=3e-3, min_lr=3e-4, warmup=50, weight_decay=0.1,
                           betas=(0.9, 0.95), grad_clip=1.0, eval_interval=250, eval_batches=None, log_interval=10,
                           checkpoint_interval=100, checkpoint_minutes=10.0, schedule_steps=None, vocab_size=512,
                           seed=0, device="cpu", out_dir="runs/latest", label_smoothing=0.0, z_loss=0.0,
                           compile=False)


def _differences(got: dict, expected: dict) -> list[str]:
    return [f"{k}: expected {expected.get(k, '<absent>')!r}, got {got.get(k, '<absent>')!r}"
            for k in sorted(set(got) | set(expected), key=str)
            if k not in got or k not in expected or type(got[k]) is not type(expected[k]) or got[k] != expected[k]]


@pytest.mark.parametrize("name", list(DOCUMENTED_PRESETS))
def test_presets_are_the_documented_sizes(train, impl, name):
    """PRESETS[name] holds exactly the documented model and train fields (the sizes `--preset` runs), each a valid config."""
    impl.component("model").ModelConfig(vocab_size=300, **train.PRESETS[name]["model"])
    train.TrainConfig(**train.PRESETS[name]["train"])
    for part in ("model", "train"):
        wrong = _differences(dict(train.PRESETS[name][part]), DOCUMENTED_PRESETS[name][part])
        assert not wrong, f"PRESETS[{name!r}][{part!r}] differs from the contract: " + "; ".join(wrong)


def test_train_config_defaults_are_the_documented_ones(train):
    """TrainConfig() has every documented default (the value and its type: 1.0 is a float, 0 an int)."""
    config = train.TrainConfig()
    got = {k: getattr(config, k) for k in DOCUMENTED_DEFAULTS}
    got["betas"] = tuple(got["betas"])
    wrong = _differences(got, DOCUMENTED_DEFAULTS)
    assert not wrong, "TrainConfig() defaults differ from the contract: " + "; ".join(wrong)

# --- what the loop actually does ------------------------------------------------------------------

def _schedule(s, lr, min_lr, warmup, total):
    """The documented schedule, written out: linear warmup, cosine to min_lr, then min_lr."""
    if s < warmup:
        return lr * (s + 1) / warmup
    if s >= total:
        return min_lr
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * (s - warmup) / (total - warmup)))


def _kw(corpus_docs, tokenizer):
    return dict(train_docs=corpus_docs[0], val_docs=corpus_docs[1], tokenizer=tokenizer)


@pytest.mark.parametrize("k", [1, 4])
def test_optimizer_uses_the_scheduled_lr(train, impl, corpus_docs, tokenizer, tmp_path, k):
    """Step k's update equals torch.optim.AdamW's step from checkpoint k at lr_schedule(k) (not only the logged lr)."""
    data, optim = impl.component("data"), impl.component("optim")
    ckpt_mod = impl.component("checkpoint")
    config = _config(train, tmp_path, steps=8, warmup=3, weight_decay=0.1, grad_clip=0.5, checkpoint_interval=0,
                     checkpoint_minutes=0)
    train.train(config, dict(TINY, dropout=0.0), stop_after=k, **_kw(corpus_docs, tokenizer))
    before = ckpt_mod.load_checkpoint(tmp_path / "checkpoint")
    train.train(config, dict(TINY, dropout=0.0), resume=True, stop_after=k + 1, **_kw(corpus_docs, tokenizer))
    after = ckpt_mod.load_checkpoint(tmp_path / "checkpoint")
    assert_equal(after.step, k + 1, what="step of the checkpoint after one more step")

    model = before.model                                             # the oracle: weights at step k
    oracle = torch.optim.AdamW(optim.param_groups(model, 0.1), lr=1.0, betas=config.betas, eps=1e-8,
                               foreach=False)
    oracle.load_state_dict(before.optimizer_state)
    lr = _schedule(k, 1e-2, 1e-3, 3, 8)
    for group in oracle.param_groups:
        group["lr"] = lr
    eot = tokenizer.special_tokens[impl.component("tokenizer").ENDOFTEXT]
    stream = data.token_stream(data.tokenize_documents(corpus_docs[0], tokenizer), eot)
    x, y = data.FixedLengthBatches(stream, 4, TINY["context_length"], seed=0).batch(k)
    model.train()
    oracle.zero_grad()
    model(x, y)[1].backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    oracle.step()
    got = after.model.state_dict()
    for name, expected in model.state_dict().items():
        assert_close(got[name], expected, what=f"{name} after step {k + 1} vs AdamW at lr_schedule({k}) = {lr:.6g}",
                     atol=1e-6, rtol=1e-5)


def test_periodic_evaluation_uses_eval_batches(train, impl, corpus_docs, tokenizer, tmp_path):
    """A periodic evaluation covers only the first eval_batches evaluation batches; the final one covers all."""
    data, ckpt_mod = impl.component("data"), impl.component("checkpoint")
    cfg = dict(steps=4, eval_interval=2, eval_batches=1, batch_size=2, checkpoint_interval=0, checkpoint_minutes=0)
    result = train.train(_config(train, tmp_path / "run", **cfg), dict(TINY), **_kw(corpus_docs, tokenizer))
    train.train(_config(train, tmp_path / "at2", **cfg), dict(TINY), stop_after=2, **_kw(corpus_docs, tokenizer))
    at2 = ckpt_mod.load_checkpoint(tmp_path / "at2" / "checkpoint").model.eval()
    eot = tokenizer.special_tokens[impl.component("tokenizer").ENDOFTEXT]
    stream = data.token_stream(data.tokenize_documents(corpus_docs[1], tokenizer), eot)
    batches = data.evaluation_batches(stream, 2, TINY["context_length"])
    assert len(batches) > 1, "the validation stream must span several batches for this test"

    def mean_loss(model, chosen):
        nats, n = 0.0, 0
        with torch.no_grad():
            for x, y in chosen:
                logits = model(x)[0]
                nats += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1).double(), y.flatten(),
                                                                ignore_index=-100, reduction="sum"))
                n += int((y != -100).sum())
        return nats / n

    records = {r["step"]: r for r in result.history}
    assert_close(torch.tensor(records[2]["val_loss"]), torch.tensor(mean_loss(at2, batches[:1])),
                 what="val_loss at step 2 (eval_batches=1: the first batch only)", rtol=1e-5)
    assert_close(torch.tensor(records[4]["val_loss"]), torch.tensor(mean_loss(result.model.eval(), batches)),
                 what="val_loss at the last step (every batch)", rtol=1e-5)


def test_log_after_resume_has_every_step_once(train, impl, corpus_docs, tokenizer, tmp_path):
    """After a kill (records past the checkpoint, a torn last line) a resume logs steps 1..N exactly once."""
    config = _config(train, tmp_path, steps=6, checkpoint_interval=0, checkpoint_minutes=0)
    train.train(config, dict(TINY), stop_after=3, **_kw(corpus_docs, tokenizer))
    with open(tmp_path / "log.jsonl", "a") as f:   # what a process killed after step 5 leaves behind
        f.write(json.dumps({"step": 4, "loss": 9.0}) + "\n" + json.dumps({"step": 5, "loss": 9.0}) + '\n{"step": 6, "lo')
    train.train(config, dict(TINY), resume=True, **_kw(corpus_docs, tokenizer))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert_equal([r["step"] for r in records], [1, 2, 3, 4, 5, 6], what="logged steps after the resume")
    assert all(r["loss"] != 9.0 for r in records), "records written after the checkpoint must be dropped"


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_evaluate_restores_the_mode(train, impl, mode):
    """evaluate leaves the model in the mode (train or eval) it found it in."""
    model = _model(impl, 1, dropout=0.5)
    model.train(mode == "train")
    train.evaluate(model, randint(0, 64, (40,), 3), batch_size=2)
    assert_equal(model.training, mode == "train", what=f"model.training after evaluate (was {mode} mode)")


# --- safety ---------------------------------------------------------------------------------------

def test_train_step_refuses_a_non_finite_loss(train, impl):
    """A NaN loss raises DivergenceError before the update: weights and optimizer state are unchanged."""
    model = _model(impl, 2)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    before = _weights(model)
    opt = impl.component("optim").AdamW(model.parameters(), lr=1e-2)
    x, y = randint(0, 64, (2, 16), 5), randint(0, 64, (2, 16), 6)
    with raises_clear(train.DivergenceError, "finite"):
        train.train_step(model, opt, [(x, y)], grad_clip=1.0)
    after = _weights(model)
    assert all(torch.equal(after[k], before[k]) for k in before if not before[k].isnan().any()), \
        "a divergent step must not change the weights"
    assert_equal(len(opt.state), 0, what="optimizer states after a refused step")


def test_divergence_keeps_the_last_good_checkpoint(train, impl, corpus_docs, tokenizer, tmp_path):
    """lr 1e6: train raises DivergenceError naming the step; the checkpoint left is the step before, finite."""
    config = _config(train, tmp_path, steps=30, lr=1e6, min_lr=0.0, warmup=0, checkpoint_interval=1,
                     checkpoint_minutes=0)
    with pytest.raises(train.DivergenceError) as info:
        train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    assert f"step {info.value.step}" in str(info.value), str(info.value)
    ckpt = impl.component("checkpoint").load_checkpoint(tmp_path / "checkpoint")
    assert_equal(ckpt.step, info.value.step - 1, what="step of the checkpoint left after the divergence")
    assert all(bool(torch.isfinite(p).all()) for p in ckpt.model.parameters()), "the checkpoint must be finite"


def test_non_finite_weights_are_never_saved(train, corpus_docs, tokenizer, tmp_path):
    """lr 1e39 overflows the weights in the first update (finite loss): DivergenceError at step 1, no checkpoint."""
    config = _config(train, tmp_path, steps=3, lr=1e39, min_lr=0.0, warmup=0, checkpoint_interval=1,
                     checkpoint_minutes=0)
    with pytest.raises(train.DivergenceError) as info:
        train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    assert_equal(info.value.step, 1, what="step of the divergence (the update of step 1 overflowed)")
    assert not (tmp_path / "checkpoint").exists(), "a checkpoint with non-finite weights was written"


def test_checkpoint_every_n_steps(train, impl, corpus_docs, tokenizer, tmp_path):
    """checkpoint_interval=2: while step s is evaluated the checkpoint on disk is the last even step before it."""
    ckpt_mod = impl.component("checkpoint")
    seen = []

    def look(line):
        try:
            seen.append(ckpt_mod.load_checkpoint(tmp_path / "checkpoint").step)
        except FileNotFoundError:
            seen.append(None)

    config = _config(train, tmp_path, steps=5, eval_interval=1, checkpoint_interval=2, checkpoint_minutes=0)
    train.train(config, dict(TINY), print_fn=look, **_kw(corpus_docs, tokenizer))
    assert_equal(seen, [None, None, 2, 2, 4], what="checkpoint step seen during the evaluations of steps 1..5")


def test_sigint_saves_and_resume_is_bit_identical(train, impl, corpus_docs, tokenizer, tmp_path):
    """SIGINT during step 2: train finishes it, saves, raises TrainingInterrupted(step=2); resuming ends bit-identical."""
    import os
    import signal
    kw = _kw(corpus_docs, tokenizer)
    straight = train.train(_config(train, tmp_path / "one", checkpoint_interval=0, checkpoint_minutes=0),
                           dict(TINY, dropout=0.2), **kw)
    config = _config(train, tmp_path / "two", eval_interval=1, checkpoint_interval=0, checkpoint_minutes=0)
    calls = []

    def interrupt(line):
        calls.append(line)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(train.TrainingInterrupted) as info:
        train.train(config, dict(TINY, dropout=0.2), print_fn=interrupt, **kw)
    assert_equal(info.value.step, 2, what="step at which the interrupted run stopped")
    assert_equal(impl.component("checkpoint").load_checkpoint(tmp_path / "two" / "checkpoint").step, 2,
                 what="step of the checkpoint saved on SIGINT")
    resumed = train.train(config, dict(TINY, dropout=0.2), resume=True, **kw)
    a, b = _weights(resumed.model), _weights(straight.model)
    assert not [k for k in b if not torch.equal(a[k], b[k])], "resumed run differs from the straight run"


def test_fresh_run_over_a_run_is_refused(train, impl, corpus_docs, tokenizer, tmp_path):
    """A fresh run into a directory holding a run raises FileExistsError; overwrite=True replaces it."""
    config = _config(train, tmp_path, steps=2)
    train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    log = (tmp_path / "log.jsonl").read_bytes()
    with raises_clear(FileExistsError, str(tmp_path)):
        train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    assert_equal((tmp_path / "log.jsonl").read_bytes(), log, what="the log after a refused fresh run")
    result = train.train(config, dict(TINY), overwrite=True, **_kw(corpus_docs, tokenizer))
    assert_equal([r["step"] for r in result.history], [1, 2], what="steps logged by the replacing run")


def test_a_locked_run_is_refused(train, corpus_docs, tokenizer, tmp_path):
    """While another process holds out_dir/.lock (flock), train raises RunInUseError at once."""
    fcntl = pytest.importorskip("fcntl")
    tmp_path.mkdir(exist_ok=True)
    with open(tmp_path / train.LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with raises_clear(train.RunInUseError, str(tmp_path)):
            train.train(_config(train, tmp_path, steps=2), dict(TINY), **_kw(corpus_docs, tokenizer))
    assert not (tmp_path / "checkpoint").exists(), "a refused run must not write a checkpoint"


def test_resume_keeps_the_run(train, corpus_docs, tokenizer, tmp_path):
    """Resuming with another schedule (steps, lr, warmup) or other data is a ValueError; allow_new_data permits data."""
    kw = _kw(corpus_docs, tokenizer)
    config = _config(train, tmp_path, steps=6)
    train.train(config, dict(TINY), stop_after=2, **kw)
    for field_, value in [("steps", 8), ("lr", 2e-2), ("warmup", 1), ("batch_size", 2)]:
        with raises_clear(ValueError, "resume"):
            train.train(_config(train, tmp_path, **{"steps": 6, field_: value}), dict(TINY), resume=True, **kw)
    other = dict(kw, train_docs=corpus_docs[0][:-1])
    with raises_clear(ValueError, "data", "allow_new_data"):
        train.train(config, dict(TINY), resume=True, stop_after=3, **other)
    result = train.train(config, dict(TINY), resume=True, stop_after=3, allow_new_data=True, **other)
    assert_equal(result.step, 3, what="step after resuming on new data with allow_new_data")


def test_extension_runs_past_the_schedule_at_min_lr(train, corpus_docs, tokenizer, tmp_path):
    """schedule_steps=4, steps=6: steps 5 and 6 use min_lr; resuming a 4-step run so extended continues it."""
    kw = _kw(corpus_docs, tokenizer)
    train.train(_config(train, tmp_path, steps=4, warmup=2), dict(TINY), **kw)
    result = train.train(_config(train, tmp_path, steps=6, warmup=2, schedule_steps=4), dict(TINY), resume=True, **kw)
    assert_equal([(r["step"], r["lr"]) for r in result.history], [(5, 1e-3), (6, 1e-3)],
                 what="(step, lr) of the extension steps")


def test_special_token_text_in_documents(train, corpus_docs, tokenizer, tmp_path):
    """A document holding the special token's text is a ValueError naming the document and line."""
    docs = list(corpus_docs[0])
    docs[3] = "a line\nanother <|endoftext|> here"
    with raises_clear(ValueError, "train_docs[3]", "line 2"):
        train.train(_config(train, tmp_path, steps=2), dict(TINY), train_docs=docs, val_docs=corpus_docs[1],
                    tokenizer=tokenizer)


# --- custom objectives: train_step(loss_fn=...), TrainConfig.label_smoothing / z_loss ------------------

def test_train_step_uses_the_given_loss_fn(train, impl):
    """train_step(loss_fn=f) minimises f(logits, targets): the SGD step equals one on the gradient of f, by hand."""
    model, ref = _model(impl, 4).double(), _model(impl, 4).double()
    xs, ys = randint(0, 64, (4, 16), 5), randint(0, 64, (4, 16), 6)
    w = torch.randn(4, 16, 64, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    seen = []

    def loss_fn(logits, targets):          # gradient wrt logits: w (times 1/k), known in closed form
        seen.append(targets)
        return (logits * w[: logits.shape[0]]).sum() / logits.shape[0]

    micro = list(zip(xs.chunk(2), ys.chunk(2)))
    loss, _ = train.train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), micro, loss_fn=loss_fn)
    assert len(seen) == 2 and all(torch.equal(s, y) for s, (_, y) in zip(seen, micro)), \
        "loss_fn must be called once per micro-batch with that micro-batch's targets"
    ref.train()
    expected = 0.0
    for x, _ in micro:
        value = (ref(x)[0] * w[:2]).sum() / 2
        (value / 2).backward()
        expected += float(value.detach()) / 2
    torch.optim.SGD(ref.parameters(), lr=0.1).step()
    assert_close(torch.tensor(loss), torch.tensor(expected), what="returned loss: mean of loss_fn over micro-batches",
                 rtol=1e-9)
    got, want = _weights(model), _weights(ref)
    for name in want:
        assert_close(got[name], want[name], what=f"{name} after a train_step with a custom loss_fn vs by hand")


def test_train_step_default_objective_is_the_models_loss(train, impl):
    """loss_fn=None (the default) is the model's own loss; loss.objective() (no smoothing, no z-loss) is the same step."""
    objective = impl.component("loss").objective
    a, b, c = (_model(impl, 8).double() for _ in range(3))
    x, y = randint(0, 64, (2, 16), 9), randint(0, 64, (2, 16), 10)
    y[0, :3] = -100                                                    # ignored targets too
    la, _ = train.train_step(a, torch.optim.SGD(a.parameters(), lr=0.5), [(x, y)])
    lb, _ = train.train_step(b, torch.optim.SGD(b.parameters(), lr=0.5), [(x, y)], loss_fn=objective())
    c.train()
    lc = c(x, y)[1]
    assert_close(torch.tensor(la), torch.tensor(float(lc.detach())), what="default train_step loss vs model(x, y).loss", rtol=1e-12)
    assert_close(torch.tensor(lb), torch.tensor(la), what="loss_fn=objective() vs the default", rtol=1e-9)
    wa, wb = _weights(a), _weights(b)
    for name in wa:
        assert_close(wb[name], wa[name], what=f"{name}: loss_fn=objective() vs the default objective")


def test_train_step_bad_loss_fn(train, impl):
    """A loss_fn that is not callable is a TypeError naming loss_fn; one returning a non-scalar a ValueError."""
    model = _model(impl, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = [(randint(0, 64, (2, 16), 1), randint(0, 64, (2, 16), 2))]
    with raises_clear(TypeError, "loss_fn"):
        train.train_step(model, opt, batch, loss_fn="cross_entropy")
    with raises_clear(ValueError, "loss_fn", "scalar"):
        train.train_step(model, opt, batch, loss_fn=lambda logits, targets: logits.sum(-1))


def _first_step_loss(impl, train, corpus_docs, tokenizer, config, eps, coef):
    """The objective on step 1's batch and the freshly initialised model, written out from the contract."""
    data, model_mod, loss = impl.component("data"), impl.component("model"), impl.component("loss")
    tok = impl.component("tokenizer")
    eot = tokenizer.special_tokens[tok.ENDOFTEXT]
    stream = data.token_stream(data.tokenize_documents(corpus_docs[0], tokenizer), eot)
    x, y = data.FixedLengthBatches(stream, config.batch_size, TINY["context_length"], seed=config.seed).batch(0)
    torch.manual_seed(config.seed)
    model = model_mod.TransformerLM(model_mod.ModelConfig(vocab_size=tokenizer.vocab_size, **TINY))
    model.train()
    with torch.no_grad():
        return float(loss.objective(eps, coef)(model(x)[0], y))


def test_run_objective_is_used_logged_and_kept_on_resume(train, impl, corpus_docs, tokenizer, tmp_path):
    """label_smoothing / z_loss: step 1's logged loss is that objective; saved in the config; resuming with another is refused."""
    kw = _kw(corpus_docs, tokenizer)
    config = _config(train, tmp_path, steps=4, label_smoothing=0.2, z_loss=0.05)
    result = train.train(config, dict(TINY), stop_after=1, **kw)
    expected = _first_step_loss(impl, train, corpus_docs, tokenizer, config, 0.2, 0.05)
    plain = _first_step_loss(impl, train, corpus_docs, tokenizer, config, 0.0, 0.0)
    assert_close(torch.tensor(result.history[0]["loss"]), torch.tensor(expected),
                 what=f"step 1's logged loss with label_smoothing=0.2, z_loss=0.05 (plain CE would be {plain:.4f})",
                 rtol=1e-5)
    saved = impl.component("checkpoint").load_checkpoint(tmp_path / "checkpoint").train_config
    assert_equal((saved.get("label_smoothing"), saved.get("z_loss")), (0.2, 0.05),
                 what="(label_smoothing, z_loss) in the checkpoint's train config")
    for field_, value in [("label_smoothing", 0.0), ("z_loss", 0.1)]:
        with raises_clear(ValueError, "resume", field_):
            train.train(_config(train, tmp_path, steps=4, **{"label_smoothing": 0.2, "z_loss": 0.05, field_: value}),
                        dict(TINY), resume=True, **kw)
    resumed = train.train(config, dict(TINY), resume=True, **kw)
    assert_equal(resumed.step, 4, what="step after resuming with the same objective")


def test_objective_config_errors(train, tmp_path):
    """TrainConfig: label_smoothing outside [0, 1), z_loss < 0 are ValueErrors naming them; compile not bool/str a TypeError."""
    ok = dict(steps=10, warmup=1, out_dir=str(tmp_path))
    assert_equal((train.TrainConfig(**ok).label_smoothing, train.TrainConfig(**ok).z_loss,
                  train.TrainConfig(**ok).compile), (0.0, 0.0, False), what="defaults (label_smoothing, z_loss, compile)")
    for value in (-0.1, 1.0):
        with raises_clear(ValueError, "label_smoothing", "[0.0, 1.0)"):
            train.TrainConfig(**ok, label_smoothing=value)
    with raises_clear(ValueError, "z_loss", "[0.0, inf]"):
        train.TrainConfig(**ok, z_loss=-0.5)
    with raises_clear(TypeError, "compile"):
        train.TrainConfig(**ok, compile=3)


# --- compiled runs -------------------------------------------------------------------------------------
# torch.compile's default backend (inductor) needs tens of seconds per model on 2 CPU cores, so the
# spec compiles with "aot_eager": dynamo traces the model and AOTAutograd the backward, as inductor
# would see them, without generating C++ (benchmarks/test_bench_compile.py checks inductor).

def test_compiled_run_equals_eager_and_saves_eager_weights(train, impl, corpus_docs, tokenizer, tmp_path):
    """compile="aot_eager": the losses and weights of 3 steps equal the eager run's (float tolerance), and the
    checkpoint holds the plain model's keys (no "_orig_mod." prefix): it loads strictly into an eager model."""
    kw = _kw(corpus_docs, tokenizer)
    eager = train.train(_config(train, tmp_path / "eager", steps=3), dict(TINY), **kw)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    compiled = train.train(_config(train, tmp_path / "compiled", steps=3, compile="aot_eager"), dict(TINY), **kw)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs, \
        "compile='aot_eager': torch.compile traced no graph during the run (the switch was ignored)"
    assert_close(torch.tensor([r["loss"] for r in compiled.history]), torch.tensor([r["loss"] for r in eager.history]),
                 what="train losses of 3 steps, compiled vs eager", atol=1e-5, rtol=1e-4)
    ckpt = impl.component("checkpoint").load_checkpoint(tmp_path / "compiled" / "checkpoint")
    state = ckpt.model.state_dict()
    assert_equal(sorted(state), sorted(eager.model.state_dict()), what="checkpoint keys of a compiled run")
    model_mod = impl.component("model")
    fresh = model_mod.TransformerLM(model_mod.ModelConfig(vocab_size=tokenizer.vocab_size, **TINY))
    fresh.load_state_dict(state, strict=True)
    want = _weights(eager.model)
    for name, value in _weights(fresh).items():
        assert_close(value, want[name], what=f"{name} after 3 compiled steps vs eager", atol=1e-5, rtol=1e-4)


# --- TrainConfig's validation: both sides of every bound ------------------------------------------
# Each row: a field, values just inside its range (accepted) and just outside (refused with an error
# naming the field). Other fields are set so that only the field under test can be at fault.

_TINY_POS = 1e-12
_BELOW_1 = math.nextafter(1.0, 0.0)

CONFIG_BOUNDS = [
    # (field, accepted values, refused values, the other fields needed for the row)
    ("steps", [1, 2], [0, -1], dict(warmup=0)),
    ("schedule_steps", [None, 1, 9, 10], [0, 11], dict(steps=10, warmup=1)),
    ("batch_size", [1, 2], [0, -1], dict(accum=1)),
    ("lr", [_TINY_POS, 1.0, 1e3], [0.0, -_TINY_POS, -0.5, -1.0, math.inf, math.nan], dict(min_lr=0.0)),
    ("min_lr", [0.0, _TINY_POS, 1e-3], [-_TINY_POS, -0.5, math.nextafter(1e-3, 1.0), 1e-2], dict(lr=1e-3)),
    ("warmup", [0, 1, 10], [-1, 11], dict(steps=10)),
    ("weight_decay", [0.0, 1.0], [-_TINY_POS, -1.0], {}),
    ("grad_clip", [None, _TINY_POS, 1.0], [0.0, -_TINY_POS, -1.0], {}),
    ("eval_interval", [0, 1], [-1], {}),
    ("eval_batches", [None, 1, 2], [0, -1], {}),
    ("log_interval", [1, 2], [0, -1], {}),
    ("checkpoint_interval", [0, 1], [-1], {}),
    ("checkpoint_minutes", [0.0, _TINY_POS, 10.0], [-_TINY_POS, -0.5, -1.0], {}),
    ("vocab_size", [300, 512], [0, -1], {}),
    ("seed", [0, 1], [-1], {}),
    ("label_smoothing", [0.0, 0.5, _BELOW_1], [-_TINY_POS, 1.0, 1.5], {}),
    ("z_loss", [0.0, _TINY_POS, 1.0], [-_TINY_POS, -1.0], {}),
]


@pytest.mark.parametrize("field_, accepted, refused, others", CONFIG_BOUNDS, ids=[r[0] for r in CONFIG_BOUNDS])
def test_train_config_bounds_both_sides(train, tmp_path, field_, accepted, refused, others):
    """Each numeric TrainConfig field accepts the values just inside its documented range and refuses (naming it) those just outside."""
    base = {**dict(steps=100, warmup=10, out_dir=str(tmp_path)), **others}
    for value in accepted:
        try:
            config = train.TrainConfig(**{**base, field_: value})
        except (ValueError, TypeError) as err:
            raise AssertionError(f"TrainConfig({field_}={value!r}) is inside the documented range, "
                                 f"but it was refused: {type(err).__name__}: {err}") from None
        assert_equal(getattr(config, field_), value, what=f"TrainConfig({field_}={value!r}).{field_}")
    for value in refused:
        with raises_clear((ValueError, TypeError), field_):
            train.TrainConfig(**{**base, field_: value})


@pytest.mark.parametrize("batch_size, accum, divides", [
    (6, 1, True), (6, 2, True), (6, 3, True), (6, 6, True), (12, 4, True), (5, 5, True),
    (6, 4, False), (6, 5, False), (4, 8, False), (4, 3, False), (5, 2, False)])
def test_train_config_accum_must_divide_batch_size(train, tmp_path, batch_size, accum, divides):
    """accum is accepted exactly when it divides batch_size (accum > batch_size never does); otherwise a ValueError naming accum."""
    kw = dict(steps=10, warmup=1, out_dir=str(tmp_path), batch_size=batch_size, accum=accum)
    if divides:
        config = train.TrainConfig(**kw)
        assert_equal((config.batch_size, config.accum), (batch_size, accum), what="(batch_size, accum)")
    else:
        with raises_clear(ValueError, "accum"):
            train.TrainConfig(**kw)
    with raises_clear((ValueError, TypeError), "accum"):
        train.TrainConfig(**{**kw, "accum": 0})


def test_train_config_betas_are_a_pair_in_0_1(train, tmp_path):
    """betas: exactly two numbers, each in [0, 1) (0 accepted, 1 refused); others are errors naming betas."""
    ok = dict(steps=10, warmup=1, out_dir=str(tmp_path))
    for betas in [(0.0, 0.0), (0.9, 0.95), (_BELOW_1, _BELOW_1), (0.0, _BELOW_1), [0.5, 0.5]]:
        try:
            config = train.TrainConfig(**ok, betas=betas)
        except (ValueError, TypeError) as err:
            raise AssertionError(f"TrainConfig(betas={betas!r}) is a pair in [0, 1), but it was refused: "
                                 f"{type(err).__name__}: {err}") from None
        assert_equal(tuple(config.betas), tuple(betas), what=f"TrainConfig(betas={betas!r}).betas")
    for betas in [(1.0, 0.95), (0.9, 1.0), (-_TINY_POS, 0.95), (0.9, -_TINY_POS), (1.5, 0.95), (0.9, 1.5),
                  (-0.5, 0.9), (0.9, -0.5), (0.9,), (0.9, 0.95, 0.99), ()]:
        with raises_clear((ValueError, TypeError), "betas"):
            train.TrainConfig(**ok, betas=betas)


def test_train_config_device_names(train, tmp_path):
    """device "cpu", "cuda" and "cuda:N" are accepted (compared by value, CUDA not needed to construct); any other name is a ValueError naming device."""
    from .support import fresh
    ok = dict(steps=10, warmup=1, out_dir=str(tmp_path))
    for device in ["cpu", "cuda", "cuda:0", "cuda:1", "cuda:12", fresh("cpu"), fresh("cuda")]:
        try:
            config = train.TrainConfig(**ok, device=device)
        except (ValueError, TypeError) as err:
            raise AssertionError(f"TrainConfig(device={device!r}) is a documented device name, but it was "
                                 f"refused: {type(err).__name__}: {err}") from None
        assert_equal(config.device, device, what=f"TrainConfig(device={device!r}).device")
    for device in ["", "a", "cp", "cpv", "ane", "cud", "cpu0", "cudax", "tpu", "mps", "0:cuda", "x:cuda", ":cuda"]:
        with raises_clear(ValueError, "device"):
            train.TrainConfig(**ok, device=device)
    with raises_clear((ValueError, TypeError), "device"):
        train.TrainConfig(**ok, device=0)


# --- train_step's gradients, finite checks and objective results ------------------------------------

def test_train_step_leaves_an_unused_parameter_alone(train):
    """A parameter that gets no gradient in a step is not updated by it (gradients reset to None: no momentum step on a zero gradient)."""
    model = TwoParams()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    on, off = TwoParams.inputs()
    train.train_step(model, opt, [(on, None)])                       # a and b both get a gradient
    b = model.b.detach().clone()
    a = model.a.detach().clone()
    train.train_step(model, opt, [(off, None)])                      # only a does
    assert not torch.equal(model.a.detach(), a), "the parameter with a gradient must move"
    assert_equal(model.b.detach(), b, what="a parameter that got no gradient in the step (it must not move)")
    assert model.b.grad is None, f"after a step that gave b no gradient, b.grad should be None, got {model.b.grad}"


@pytest.mark.parametrize("case", ["infinite loss, finite gradients", "finite loss, NaN gradients"])
def test_train_step_refuses_either_non_finite_value(train, impl, case):
    """train_step raises DivergenceError when the loss OR the gradient norm is not finite, the other one finite; nothing is updated."""
    model = _model(impl, 2).double()
    before = _weights(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    x, y = randint(0, 64, (2, 16), 5), randint(0, 64, (2, 16), 6)
    if case.startswith("infinite"):
        def loss_fn(logits, targets):
            return logits.mean() + float("inf")                      # inf, d/dlogits = 1/n everywhere
    else:
        def loss_fn(logits, targets):
            return torch.sqrt(logits.sum() * 0.0)                    # 0, d/dlogits = 0 * inf = NaN
    with raises_clear(train.DivergenceError, "finite"):
        train.train_step(model, opt, [(x, y)], loss_fn=loss_fn)
    after = _weights(model)
    assert not [k for k in before if not torch.equal(after[k], before[k])], f"{case}: a refused step changed weights"
    assert_equal(len(opt.state), 0, what=f"{case}: optimizer states after a refused step")


def test_train_step_drops_the_gradients_of_a_refused_step(train, impl):
    """After a DivergenceError no gradient is left behind: the caller's optimizer.step() (weight decay on) changes nothing."""
    model = _model(impl, 2).double()
    before = _weights(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.5)
    x, y = randint(0, 64, (2, 16), 5), randint(0, 64, (2, 16), 6)
    with raises_clear(train.DivergenceError, "finite"):
        train.train_step(model, opt, [(x, y)], loss_fn=lambda logits, targets: logits.mean() + float("inf"))
    opt.step()
    after = _weights(model)
    moved = [k for k in before if not torch.equal(after[k], before[k])]
    assert not moved, f"optimizer.step() after a refused step moved {moved}: the divergent gradients were left (as zeros?)"


@pytest.mark.parametrize("result", [1.5, None, "loss"], ids=["float", "None", "str"])
def test_train_step_loss_fn_must_return_a_tensor(train, impl, result):
    """A loss_fn returning something that is not a tensor (a float, None, a str) is a ValueError naming loss_fn."""
    model = _model(impl, 0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batch = [(randint(0, 64, (2, 16), 1), randint(0, 64, (2, 16), 2))]
    with raises_clear(ValueError, "loss_fn"):
        train.train_step(model, opt, batch, loss_fn=lambda logits, targets: result)


# --- evaluate: no autograd, eval mode, max_batches -----------------------------------------------------

@pytest.mark.parametrize("max_batches", [None, 1, 2])
def test_evaluate_runs_without_autograd_in_eval_mode(train, impl, max_batches):
    """evaluate's forwards run in eval mode with autograd off (no graph), one per batch, max_batches of them when given."""
    data = impl.component("data")
    model = _model(impl, 1, dropout=0.5)
    model.train()
    seen = []
    model.register_forward_hook(lambda m, inputs, out: seen.append((m.training, torch.is_grad_enabled(),
                                                                    any(t.requires_grad for t in out
                                                                        if isinstance(t, torch.Tensor)))))
    stream = randint(0, 64, (80,), 3)
    nats, n = train.evaluate(model, stream, batch_size=2, max_batches=max_batches)
    batches = data.evaluation_batches(stream, 2, TINY["context_length"])
    chosen = batches if max_batches is None else batches[:max_batches]
    assert_equal(len(seen), len(chosen), what=f"forward passes of evaluate(max_batches={max_batches})")
    assert_equal(n, sum(int((y != -100).sum()) for _, y in chosen), what="number of targets counted")
    for training, grad, requires_grad in seen:
        assert not training, "evaluate must run the model in eval mode"
        assert not grad and not requires_grad, "evaluate must run without autograd (torch.no_grad): a graph was built"
    assert model.training, "evaluate must put the model back in train mode"


# --- TrainConfig.from_dict, data_fingerprint, find_special_text ----------------------------------------

def test_train_config_from_dict_fills_absent_fields_with_defaults(train, tmp_path):
    """from_dict inverts to_dict; absent fields take their defaults (an older checkpoint's config); unknown keys are a ValueError naming them."""
    full = train.TrainConfig(steps=12, warmup=3, lr=2e-3, min_lr=1e-4, betas=(0.8, 0.9), out_dir=str(tmp_path),
                             label_smoothing=0.1, z_loss=1e-4)
    assert_equal(train.TrainConfig.from_dict(full.to_dict()), full, what="from_dict(to_dict(config))")
    for partial in [{}, {"steps": 12, "warmup": 3}, {k: v for k, v in full.to_dict().items()
                                                     if k not in ("label_smoothing", "z_loss", "compile")}]:
        try:
            got = train.TrainConfig.from_dict(dict(partial))
        except (ValueError, TypeError) as err:
            raise AssertionError(f"from_dict({sorted(partial)}) (known fields only, some absent) was refused: "
                                 f"{type(err).__name__}: {err}") from None
        assert_equal(got, train.TrainConfig(**partial), what=f"from_dict of the fields {sorted(partial)}")
    with raises_clear(ValueError, "bogus_field"):
        train.TrainConfig.from_dict({**full.to_dict(), "bogus_field": 1})
    with raises_clear(ValueError, "bogus_field"):
        train.TrainConfig.from_dict({"steps": 12, "warmup": 3, "bogus_field": 1})


def _documented_fingerprint(train_docs, val_docs):
    """The contract's framing: for "train" then "val", the name, the document count (8 bytes little-endian),
    then each document's UTF-8 length (8 bytes little-endian) and bytes; SHA-256 hex."""
    import hashlib
    h = hashlib.sha256()
    for name, docs in ((b"train", train_docs), (b"val", val_docs)):
        h.update(name + len(docs).to_bytes(8, "little"))
        for doc in docs:
            data = doc.encode("utf-8")
            h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


@pytest.mark.parametrize("train_docs, val_docs", [
    (["hello world", "second doc"], ["val"]),
    (["", "a"], ["b", ""]),
    (["naïve café — ☃ 🦜", "x" * 300], ["日本語\n"]),
    (["only one"], ["v1", "v2", "v3"]),
])
def test_data_fingerprint_is_the_documented_sha256(train, train_docs, val_docs):
    """data_fingerprint is the SHA-256 of the length-prefixed documents (8-byte little-endian counts and lengths), so checkpoints are portable."""
    assert_equal(train.data_fingerprint(train_docs, val_docs), _documented_fingerprint(train_docs, val_docs),
                 what=f"data_fingerprint({train_docs!r:.60}, {val_docs!r:.60})")
    changed = [train_docs[0] + "!"] + train_docs[1:]                 # same counts, one document's text differs
    assert train.data_fingerprint(changed, val_docs) != train.data_fingerprint(train_docs, val_docs), \
        "data_fingerprint must depend on every document's text, not only on the counts"


@pytest.mark.parametrize("docs, specials, expected", [
    (["abc", "x\n\ny <|endoftext|>"], ["<|endoftext|>"], (1, 3, "<|endoftext|>")),
    (["\n<|endoftext|>"], ["<|endoftext|>"], (0, 2, "<|endoftext|>")),
    (["\n\n\n<|endoftext|>\n"], ["<|endoftext|>"], (0, 4, "<|endoftext|>")),
    (["<|endoftext|>\n"], ["<|endoftext|>"], (0, 1, "<|endoftext|>")),
    (["plain", "\n\n<|a|> then <|b|>"], ["<|b|>", "<|a|>"], (1, 3, "<|a|>")),
    (["no special\nat all"], ["<|endoftext|>"], None),
])
def test_find_special_text_reports_the_first_hit_and_its_line(train, docs, specials, expected):
    """find_special_text: the first document holding a special token's text, the 1-based line of its first occurrence (1 + newlines before it), the token."""
    got = train.find_special_text(docs, specials)
    assert_equal(None if got is None else tuple(got), expected, what=f"find_special_text({docs!r}, {specials!r})")


# --- train's arguments: the signature, the documents, out_dir, the progress bar -------------------------

def test_train_signature_config_by_keyword_rest_keyword_only(train, corpus_docs, tmp_path):
    """train(config=..., model_config=...) may be called by keyword; train_docs and the rest are keyword-only (TypeError positionally)."""
    config = _config(train, tmp_path, steps=2)
    with raises_clear(ValueError, "train_docs"):     # by keyword: accepted, then the empty train_docs refused
        train.train(config=config, model_config=dict(TINY), train_docs=[], val_docs=corpus_docs[1])
    with pytest.raises(TypeError):
        train.train(config, dict(TINY), corpus_docs[0], corpus_docs[1])
    assert not (tmp_path / "checkpoint").exists(), "a refused call must not write a checkpoint"


@pytest.mark.parametrize("which, empty", [("train_docs", []), ("train_docs", None), ("val_docs", []),
                                          ("val_docs", None)])
def test_train_needs_both_document_lists(train, corpus_docs, tokenizer, tmp_path, which, empty):
    """train_docs and val_docs are both required: either one empty or missing (the other given) is a ValueError naming it."""
    kw = dict(_kw(corpus_docs, tokenizer), **{which: empty})
    with raises_clear(ValueError, which):
        train.train(_config(train, tmp_path, steps=2), dict(TINY), **kw)
    assert not (tmp_path / "checkpoint").exists(), f"{which}={empty!r}: a refused run must not write a checkpoint"


def test_train_creates_out_dir_with_its_parents(train, corpus_docs, tokenizer, tmp_path):
    """An out_dir whose parents do not exist yet is created with them (like `mkdir -p`)."""
    out = tmp_path / "not" / "yet" / "there"
    result = train.train(_config(train, out, steps=2), dict(TINY), **_kw(corpus_docs, tokenizer))
    assert_equal(result.step, 2, what="step of a run into a new nested out_dir")
    assert (out / "checkpoint").exists() and (out / "log.jsonl").exists(), \
        f"the checkpoint and the log must be written in the new {out}"


@pytest.mark.parametrize("progress", [None, False, True], ids=["default", "False", "True"])
def test_train_progress_bar_only_when_asked(train, corpus_docs, tokenizer, tmp_path, capfd, progress):
    """progress=True shows a tqdm bar counting the steps (on stderr, ending at 3/3); the default (False) writes nothing there."""
    kw = _kw(corpus_docs, tokenizer) if progress is None else dict(_kw(corpus_docs, tokenizer), progress=progress)
    capfd.readouterr()
    train.train(_config(train, tmp_path, steps=3), dict(TINY), **kw)
    err = capfd.readouterr().err
    if progress:
        assert "3/3" in err, f"progress=True: expected a tqdm bar ending at 3/3 steps on stderr, got {err[-300:]!r}"
    else:
        assert err == "", f"progress={progress}: nothing should be written to stderr, got {err[-300:]!r}"


# --- the run directory, the data check, the objective and the validation metrics --------------------------

def test_overwrite_starts_a_fresh_log(train, corpus_docs, tokenizer, tmp_path):
    """overwrite=True replaces the old run: its log then holds exactly the new run's records (the old ones are gone)."""
    kw = _kw(corpus_docs, tokenizer)
    train.train(_config(train, tmp_path, steps=3, lr=2e-2), dict(TINY), **kw)
    result = train.train(_config(train, tmp_path, steps=2), dict(TINY), overwrite=True, **kw)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines() if line.strip()]
    assert_equal([r["step"] for r in records], [1, 2], what="steps in the log after overwrite=True (old run: 1..3)")
    assert_equal([r["loss"] for r in records], [r["loss"] for r in result.history],
                 what="losses in the log after overwrite=True vs the new run's history")


def test_resume_on_other_data_names_both_fingerprints(train, corpus_docs, tokenizer, tmp_path):
    """Resuming on other documents: ValueError naming allow_new_data and both fingerprints (first 12 hex digits, then "...")."""
    kw = _kw(corpus_docs, tokenizer)
    config = _config(train, tmp_path, steps=3)
    train.train(config, dict(TINY), stop_after=1, **kw)
    other = corpus_docs[0][1:] + corpus_docs[0][:1]                  # the same documents in another order
    saved = _documented_fingerprint(corpus_docs[0], corpus_docs[1])
    new = _documented_fingerprint(other, corpus_docs[1])
    with raises_clear(ValueError, "allow_new_data", saved[:12] + "...", new[:12] + "..."):
        train.train(config, dict(TINY), resume=True, **dict(kw, train_docs=other))


@pytest.mark.parametrize("eps, coef", [(0.2, 0.0), (0.0, 0.05)])
def test_either_objective_field_alone_is_used(train, impl, corpus_docs, tokenizer, tmp_path, eps, coef):
    """label_smoothing alone, or z_loss alone (the other 0), already trains on loss.objective(label_smoothing, z_loss)."""
    config = _config(train, tmp_path, steps=2, label_smoothing=eps, z_loss=coef)
    result = train.train(config, dict(TINY), stop_after=1, **_kw(corpus_docs, tokenizer))
    expected = _first_step_loss(impl, train, corpus_docs, tokenizer, config, eps, coef)
    plain = _first_step_loss(impl, train, corpus_docs, tokenizer, config, 0.0, 0.0)
    assert abs(expected - plain) > 1e-3, "the two objectives must differ for this test to mean anything"
    assert_close(torch.tensor(result.history[0]["loss"]), torch.tensor(expected),
                 what=f"step 1's logged loss with label_smoothing={eps}, z_loss={coef} (plain CE: {plain:.5f})", rtol=1e-5)


def test_val_metrics_of_a_one_target_stream(train, impl, corpus_docs, tokenizer, tmp_path):
    """val_docs=[""] (stream: two end-of-texts, ONE target): val_loss is that target's loss, val_bpc it / ln 2 / 1 character."""
    eot = tokenizer.special_tokens[impl.component("tokenizer").ENDOFTEXT]
    result = train.train(_config(train, tmp_path, steps=1, warmup=1), dict(TINY), train_docs=corpus_docs[0],
                         val_docs=[""], tokenizer=tokenizer)
    model = result.model.eval()
    with torch.no_grad():
        logits = model(torch.tensor([[eot]]))[0][0]                 # (1, V): the prediction after the first eot
    expected = float(torch.nn.functional.cross_entropy(logits.double(), torch.tensor([eot])))
    assert_close(torch.tensor(result.val_loss), torch.tensor(expected), what="val_loss of a one-target stream", rtol=1e-5)
    assert_close(torch.tensor(result.val_bpc), torch.tensor(expected / math.log(2) / 1),
                 what="val_bpc of a one-target stream (1 character: the end-of-text)", rtol=1e-5)


def test_val_bpc_prorates_the_characters_of_a_partial_evaluation(train, impl, corpus_docs, tokenizer, tmp_path):
    """At every evaluation (periodic over eval_batches, or final) val_bpc = val_loss * targets / ln 2 / characters of the whole val text."""
    data = impl.component("data")
    cfg = dict(steps=2, eval_interval=1, eval_batches=1, batch_size=2, checkpoint_interval=0, checkpoint_minutes=0)
    result = train.train(_config(train, tmp_path, **cfg), dict(TINY), **_kw(corpus_docs, tokenizer))
    eot = tokenizer.special_tokens[impl.component("tokenizer").ENDOFTEXT]
    targets = data.token_stream(data.tokenize_documents(corpus_docs[1], tokenizer), eot).numel() - 1
    chars = sum(len(d) + 1 for d in corpus_docs[1])
    assert targets > 2 * TINY["context_length"], "one evaluation batch must not cover the whole stream here"
    for r in result.history:
        expected = r["val_loss"] * targets / math.log(2) / chars
        assert_close(torch.tensor(r["val_bpc"]), torch.tensor(expected), rtol=1e-9,
                     what=f"val_bpc at step {r['step']} ({'periodic, 1 batch' if r['step'] == 1 else 'final'})")


# --- throughput: tokens_per_s on a clock that only moves with the optimizer steps ---------------------

def test_tokens_per_s_is_tokens_over_training_time(train, corpus_docs, tokenizer, tmp_path):
    """tokens_per_s = the tokens this call trained on / its seconds in the steps; elapsed_s = seconds since the call began (records and result)."""
    config = _config(train, tmp_path, steps=4, batch_size=4, accum=2, eval_interval=2, checkpoint_interval=0,
                     checkpoint_minutes=0)
    per_step = 4 * TINY["context_length"]                            # the tokens of one optimizer step (x of (4, T))
    with step_clock():
        first = train.train(config, dict(TINY), stop_after=1, **_kw(corpus_docs, tokenizer))
        resumed = train.train(config, dict(TINY), resume=True, **_kw(corpus_docs, tokenizer))
    for name, result, n in (("the first step", first, 1), ("the resumed steps 2-4", resumed, 3)):
        assert_equal([r["tokens_per_s"] for r in result.history], [k * per_step / (0.75 * k) for k in range(1, n + 1)],
                     what=f"tokens_per_s of the records of {name} (0.75 s a step, {per_step} tokens a step)")
        assert_equal(result.tokens_per_s, n * per_step / (0.75 * n), what=f"result.tokens_per_s of {name}")
        assert_equal([r["elapsed_s"] for r in result.history], [0.75 * k for k in range(1, n + 1)],
                     what=f"elapsed_s of the records of {name} (seconds since this call began)")


def test_every_evaluation_step_is_logged(train, corpus_docs, tokenizer, tmp_path):
    """An evaluation step is logged (with val_loss) even when log_interval does not divide it: steps 2, 3, 4, 5 for log 2, eval 3, 5 steps."""
    config = _config(train, tmp_path, steps=5, log_interval=2, eval_interval=3, checkpoint_interval=0)
    result = train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    assert_equal([(r["step"], "val_loss" in r) for r in result.history], [(2, False), (3, True), (4, False), (5, True)],
                 what="(step, evaluated) of the records (log_interval=2, eval_interval=3, last step 5)")


@pytest.mark.parametrize("minutes, expected", [
    (1 / 32, [None, None, 2, 2, 4, 4]),          # 1.875 s: exactly 2 steps of 0.9375 s, reached exactly (>=)
    (0.0234375, [None, None, 2, 2, 4, 4]),       # 1.40625 s: 1.5 steps, passed at the 2nd step
    (0.0315, [None, None, None, 3, 3, 3]),       # 1.89 s: just over 2 steps, passed at the 3rd
    (0.031, [None, None, 2, 2, 4, 4]),           # 1.86 s: just under 2 steps
], ids=["exactly-2-steps", "1.5-steps", "just-over-2-steps", "just-under-2-steps"])
def test_timed_checkpoints_follow_checkpoint_minutes(train, impl, corpus_docs, tokenizer, tmp_path, minutes,
                                                     expected):
    """A checkpoint is saved once 60 * checkpoint_minutes seconds (or more) have passed since the last save; shown while steps 1..6 are evaluated."""
    ckpt_mod = impl.component("checkpoint")
    seen = []

    def look(line):
        try:
            seen.append(ckpt_mod.load_checkpoint(tmp_path / "checkpoint").step)
        except FileNotFoundError:
            seen.append(None)

    config = _config(train, tmp_path, steps=6, eval_interval=1, checkpoint_interval=0, checkpoint_minutes=minutes)
    with step_clock(start=0.5, tick=0.9375):
        train.train(config, dict(TINY), print_fn=look, **_kw(corpus_docs, tokenizer))
    assert_equal(seen[:6], expected, what=f"checkpoint step on disk while steps 1..6 are evaluated "
                 f"(0.9375 s a step, checkpoint_minutes={minutes} = {60 * minutes:g} s)")


def test_a_run_resumed_past_step_256_still_ends_with_its_final_evaluation(train, impl, corpus_docs, tokenizer, tmp_path):
    """The last step is recognised by value at any step number: a run resumed at step 300 (of 302) evaluates and saves at step 302."""
    ckpt_mod = impl.component("checkpoint")
    config = _config(train, tmp_path, steps=302, warmup=2, log_interval=1, checkpoint_interval=0, checkpoint_minutes=0)
    early = _config(train, tmp_path, steps=2, warmup=2, log_interval=1, checkpoint_interval=0, checkpoint_minutes=0)
    train.train(early, dict(TINY), stop_after=1, **_kw(corpus_docs, tokenizer))
    ckpt = ckpt_mod.load_checkpoint(tmp_path / "checkpoint")
    ckpt_mod.save_checkpoint(tmp_path / "checkpoint", ckpt.model, step=300, tokenizer=ckpt.tokenizer,
                             rng_state=ckpt.rng_state, data_state={**ckpt.data_state, "step": 300},
                             train_config={**ckpt.train_config, "steps": 302}, extra=ckpt.extra)
    result = train.train(config, dict(TINY), resume=True, **_kw(corpus_docs, tokenizer))
    assert_equal(result.step, 302, what="result.step of the run resumed at 300")
    assert_equal([(r["step"], "val_loss" in r) for r in result.history], [(301, False), (302, True)],
                 what="(step, evaluated) of the records after resuming at step 300 (the last is 302)")
    assert_equal(ckpt_mod.load_checkpoint(tmp_path / "checkpoint").step, 302, what="step of the final checkpoint")


# --- special token text: where it is named; the run directory; the log kept on resume -----------------------

@pytest.mark.parametrize("val_index", [0, 3])
def test_special_token_text_in_val_docs_is_named_by_its_val_index(train, corpus_docs, tokenizer, tmp_path, val_index):
    """Special token text in val_docs[j] is a ValueError naming val_docs[j] (its index among val_docs, not among all documents)."""
    from .support import fresh
    train_docs = list(corpus_docs[0][:2])
    val_docs = ["one", "two", "three", "four"]
    val_docs[val_index] = "clean line\nthen <|endoftext|> here"
    with raises_clear(ValueError, f"val_docs[{val_index}]", "line 2"):
        train.train(_config(train, tmp_path, steps=2), dict(TINY), train_docs=train_docs, val_docs=val_docs,
                    tokenizer=tokenizer, special_in_text=fresh("error"))


def test_special_in_text_text_trains_on_it_as_plain_text(train, corpus_docs, tokenizer, tmp_path):
    """special_in_text="text": documents holding a special token's text train without error (the text encoded as plain text)."""
    docs = list(corpus_docs[0][:20])
    docs[3] = "a line\nanother <|endoftext|> here"
    result = train.train(_config(train, tmp_path, steps=2), dict(TINY), train_docs=docs, val_docs=corpus_docs[1],
                         tokenizer=tokenizer, special_in_text="text")
    assert_equal(result.step, 2, what="steps done with special_in_text='text'")


@pytest.mark.parametrize("content, holds", [(None, False), ("", False), ("x", True), ("\n", True)],
                         ids=["no-log", "empty-log", "1-byte-log", "newline-log"])
def test_what_counts_as_an_existing_run(train, corpus_docs, tokenizer, tmp_path, content, holds):
    """A fresh run is refused (FileExistsError) over a non-empty log.jsonl, even of 1 byte; an empty or missing log is no run."""
    tmp_path.mkdir(exist_ok=True)
    if content is not None:
        (tmp_path / "log.jsonl").write_text(content)
    config = _config(train, tmp_path, steps=2)
    if holds:
        with raises_clear(FileExistsError, str(tmp_path)):
            train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    else:
        assert_equal(train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer)).step, 2,
                     what=f"steps of a fresh run over a directory with log {content!r}")


def test_a_checkpoint_without_its_log_is_still_a_run(train, corpus_docs, tokenizer, tmp_path):
    """A directory holding a checkpoint but no log (deleted) still holds a run: a fresh run there is a FileExistsError."""
    config = _config(train, tmp_path, steps=2)
    train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    (tmp_path / "log.jsonl").unlink()
    with raises_clear(FileExistsError, str(tmp_path)):
        train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))


def test_resume_keeps_every_complete_record_up_to_the_checkpoint(train, corpus_docs, tokenizer, tmp_path):
    """On resume the log keeps its complete records of steps <= the checkpoint's, past a broken line in the middle; a record without a step goes."""
    config = _config(train, tmp_path, steps=5, checkpoint_interval=0, checkpoint_minutes=0)
    train.train(config, dict(TINY), stop_after=3, **_kw(corpus_docs, tokenizer))
    lines = (tmp_path / "log.jsonl").read_text().splitlines(keepends=True)
    assert_equal(len(lines), 3, what="records in the log of steps 1..3")
    broken = lines[:1] + ["{not json\n", json.dumps({"note": "no step here"}) + "\n"] + lines[1:]
    (tmp_path / "log.jsonl").write_text("".join(broken))
    train.train(config, dict(TINY), resume=True, **_kw(corpus_docs, tokenizer))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert_equal([r.get("step") for r in records], [1, 2, 3, 4, 5],
                 what="steps in the log after resuming (a broken line after step 1, a step-less record)")


def test_resuming_a_finished_run_does_nothing_more(train, corpus_docs, tokenizer, tmp_path):
    """Resuming a run already at its last step is no error: no step, the result reports the step and a full validation of the final model."""
    config = _config(train, tmp_path, steps=2)
    done = train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    again = train.train(config, dict(TINY), resume=True, **_kw(corpus_docs, tokenizer))
    assert_equal(again.step, 2, what="step of a finished run resumed")
    assert_equal(again.history, [], what="records of a resumed finished run")
    assert_close(torch.tensor(again.val_loss), torch.tensor(done.val_loss), what="val_loss of the finished run, again",
                 rtol=1e-6)
    assert_close(torch.tensor(again.val_bpc), torch.tensor(done.val_bpc), what="val_bpc of the finished run, again",
                 rtol=1e-6)


# --- a failed log write, the signal named, the divergence message ----------------------------------------

@pytest.mark.parametrize("kept", [True, False], ids=["checkpoint-at-step-1", "no-checkpoint"])
def test_a_failed_log_write_is_a_run_write_error(train, corpus_docs, tokenizer, tmp_path, kept):
    """A log write that fails (EFBIG: a file size limit) is a RunWriteError naming the log and what is left (the step-1 checkpoint, or none)."""
    kw = _kw(corpus_docs, tokenizer)
    config = _config(train, tmp_path, steps=3, checkpoint_interval=0, checkpoint_minutes=0)
    train.train(config, dict(TINY), stop_after=1, **kw)                # checkpoint at step 1, token cache built
    size = (tmp_path / "log.jsonl").stat().st_size
    if kept:                                                             # resume: the log is kept, step 2's record fails
        with file_size_limit(size + 8), raises_clear(train.RunWriteError, "log", "step 1"):
            train.train(config, dict(TINY), resume=True, **kw)
    else:                                                                # a fresh run over it: no checkpoint left yet
        with file_size_limit(8), raises_clear(train.RunWriteError, "log", "no checkpoint"):
            train.train(config, dict(TINY), overwrite=True, **kw)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_training_interrupted_names_the_signal(train, corpus_docs, tokenizer, tmp_path, name):
    """TrainingInterrupted after SIGINT/SIGTERM has signal_name and a message naming that signal, and checkpoint = out_dir/checkpoint."""
    import os
    import signal
    config = _config(train, tmp_path, steps=3, eval_interval=1, checkpoint_interval=0, checkpoint_minutes=0)
    with pytest.raises(train.TrainingInterrupted) as info:
        train.train(config, dict(TINY), print_fn=lambda line: os.kill(os.getpid(), getattr(signal, name)),
                    **_kw(corpus_docs, tokenizer))
    assert_equal(info.value.signal_name, name, what="TrainingInterrupted.signal_name")
    assert name in str(info.value), f"the message should name {name}: {info.value}"
    assert_equal(info.value.step, 1, what="step of the interruption")
    assert_equal(str(info.value.checkpoint), str(tmp_path / "checkpoint"), what="TrainingInterrupted.checkpoint")


def test_divergence_message_names_the_checkpoint_left(train, impl, corpus_docs, tokenizer, tmp_path):
    """DivergenceError names the checkpoint left (its path; checkpoint_step = its step) or, before any save, says no checkpoint was written."""
    config = _config(train, tmp_path / "late", steps=30, lr=1e6, min_lr=0.0, warmup=0, checkpoint_interval=1,
                     checkpoint_minutes=0)
    with pytest.raises(train.DivergenceError) as info:
        train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    ckpt = impl.component("checkpoint").load_checkpoint(tmp_path / "late" / "checkpoint")
    assert_equal(info.value.checkpoint_step, ckpt.step, what="DivergenceError.checkpoint_step")
    assert str(tmp_path / "late" / "checkpoint") in str(info.value), f"the message should name the checkpoint left: {info.value}"
    config = _config(train, tmp_path / "first", steps=3, lr=1e39, min_lr=0.0, warmup=0, checkpoint_interval=1,
                     checkpoint_minutes=0)
    with pytest.raises(train.DivergenceError) as info:
        train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    assert_equal(info.value.checkpoint_step, None, what="DivergenceError.checkpoint_step before any save")
    assert "no checkpoint" in str(info.value), f"the message should say no checkpoint was written: {info.value}"


# --- generated-mutant properties: the run's plumbing (second pass) ---

def _cache_file(impl, out, docs, tokenizer):
    """The token cache file of ``docs`` in the run directory ``out``: out/tokens/tokens-<data.cache_key>.npz."""
    return out / "tokens" / f"tokens-{impl.component('data').cache_key(list(docs), tokenizer)}.npz"


def _write_token_cache(file, token_docs):
    """A cache file in data's format: ``tokens`` int32 (all documents concatenated), ``offsets`` int64."""
    import numpy as np
    file.parent.mkdir(parents=True, exist_ok=True)
    offsets = np.cumsum([0] + [len(t) for t in token_docs], dtype=np.int64)
    tokens = np.array([i for t in token_docs for i in t], dtype=np.int32)
    with open(file, "wb") as f:
        np.savez(f, tokens=tokens, offsets=offsets)


def _corrupt_cache(kind, file, token_docs, vocab_size):
    """Write a cache file at ``file`` that fails to load or does not fit the documents, as ``kind`` says."""
    import numpy as np
    file.parent.mkdir(parents=True, exist_ok=True)
    bad = [list(t) for t in token_docs]
    if kind == "empty-file":                         # np.load: EOFError
        file.write_bytes(b"")
    elif kind == "not-numpy":                        # np.load: ValueError (neither zip nor .npy)
        file.write_bytes(b"these are not the tokens you are looking for")
    elif kind == "no-offsets":                       # a zip without the offsets array: KeyError
        with open(file, "wb") as f:
            np.savez(f, tokens=np.zeros(3, np.int32))
    elif kind == "a-directory":                      # a link to a directory: reading it is an OSError
        target = file.parent / "a-directory"
        target.mkdir()
        file.symlink_to(target, target_is_directory=True)
    elif kind == "one-document-short":
        _write_token_cache(file, bad[:-1])
    elif kind == "one-document-more":
        _write_token_cache(file, bad + [[1, 2, 3]])
    else:                                            # an id outside [0, vocab_size), the others valid
        bad[1][0] = {"id--1": -1, "id-V": vocab_size, "id-V+1": vocab_size + 1}[kind]
        _write_token_cache(file, bad)


@pytest.mark.parametrize("kind", ["empty-file", "not-numpy", "no-offsets", "a-directory", "one-document-short",
                                  "one-document-more", "id--1", "id-V", "id-V+1"])
def test_a_corrupt_token_cache_is_rebuilt_with_a_warning(train, impl, corpus_docs, tokenizer, tmp_path, kind):
    """A token cache file that fails to load (EOF, not numpy, a missing array, an OSError) or does not fit (document count, an id outside [0, V)) is rebuilt, with a warning naming it."""
    train_docs = list(corpus_docs[0][:20])
    encoded = [tokenizer.encode(d) for d in train_docs]
    file = _cache_file(impl, tmp_path, train_docs, tokenizer)
    _corrupt_cache(kind, file, encoded, tokenizer.vocab_size)
    lines = []
    result = train.train(_config(train, tmp_path, steps=1, warmup=1), dict(TINY), train_docs=train_docs,
                         val_docs=corpus_docs[1], tokenizer=tokenizer, print_fn=lines.append)
    assert_equal(result.step, 1, what=f"steps done over a token cache that is {kind}")
    warned = [line for line in lines if "warning" in str(line).lower() and file.name in str(line)]
    assert warned, f"a token cache that is {kind}: expected a warning through print_fn naming {file.name}, got {lines}"
    assert file.is_file() and not file.is_symlink(), f"the token cache {file} should have been rebuilt as a file"
    reread = impl.component("data").tokenize_documents(train_docs, tokenizer, cache_dir=tmp_path / "tokens")
    assert_equal([t.tolist() for t in reread], encoded, what=f"the rebuilt token cache (it was {kind})")


def test_a_sound_token_cache_of_many_documents_is_used_without_warning(train, impl, corpus_docs, tokenizer, tmp_path):
    """Documents with id 0, an empty document, more than 256 documents: their cache is sound (no warning), written once and read back."""
    docs = ["\x00 a zero byte", ""] + [f"document number {i}" for i in range(298)]
    assert 0 in tokenizer.encode(docs[0]), "the first document must hold the id 0 for this test to mean anything"
    file = _cache_file(impl, tmp_path, docs, tokenizer)
    config = _config(train, tmp_path, steps=2, warmup=1, checkpoint_interval=0, checkpoint_minutes=0)
    for attempt, kw in (("fresh", dict(stop_after=1)), ("resumed", dict(resume=True))):
        lines = []
        try:
            result = train.train(config, dict(TINY), train_docs=docs, val_docs=corpus_docs[1], tokenizer=tokenizer,
                                 print_fn=lines.append, **kw)
        except Exception as err:
            raise AssertionError(f"{attempt} run on 300 sound documents (one empty, one with id 0) failed: "
                                 f"{type(err).__name__}: {err}") from None
        assert not [line for line in lines if file.name in str(line)], \
            f"{attempt} run: a sound token cache must not be warned about, got {lines}"
        assert file.is_file(), f"{attempt} run: the token cache {file} should exist"
    assert_equal(result.step, 2, what="step of the resumed run over the cached documents")


@pytest.mark.parametrize("first, second, stopped", [
    ("SIGINT", "SIGINT", False), ("SIGTERM", "SIGINT", False), ("SIGTERM", "SIGTERM", True), ("SIGINT", "SIGTERM", True),
])
def test_a_second_signal_after_either_first_one(train, corpus_docs, tokenizer, tmp_path, first, second, stopped):
    """After a first SIGINT/SIGTERM, a second SIGINT interrupts at once (a plain KeyboardInterrupt); a second SIGTERM is ignored (the first is named)."""
    import os
    import signal

    def two_signals(line):
        os.kill(os.getpid(), getattr(signal, first))
        os.kill(os.getpid(), getattr(signal, second))

    config = _config(train, tmp_path, steps=3, eval_interval=1, checkpoint_interval=0, checkpoint_minutes=0)
    with pytest.raises(KeyboardInterrupt) as info:
        train.train(config, dict(TINY), print_fn=two_signals, **_kw(corpus_docs, tokenizer))
    if stopped:
        assert isinstance(info.value, train.TrainingInterrupted), \
            f"{first} then {second}: expected TrainingInterrupted after the step, got {type(info.value).__name__}"
        assert_equal(info.value.signal_name, first, what=f"signal_name after {first} then {second}")
        assert_equal(info.value.step, 1, what=f"step of the interruption after {first} then {second}")
    else:
        assert type(info.value) is KeyboardInterrupt, \
            f"{first} then {second}: expected a plain KeyboardInterrupt at once, got {type(info.value).__name__}"


def test_signal_handlers_are_restored_after_a_run(train, corpus_docs, tokenizer, tmp_path):
    """train installs its SIGINT/SIGTERM handlers only for the call: afterwards (returned or interrupted) the previous handlers are back."""
    import os
    import signal
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    mine = {signal.SIGINT: lambda *a: None, signal.SIGTERM: lambda *a: None}
    try:
        for s, handler in mine.items():
            signal.signal(s, handler)
        train.train(_config(train, tmp_path / "done", steps=1, warmup=1), dict(TINY), **_kw(corpus_docs, tokenizer))
        for s, handler in mine.items():
            assert signal.getsignal(s) is handler, f"{signal.Signals(s).name}'s handler was not restored after a run"
        with pytest.raises(train.TrainingInterrupted):
            train.train(_config(train, tmp_path / "stopped", steps=3, eval_interval=1), dict(TINY),
                        print_fn=lambda line: os.kill(os.getpid(), signal.SIGTERM), **_kw(corpus_docs, tokenizer))
        for s, handler in mine.items():
            assert signal.getsignal(s) is handler, \
                f"{signal.Signals(s).name}'s handler was not restored after an interrupted run"
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@pytest.mark.parametrize("clip", [None, 0.25])
def test_divergence_message_suggests_a_clip(train, corpus_docs, tokenizer, tmp_path, clip):
    """The DivergenceError message suggests a lower lr (naming it) and, without a clip, "a gradient clip", else a smaller grad_clip naming the current one."""
    config = _config(train, tmp_path, steps=3, lr=1e39, min_lr=0.0, warmup=0, grad_clip=clip, checkpoint_interval=1,
                     checkpoint_minutes=0)
    with pytest.raises(train.DivergenceError) as info:
        train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    message = str(info.value)
    assert "1e+39" in message, f"the message should name the lr (1e+39): {message}"
    if clip is None:
        assert "gradient clip" in message and "now None" not in message, \
            f"grad_clip=None: the message should suggest a gradient clip: {message}"
    else:
        assert "grad_clip" in message and "0.25" in message, \
            f"grad_clip=0.25: the message should suggest a smaller grad_clip than 0.25: {message}"


def test_resume_with_a_shorter_schedule_is_refused(train, corpus_docs, tokenizer, tmp_path):
    """Resuming with a schedule total below the run's (steps kept, schedule_steps smaller) is a ValueError naming resume."""
    kw = _kw(corpus_docs, tokenizer)
    train.train(_config(train, tmp_path, steps=6), dict(TINY), stop_after=2, **kw)
    with raises_clear(ValueError, "resume"):
        train.train(_config(train, tmp_path, steps=6, schedule_steps=4), dict(TINY), resume=True, **kw)


@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_second_signal(train, corpus_docs, tokenizer, tmp_path, name):
    """A second SIGINT interrupts at once (a plain KeyboardInterrupt); a second SIGTERM still lets the step finish (TrainingInterrupted)."""
    import os
    import signal
    config = _config(train, tmp_path, steps=3, eval_interval=1, checkpoint_interval=0, checkpoint_minutes=0)

    def twice(line):
        os.kill(os.getpid(), getattr(signal, name))
        os.kill(os.getpid(), getattr(signal, name))

    with pytest.raises(KeyboardInterrupt) as info:
        train.train(config, dict(TINY), print_fn=twice, **_kw(corpus_docs, tokenizer))
    if name == "SIGINT":
        assert not isinstance(info.value, train.TrainingInterrupted), \
            f"a second SIGINT must interrupt at once (KeyboardInterrupt), got TrainingInterrupted: {info.value}"
    else:
        assert isinstance(info.value, train.TrainingInterrupted), \
            f"a second SIGTERM must still finish the step and raise TrainingInterrupted, got {type(info.value).__name__}"
        assert_equal(info.value.signal_name, "SIGTERM", what="signal_name after two SIGTERMs")


def test_train_restores_the_signal_handlers(train, corpus_docs, tokenizer, tmp_path):
    """After train returns, SIGINT's and SIGTERM's handlers are the ones it found (its deferral is only for the run)."""
    import signal
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    train.train(_config(train, tmp_path, steps=1, warmup=1), dict(TINY), **_kw(corpus_docs, tokenizer))
    after = {s: signal.getsignal(s) for s in before}
    assert_equal(after, before, what="signal handlers after train (SIGINT, SIGTERM)")


@pytest.mark.parametrize("what", ["log", "checkpoint"])
def test_a_failed_write_gives_the_os_reason_and_what_is_left(train, corpus_docs, tokenizer, tmp_path, what):
    """A failed log or checkpoint write is a RunWriteError with the OS error's errno, its description in parentheses, and what is left (an unreadable checkpoint: "cannot be read")."""
    import errno
    import os
    import shutil
    ckpt, log = tmp_path / "checkpoint", tmp_path / "log.jsonl"

    def break_it(line):
        if not str(line).startswith("step 2"):
            return
        if what == "log":                            # the checkpoint of step 1 unreadable, the log not writable
            (ckpt / "CURRENT").write_text("not a version\n")
            log.unlink()
            log.mkdir()
        else:                                        # the checkpoint directory cannot be created
            shutil.rmtree(ckpt)
            ckpt.symlink_to(tmp_path / "nowhere", target_is_directory=True)

    code = errno.EISDIR if what == "log" else errno.EEXIST
    words = [f"({os.strerror(code)})"] + (["log", "cannot be read"] if what == "log" else ["checkpoint"])
    config = _config(train, tmp_path, steps=3, eval_interval=1, checkpoint_interval=1, checkpoint_minutes=0)
    with pytest.raises(train.RunWriteError) as info:
        train.train(config, dict(TINY), print_fn=break_it, **_kw(corpus_docs, tokenizer))
    assert_equal(info.value.errno, code, what=f"RunWriteError.errno of a failed {what} write")
    missing = [w for w in words if w.lower() not in str(info.value).lower()]
    assert not missing, f"a failed {what} write: the message should contain {missing}: {info.value}"


def test_resume_refuses_another_schedule_total_and_steps_below_the_checkpoint(train, corpus_docs, tokenizer, tmp_path):
    """Resume: a schedule total smaller or larger than the run's is refused (naming it); steps below the checkpoint's step is refused; steps equal to it is accepted."""
    kw = _kw(corpus_docs, tokenizer)
    train.train(_config(train, tmp_path, steps=6, warmup=1, schedule_steps=2), dict(TINY), stop_after=5, **kw)
    for total in (1, 3):                             # the run's schedule total is 2
        with raises_clear(ValueError, "resume", "schedule"):
            train.train(_config(train, tmp_path, steps=6, warmup=1, schedule_steps=total), dict(TINY), resume=True, **kw)
    with raises_clear(ValueError, "resume", "steps", "5"):   # steps 3 < the checkpoint's step 5 (same schedule total)
        train.train(_config(train, tmp_path, steps=3, warmup=1, schedule_steps=2), dict(TINY), resume=True, **kw)
    result = train.train(_config(train, tmp_path, steps=5, warmup=1, schedule_steps=2), dict(TINY), resume=True, **kw)
    assert_equal((result.step, result.history), (5, []), what="(step, records) of a resume with steps = its step 5")


def test_train_runs_where_fcntl_cannot_be_imported(train, corpus_docs, tokenizer, tmp_path, monkeypatch):
    """Where fcntl is missing (not POSIX: `import fcntl` fails) train runs without the lock."""
    import sys
    monkeypatch.setitem(sys.modules, "fcntl", None)          # `import fcntl` now raises ImportError
    result = train.train(_config(train, tmp_path, steps=1, warmup=1), dict(TINY), **_kw(corpus_docs, tokenizer))
    assert_equal(result.step, 1, what="steps done where fcntl cannot be imported")


def test_progress_bar_follows_the_terminal_width(train, corpus_docs, tokenizer, tmp_path, capfd, monkeypatch):
    """progress=True: the bar is redrawn at the terminal's current width (it grows when the terminal does)."""
    import os
    import re
    width = {"columns": 40}
    monkeypatch.setattr(os, "get_terminal_size", lambda *a: os.terminal_size((width["columns"], 24)))
    config = _config(train, tmp_path, steps=3, eval_interval=1)
    capfd.readouterr()
    train.train(config, dict(TINY), progress=True, print_fn=lambda line: width.update(columns=120),
                **_kw(corpus_docs, tokenizer))
    err = capfd.readouterr().err
    drawn = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", s) for s in re.split(r"[\r\n]", err)]
    last = [s for s in drawn if "3/3" in s]
    assert last, f"expected a bar ending at 3/3 on stderr, got {err[-300:]!r}"
    assert len(last[-1].rstrip()) > 40, \
        f"the terminal grew from 40 to 120 columns during the run; the last bar is still {len(last[-1])} wide: {last[-1]!r}"


def test_resume_from_a_step_0_checkpoint_keeps_no_record(train, impl, corpus_docs, tokenizer, tmp_path):
    """Resuming from a checkpoint of step 0 keeps no record of the log: not a step-less one, not those of later steps."""
    ckpt_mod = impl.component("checkpoint")
    config = _config(train, tmp_path, steps=2, checkpoint_interval=0, checkpoint_minutes=0)
    train.train(config, dict(TINY), stop_after=1, **_kw(corpus_docs, tokenizer))
    ckpt = ckpt_mod.load_checkpoint(tmp_path / "checkpoint")
    ckpt_mod.save_checkpoint(tmp_path / "checkpoint", ckpt.model, step=0, tokenizer=ckpt.tokenizer,
                             rng_state=ckpt.rng_state, data_state={**ckpt.data_state, "step": 0},
                             train_config=ckpt.train_config, extra=ckpt.extra)
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write(json.dumps({"note": "no step here"}) + "\n")
    train.train(config, dict(TINY), resume=True, **_kw(corpus_docs, tokenizer))
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert_equal([r.get("step") for r in records], [1, 2],
                 what="steps in the log after resuming from a step-0 checkpoint (it held step 1 and a step-less record)")


def _stand_in_matplotlib(monkeypatch, fail=None):
    """A stand-in ``matplotlib`` (with ``pyplot``) in sys.modules: ``plot`` records its series,
    ``savefig(path)`` writes a few bytes to ``path`` (or raises ``fail``). Returns the record."""
    import sys
    import types
    seen = {"series": [], "saved": []}

    class Axes:
        def plot(self, xs, ys, *args, **kwargs):
            seen["series"].append((list(xs), list(ys), kwargs.get("label")))

        def __getattr__(self, name):           # set_xlabel, grid, legend, ...: accepted, ignored
            return lambda *args, **kwargs: None

    class Figure:
        def savefig(self, path, *args, **kwargs):
            if fail is not None:
                raise fail
            Path(path).write_bytes(b"stand-in png")
            seen["saved"].append(Path(path))

        def __getattr__(self, name):
            return lambda *args, **kwargs: None

    pyplot = types.ModuleType("matplotlib.pyplot")
    pyplot.subplots = lambda *args, **kwargs: (Figure(), Axes())
    pyplot.close = lambda *args, **kwargs: None
    mpl = types.ModuleType("matplotlib")
    mpl.use = lambda *args, **kwargs: None
    mpl.pyplot = pyplot
    monkeypatch.setitem(sys.modules, "matplotlib", mpl)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", pyplot)
    return seen


def test_loss_curve_when_matplotlib_is_installed(train, corpus_docs, tokenizer, tmp_path, monkeypatch):
    """With matplotlib importable (here a stand-in that records what is drawn), train() saves
    out_dir/PLOT_FILE once, drawing the logged train loss against the step."""
    seen = _stand_in_matplotlib(monkeypatch)
    config = _config(train, tmp_path, steps=3, checkpoint_interval=0, checkpoint_minutes=0)
    result = train.train(config, dict(TINY), **_kw(corpus_docs, tokenizer))
    assert_equal(seen["saved"], [tmp_path / train.PLOT_FILE], what="files the loss curve was saved to")
    steps = [r["step"] for r in result.history]
    losses = [r["loss"] for r in result.history]
    assert any(xs == steps and ys == losses for xs, ys, _ in seen["series"]), \
        f"no plotted series is the logged train loss against the step {steps}: drew {seen['series']}"


def test_loss_curve_that_cannot_be_written_is_a_warning(train, corpus_docs, tokenizer, tmp_path, monkeypatch):
    """A loss curve that cannot be saved (OSError: disk full, say) ends in a warning line, not a
    failed run: train() returns its result and the checkpoint is written."""
    _stand_in_matplotlib(monkeypatch, fail=OSError(28, "No space left on device"))
    lines = []
    config = _config(train, tmp_path, steps=2, checkpoint_interval=0, checkpoint_minutes=0)
    result = train.train(config, dict(TINY), print_fn=lines.append, **_kw(corpus_docs, tokenizer))
    assert_equal(result.step, 2, what="steps done when the loss curve cannot be saved")
    assert (tmp_path / train.CHECKPOINT_DIR).exists(), "the checkpoint must be written when only the plot fails"
    assert any("loss curve" in line for line in lines), f"expected a warning naming the loss curve, printed {lines}"
