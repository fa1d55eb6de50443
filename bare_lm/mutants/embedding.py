from . import Mutant

MUTANTS = [
    Mutant("embedding-ids-not-range-checked", "embedding.py", "ids are not range-checked (negative ids wrap around)",
           "if bool(outside.any()):", "if False:"),
    Mutant("embedding-negative-ids-allowed", "embedding.py", "only ids >= vocab_size are refused; -1 reads the last row",
           "outside = (ids < 0) | (ids >= self.vocab_size)", "outside = ids >= self.vocab_size"),
    Mutant("embedding-range-off-by-one", "embedding.py", "the id vocab_size itself passes the check",
           "outside = (ids < 0) | (ids >= self.vocab_size)", "outside = (ids < 0) | (ids > self.vocab_size)"),
    Mutant("embedding-float-ids-accepted", "embedding.py", "floating ids are not refused with a TypeError",
           'checks.tensor("ids", ids, floating=False)', 'checks.tensor("ids", ids)'),
    Mutant("embedding-init-std-1", "embedding.py", "the table is drawn from N(0, 1), not N(0, 0.02^2)",
           "torch.randn(vocab_size, d_model) * INIT_STD", "torch.randn(vocab_size, d_model)"),
    Mutant("embedding-rows-float32", "embedding.py", "the looked-up rows are returned as float32 whatever the table's dtype",
           "return self.weight[ids]  ", "return self.weight[ids].float()  "),
    Mutant("embedding-table-a-buffer", "embedding.py", "the table is a non-persistent buffer, not a Parameter",
           "self.weight = nn.Parameter(torch.randn(vocab_size, d_model) * INIT_STD)",
           'self.register_buffer("weight", torch.randn(vocab_size, d_model) * INIT_STD, persistent=False)'),
]
