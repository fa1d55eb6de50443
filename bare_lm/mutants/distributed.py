from . import Mutant

MUTANTS = [
    Mutant("gradients-summed-over-ranks", "distributed.py", "each rank scales its loss by the world size: the "
           "gradients are summed over the ranks, not averaged",
           "            (loss / k).backward()", "            (loss * dist.get_world_size() / k).backward()"),
    Mutant("shards-overlap", "distributed.py", "every rank takes the first n / W rows (the shards overlap)",
           "rows = slice(rank * n // world_size, (rank + 1) * n // world_size)", "rows = slice(0, n // world_size)"),
    Mutant("shard-size-unchecked", "distributed.py", "a world size that does not divide the batch gives unequal shards",
           "    if n % world_size:\n        allowed", "    if False:\n        allowed"),
    Mutant("world-size-check-ignores-accum", "distributed.py", "check_world_size forgets accum",
           "    if batch_size % (world_size * accum):", "    if batch_size % world_size:"),
    Mutant("no-sync-on-the-last-micro-batch", "distributed.py", "no_sync wraps the last backward instead of the "
           "first k - 1 (the accumulated gradients are never all-reduced)",
           "with contextlib.nullcontext() if last else model.no_sync():",
           "with contextlib.nullcontext() if i == 0 else model.no_sync():"),
    Mutant("no-sync-missing", "distributed.py", "every micro-batch's backward all-reduces the gradients",
           "with contextlib.nullcontext() if last else model.no_sync():", "with contextlib.nullcontext():"),
    Mutant("loss-not-reduced", "distributed.py", "the returned (logged) loss is this rank's, not the mean over ranks",
           "    total = _all_reduce(total) / dist.get_world_size()", "    total = total"),
    Mutant("eval-not-reduced", "distributed.py", "each rank reports the figures of its own evaluation batches only",
           "    sums = _all_reduce(sums)\n", ""),
    Mutant("eval-not-split", "distributed.py", "every rank evaluates every batch, then the sums are all-reduced",
           "    for x, y in batches[rank::world_size]:", "    for x, y in batches:"),
    Mutant("setup-without-env-check", "distributed.py", "setup reads the variables without checking they are set",
           "    if missing:\n        raise ValueError(f\"distributed setup:", "    if False:\n        raise ValueError(f\"distributed setup:"),
    Mutant("rank-range-unchecked", "distributed.py", "a RANK outside [0, WORLD_SIZE - 1] reaches init_process_group",
           "    if not 0 <= rank < world_size:\n        raise ValueError(f\"RANK", "    if False:\n        raise ValueError(f\"RANK"),
    Mutant("rank-zero-guard-missing", "train.py", "every rank writes the log and the checkpoints (and takes the lock)",
           "    main = rank == 0                         # rank 0 alone", "    main = True                              # rank 0 alone",
           specs=("distributed",)),
    Mutant("sampler-seeded-per-rank", "train.py", "each rank samples its own batches (seeded by rank) instead of "
           "sharding the global batch",
           "    batches = FixedLengthBatches(train_stream, config.batch_size, T, seed=config.seed)",
           "    batches = FixedLengthBatches(train_stream, config.batch_size, T, seed=config.seed + rank)",
           specs=("distributed",)),
]
