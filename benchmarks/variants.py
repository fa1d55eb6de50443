"""The variants study: a small, reproducible comparison of design choices of the reference model.

Five experiments train the reference ``TransformerLM`` on the built-in corpus (``reference/corpus.py``)
at a small fixed budget, with fixed seeds, and report validation bits per character against the
corpus' entropy floor:

    norm        Pre-LN vs Post-LN, with and without warmup, at three learning rates
    positional  sinusoidal, learned, RoPE, ALiBi: trained at 64 tokens, evaluated at 64..512
    activation  ReLU, GELU, SwiGLU at matched parameter count
    attention   MHA, GQA, MQA, sliding window: loss, speed, KV-cache bytes, generation speed
    tokenizer   BPE vocabulary size vs bits per character, and encode throughput

Run it with ``bare-lm bench variants`` (or ``pytest benchmarks -m variants``); it writes
``RESULTS.md`` (tables), ``results.json`` (every run) and PNG plots (with matplotlib) to
``docs/variants/`` unless ``--out`` says otherwise.

Your own variant goes through the same harness with :class:`Variant` and :func:`compare`
(``docs/variants/ADDING_A_VARIANT.md``)::

    compare([Variant("baseline"), Variant("rmsnorm", config={"norm": "rmsnorm"})], budget="quick")
"""

from __future__ import annotations

import contextlib
import json
import math
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from reference import optim
from reference.data import IGNORE_INDEX, FixedLengthBatches, evaluation_batches
from reference.loss import cross_entropy
from reference.model import ModelConfig, TransformerLM
from reference.tokenizer import Tokenizer
from reference.train import train_step

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO_ROOT / "docs" / "variants"
LN2 = math.log(2.0)


# --- budgets -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Budget:
    """How much compute one study spends: model size, steps, seeds, and the corpus sizes."""

    name: str
    steps: int                    # optimiser steps per training run
    batch_size: int               # sequences per step
    context: int                  # training window, in tokens
    d_model: int
    n_layers: int
    n_heads: int
    vocab_size: int               # the default BPE vocabulary (the tokenizer experiment varies it)
    seeds: tuple[int, ...]        # one training run per seed per variant
    lr: float                     # peak learning rate (the norm experiment varies it)
    warmup_steps: int
    min_lr_ratio: float           # cosine decay to lr * min_lr_ratio
    weight_decay: float
    clip: float | None            # gradient clipping max norm (None: no clipping)
    train_docs: int               # training documents drawn from the built-in corpus (~218 chars each)
    val_docs: int                 # validation documents (all of them are evaluated)
    tokenizer_docs: int           # the first training documents, on which the BPE tokenizers are trained
    norm_lrs: tuple[float, ...]
    norm_layers: int              # depth of the norm-placement models (Post-LN trouble grows with depth)
    eval_lengths: tuple[int, ...]  # positional experiment: evaluation contexts
    vocab_sizes: tuple[int, ...]   # tokenizer experiment
    window: int                   # sliding-window attention's window
    gen_prompt: int               # generation speed: prompt tokens
    gen_tokens: int               # generation speed: new tokens
    threads: int = 2              # torch intra-op threads (the study's timings assume 2 CPU cores)


BUDGETS: dict[str, Budget] = {
    # The committed results (docs/variants/): about 15 minutes on 2 CPU cores.
    "full": Budget(
        name="full", steps=300, batch_size=16, context=64, d_model=64, n_layers=2, n_heads=4,
        vocab_size=512, seeds=(0, 1), lr=3e-3, warmup_steps=30, min_lr_ratio=0.1, weight_decay=0.01,
        clip=1.0, train_docs=4000, val_docs=200, tokenizer_docs=400,
        norm_lrs=(3e-3, 1e-2, 3e-2), norm_layers=4, eval_lengths=(64, 128, 256, 512),
        vocab_sizes=(257, 320, 400, 512), window=16, gen_prompt=8, gen_tokens=56),
    # A first look in a few minutes.
    "quick": Budget(
        name="quick", steps=100, batch_size=16, context=64, d_model=64, n_layers=2, n_heads=4,
        vocab_size=512, seeds=(0,), lr=3e-3, warmup_steps=10, min_lr_ratio=0.1, weight_decay=0.01,
        clip=1.0, train_docs=1000, val_docs=100, tokenizer_docs=300,
        norm_lrs=(3e-3, 1e-2, 3e-2), norm_layers=4, eval_lengths=(64, 128, 256, 512),
        vocab_sizes=(257, 320, 400, 512), window=16, gen_prompt=8, gen_tokens=56),
    # The smoke test (CI): every code path in seconds; the numbers mean nothing.
    "micro": Budget(
        name="micro", steps=3, batch_size=2, context=16, d_model=16, n_layers=1, n_heads=2,
        vocab_size=280, seeds=(0,), lr=3e-3, warmup_steps=1, min_lr_ratio=0.1, weight_decay=0.01,
        clip=1.0, train_docs=30, val_docs=8, tokenizer_docs=15,
        norm_lrs=(3e-3,), norm_layers=1, eval_lengths=(16, 32), vocab_sizes=(257, 270),
        window=4, gen_prompt=2, gen_tokens=4, threads=1),
}


def get_budget(budget: Budget | str) -> Budget:
    if isinstance(budget, Budget):
        return budget
    if budget not in BUDGETS:
        raise ValueError(f"budget must be one of {sorted(BUDGETS)} or a Budget, got {budget!r}")
    return BUDGETS[budget]


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` intra-op threads (the study's timings assume 2), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- the data: corpus text, tokenizers (trained once per vocabulary size), token ids ------------

class Study:
    """Shared state of one study: the corpus splits, the tokenizers and the token streams (all cached).

    The data follow the corpus contract: ``corpus.builtin_corpus`` documents, each tokenized and
    joined by ``data.token_stream`` with the end-of-text token between documents; bits per character
    count each document's characters plus one for its separator (``corpus.stream_characters``), the
    unit of the entropy floor ``story_grammar().entropy_floor_bits_per_char(val_docs)``.
    """

    def __init__(self, budget: Budget | str = "full", log: Callable[[str], None] | None = None):
        from reference import corpus

        self.budget = get_budget(budget)
        self.log = log or (lambda message: None)
        self.train_docs, self.val_docs = corpus.builtin_corpus(self.budget.train_docs, self.budget.val_docs, seed=0)
        self.val_text = "".join(doc + "\n" for doc in self.val_docs)   # for encode throughput
        self.val_chars = corpus.stream_characters(self.val_docs)
        self.entropy_floor = corpus.story_grammar().entropy_floor_bits_per_char(self.val_docs)
        self._tokenizers: dict[int, Tokenizer] = {}
        self._tokenizer_seconds: dict[int, float] = {}
        self._streams: dict[tuple[int, str], torch.Tensor] = {}

    def tokenizer(self, vocab_size: int | None = None) -> Tokenizer:
        """The byte-level BPE tokenizer of ``vocab_size`` (with ``ENDOFTEXT``), trained once on the
        first ``budget.tokenizer_docs`` training documents."""
        from reference.tokenizer import ENDOFTEXT

        vocab_size = vocab_size or self.budget.vocab_size
        if vocab_size not in self._tokenizers:
            start = time.perf_counter()
            docs = self.train_docs[: self.budget.tokenizer_docs]
            self._tokenizers[vocab_size] = Tokenizer.train(docs, vocab_size, special_tokens=[ENDOFTEXT])
            self._tokenizer_seconds[vocab_size] = time.perf_counter() - start
            self.log(f"tokenizer: vocab {vocab_size} trained in {self._tokenizer_seconds[vocab_size]:.1f} s")
        return self._tokenizers[vocab_size]

    def stream(self, split: str, vocab_size: int | None = None) -> torch.Tensor:
        """``split`` ("train" or "val") as one token stream, ``[eot] doc0 [eot] doc1 ... [eot]``: (N,) long."""
        from reference.data import token_stream, tokenize_documents
        from reference.tokenizer import ENDOFTEXT

        vocab_size = vocab_size or self.budget.vocab_size
        key = (vocab_size, split)
        if key not in self._streams:
            tokenizer = self.tokenizer(vocab_size)
            docs = self.train_docs if split == "train" else self.val_docs
            self._streams[key] = token_stream(tokenize_documents(docs, tokenizer),
                                              tokenizer.special_tokens[ENDOFTEXT])
        return self._streams[key]


# --- a variant and one training run ---------------------------------------------------------------

@dataclass
class Variant:
    """One design choice to train and measure.

    ``config``: ``ModelConfig`` fields that differ from the study's base model (e.g.
    ``{"activation": "swiglu", "d_ff": 171}``). ``model_factory``: build the model yourself from the
    final ``ModelConfig`` (any ``nn.Module`` whose ``forward(idx, targets)`` returns
    ``(logits, loss)``), e.g. the reference model with your own attention class swapped in.
    The other fields override the budget's training settings for this variant only.
    """

    name: str
    config: dict = field(default_factory=dict)
    model_factory: Callable[[ModelConfig], nn.Module] | None = None
    lr: float | None = None
    warmup_steps: int | None = None
    vocab_size: int | None = None
    train_context: int | None = None   # training window (defaults to the budget's context)


@dataclass
class Run:
    """What one training run of one variant with one seed measured (``model`` kept for further evaluation)."""

    variant: str
    seed: int
    params: int
    initial_loss: float
    final_loss: float              # mean training loss over the last 10% of steps (nats/token)
    val_bpc: float                 # validation bits per character at the training context
    diverged: bool                 # a NaN/inf loss, or the final loss above the initial one
    grad_norm_max: float
    grad_norm_mean: float
    tokens_per_s: float            # training throughput (forward + backward + step)
    seconds: float
    losses: list[float]
    model: nn.Module | None = field(default=None, repr=False)

    def record(self) -> dict:
        """JSON-safe: everything but the model."""
        return {k: v for k, v in asdict(self).items() if k != "model"} | {"losses": [round(x, 4) for x in self.losses]}


def base_config(study: Study, variant: Variant) -> ModelConfig:
    b = study.budget
    vocab = study.tokenizer(variant.vocab_size).vocab_size
    fields = dict(vocab_size=vocab, context_length=variant.train_context or b.context, n_layers=b.n_layers,
                  d_model=b.d_model, n_heads=b.n_heads, fast=True)  # fused kernels: same results, faster
    fields.update(variant.config)
    return ModelConfig(**fields)


def build_model(study: Study, variant: Variant, seed: int) -> nn.Module:
    config = base_config(study, variant)
    torch.manual_seed(seed)
    return variant.model_factory(config) if variant.model_factory else TransformerLM(config)


def swap_modules(attention: type | Callable[[ModelConfig, int], nn.Module] | None = None,
                 ffn: type | Callable[[ModelConfig, int], nn.Module] | None = None) -> Callable[[ModelConfig], TransformerLM]:
    """A ``model_factory``: the reference ``TransformerLM`` with every block's attention and/or FFN replaced.

    ``attention``: a subclass of ``reference.attention.MultiHeadAttention`` (built from the config
    exactly as ``build_attention`` builds the shipped classes: d_model, n_heads, n_kv_heads, dropout,
    bias, positional, max_len=context_length, window, fast), or any callable
    ``(config, layer_index) -> module`` called as ``attn(x, positions=..., padding_mask=...,
    kv_cache=...) -> (B, T, C)``.
    ``ffn``: a subclass of ``reference.feedforward.FeedForward`` (built as ``cls(d_model, d_ff,
    activation, bias)`` from the config), or any callable ``(config, layer_index) -> module`` with
    ``forward(x (..., C)) -> (..., C)``.
    The model's GPT-2 initialisation then runs again over the whole model, so your ``Linear``
    layers start like the reference's (an output projection named ``out_proj`` / ``w2`` gets the
    scaled residual init; without those names your module keeps its own initialisation there).
    """
    from reference.attention import MultiHeadAttention
    from reference.feedforward import FeedForward

    def build_attn(config: ModelConfig, layer_index: int) -> nn.Module:
        if isinstance(attention, type) and issubclass(attention, MultiHeadAttention):
            return attention(config.d_model, config.n_heads, n_kv_heads=config.n_kv_heads, dropout=config.dropout,
                             bias=config.bias, positional=config.positional, max_len=config.context_length,
                             window=config.window, fast=config.fast)
        return attention(config, layer_index)

    def build_ffn(config: ModelConfig, layer_index: int) -> nn.Module:
        if isinstance(ffn, type) and issubclass(ffn, FeedForward):
            return ffn(config.d_model, config.resolved_d_ff, config.activation, config.bias, fast=config.fast)
        return ffn(config, layer_index)

    def factory(config: ModelConfig) -> TransformerLM:
        model = TransformerLM(config)
        for i, block in enumerate(model.blocks):
            if attention is not None:
                block.attn = build_attn(config, i)
            if ffn is not None:
                block.ffn = build_ffn(config, i)
        try:
            model.reset_parameters()
        except AttributeError:
            pass  # no out_proj / w2 on the replacement: it keeps its own initialisation there
        return model

    return factory


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied lm_head counts once)."""
    if hasattr(model, "num_parameters"):
        return int(model.num_parameters())
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def train_run(study: Study, variant: Variant, seed: int, *, keep_model: bool = False) -> Run:
    """Train ``variant`` from seed ``seed`` at the study's budget; evaluate it on the validation split."""
    b = study.budget
    model = build_model(study, variant, seed)
    context = variant.train_context or b.context
    lr = variant.lr if variant.lr is not None else b.lr
    warmup = variant.warmup_steps if variant.warmup_steps is not None else b.warmup_steps
    batches = FixedLengthBatches(study.stream("train", variant.vocab_size), b.batch_size, context, seed=seed)

    opt = optim.AdamW(optim.param_groups(model, b.weight_decay), lr=lr)
    losses, norms = [], []
    diverged = False
    start = time.perf_counter()
    for step in range(b.steps):
        step_lr = optim.lr_schedule(step, max_lr=lr, min_lr=lr * b.min_lr_ratio, warmup_steps=warmup,
                                    total_steps=b.steps)
        for group in opt.param_groups:
            group["lr"] = step_lr
        x, y = batches.batch(step)                  # (B, T), (B, T): a pure function of (seed, step)
        loss, norm = train_step(model, opt, [(x, y)], grad_clip=b.clip)   # norm: before clipping
        losses.append(loss)
        norms.append(norm)
        if not math.isfinite(loss):
            diverged = True
            break
    seconds = time.perf_counter() - start
    tail = losses[-max(1, len(losses) // 10):]
    final = sum(tail) / len(tail)
    diverged = diverged or not math.isfinite(final) or final > losses[0]
    val = evaluate_bpc(study, model, context, variant.vocab_size) if math.isfinite(final) else math.nan
    finite = [n for n in norms if math.isfinite(n)]
    run = Run(variant=variant.name, seed=seed, params=count_parameters(model), initial_loss=losses[0],
              final_loss=final, val_bpc=val, diverged=diverged,
              grad_norm_max=max(finite) if finite else math.nan,
              grad_norm_mean=sum(finite) / len(finite) if finite else math.nan,
              tokens_per_s=len(losses) * b.batch_size * context / seconds, seconds=seconds, losses=losses,
              model=model if keep_model else None)
    study.log(f"  {variant.name} seed {seed}: loss {losses[0]:.3f} -> {final:.3f}, val {val:.3f} bits/char, "
              f"{run.tokens_per_s:,.0f} tok/s, {seconds:.1f} s")
    return run


@torch.no_grad()
def evaluate_bpc(study: Study, model: nn.Module, length: int, vocab_size: int | None = None,
                 batch_size: int = 8) -> float:
    """Validation bits per character with windows of ``length`` tokens.

    ``data.evaluation_batches`` cuts the validation stream into consecutive windows, so every target
    token is predicted exactly once from up to ``length`` tokens of context (the context restarts at
    each window); the summed cross-entropy (nats) / ln 2 / ``corpus.stream_characters(val_docs)``.
    """
    stream = study.stream("val", vocab_size)
    was_training = model.training
    model.eval()
    nats = 0.0
    for x, y in evaluation_batches(stream, batch_size, length):
        logits, _ = model(x)                                               # (b, L, V)
        nats += float(cross_entropy(logits, y, ignore_index=IGNORE_INDEX, reduction="sum"))
    model.train(was_training)
    return nats / LN2 / study.val_chars


# --- aggregation and formatting -------------------------------------------------------------------

def mean_sd(values: Iterable[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: Iterable[float] | float, digits: int = 3) -> str:
    """``mean ± sd`` over seeds (just the value for one seed); ``n/a`` when nothing is finite."""
    values = [values] if isinstance(values, (int, float)) else list(values)
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return "n/a"
    m, s = mean_sd(finite)
    text = f"{m:.{digits}f}" if len(finite) == 1 else f"{m:.{digits}f} ± {s:.{digits}f}"
    if len(finite) < len(values):
        text += f" ({len(values) - len(finite)} NaN)"
    return text


def fmt_max(values: Iterable[float], digits: int = 2) -> str:
    """The largest finite value (``n/a`` when none is finite)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    return f"{max(finite):.{digits}f}" if finite else "n/a"


def fmt_int(value: float) -> str:
    return f"{value:,.0f}"


def table(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass
class Section:
    """One experiment's results: a Markdown body (tables), plot files, raw records, headline figures."""

    key: str
    title: str
    body: str
    plots: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    headline: dict = field(default_factory=dict)   # goes to pytest-benchmark's extra_info
    seconds: float = 0.0


def _plt():
    """matplotlib.pyplot with a file-only backend, or None when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _mean_curve(runs: Sequence[Run]) -> list[float]:
    """The per-step mean of the runs' loss curves (up to the shortest: a diverged run stops early)."""
    n = min(len(r.losses) for r in runs)
    return [statistics.fmean(r.losses[i] for r in runs) for i in range(n)]


def run_variants(study: Study, variants: Sequence[Variant], seeds: Sequence[int] | None = None,
                 keep_model: bool = False) -> dict[str, list[Run]]:
    """Train every variant with every seed: ``{variant name: [Run per seed]}``."""
    seeds = tuple(seeds if seeds is not None else study.budget.seeds)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"variant names must be distinct, got {names}")
    return {v.name: [train_run(study, v, s, keep_model=keep_model) for s in seeds] for v in variants}


# --- experiment 1: norm placement -----------------------------------------------------------------

def experiment_norm(study: Study, out: Path | None, seeds: Sequence[int]) -> Section:
    b = study.budget
    variants = [Variant(f"{placement}-LN {'warmup' if warm else 'no warmup'} lr={lr:g}",
                        config={"norm_placement": placement, "n_layers": b.norm_layers}, lr=lr,
                        warmup_steps=b.warmup_steps if warm else 0)
                for lr in b.norm_lrs for placement in ("pre", "post") for warm in (True, False)]
    runs = run_variants(study, variants, seeds)
    rows, records = [], []
    for v in variants:
        rs = runs[v.name]
        records += [r.record() | {"placement": v.config["norm_placement"], "lr": v.lr,
                                  "warmup_steps": v.warmup_steps} for r in rs]
        rows.append([v.config["norm_placement"] + "-LN", "yes" if v.warmup_steps else "no", f"{v.lr:g}",
                     fmt([r.final_loss for r in rs]), fmt([r.val_bpc for r in rs]),
                     f"{sum(r.diverged for r in rs)}/{len(rs)}",
                     fmt_max([r.grad_norm_max for r in rs]), fmt([r.grad_norm_mean for r in rs], 2)])
    body = table(["placement", "warmup", "peak lr", "final train loss (nats/token)", "val bits/char",
                  "diverged", "max grad norm", "mean grad norm"], rows)
    body += (f"\n\n{b.norm_layers} layers, d_model {b.d_model}; warmup = {b.warmup_steps} linear steps, "
             f"then cosine decay to {b.min_lr_ratio:g} x peak; gradients clipped at {b.clip} (the norms "
             f"above are measured before clipping). Diverged: a NaN/inf loss, or a final loss above "
             f"the initial one.")
    plots = []
    plt = _plt()
    if plt and out:
        fig, axes = plt.subplots(1, len(b.norm_lrs), figsize=(4.2 * len(b.norm_lrs), 3.4), sharey=True,
                                 squeeze=False)
        for ax, lr in zip(axes[0], b.norm_lrs):
            for v in variants:
                if v.lr != lr:
                    continue
                curve = _mean_curve(runs[v.name])
                style = "-" if v.config["norm_placement"] == "pre" else "--"
                color = "tab:blue" if v.warmup_steps else "tab:red"
                ax.plot(curve, style, color=color, lw=1.2,
                        label=f"{v.config['norm_placement']}-LN, {'warmup' if v.warmup_steps else 'no warmup'}")
            ax.set_title(f"peak lr {lr:g}")
            ax.set_xlabel("step")
            ax.set_yscale("log")
        axes[0][0].set_ylabel("training loss (nats/token, mean over seeds)")
        axes[0][0].legend(fontsize=8)
        plots.append(_save(fig, out / "norm_placement.png"))
    best = min(variants, key=lambda v: mean_sd(r.val_bpc for r in runs[v.name])[0]
               if math.isfinite(mean_sd(r.val_bpc for r in runs[v.name])[0]) else math.inf)
    headline = {"best": best.name, "best_val_bpc": mean_sd(r.val_bpc for r in runs[best.name])[0],
                "diverged_runs": sum(r.diverged for rs in runs.values() for r in rs)}
    return Section("norm", "1. Norm placement: Pre-LN vs Post-LN, warmup, learning rate", body, plots,
                   records, headline)


# --- experiment 2: positional schemes and length extrapolation ------------------------------------

POSITIONAL_SCHEMES = ("sinusoidal", "learned", "rope", "alibi")


def experiment_positional(study: Study, out: Path | None, seeds: Sequence[int]) -> Section:
    b = study.budget
    longest = max(b.eval_lengths)
    # Every model is built with context_length = the longest evaluation length, so all four accept
    # 512-token inputs, but trains on windows of b.context tokens only: the learned table's rows
    # beyond b.context never receive a gradient (they keep their initial values).
    variants = [Variant(scheme, config={"positional": scheme, "context_length": longest},
                        train_context=b.context) for scheme in POSITIONAL_SCHEMES]
    runs = run_variants(study, variants, seeds, keep_model=True)
    bpc: dict[str, dict[int, list[float]]] = {}
    records = []
    for v in variants:
        bpc[v.name] = {}
        for length in b.eval_lengths:
            bpc[v.name][length] = [evaluate_bpc(study, r.model, length) for r in runs[v.name]]
        for i, r in enumerate(runs[v.name]):
            records.append(r.record() | {"positional": v.name,
                                         "eval_bpc": {str(L): bpc[v.name][L][i] for L in b.eval_lengths}})
            r.model = None
    header = ["positional", *[f"val bits/char @ {L}" for L in b.eval_lengths], "train tokens/s", "params"]
    rows = [[v.name, *[fmt(bpc[v.name][L]) for L in b.eval_lengths],
             fmt_int(mean_sd(r.tokens_per_s for r in runs[v.name])[0]), fmt_int(runs[v.name][0].params)]
            for v in variants]
    body = table(header, rows)
    body += (f"\n\nTrained on windows of {b.context} tokens; every model is built with context_length "
             f"{longest} so that all four accept the longer evaluation windows. The learned table's rows "
             f"{b.context}..{longest - 1} are never trained: they keep their random initialisation, which "
             f"is what \"learned positions cannot extrapolate\" looks like in numbers.")
    plots = []
    plt = _plt()
    if plt and out:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for v in variants:
            ax.plot(b.eval_lengths, [mean_sd(bpc[v.name][L])[0] for L in b.eval_lengths], "o-", label=v.name)
        ax.axvline(b.context, color="grey", lw=0.8, ls=":")
        if study.entropy_floor:
            ax.axhline(study.entropy_floor, color="black", lw=0.8, ls="--", label="entropy floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(b.eval_lengths, [str(L) for L in b.eval_lengths])
        ax.set_xlabel("evaluation context (tokens); trained at the dotted line")
        ax.set_ylabel("validation bits/char")
        ax.legend(fontsize=8)
        plots.append(_save(fig, out / "positional.png"))
    headline = {f"{v.name}_bpc_{L}": mean_sd(bpc[v.name][L])[0] for v in variants for L in b.eval_lengths}
    return Section("positional", "2. Positional schemes and length extrapolation", body, plots, records, headline)


# --- experiment 3: FFN activations at matched parameter count -------------------------------------

def swiglu_d_ff(d_ff: int) -> int:
    """SwiGLU has three d_model x d_ff matrices instead of two: 2/3 of the width matches the count."""
    return round(2 * d_ff / 3)


def experiment_activation(study: Study, out: Path | None, seeds: Sequence[int]) -> Section:
    b = study.budget
    d_ff = 4 * b.d_model
    variants = [Variant("relu", config={"activation": "relu", "d_ff": d_ff}),
                Variant("gelu", config={"activation": "gelu", "d_ff": d_ff}),
                Variant("swiglu", config={"activation": "swiglu", "d_ff": swiglu_d_ff(d_ff)})]
    runs = run_variants(study, variants, seeds)
    rows, records = [], []
    for v in variants:
        rs = runs[v.name]
        model = build_model(study, v, 0)
        ffn = sum(p.numel() for name, p in model.named_parameters() if _is_ffn_param(name))
        records += [r.record() | {"activation": v.name, "d_ff": v.config["d_ff"], "ffn_params": ffn} for r in rs]
        rows.append([v.name, v.config["d_ff"], fmt_int(ffn), fmt_int(rs[0].params), fmt([r.final_loss for r in rs]),
                     fmt([r.val_bpc for r in rs]), fmt_int(mean_sd(r.tokens_per_s for r in rs)[0])])
    body = table(["activation", "d_ff", "FFN params", "total params", "final train loss (nats/token)",
                  "val bits/char", "train tokens/s"], rows)
    body += (f"\n\nd_model {b.d_model}, {b.n_layers} layers; ReLU/GELU: d_ff = 4 x d_model = {d_ff}; SwiGLU: "
             f"d_ff = round(2/3 x {d_ff}) = {swiglu_d_ff(d_ff)} (three matrices instead of two).")
    plots = [_plot_loss_curves(variants, runs, out / "activation.png")] if _plt() and out else []
    headline = {f"{v.name}_val_bpc": mean_sd(r.val_bpc for r in runs[v.name])[0] for v in variants}
    return Section("activation", "3. FFN activations at matched parameter count", body, plots, records, headline)


def _is_ffn_param(name: str) -> bool:
    return any(part in name.split(".") for part in ("ffn", "mlp", "feed_forward", "feedforward"))


def _smooth(values: Sequence[float], k: int = 10) -> list[float]:
    out, acc = [], []
    for v in values:
        acc.append(v)
        if len(acc) > k:
            acc.pop(0)
        out.append(sum(acc) / len(acc))
    return out


# --- experiment 4: attention variants -------------------------------------------------------------

def kv_cache_bytes(n_layers: int, batch_size: int, n_kv_heads: int, length: int, head_dim: int,
                   bytes_per_element: int = 4) -> int:
    """KV-cache size: a key and a value vector per layer, sequence, kv head and position."""
    return n_layers * 2 * batch_size * n_kv_heads * length * head_dim * bytes_per_element


def generation_speed(model: nn.Module, prompt: torch.Tensor, new_tokens: int, seed: int = 0) -> float:
    """Tokens per second of ``generate.generate(..., use_cache=True)`` (best of two runs)."""
    from reference.generate import generate

    model.eval()
    best = math.inf
    for _ in range(2):
        start = time.perf_counter()
        with torch.no_grad():
            generate(model, prompt, max_new_tokens=new_tokens, temperature=1.0, seed=seed, use_cache=True)
        best = min(best, time.perf_counter() - start)
    return new_tokens / best


def _allocated_kv_bytes(model: nn.Module) -> int | None:
    """Bytes of the key and value buffers of ``model.new_kv_cache(1)`` (None without one)."""
    if not hasattr(model, "new_kv_cache"):
        return None
    caches = model.new_kv_cache(1)
    return sum(t.numel() * t.element_size() for c in caches for t in (c.k, c.v))


def experiment_attention(study: Study, out: Path | None, seeds: Sequence[int]) -> Section:
    b = study.budget
    h = b.n_heads
    variants = [Variant("MHA", config={"n_kv_heads": h}),
                Variant(f"GQA ({max(1, h // 2)} kv heads)", config={"n_kv_heads": max(1, h // 2)}),
                Variant("MQA", config={"n_kv_heads": 1}),
                Variant(f"sliding window {b.window}", config={"n_kv_heads": h, "window": b.window})]
    runs = run_variants(study, variants, seeds, keep_model=True)
    prompt = study.stream("val")[: b.gen_prompt].tolist()  # starts with end-of-text, like a fresh document
    head_dim = b.d_model // h
    rows, records, speeds, kv = [], [], {}, {}
    for v in variants:
        rs = runs[v.name]
        speeds[v.name] = [generation_speed(r.model, prompt, b.gen_tokens, seed=r.seed) for r in rs]
        n_kv = v.config["n_kv_heads"]
        kv[v.name] = kv_cache_bytes(b.n_layers, 1, n_kv, b.context, head_dim)
        window = v.config.get("window")
        bounded = kv_cache_bytes(b.n_layers, 1, n_kv, min(b.context, window or b.context), head_dim)
        measured = _allocated_kv_bytes(rs[0].model)
        for r, s in zip(rs, speeds[v.name]):
            records.append(r.record() | {"attention": v.name, "n_kv_heads": n_kv, "window": window,
                                         "kv_cache_bytes": kv[v.name], "kv_cache_bytes_allocated": measured,
                                         "kv_cache_bytes_window_bounded": bounded, "generate_tokens_per_s": s})
            r.model = None
        rows.append([v.name, n_kv, fmt_int(rs[0].params), fmt([r.final_loss for r in rs]),
                     fmt([r.val_bpc for r in rs]), fmt_int(mean_sd(r.tokens_per_s for r in rs)[0]),
                     fmt_int(kv[v.name]), fmt_int(measured) if measured is not None else "n/a",
                     fmt_int(bounded), fmt_int(mean_sd(speeds[v.name])[0])])
    body = table(["attention", "kv heads", "params", "final train loss (nats/token)", "val bits/char",
                  "train tokens/s", f"KV bytes (formula, B=1, T={b.context})", "KV bytes (allocated)",
                  "KV bytes (rolling window cache)", "generate tokens/s"], rows)
    body += (f"\n\n{h} query heads of dimension {head_dim}, {b.n_layers} layers, trained at context {b.context}. "
             f"KV bytes (formula) = layers x 2 x B x H_kv x T x D x 4 (float32); (allocated) = the key and value "
             f"buffers of `model.new_kv_cache(1)`: with a window, rolling caches of the last `window` positions "
             f"(the last column). Generation: "
             f"`generate(model, prompt, max_new_tokens={b.gen_tokens}, use_cache=True)` from a "
             f"{b.gen_prompt}-token prompt, batch 1, best of two.")
    plots = []
    plt = _plt()
    if plt and out:
        names = [v.name for v in variants]
        fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
        bpcs = [mean_sd(r.val_bpc for r in runs[n]) for n in names]
        axes[0].errorbar(names, [m for m, _ in bpcs], yerr=[sd for _, sd in bpcs], fmt="o", color="tab:blue",
                         capsize=4)
        axes[0].margins(x=0.2)
        axes[0].set_ylabel("validation bits/char (mean ± sd over seeds)")
        axes[1].bar(names, [kv[n] / 1024 for n in names], color="tab:orange")
        axes[1].set_ylabel(f"KV cache KiB (B=1, T={b.context})")
        axes[2].bar(names, [mean_sd(speeds[n])[0] for n in names], color="tab:green")
        axes[2].set_ylabel("generate tokens/s (KV cache)")
        for ax in axes:
            ax.tick_params(axis="x", labelrotation=20, labelsize=8)
        plots.append(_save(fig, out / "attention.png"))
    headline = {f"{v.name}_val_bpc": mean_sd(r.val_bpc for r in runs[v.name])[0] for v in variants}
    headline |= {f"{v.name}_kv_bytes": kv[v.name] for v in variants}
    return Section("attention", "4. Attention: MHA, GQA, MQA, sliding window", body, plots, records, headline)


# --- experiment 5: tokenizer vocabulary size --------------------------------------------------------

def encode_throughput(tokenizer: Tokenizer, text: str, repeats: int = 2) -> float:
    """Encode speed in MB/s of UTF-8 input, best of ``repeats``, each on a fresh copy of the tokenizer
    (its pre-token cache starts empty, so a repeat does not just replay the cache)."""
    size = len(text.encode("utf-8"))
    best = math.inf
    for _ in range(repeats):
        fresh = Tokenizer.from_dict(tokenizer.to_dict())
        start = time.perf_counter()
        fresh.encode(text)
        best = min(best, time.perf_counter() - start)
    return size / best / 1e6


def experiment_tokenizer(study: Study, out: Path | None, seeds: Sequence[int]) -> Section:
    b = study.budget
    variants = [Variant(f"vocab {v}", vocab_size=v) for v in b.vocab_sizes]
    throughput, chars_per_token = {}, {}
    for v in variants:
        tok = study.tokenizer(v.vocab_size)
        throughput[v.name] = encode_throughput(tok, study.val_text)
        chars_per_token[v.name] = study.val_chars / (len(study.stream("val", v.vocab_size)) - 1)
    runs = run_variants(study, variants, seeds)
    rows, records = [], []
    for v in variants:
        rs = runs[v.name]
        records += [r.record() | {"vocab_size": v.vocab_size, "actual_vocab_size": study.tokenizer(v.vocab_size).vocab_size,
                                  "encode_mb_per_s": throughput[v.name],
                                  "chars_per_token": chars_per_token[v.name]} for r in rs]
        actual = study.tokenizer(v.vocab_size).vocab_size
        rows.append([v.vocab_size if actual == v.vocab_size else f"{v.vocab_size} -> {actual}",
                     f"{chars_per_token[v.name]:.2f}", fmt_int(rs[0].params),
                     fmt([r.val_bpc for r in rs]), f"{throughput[v.name]:.2f}",
                     f"{study._tokenizer_seconds.get(v.vocab_size, math.nan):.1f}"])
    floor = f"{study.entropy_floor:.3f}" if study.entropy_floor else "n/a"
    body = table(["vocab size", "chars/token (val)", "params", "val bits/char", "encode MB/s",
                  "BPE training s"], rows)
    body += (f"\n\nVocabulary sizes count the 256 bytes, the merges and the end-of-text token (257 = bytes "
             f"only); `a -> b`: BPE ran out of pairs to merge at b (with GPT-2 pre-tokenization no token "
             f"crosses a word boundary, and the corpus has few distinct words). "
             f"Entropy floor of the corpus: {floor} bits/char. Same model and budget for every vocabulary "
             f"({b.steps} steps of {b.batch_size} x {b.context} tokens): a larger vocabulary sees more "
             f"characters per step and has a larger embedding table. BPE trained on the first "
             f"{b.tokenizer_docs:,} training documents; throughput: encoding the validation split "
             f"({len(study.val_text):,} characters, one string), best of two.")
    plots = []
    plt = _plt()
    if plt and out:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        sizes = [study.tokenizer(v.vocab_size).vocab_size for v in variants]  # as learned
        ax.plot(sizes, [mean_sd(r.val_bpc for r in runs[v.name])[0] for v in variants], "o-",
                color="tab:blue", label="val bits/char")
        if study.entropy_floor:
            ax.axhline(study.entropy_floor, color="black", lw=0.8, ls="--", label="entropy floor")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.set_xlabel("BPE vocabulary size (as learned)")
        ax.set_ylabel("validation bits/char")
        ax2 = ax.twinx()
        ax2.plot(sizes, [throughput[v.name] for v in variants], "s--", color="tab:orange", label="encode MB/s")
        ax2.set_ylabel("encode MB/s", color="tab:orange")
        ax.legend(fontsize=8, loc="upper center")
        plots.append(_save(fig, out / "tokenizer.png"))
    headline = {f"vocab{v.vocab_size}_val_bpc": mean_sd(r.val_bpc for r in runs[v.name])[0] for v in variants}
    headline |= {f"vocab{v.vocab_size}_encode_mb_s": throughput[v.name] for v in variants}
    return Section("tokenizer", "5. Tokenizer vocabulary size", body, plots, records, headline)


EXPERIMENTS: dict[str, Callable[[Study, Path | None, Sequence[int]], Section]] = {
    "norm": experiment_norm,
    "positional": experiment_positional,
    "activation": experiment_activation,
    "attention": experiment_attention,
    "tokenizer": experiment_tokenizer,
}


def _plot_loss_curves(variants: Sequence[Variant], runs: dict[str, list[Run]], path: Path) -> str:
    """One smoothed, seed-averaged training-loss curve per variant, saved to ``path`` (matplotlib)."""
    fig, ax = _plt().subplots(figsize=(5.5, 3.8))
    for v in variants:
        ax.plot(_smooth(_mean_curve(runs[v.name])), label=v.name, lw=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/token, smoothed)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path.name


# --- your own variants ----------------------------------------------------------------------------

def compare(variants: Sequence[Variant], *, budget: Budget | str = "quick", seeds: Sequence[int] | None = None,
            out: str | Path | None = None, title: str = "Custom variants", key: str = "custom",
            study: Study | None = None, log: Callable[[str], None] | None = print) -> Section:
    """Train your variants side by side at one of the study's budgets and tabulate them.

    Returns the :class:`Section` (``.body`` is the Markdown table, ``.records`` every run); with
    ``out``, also writes ``out/RESULTS.md``, ``out/results.json`` and a loss-curve plot.
    """
    study = study or Study(budget, log=log)
    seeds = tuple(seeds if seeds is not None else study.budget.seeds)
    out = Path(out) if out is not None else None
    start = time.perf_counter()
    with torch_threads(study.budget.threads):
        runs = run_variants(study, variants, seeds)
    rows, records = [], []
    for v in variants:
        rs = runs[v.name]
        records += [r.record() for r in rs]
        rows.append([v.name, fmt_int(rs[0].params), fmt([r.final_loss for r in rs]), fmt([r.val_bpc for r in rs]),
                     f"{sum(r.diverged for r in rs)}/{len(rs)}", fmt_int(mean_sd(r.tokens_per_s for r in rs)[0])])
    body = table(["variant", "params", "final train loss (nats/token)", "val bits/char", "diverged",
                  "train tokens/s"], rows)
    plots = [_plot_loss_curves(variants, runs, out / f"{key}.png")] if _plt() and out else []
    section = Section(key, title, body, plots, records,
                      {f"{v.name}_val_bpc": mean_sd(r.val_bpc for r in runs[v.name])[0] for v in variants},
                      time.perf_counter() - start)
    if out:
        write_report(out, [section], study, seeds)
    if log:
        log(body)
    return section


# --- the study and its report ---------------------------------------------------------------------

def run_study(out: str | Path | None = DEFAULT_OUT, *, budget: Budget | str = "full",
              seeds: int | Sequence[int] | None = None, only: Iterable[str] | None = None,
              log: Callable[[str], None] | None = print, study: Study | None = None) -> list[Section]:
    """Run the experiments (all, or ``only``) and write the report to ``out`` (None: write nothing)."""
    only = list(only) if only else list(EXPERIMENTS)
    unknown = [name for name in only if name not in EXPERIMENTS]
    if unknown:
        raise ValueError(f"unknown experiment(s) {unknown}; choose from {list(EXPERIMENTS)}")
    study = study or Study(budget, log=log)
    if seeds is None:
        seeds = study.budget.seeds
    elif isinstance(seeds, int):
        seeds = tuple(range(seeds))
    out = Path(out) if out is not None else None
    sections = []
    with torch_threads(study.budget.threads):
        for name in only:
            start = time.perf_counter()
            study.log(f"[{name}]")
            section = EXPERIMENTS[name](study, out, seeds)
            section.seconds = time.perf_counter() - start
            study.log(f"[{name}] done in {section.seconds:.0f} s")
            sections.append(section)
            if out:
                write_report(out, [section], study, seeds)
    return sections


BEGIN = "<!-- BEGIN GENERATED: {key} -->"
END = "<!-- END GENERATED: {key} -->"


def _generated(section: Section, study: Study, seeds: Sequence[int]) -> str:
    b = study.budget
    lines = [BEGIN.format(key=section.key), "",
             f"*Budget `{b.name}`, seeds {list(seeds)}; {section.seconds:.0f} s on "
             f"{torch.get_num_threads()} thread(s). Values are mean ± sd over seeds.*", "", section.body, ""]
    lines += [f"![{section.key}]({plot})" for plot in section.plots]
    if section.plots:
        lines.append("")
    lines.append(END.format(key=section.key))
    return "\n".join(lines)


def write_report(out: str | Path, sections: Sequence[Section], study: Study, seeds: Sequence[int]) -> Path:
    """Put each section's tables between its markers in ``out/RESULTS.md`` (the prose around them
    is kept), appending sections that are not there yet; merge the raw runs into ``out/results.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "RESULTS.md"
    text = path.read_text() if path.exists() else _report_header()
    blocks = [("setup", "Setup", _setup_block(study, seeds))]
    blocks += [(section.key, section.title, _generated(section, study, seeds)) for section in sections]
    for key, title, block in blocks:
        begin, end = BEGIN.format(key=key), END.format(key=key)
        if begin in text and end in text:
            head, rest = text.split(begin, 1)
            text = head + block + rest.split(end, 1)[1]
        else:
            text = text.rstrip("\n") + f"\n\n## {title}\n\n{block}\n"
    path.write_text(text)
    data_path = out / "results.json"
    data = json.loads(data_path.read_text()) if data_path.exists() else {}
    data.setdefault("experiments", {})
    data["environment"] = {"python": platform.python_version(), "torch": torch.__version__,
                           "machine": platform.machine(), "threads": torch.get_num_threads()}
    data["entropy_floor_bits_per_char"] = study.entropy_floor
    for section in sections:
        data["experiments"][section.key] = {"budget": asdict(study.budget), "seeds": list(seeds),
                                            "seconds": round(section.seconds, 1), "headline": section.headline,
                                            "runs": section.records}
    text = json.dumps(_json_safe(data), indent=1, allow_nan=False)
    # Arrays of plain values (loss curves, seeds) on one line each: a readable, diffable file.
    text = re.sub(r"\[([^\[\]{}\"]*)\]", lambda m: "[" + " ".join(m.group(1).split()) + "]", text)
    data_path.write_text(text + "\n")
    return path


def _json_safe(value):
    """NaN/inf -> None (strict JSON), tuples -> lists, anything else unknown -> str."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


def _report_header() -> str:
    return ("# Variants study\n\nReproduce: `bare-lm bench variants` (or `pytest benchmarks -m variants`). "
            "Validation bits per character against the corpus' entropy floor; mean ± sd over seeds.\n")


def _setup_block(study: Study, seeds: Sequence[int]) -> str:
    """The shared setup of every experiment: data, tokenizer, base model, training, metric, machine."""
    b = study.budget
    tok = study.tokenizer()
    base = base_config(study, Variant("base"))
    params = TransformerLM(base).num_parameters()
    vocab = f"{b.vocab_size}" if tok.vocab_size == b.vocab_size else f"{b.vocab_size} requested, {tok.vocab_size} learned"
    lines = [
        BEGIN.format(key="setup"), "",
        f"- **Data**: `corpus.builtin_corpus(n_train={b.train_docs}, n_val={b.val_docs}, seed=0)`; each split is "
        f"one stream `[eot] doc [eot] doc ... [eot]` (`data.token_stream`). Entropy floor of the validation "
        f"documents: **{study.entropy_floor:.4f} bits/char** (`story_grammar().entropy_floor_bits_per_char`).",
        f"- **Tokenizer**: byte-level BPE (`reference/tokenizer.py`, GPT-2 pre-tokenization, `<|endoftext|>`), "
        f"vocabulary {vocab}, trained once on the first {b.tokenizer_docs} training documents.",
        f"- **Base model**: `ModelConfig(d_model={b.d_model}, n_layers={b.n_layers}, n_heads={b.n_heads}, "
        f"context_length={b.context}, fast=True)` with the defaults otherwise (GELU, LayerNorm, Pre-LN, learned "
        f"positions, tied embeddings, no dropout): {params:,} parameters. Each experiment changes one thing. "
        f"`fast=True` runs torch's fused kernels, which give the written-out layers' results (the spec checks it).",
        f"- **Training**: {b.steps} AdamW steps (`reference/optim.py`, weight decay {b.weight_decay:g} on "
        f"matrices) of {b.batch_size} x {b.context} tokens (`data.FixedLengthBatches`, seed = run seed), "
        f"peak lr {b.lr:g}, {b.warmup_steps} warmup steps, cosine decay to {b.min_lr_ratio:g} x peak "
        f"(`optim.lr_schedule`), gradients clipped at {b.clip} (`train.train_step`). Seeds {list(seeds)}: "
        f"the seed sets the initialisation and the batches.",
        "- **Metric**: validation bits per character = summed cross-entropy (nats) over every target of the "
        "validation stream (`data.evaluation_batches`) / ln 2 / `corpus.stream_characters(val_docs)` "
        "(each document's characters plus its separator), comparable across tokenizers and to the floor. "
        "\"final train loss\" is the mean training loss (nats/token) of the last 10% of steps.",
        f"- **Machine**: torch {torch.__version__}, Python {platform.python_version()}, {platform.machine()}, "
        f"{b.threads} thread(s). Speeds (tokens/s) are wall-clock on a shared machine: compare within a table.",
        "", END.format(key="setup")]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.variants [--quick] [--out DIR] [--seeds N] [--only NAME]`` (as ``bare-lm bench variants``)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.variants", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run_from_args(parser.parse_args(argv))


def add_arguments(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="a first look in a few minutes (1 seed, 100 steps)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help=f"results folder (default: {DEFAULT_OUT.relative_to(REPO_ROOT)} in the checkout; "
                             f"with --quick: runs/variants-quick)")
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help="seeds 0..N-1 (default: the budget's)")
    parser.add_argument("--only", action="append", default=None, metavar="EXPERIMENT",
                        help=f"run only this experiment (repeatable; comma-separated ok): {', '.join(EXPERIMENTS)}")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch threads (default 2: the study's timings are for 2 CPU cores)")


def run_from_args(args) -> int:
    only = [name for item in (args.only or []) for name in item.split(",") if name]
    budget = BUDGETS["quick" if args.quick else "full"]
    if getattr(args, "threads", None):
        budget = replace(budget, threads=args.threads)
    out = Path(args.out) if args.out else (REPO_ROOT / "runs" / "variants-quick" if args.quick else DEFAULT_OUT)
    start = time.perf_counter()
    try:
        run_study(out, budget=budget, seeds=args.seeds, only=only or None,
                  log=lambda message: print(message, file=sys.stderr, flush=True))
    except ValueError as err:
        print(f"bare-lm bench variants: {err}", file=sys.stderr)
        return 2
    print(f"wrote {out / 'RESULTS.md'} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
