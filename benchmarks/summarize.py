"""Turn pytest-benchmark JSON files into Markdown tables: one row per group, each ratio to its baseline.

    pytest benchmarks/test_bench_model.py --benchmark-only --benchmark-json=model.json
    python -m benchmarks.summarize model.json [more.json ...]

Each benchmark group (one size and mode) becomes a row: the mean time of every contender, and each
contender's time over the baseline's (torch's own or a peer library where the group has one,
otherwise its first contender), so "1.30x" reads as "30% slower than the baseline"; groups that
record ``tokens_per_s`` (decoding) also give the speed, the baseline's time over theirs. Numeric
``extra_info`` (tokens/s, ratios measured in one run) is listed under the table.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict


#: Contenders that other contenders are measured against, when a group has one (torch's own, the peers).
BASELINES = ("torch", "torch.multinomial", "hf_tokenizers", "tiktoken")


def _labels(benches: list[dict]) -> list[str]:
    """A name per benchmark of a group: its test (when the group mixes tests) and the params that vary."""
    funcs = [b["name"].split("[")[0].removeprefix("test_") for b in benches]
    keys = sorted({k for b in benches for k in (b.get("params") or {})})
    varying = [k for k in keys if len({str((b.get("params") or {}).get(k)) for b in benches}) > 1]
    labels = []
    for func, b in zip(funcs, benches):
        parts = ([func] if len(set(funcs)) > 1 else []) + [str(b["params"][k]) for k in varying]
        labels.append("-".join(parts) or func)
    return labels


def _fmt_time(seconds: float) -> str:
    if seconds >= 1.0:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} us"


def summarize(paths: list[str]) -> str:
    groups: dict[str, list[dict]] = defaultdict(list)
    for path in paths:
        with open(path) as f:
            for bench in json.load(f)["benchmarks"]:
                groups[bench.get("group") or bench["name"]].append(bench)
    lines = []
    extras = []
    for group, benches in groups.items():
        means = dict(zip(_labels(benches), (b["stats"]["mean"] for b in benches)))
        base = next((name for name in means if any(name.endswith(peer) for peer in BASELINES)), next(iter(means)))
        # decoding groups record tokens/s: their ratio also reads as speed (the baseline's time over theirs)
        speed = all("tokens_per_s" in (b.get("extra_info") or {}) for b in benches)
        cells = [f"{name} {_fmt_time(t)} ({t / means[base]:.2f}x" + (f", speed {means[base] / t:.2f}x)" if speed else ")")
                 if name != base else f"{name} {_fmt_time(t)}" for name, t in means.items()]
        lines.append(f"| {group} | " + " / ".join(cells) + " |")
        for b in benches:
            info = {k: v for k, v in (b.get("extra_info") or {}).items() if isinstance(v, (int, float))}
            if info:
                extras.append(f"- {b['name']}: " + ", ".join(
                    f"{k} {v:,.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in info.items()))
    out = ["| group | mean time (ratio to the baseline) |", "|---|---|", *lines]
    if extras:
        out += ["", *extras]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    paths = sys.argv[1:] if argv is None else argv
    if not paths:
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    print(summarize(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
