from . import Mutant

MUTANTS = [
    Mutant("loss-no-max-subtraction", "loss.py", "log-sum-exp without subtracting the max (overflows)",
           "m = h.amax(dim=-1, keepdim=True).detach()", "m = torch.zeros_like(h[..., :1])"),
    Mutant("loss-ignored-in-denominator", "loss.py", "the mean divides by every target, ignored ones included",
           "count = keep.sum().clamp(min=1)", "count = max(keep.numel(), 1)"),
    Mutant("loss-ignored-not-masked", "loss.py", "ignored targets contribute the loss of class 0",
           "    nll = torch.where(keep, nll, torch.zeros_like(nll))", "    pass"),
    Mutant("loss-fast-path-gets-ignored-targets", "loss.py", "the fused path is handed the raw targets, ignore_index included",
           "safe.reshape(-1),\n", "targets.reshape(-1),\n"),
    Mutant("loss-all-ignored-nan", "loss.py", "the mean of no kept target is 0/0 = NaN",
           "count = keep.sum().clamp(min=1)", "count = keep.sum()"),
    Mutant("loss-logsumexp-without-shift-back", "loss.py", "log_softmax forgets that the shift is part of logsumexp",
           "return (shifted - lse).to(logits.dtype)", "return (h - lse).to(logits.dtype)"),
    Mutant("loss-softmax-wrong-axis", "loss.py", "normalises over the first axis instead of the classes",
           "lse = torch.log(torch.exp(shifted).sum(dim=-1, keepdim=True))",
           "lse = torch.log(torch.exp(shifted).sum(dim=0, keepdim=True))"),
    Mutant("loss-no-range-check", "loss.py", "targets outside [0, V) are not rejected",
           "    if bool(bad.any()):", "    if False:"),
    Mutant("loss-sum-is-mean", "loss.py", "reduction='sum' returns the mean",
           "        return total.to(logits.dtype)", "        return (total / keep.sum().clamp(min=1)).to(logits.dtype)"),
]
