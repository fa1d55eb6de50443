#!/usr/bin/env bash
# Data-parallel training on CUDA: NCCL, one GPU per rank. For a machine with CUDA GPUs; CPU CI never
# runs it (the spec checks DDP on CPU with gloo). Usage: benchmarks/check_cuda_ddp.sh [N]
# (N ranks, default: every visible GPU; N must divide the tiny preset's batch of 16).
#
# It checks that (1) `torchrun --nproc_per_node N ... --device cuda` joins an NCCL process group,
# one GPU per rank; (2) N ranks reach the validation loss of one process with the same global
# batch; (3) a checkpoint written under DDP on GPUs resumes in one process, and vice versa.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-$(python -c 'import torch; print(torch.cuda.device_count())')}
if [ "$N" -lt 1 ]; then echo "check_cuda_ddp: no CUDA GPU visible" >&2; exit 1; fi
OUT=$(mktemp -d)
COMMON=(--config tiny --steps 60 --eval-interval 30 --device cuda --no-progress --samples 0)
ddp() { python -m torch.distributed.run --standalone --nproc_per_node "$N" -m bare_lm.cli train "$@"; }

echo "== 1 process"
bare-lm train "${COMMON[@]}" --out "$OUT/one" | tee "$OUT/one.txt"
echo "== $N ranks (NCCL)"
ddp "${COMMON[@]}" --out "$OUT/ddp" | tee "$OUT/ddp.txt"
grep -q "backend nccl" "$OUT/ddp.txt" || { echo "check_cuda_ddp: the ranks did not use NCCL" >&2; exit 1; }
echo "== $N ranks to step 30, then 1 process to 60; 1 process to 30, then $N ranks to 60"
ddp "${COMMON[@]}" --out "$OUT/cross1" --stop-after 30 > /dev/null
bare-lm train --resume --out "$OUT/cross1" --device cuda --no-progress --samples 0 | tee "$OUT/cross1.txt"
bare-lm train "${COMMON[@]}" --out "$OUT/cross2" --stop-after 30 > /dev/null
ddp --resume --out "$OUT/cross2" --device cuda --no-progress --samples 0 | tee "$OUT/cross2.txt"

python - "$OUT" <<'PY'
import re, sys
out = sys.argv[1]
def val(name):
    return float(re.search(r"validation loss: ([0-9.]+)", open(f"{out}/{name}.txt").read()).group(1))
one = val("one")
worst = 0.0
for name in ("ddp", "cross1", "cross2"):
    v = val(name)
    worst = max(worst, abs(v - one) / one)
    print(f"{name}: validation loss {v:.4f} vs 1 process {one:.4f} (relative difference {abs(v - one) / one:.2e})")
# TF32 / cuDNN / NCCL's reduction order make GPU runs differ in the last bits; 1e-2 catches a
# wrong average (a factor W) or a wrong shard, not rounding.
sys.exit(0 if worst < 1e-2 else "check_cuda_ddp: the validation losses differ by more than 1%")
PY
echo "check_cuda_ddp: ok ($OUT)"
