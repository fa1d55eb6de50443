"""``bare-lm convert``: Bare-LM checkpoints to and from Hugging Face transformers directories.

  bare-lm convert to-hf CHECKPOINT OUT_DIR      config.json + model.safetensors (+ tokenizer.json,
                                                vocab.json, merges.txt when the checkpoint has a tokenizer)
  bare-lm convert from-hf HF_DIR OUT_CHECKPOINT a Bare-LM checkpoint (with the directory's tokenizer, if any)

Both directions use ``reference.interop`` (json + safetensors: transformers is not needed, and
nothing is downloaded). GPT-2 and Llama models convert; any other setting is refused with the
field that cannot be expressed. A converted checkpoint runs with ``bare-lm generate --checkpoint``;
``load_hf_model`` is the loader for ``bare-lm generate --hf DIR``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands) -> None:
    p = commands.add_parser("convert", help="convert checkpoints to / from Hugging Face transformers directories",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="convert_command", metavar="DIRECTION", required=True)

    t = sub.add_parser("to-hf", help="Bare-LM checkpoint -> transformers directory")
    t.add_argument("checkpoint", help="a Bare-LM checkpoint directory")
    t.add_argument("out", help="the transformers directory to write")
    t.set_defaults(run=run_to_hf)

    f = sub.add_parser("from-hf", help="transformers directory -> Bare-LM checkpoint")
    f.add_argument("hf_dir", help="a transformers directory (config.json + model.safetensors)")
    f.add_argument("out", help="the Bare-LM checkpoint directory to write")
    f.add_argument("--dtype", choices=("float32", "float64", "bfloat16", "float16"), default=None,
                   help="convert the weights (default: keep their dtype)")
    f.set_defaults(run=run_from_hf)


def _fail(err) -> int:
    print(f"bare-lm convert: {err}", file=sys.stderr)
    return 2


def load_hf_model(directory, device: str = "cpu"):
    """``(model, tokenizer)`` from a transformers directory, the model in eval mode on ``device``;
    the tokenizer is None when the directory has none. Errors are FileNotFoundError / ValueError."""
    from reference.interop import load_hf

    model, tokenizer = load_hf(directory)
    return model.to(device).eval(), tokenizer


def run_to_hf(args) -> int:
    from reference.checkpoint import load_checkpoint
    from reference.interop import save_hf_tokenizer, to_hf

    try:
        ckpt = load_checkpoint(args.checkpoint)
        out = to_hf(ckpt.model, args.out)
        if ckpt.tokenizer is not None:
            save_hf_tokenizer(ckpt.tokenizer, out)
    except (FileNotFoundError, ValueError, TypeError) as err:
        return _fail(err)
    config = ckpt.model.config
    print(f"wrote {out}: {config.n_layers} layers, d_model {config.d_model}, vocab {config.vocab_size}"
          f"{' + tokenizer' if ckpt.tokenizer is not None else ''}")
    return 0


def run_from_hf(args) -> int:
    import torch

    from reference.checkpoint import save_checkpoint
    from reference.interop import load_hf

    try:
        model, tokenizer = load_hf(args.hf_dir, dtype=None if args.dtype is None else getattr(torch, args.dtype))
        out = save_checkpoint(Path(args.out), model, step=0, tokenizer=tokenizer)
    except (FileNotFoundError, ValueError, TypeError) as err:
        return _fail(err)
    config = model.config
    print(f"wrote {out}: {config.n_layers} layers, d_model {config.d_model}, vocab {config.vocab_size}"
          f"{' + tokenizer' if tokenizer is not None else ' (no tokenizer in ' + str(args.hf_dir) + ')'}")
    return 0
