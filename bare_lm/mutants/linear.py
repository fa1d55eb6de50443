from . import Mutant

MUTANTS = [
    Mutant("linear-no-transpose", "linear.py", "multiplies by W instead of W^T",
           "y = x @ self.weight.T", "y = x @ self.weight if self.weight.shape[0] == self.weight.shape[1] else x @ self.weight.T"),
    Mutant("linear-bias-dropped", "linear.py", "forgets to add the bias",
           "            y = y + self.bias", "            y = y"),
    Mutant("linear-init-std-1", "linear.py", "initialises weights with std 1 instead of 0.02",
           "torch.randn(out_features, in_features) * INIT_STD", "torch.randn(out_features, in_features)"),
    Mutant("linear-weight-in-out", "linear.py", "stores the weight as (in, out)",
           "nn.Parameter(torch.randn(out_features, in_features) * INIT_STD)  # (out, in)",
           "nn.Parameter(torch.randn(in_features, out_features) * INIT_STD)  # (in, out)"),
    Mutant("linear-default-no-bias", "linear.py", "Linear's bias defaults to False",
           "out_features: int, bias: bool = True, fast", "out_features: int, bias: bool = False, fast"),
    Mutant("linear-half-upcast-not-cast-back", "linear.py",
           "float16 / bfloat16 inputs are multiplied in float32 and the result is not cast back",
           "y = x @ self.weight.T  # (..., in)",
           "y = (x.float() @ self.weight.T.float() if x.dtype in (torch.float16, torch.bfloat16) "
           "else x @ self.weight.T)  # (..., in)"),
]
