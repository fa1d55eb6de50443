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

Decoding (``generate`` / ``stream``) feeds the prompt, then one token at a time. With
``use_cache=True`` the model's KV cache (``model.new_kv_cache``) holds the keys and values of every
token already seen, so each step runs the model on the NEW token only; ``use_cache=False``
recomputes the full forward pass each step. Both give identical tokens for the same seed.

Context length ``L = model.config.context_length``:

- a prompt longer than ``L`` is cropped to its last ``L`` tokens;
- once the sequence grows past ``L``, each step recomputes (without cache) a forward pass over a
  sliding window of the last ``L`` tokens (positions restart at 0 in the window);
- except with ``use_cache=True`` for a model that ``rolls_past_context`` (a sliding window w and
  rope, alibi or none): its rolling KV caches (w slots per layer) keep decoding at the true
  positions ``L, L + 1, ...`` without recomputing anything. Each token then depends on the last
  ``n_layers * (w - 1) + 1`` tokens (the window's reach through the layers), so it equals the
  uncached tokens as long as that reach fits in ``L``.

A stop id ends its sequence and IS included in the output. Batches: rows that have stopped emit
``PAD_ID`` (-1) until every row has stopped or ``max_new_tokens`` is reached.
"""

from __future__ import annotations

import codecs
import math
from collections.abc import Iterable, Iterator

import torch

from . import checks

#: What a batch row emits after it has produced a stop id (not a token id).
PAD_ID = -1
#: Float rounding at the top-p boundary: a mass above i within a relative 1e-6 of p counts as
#: reaching p, so probs [0.3, 0.1, 0.1, 0.5] with p = 0.8 keep {0.5, 0.3} although softmax's
#: rounding makes 0.5 + 0.3 come out as 0.79999999...
TOP_P_RTOL = 1e-6


# ---------------------------------------------------------------------------------------------
# The sampling distribution and the sampler
# ---------------------------------------------------------------------------------------------


def sampling_distribution(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                          top_p: float | None = None) -> torch.Tensor:
    """``logits (..., V) -> probs (..., V)``: the exact distribution ``sample`` draws from (see module doc)."""
    _check_sampling_args(logits, temperature, top_k, top_p)
    return _distribution(logits, temperature, top_k, top_p)


def _distribution(logits, temperature, top_k, top_p) -> torch.Tensor:
    """``sampling_distribution`` without the argument checks (the decoding loop checks them once)."""
    out_dtype = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.double()                                          # (..., V)
    if temperature == 0 or top_k == 1:                           # greedy
        best = torch.argmax(x, dim=-1, keepdim=True)             # (..., 1) first of tied maxima
        return torch.zeros_like(x).scatter(-1, best, 1.0).to(out_dtype)
    z = x / temperature if temperature != 1.0 else x             # (..., V) 1. temperature (z / 1 = z exactly)
    candidates = None                                            # (..., k) ids of the k largest, if top-k
    if top_k is not None and top_k < z.shape[-1]:
        largest, candidates = z.topk(top_k, dim=-1)              # (..., k) sorted, descending
        z = z.masked_fill(z < largest[..., -1:], float("-inf"))  # (..., V) 2. -inf below the k-th largest
    probs = _softmax(z, None if candidates is None else largest[..., :1])   # (..., V) 3. zero outside the top k
    if top_p is not None and top_p < 1.0:
        keep = _top_p_mask(probs, top_p, candidates)             # (..., V) 4. bool
        probs = torch.where(keep, probs, 0.0)
    probs = probs / probs.sum(dim=-1, keepdim=True)              # (..., V) 5. renormalise
    return probs.to(out_dtype)


def sample(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one token id per row from ``sampling_distribution``: ``(B, V) -> (B,)``, ``(V,) -> ()`` long.

    ``generator``: a ``torch.Generator`` on the logits' device (None: torch's global RNG).
    """
    _check_sampling_args(logits, temperature, top_k, top_p)
    return _draw(logits, temperature, top_k, top_p, generator)


def _draw(logits, temperature, top_k, top_p, generator) -> torch.Tensor:
    """``sample`` without the argument checks (the decoding loop checks them once per call)."""
    probs = _distribution(logits, temperature, top_k, top_p)          # (..., V)
    flat = probs if probs.dim() == 2 else probs.reshape(-1, probs.shape[-1])   # (N, V)
    # The exponential race: with E_i ~ Exp(1) independent, argmax_i p_i / E_i is i with probability
    # p_i. It is how torch.multinomial(flat, 1) draws (the same random numbers, the same ids),
    # without re-validating a distribution that is valid by construction.
    race = flat / torch.empty_like(flat).exponential_(1.0, generator=generator)   # (N, V)
    ids = race.argmax(dim=-1)                                            # (N,)
    return ids if probs.dim() == 2 else ids.reshape(probs.shape[:-1])    # (...) long


def _check_sampling_args(logits, temperature, top_k, top_p) -> None:
    checks.tensor("logits", logits, min_dim=1, floating=True)
    if logits.shape[-1] < 1:
        raise ValueError(f"logits must have a non-empty last (vocabulary) dimension, got shape {tuple(logits.shape)}")
    # the smallest and the largest logit are finite iff every logit is (both are NaN if any is)
    if logits.numel() and not all(math.isfinite(bound) for bound in torch.aminmax(logits)):
        raise ValueError("logits must be finite (no NaN or inf)")
    checks.number_in_range("temperature", temperature, 0.0, None)
    if top_k is not None:
        checks.positive_int("top_k", top_k)
    if top_p is not None:
        checks.number_in_range("top_p", top_p, 0.0, 1.0, low_inclusive=False)


def _softmax(z: torch.Tensor, z_max: torch.Tensor | None = None) -> torch.Tensor:
    """Stable softmax along the last dim; ``-inf`` entries get probability 0. ``z_max (..., 1)``:
    the row maxima when already known."""
    if z_max is None:
        z_max = z.amax(dim=-1, keepdim=True)
    e = torch.exp(z - z_max)                           # (..., V) max entry -> exp(0) = 1
    return e / e.sum(dim=-1, keepdim=True)


def _top_p_mask(probs: torch.Tensor, p: float, candidates: torch.Tensor | None = None) -> torch.Tensor:
    """``keep[i] = (sum of the probabilities strictly greater than probs[i]) < p``, tie-independent.

    ``candidates (..., k)``: after top-k, the ids of the k largest (descending); every other token
    has zero probability or ties with the k-th, so the masses above the kept tokens are sums over
    the candidates alone, and only they need sorting.

    The kept set is the most probable tokens down to a threshold: with ``desc`` the probabilities
    in descending order and ``before[r]`` the mass of the ``r`` most probable (``before[0] = 0``),
    the first ``r`` with ``before[r] >= p`` ends the tokens kept one by one, so ``n_kept`` is the
    number of ``before`` entries below ``p`` (at least 1), and a token is kept iff its probability
    is at least ``desc[n_kept - 1]``: the ties of that last one come with it, and every token with
    as much mass above it as a token left out is left out too (``before`` grows).
    """
    if candidates is None:
        desc = probs.sort(dim=-1, descending=True).values                     # (..., V)
    else:
        desc = probs.gather(-1, candidates)                                    # (..., k) already descending
    # before[r] = cumsum[r - 1] for r >= 1, and before[0] = 0 < p: n_kept - 1 of the cumulative
    # sums (the last left out) are below p; rounding: a mass within TOP_P_RTOL of p has reached it
    more = (desc.cumsum(dim=-1)[..., :-1] < p * (1.0 - TOP_P_RTOL)).sum(dim=-1, keepdim=True)   # (..., 1) n_kept - 1
    threshold = desc.gather(-1, more)                                          # (..., 1) desc[n_kept - 1]
    return probs >= threshold


# ---------------------------------------------------------------------------------------------
# Decoding
# ---------------------------------------------------------------------------------------------


def generate(model, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop_ids: Iterable[int] = (), seed: int | None = None,
             use_cache: bool = True, compile: bool | str = False):
    """The new token ids after ``prompt_ids``.

    ``prompt_ids``: ``list[int]`` or a ``(T,)`` long tensor (one prompt) -> ``list[int]``;
    a ``(B, T)`` long tensor (a batch) -> ``(B, n)`` long tensor, ``n <= max_new_tokens``, stopped
    rows padded with ``PAD_ID``. A stop id is included and ends its sequence. ``seed``: the same
    seed gives the same tokens (None: torch's global RNG). The model runs in eval mode under
    ``torch.no_grad``; its training mode is restored afterwards. ``compile``: run the model's
    forward through ``torch.compile`` (True: inductor, or a backend name such as "aot_eager").
    """
    backend = checks.compile_backend("compile", compile)
    tokens, single, generator = _prepare(model, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                                         seed, use_cache)
    model = checks.compiled(model, backend)                             # the same parameters
    steps = list(_decode(model, tokens, single, max_new_tokens, temperature, top_k, top_p,
                         _stop_set(stop_ids), generator, use_cache))
    if single:
        return steps
    if not steps:
        return torch.empty(tokens.shape[0], 0, dtype=torch.long, device=tokens.device)
    return torch.stack(steps, dim=1)                                    # (B, n)


def stream(model, prompt_ids, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, stop_ids: Iterable[int] = (), seed: int | None = None,
           use_cache: bool = True, compile: bool | str = False) -> Iterator:
    """Like ``generate``, but yields each new token as it is produced: an ``int`` for one prompt,
    a ``(B,)`` long tensor per step for a batch. The arguments are checked at the call, not at the
    first ``next``. The model stays in eval mode until the iterator is exhausted or closed."""
    backend = checks.compile_backend("compile", compile)
    tokens, single, generator = _prepare(model, prompt_ids, max_new_tokens, temperature, top_k, top_p,
                                         seed, use_cache)
    return _decode(checks.compiled(model, backend), tokens, single, max_new_tokens, temperature, top_k, top_p, _stop_set(stop_ids),
                   generator, use_cache)


def stream_text(model, tokenizer, prompt: str, max_new_tokens: int, temperature: float = 1.0,
                top_k: int | None = None, top_p: float | None = None, stop_ids: Iterable[int] = (),
                seed: int | None = None, use_cache: bool = True, compile: bool | str = False) -> Iterator[str]:
    """Encode ``prompt``, generate, and yield the new text piece by piece, always valid UTF-8.

    A character whose bytes span several tokens is held back until it is complete, so the pieces
    joined equal ``tokenizer.decode(all new ids)``; bytes that can never complete a character come
    out as U+FFFD exactly as ``decode`` (errors="replace") does; the rest is flushed at the end.
    """
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    ids = tokenizer.encode(prompt)
    if len(ids) == 0:
        raise ValueError("prompt must encode to at least one token, got an empty prompt")
    new_ids = stream(model, ids, max_new_tokens, temperature, top_k, top_p, stop_ids, seed, use_cache, compile)
    return _text_pieces(tokenizer, new_ids)


def _text_pieces(tokenizer, ids: Iterable[int]) -> Iterator[str]:
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")   # holds back incomplete characters
    for token_id in ids:
        piece = decoder.decode(tokenizer.decode_bytes([token_id]))
        if piece:
            yield piece
    rest = decoder.decode(b"", final=True)                               # an unfinished character: U+FFFD
    if rest:
        yield rest


def _prepare(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache):
    """Check every argument; return ``(tokens (B, T) long on the model's device, single, generator)``."""
    checks.non_negative_int("max_new_tokens", max_new_tokens)
    checks.number_in_range("temperature", temperature, 0.0, None)
    if top_k is not None:
        checks.positive_int("top_k", top_k)
    if top_p is not None:
        checks.number_in_range("top_p", top_p, 0.0, 1.0, low_inclusive=False)
    if seed is not None:
        checks.non_negative_int("seed", seed)
    checks.boolean("use_cache", use_cache)
    device = _device(model)
    if isinstance(prompt_ids, torch.Tensor):
        checks.tensor("prompt_ids", prompt_ids, min_dim=1, max_dim=2, floating=False)
        single = prompt_ids.dim() == 1
        tokens = prompt_ids.reshape(1, -1) if single else prompt_ids
    elif isinstance(prompt_ids, (list, tuple)):
        if any(isinstance(i, bool) or not isinstance(i, int) for i in prompt_ids):
            raise TypeError("prompt_ids must be a list of ints or a (T,) / (B, T) long tensor")
        single = True
        tokens = torch.tensor([list(prompt_ids)], dtype=torch.long).reshape(1, -1)
    else:
        raise TypeError(f"prompt_ids must be a list of ints or a long tensor, got {type(prompt_ids).__name__}")
    if tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise ValueError(f"prompt_ids must hold at least one token (per row), got shape {tuple(tokens.shape)}")
    vocab_size = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(vocab_size, int):    # checked once here: the sampled ids are in range by construction
        lowest, highest = (int(i) for i in torch.aminmax(tokens))
        if lowest < 0 or highest >= vocab_size:
            bad = lowest if lowest < 0 else highest
            raise ValueError(f"prompt_ids holds token id {bad}, outside [0, vocab_size={vocab_size})")
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    return tokens.to(device=device, dtype=torch.long), single, generator


def _stop_set(stop_ids) -> list[int]:
    if isinstance(stop_ids, int):
        stop_ids = (stop_ids,)
    stops = list(stop_ids)
    if any(isinstance(i, bool) or not isinstance(i, int) for i in stops):
        raise TypeError(f"stop_ids must be an iterable of ints, got {stops!r}")
    return stops


def _device(model) -> torch.device:
    first = next(iter(model.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


#: Marks a step whose logits were not finite (never a token id, nor PAD_ID).
_NOT_FINITE = -2


def _raise_not_finite():
    raise ValueError("logits must be finite (no NaN or inf): the model produced non-finite logits")


def _checked_draw(logits, temperature, top_k, top_p, generator) -> torch.Tensor:
    """``_draw``; non-finite logits (which the sampler itself may refuse) are a ValueError naming logits."""
    try:
        return _draw(logits, temperature, top_k, top_p, generator)
    except RuntimeError:   # e.g. a NaN index; the decoding loop checks finiteness with its one sync
        if not bool(torch.isfinite(logits).all()):
            _raise_not_finite()
        raise


def _forward(model, ids: torch.Tensor, caches) -> torch.Tensor:
    """Logits of the LAST position, ``(B, V)``, without building a graph."""
    with torch.no_grad():
        logits, _ = model(ids, kv_cache=caches) if caches is not None else model(ids)   # (B, T, V)
    return logits[:, -1]


def _decode(model, tokens, single, max_new_tokens, temperature, top_k, top_p, stops, generator,
            use_cache) -> Iterator:
    """The decoding loop shared by ``generate`` and ``stream`` (arguments already checked, once).

    One host sync per step: the emitted id of a single prompt, or the "every row stopped / logits
    not finite" flag of a batch; the rest stays on the device.
    """
    was_training = model.training
    model.eval()
    try:
        context = model.config.context_length
        tokens = tokens[:, -context:]                     # (B, T) a long prompt keeps its last `context` tokens
        b, t = tokens.shape
        stop_tensor = torch.tensor(stops, dtype=torch.long, device=tokens.device)
        done = torch.zeros(b, dtype=torch.bool, device=tokens.device)   # (B,) rows that have stopped
        # every token so far, written in place (allocated once): seq[:, :n]
        seq = torch.empty(b, t + max_new_tokens, dtype=torch.long, device=tokens.device)   # (B, T + max_new_tokens)
        seq[:, :t] = tokens
        n = t
        caches = None
        # a sliding-window model with relative positions keeps decoding past the context with its
        # rolling caches (window slots each): no recomputation
        rolls = use_cache and bool(getattr(model, "rolls_past_context", False))
        if use_cache and max_new_tokens > 0:
            caches = model.new_kv_cache(b, t + max_new_tokens if rolls else min(context, t + max_new_tokens))
        new = tokens                                      # (B, T_new) the tokens not in the cache yet
        for _ in range(max_new_tokens):
            if caches is not None and (rolls or n <= context):
                logits = _forward(model, new, caches)                   # (B, V)
            else:
                logits = _forward(model, seq[:, max(0, n - context):n], None)   # (B, V) full pass, sliding window
            next_ids = _checked_draw(logits, temperature, top_k, top_p, generator)   # (B,)
            finite = torch.isfinite(logits).all()                       # () checked with the step's sync
            if stops:
                emitted = torch.where(done, PAD_ID, next_ids)
                next_ids = torch.where(done, new[:, -1], next_ids)      # stopped rows repeat a valid id
                done = done | torch.isin(next_ids, stop_tensor)
            else:
                emitted = next_ids
            seq[:, n] = next_ids
            n += 1
            new = next_ids[:, None]                                     # (B, 1)
            if single:
                token = int(torch.where(finite, emitted, _NOT_FINITE))  # the step's one host sync
                if token == _NOT_FINITE:
                    _raise_not_finite()
                yield token
                if token in stops:
                    return
                continue
            halt = (done.all() | ~finite) if stops else ~finite
            if bool(halt):                                              # the step's one host sync
                if not bool(finite):
                    _raise_not_finite()
                yield emitted
                return
            yield emitted
    finally:
        model.train(was_training)
