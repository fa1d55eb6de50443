"""The components of the contract, in curriculum order (the order a learner builds them).

Each component is one module of an implementation and one spec file, ``test_<component>.py``.
The progress table, the collection order and ``-m <component>`` all follow this list.
"""

COMPONENTS: tuple[str, ...] = (
    "tokenizer",
    "linear",
    "embedding",
    "positional",
    "norm",
    "feedforward",
    "attention",
    "loss",
    "model",
    "data",
    "corpus",
    "optim",
    "checkpoint",
    "train",
    "distributed",
    "generate",
    "interop",
    "lora",
    "quantize",
)


def component_of(filename: str) -> str | None:
    """``test_norm.py`` -> ``"norm"``; None for files that are not a component's spec."""
    stem = filename.rsplit("/", 1)[-1].removesuffix(".py")
    name = stem.removeprefix("test_")
    return name if stem.startswith("test_") and name in COMPONENTS else None
