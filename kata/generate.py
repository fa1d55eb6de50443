"""Sampling and decoding: turn a language model's logits into new tokens.

The sampling distribution of one position, ``logits (..., V) -> probs (..., V)``, is built in this
order (as in the common libraries)::

    1. temperature   z = logits / T                      T = 0 means greedy (below)
    2. top-k         keep i  iff  z_i >= z_(k)           z_(k): the k-th largest; ties at the
                                                         boundary are kept (more than k may survive)
    3. softmax       p = softmax(z) over the kept set    (zero outside it)
    4. top-p         keep i  iff  sum_{j : p_j > p_i} p_j  <  top_p    (up to TOP_P_RTOL)
                     the smallest set reaching top_p, closed under ties: it never depends on the
                     order a sort puts tied tokens in. p is the distribution AFTER top-k.
    5. renormalise   probs = p * keep / sum(p * keep)

``T = 0`` (greedy) puts all the mass on the argmax, the lowest id winning ties (no division by
zero). ``top_k = 1`` is greedy too, even with tied maxima: it is the one exception to the tie rule
of step 2, so that "keep the single best token" never samples between equals. ``top_k >= V`` and ``top_p = 1`` keep everything. Everything is computed in float64; the
result is float64 for float64 logits, else float32.

Example: probs [0.3, 0.1, 0.1, 0.5], top_p = 0.8: the 0.5 token has mass 0 above it (kept), the 0.3
token 0.5 (kept), each 0.1 token 0.8, which is not < 0.8 (both dropped): result [0.375, 0, 0, 0.625].
Tie-independent top-p: sort descending, take the exclusive cumulative sum ``before[r]`` (mass of the
r most probable tokens); a token with ``n`` strictly more probable tokens has ``before[n]`` above it
(``torch.searchsorted`` on the ascending sort counts them).

Decoding (``generate`` / ``stream``) feeds the prompt, then one token at a time. With
``use_cache=True`` the model's KV cache (``model.new_kv_cache(B, max_len)``, one ``KVCache`` per
layer, ``.length`` tokens stored) holds the keys and values of every token already seen, so each
step runs ``model(new_ids, kv_cache=caches)`` on the tokens not yet in the cache only (the whole
prompt first, then the last token); ``use_cache=False`` recomputes ``model(all_ids)`` each step.
Both give identical tokens for the same seed. ``model(...)`` returns ``(logits (B, T, V), None)``;
the next token comes from the last position's logits.

Context length ``L = model.config.context_length``:

- a prompt longer than ``L`` is cropped to its last ``L`` tokens;
- once the sequence grows past ``L``, each step recomputes (without cache) a forward pass over a
  sliding window of the last ``L`` tokens (positions restart at 0 in the window);
- except with ``use_cache=True`` for a model whose ``rolls_past_context`` is True (``getattr(model,
  "rolls_past_context", False)``: a sliding window and rope / alibi / none): make its caches with
  ``new_kv_cache(B, T + max_new_tokens)`` (rolling: window slots each) and keep feeding only the
  new token past ``L``, at its true position; never recompute.

A stop id ends its sequence and IS included in the output. Batches: rows that have stopped emit
``PAD_ID`` (-1) until every row has stopped or ``max_new_tokens`` is reached (feed the model any
valid id for them, e.g. their last token). The model runs in eval mode with every forward under
``torch.no_grad()``; its training mode is restored at the end (``try/finally``).

Text streaming: ``codecs.getincrementaldecoder("utf-8")(errors="replace")`` holds back the bytes
of an unfinished character and replaces bytes that can never complete one exactly as
``bytes.decode(errors="replace")`` does; ``decoder.decode(b"", final=True)`` flushes the rest.

Spec: ``pytest --impl kata spec_tests/test_generate.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from . import checks

#: What a batch row emits after it has produced a stop id (not a token id).
PAD_ID = -1
#: Float rounding at the top-p boundary: a mass above i within a relative 1e-6 of p counts as
#: reaching p, so probs [0.3, 0.1, 0.1, 0.5] with p = 0.8 keep {0.5, 0.3} although softmax's
#: rounding makes 0.5 + 0.3 come out as 0.79999999...
TOP_P_RTOL = 1e-6


def sampling_distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                          top_p: float | None = None) -> torch.Tensor:
    """``logits (..., V) -> probs (..., V)``: the exact distribution ``sample`` draws from (module doc).

    Keep i after top-p iff ``mass_above_i < top_p * (1 - TOP_P_RTOL)``.

    Errors: ``checks.tensor("logits", logits, min_dim=1, floating=True)``; logits that are not all
    finite: ValueError naming ``logits``; ``checks.number_in_range("temperature", T, 0.0, None)``;
    ``checks.positive_int("top_k", k)`` (when not None); ``checks.number_in_range("top_p", p, 0.0,
    1.0, low_inclusive=False)`` (when not None).
    """
    raise NotImplementedError(
        "sampling_distribution: check the arguments; T = 0: one-hot argmax; else / T, top-k, softmax, top-p, renormalise")


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id per row from ``sampling_distribution``: ``(B, V) -> (B,)``, ``(V,) -> ()`` long.

    ``generator``: a ``torch.Generator`` on the logits' device (None: torch's global RNG). Never
    draws a token of probability 0 (``torch.multinomial`` on the distribution is fine).
    """
    raise NotImplementedError("sample: torch.multinomial(sampling_distribution(...), 1, generator=...), reshaped")


def generate(model, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop_ids: Iterable[int] = (), seed: int | None = None,
             use_cache: bool = True, compile: bool | str = False):
    """The new token ids after ``prompt_ids``.

    ``prompt_ids``: ``list[int]`` or a ``(T,)`` long tensor (one prompt) -> ``list[int]``;
    a ``(B, T)`` long tensor (a batch) -> ``(B, n)`` long tensor, ``n <= max_new_tokens``, stopped
    rows padded with ``PAD_ID``. A stop id is included and ends its sequence. ``seed``: the same
    seed gives the same tokens (a ``torch.Generator(device).manual_seed(seed)``; None: torch's
    global RNG). The model runs in eval mode under ``torch.no_grad``; its mode is restored afterwards.

    Errors: ``checks.non_negative_int("max_new_tokens", ...)``; temperature / top_k / top_p as in
    ``sampling_distribution``; an empty prompt (or a row of length 0): ValueError naming ``prompt_ids``;
    ``checks.non_negative_int("seed", ...)`` when not None.

    ``compile``: ``backend = checks.compile_backend("compile", compile)`` (False: eager; True:
    inductor; or a backend name); decode with ``checks.compiled(model, backend)``, which is
    ``torch.compile(model, backend=backend)`` sharing the model's parameters.
    """
    raise NotImplementedError("generate: check the arguments, then collect the tokens of the decoding loop")


def stream(model, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, stop_ids: Iterable[int] = (), seed: int | None = None,
           use_cache: bool = True, compile: bool | str = False) -> Iterator:
    """Like ``generate``, but yields each new token as it is produced: an ``int`` for one prompt,
    a ``(B,)`` long tensor per step for a batch. The arguments are checked at the call, not at the
    first ``next`` (so: a plain function that checks, then returns a generator)."""
    raise NotImplementedError("stream: check the arguments, then return the decoding loop's generator")


def stream_text(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, stop_ids: Iterable[int] = (),
                seed: int | None = None, use_cache: bool = True, compile: bool | str = False) -> Iterator[str]:
    """Encode ``prompt``, generate, and yield the new text piece by piece, always valid UTF-8.

    A character whose bytes span several tokens is held back until it is complete, so the pieces
    joined equal ``tokenizer.decode(all new ids)``; bytes that can never complete a character come
    out as U+FFFD exactly as ``decode`` (errors="replace") does; the rest is flushed at the end.
    Each token's bytes: ``tokenizer.decode_bytes([id])``. Only non-empty pieces are yielded.

    Errors: ``prompt`` not a str (TypeError); a prompt that encodes to no token (ValueError naming ``prompt``).
    """
    raise NotImplementedError(
        "stream_text: encode, stream ids, feed each token's bytes to an incremental UTF-8 decoder")
