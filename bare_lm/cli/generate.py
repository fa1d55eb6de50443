"""``bare-lm generate``: sample text from a trained checkpoint, streamed to the terminal as it comes.

``bare-lm generate (--checkpoint PATH | --hf DIR) --prompt TEXT [--max-new-tokens N] [--temperature T]
[--top-k K] [--top-p P] [--seed S] [--device cpu|cuda] [--no-cache] [--interactive] [--adapter FILE]``

The checkpoint (a directory written by ``checkpoint.save_checkpoint``), or the transformers directory
(``--hf``, GPT-2 or Llama), must hold a tokenizer.
``--adapter FILE``: LoRA adapters from ``bare-lm finetune`` (``lora.load_adapter``), merged into
the weights for generation.
``--checkpoint FILE.safetensors``: a quantized checkpoint of ``bare-lm quantize``
(``quantize.load_quantized``, the cached-dequantization fast path).
Generation stops at the tokenizer's ``<|endoftext|>`` when it has that special token.
``--interactive``: read a prompt, print the answer, repeat until EOF or an empty line.
A special token's text in a prompt (``<|endoftext|>``) is an error unless ``--allow-special`` is
given (then it is that special token). When stdout closes early (``| head``) generation stops
quietly (exit status 0).
"""

from __future__ import annotations

import sys
from pathlib import Path


def register(commands) -> None:
    parser = commands.add_parser(
        "generate", help="sample text from a checkpoint (streamed as it is produced)",
        description="Load a checkpoint (model + tokenizer) and stream generated text to the terminal.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", metavar="PATH",
                        help="checkpoint or run directory, or a quantized .safetensors file of bare-lm quantize")
    source.add_argument("--hf", metavar="DIR", help="a Hugging Face transformers directory (GPT-2 or Llama: "
                        "config.json, model.safetensors and tokenizer.json or vocab.json + merges.txt)")
    parser.add_argument("--prompt", default=None, metavar="TEXT",
                        help="the text to continue (required unless --interactive)")
    parser.add_argument("--max-new-tokens", type=int, default=200, metavar="N", help="tokens to generate (default 200)")
    parser.add_argument("--temperature", type=float, default=1.0, metavar="T",
                        help="sampling temperature; 0 is greedy (default 1.0)")
    parser.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the K most likely tokens (ties kept)")
    parser.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling: keep mass P, in (0, 1]")
    parser.add_argument("--seed", type=int, default=None, metavar="S", help="random seed (reproducible output)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the model runs (default cpu)")
    parser.add_argument("--no-cache", action="store_true", help="recompute full forward passes (no KV cache)")
    parser.add_argument("--compile", nargs="?", const=True, default=False, metavar="BACKEND",
                        help="run the model through torch.compile (default backend inductor; e.g. eager, aot_eager)")
    parser.add_argument("--interactive", action="store_true",
                        help="ask for prompts until EOF or an empty line (--prompt, if given, goes first)")
    parser.add_argument("--adapter", default=None, metavar="FILE",
                        help="LoRA adapter file written by bare-lm finetune (applied on top of the model)")
    parser.add_argument("--allow-special", action="store_true",
                        help="a special token's text in a prompt (<|endoftext|>) is that token (default: an error)")
    parser.set_defaults(run=run)


def run(args) -> int:
    """``_run``; a closed stdout (``| head``) ends it quietly."""
    try:
        return _run(args)
    except BrokenPipeError:
        import os
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the final flush must not fail again
        except (OSError, ValueError):
            pass
        return 0


def encode_prompt(tokenizer, prompt: str, allow_special: bool) -> list[int]:
    """The prompt's ids. A special token's text is a ValueError naming it unless ``allow_special``;
    then each occurrence is that special token (``Tokenizer.encode``'s ``allowed_special="all"``)."""
    try:
        return tokenizer.encode(prompt, allowed_special="all" if allow_special else ())
    except ValueError as err:
        if allow_special or not any(s in prompt for s in getattr(tokenizer, "special_tokens", {})):
            raise
        raise ValueError(f"{err}; pass --allow-special to use it as that token") from None


def _text_pieces(tokenizer, ids):
    """The new ids as text, each character once it is complete (as ``generate.stream_text``)."""
    import codecs
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    for token_id in ids:
        piece = decoder.decode(tokenizer.decode_bytes([token_id]))
        if piece:
            yield piece
    rest = decoder.decode(b"", final=True)
    if rest:
        yield rest


def _run(args) -> int:
    """Load the checkpoint, then stream the answer to ``--prompt`` (and, interactive, to each prompt read)."""
    from reference import generate
    from reference.checkpoint import load_checkpoint

    if args.prompt is None and not args.interactive:
        print("bare-lm generate: give --prompt TEXT or --interactive", file=sys.stderr)
        return 2
    if args.device == "cuda":
        import torch
        if not torch.cuda.is_available():
            print("bare-lm generate: --device cuda, but CUDA is not available", file=sys.stderr)
            return 2
    try:
        if args.hf is not None:
            from .convert import load_hf_model
            model, tokenizer = load_hf_model(args.hf, device=args.device)
        elif Path(args.checkpoint).is_file():  # a quantized checkpoint of bare-lm quantize
            from reference.quantize import load_quantized
            if args.adapter is not None:
                raise ValueError(f"--adapter needs a float checkpoint; {args.checkpoint} is quantized")
            model, tokenizer = load_quantized(args.checkpoint, device=args.device, fast=True)
        else:
            from .finetune import checkpoint_path  # a run directory of bare-lm train works too
            ckpt = load_checkpoint(checkpoint_path(args.checkpoint), device=args.device)
            model, tokenizer = ckpt.model, ckpt.tokenizer
    except (FileNotFoundError, ValueError) as err:
        print(f"bare-lm generate: {err}", file=sys.stderr)
        return 2
    if tokenizer is None:
        print(f"bare-lm generate: {args.checkpoint or args.hf} has no tokenizer", file=sys.stderr)
        return 2
    if args.adapter is not None:
        from reference import lora
        try:
            lora.load_adapter(model, args.adapter)
        except (FileNotFoundError, ValueError, TypeError) as err:
            print(f"bare-lm generate: --adapter: {err}", file=sys.stderr)
            return 2
        lora.merge_lora(model)  # one matmul per projection while sampling
    model.eval()
    stop_ids = [i for name, i in getattr(tokenizer, "special_tokens", {}).items() if name == "<|endoftext|>"]
    options = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, stop_ids=stop_ids, seed=args.seed, use_cache=not args.no_cache,
                   compile=args.compile)

    def answer(prompt: str, echo: bool) -> int:
        try:
            ids = encode_prompt(tokenizer, prompt, args.allow_special)
            if not ids:
                raise ValueError("the prompt is empty; give some text")
            pieces = _text_pieces(tokenizer, generate.stream(model, ids, **options))
            if echo:
                sys.stdout.write(prompt)
            for piece in pieces:
                sys.stdout.write(piece)
                sys.stdout.flush()
        except (TypeError, ValueError) as err:
            print(f"\nbare-lm generate: {err}", file=sys.stderr)
            return 2
        sys.stdout.write("\n")
        sys.stdout.flush()
        return 0

    if args.prompt is not None:
        status = answer(args.prompt, echo=not args.interactive)
        if status or not args.interactive:
            return status
    while True:
        try:
            prompt = input("> ")
        except EOFError:
            print()
            return 0
        if not prompt:
            return 0
        status = answer(prompt, echo=False)
        if status:
            return status
