from . import Mutant

MUTANTS = [
    Mutant("checkpoint-written-in-place", "checkpoint.py",
           "non-atomic: the files are written straight into the checkpoint directory",
           "        _write_files(tmp, model, step, optimizer, tokenizer, rng_state, data_state, train_config, extra)\n"
           "        _swap_in(tmp, path)",
           "        path.mkdir(exist_ok=True)\n"
           "        _write_files(path, model, step, optimizer, tokenizer, rng_state, data_state, train_config, extra)"),
    Mutant("checkpoint-no-optimizer-state", "checkpoint.py", "the optimizer state is not saved",
           '"optimizer": _to_json(optimizer.state_dict(), "optimizer", tensors) if optimizer is not None else None,',
           '"optimizer": None,'),
    Mutant("checkpoint-no-tokenizer", "checkpoint.py", "the tokenizer is not saved",
           '"tokenizer": tokenizer.to_dict() if tokenizer is not None else None,', '"tokenizer": None,'),
    Mutant("checkpoint-rng-of-save-time", "checkpoint.py", "saves the RNG state at save time, ignoring rng_state",
           "rng_state = get_rng_state() if rng_state is None else rng_state", "rng_state = get_rng_state()"),
    Mutant("checkpoint-untied-on-load", "checkpoint.py", "load assigns the tensors, so the tied lm_head becomes a copy",
           "model.load_state_dict(weights, strict=True)", "model.load_state_dict(weights, strict=True, assign=True)"),
    Mutant("checkpoint-no-integrity-check", "checkpoint.py", "no checksum: altered tensor files load silently",
           "if _sha256(path / name) != meta.get(\"sha256\", {}).get(name):", "if False:"),
    Mutant("checkpoint-string-keys", "checkpoint.py", "dict keys come back from JSON as strings (optimizer state lost)",
           "return {_from_json(k, tensors): _from_json(v, tensors) for k, v in value[\"__dict__\"]}",
           "return {str(_from_json(k, tensors)): _from_json(v, tensors) for k, v in value[\"__dict__\"]}"),
    Mutant("checkpoint-step-lost", "checkpoint.py", "the step is not restored",
           "model=model, model_config=config, step=meta[\"step\"],", "model=model, model_config=config, step=0,"),
    Mutant("checkpoint-load-model-train-mode", "checkpoint.py", "load_model leaves the model in train mode (dropout on)",
           "    ckpt.model.eval()\n", ""),
]
