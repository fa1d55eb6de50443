"""Speed of the data pipeline: story sampling, exact log-probs, batching.

Run: ``pytest benchmarks/test_bench_data.py --benchmark-only``. Each case is small, so CI's
``--benchmark-disable`` run (each once) takes well under a second.
"""

import torch

from reference.corpus import story_grammar
from reference.data import DynamicBatches, FixedLengthBatches, evaluation_batches

GRAMMAR = story_grammar()
DOCS = GRAMMAR.documents(200, 0)
STREAM = torch.randint(0, 512, (200_000,), generator=torch.Generator().manual_seed(0))


def test_sample_documents(benchmark):
    """Sampling 200 stories (pure Python)."""
    benchmark(GRAMMAR.documents, 200, 1)


def test_log_prob(benchmark):
    """Exact log P(doc) of 200 stories (greedy parse)."""
    benchmark(lambda: [GRAMMAR.log_prob(d) for d in DOCS])


def test_fixed_length_batch(benchmark):
    """One training batch (B=32, T=256) from a 200k-token stream."""
    batcher = FixedLengthBatches(STREAM, 32, 256, seed=0)
    benchmark(batcher.batch, 7)


def test_evaluation_pass(benchmark):
    """The whole sequential evaluation pass over 200k tokens (B=64, T=256)."""
    benchmark(evaluation_batches, STREAM, 64, 256)


def test_dynamic_epoch(benchmark):
    """One epoch of dynamic batches over 200 stories as byte ids (B=16, T=256)."""
    docs = [torch.tensor(list(d.encode())) for d in DOCS]
    batcher = DynamicBatches(docs, 16, 256, eot_id=0, seed=0)
    benchmark(batcher.epoch_batches, 0)
