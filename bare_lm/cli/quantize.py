"""``bare-lm quantize``: write a quantized copy of a trained checkpoint (INT8 or INT4 weights).

``bare-lm quantize RUN [--bits 8|4] [--group-size G] [--out FILE] [--force]``

``RUN`` is a run directory of ``bare-lm train`` (or a checkpoint directory); it is only read. Every
``Linear`` of the model is quantized with ``reference.quantize.quantize_model`` (symmetric,
round-to-nearest): ``--bits 8`` per output channel by default, ``--bits 4`` per group of
``--group-size`` input columns (default 32); a tied lm_head stays float (it is the embedding table).
The result is ONE safetensors file (``quantize.save_quantized``): the integers (int8, or two 4-bit
values per uint8 byte) and the scales as such, the float tensors, the model config and the tokenizer.
Default ``--out``: ``RUN.int8.safetensors`` (``.int4``) next to the run directory. An existing
``--out`` is never overwritten without ``--force``.

Sample from it with ``bare-lm generate --checkpoint FILE --prompt TEXT``.

Exit status: 0 done, 2 bad arguments or an unreadable checkpoint, 1 the file could not be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands) -> None:
    p = commands.add_parser(
        "quantize", help="write an INT8 / INT4 quantized copy of a checkpoint (one safetensors file)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN", help="run directory of bare-lm train, or a checkpoint directory (only read)")
    p.add_argument("--bits", type=int, default=8, metavar="8|4", help="bits per weight: 8 or 4 (default 8)")
    p.add_argument("--group-size", type=int, default=None, metavar="G",
                   help="input columns per scale (default: the whole row for 8 bits, 32 for 4 bits)")
    p.add_argument("--out", default=None, metavar="FILE",
                   help="the .safetensors file to write (default: RUN.int8.safetensors / RUN.int4.safetensors)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(run=run)


def default_out(run, bits: int) -> Path:
    """``RUN.int8.safetensors`` (or ``.int4``), next to the run directory."""
    path = Path(run).resolve()
    return path.with_name(f"{path.name}.int{bits}.safetensors")


def _fail(message: str, status: int = 2) -> int:
    print(f"bare-lm quantize: {message}", file=sys.stderr)
    return status


def run(args) -> int:
    from reference import quantize
    from reference.checkpoint import load_checkpoint

    from .finetune import checkpoint_path

    if args.bits not in quantize.BITS:
        return _fail(f"--bits must be 8 or 4, got {args.bits}")
    group_size = args.group_size
    if group_size is not None and group_size < 1:
        return _fail(f"--group-size must be an int >= 1 dividing every layer's in_features, got {group_size}")
    if group_size is None and args.bits == 4:
        group_size = quantize.DEFAULT_GROUP_SIZE
    out = default_out(args.run_dir, args.bits) if args.out is None else Path(args.out)
    if out.suffix != ".safetensors":
        return _fail(f"--out must name a .safetensors file, got {out}")
    if out.exists() and not args.force:
        return _fail(f"{out} exists; pass --force to overwrite it or choose another --out")
    try:
        ckpt = load_checkpoint(checkpoint_path(args.run_dir))
    except (FileNotFoundError, ValueError, OSError) as err:
        return _fail(f"cannot load {args.run_dir}: {err}")
    model = ckpt.model.eval()
    float_bytes = sum(t.numel() * t.element_size() for t in _unique_tensors(model))
    try:
        quantize.quantize_model(model, bits=args.bits, group_size=group_size)
    except ValueError as err:
        return _fail(f"--group-size: {err}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        quantize.save_quantized(model, out, tokenizer=ckpt.tokenizer)
    except OSError as err:
        return _fail(f"cannot write {out}: {err}", 1)
    layers = quantize.quantized_layers(model)
    size = next(iter(layers.values())).group_size
    groups = "per output channel" if all(m.group_size == m.in_features for m in layers.values()) else \
        f"groups of {size} columns"
    print(f"quantized {len(layers)} Linear layers to INT{args.bits} ({groups}); "
          f"float tensors {float_bytes:,} bytes -> file {out.stat().st_size:,} bytes")
    print(f"wrote {out}; sample with bare-lm generate --checkpoint {out} --prompt TEXT")
    return 0


def _unique_tensors(model):
    """The tensors of the state dict, a shared one (the tied embedding) once."""
    seen, tensors = set(), []
    for t in model.state_dict().values():
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            tensors.append(t)
    return tensors
