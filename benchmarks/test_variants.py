"""The variants study (``benchmarks/variants.py``) as pytest tests.

``pytest benchmarks -m variants`` runs the study: one test per experiment, each writing its tables
and plots to ``docs/variants/`` (``BARE_LM_VARIANTS_OUT`` overrides the folder,
``BARE_LM_VARIANTS_BUDGET=quick`` the budget) and its headline figures to pytest-benchmark's
``extra_info`` (``--benchmark-json`` saves them). Without ``-m variants`` those are skipped and only
the smoke tests run: every experiment at a micro budget, in seconds.
"""

import json
import math
import os
import re
from pathlib import Path

import pytest

from benchmarks import variants

EXPERIMENTS = list(variants.EXPERIMENTS)


@pytest.fixture(scope="module")
def study():
    budget = os.environ.get("BARE_LM_VARIANTS_BUDGET", "full")
    return variants.Study(budget, log=lambda message: print(message, flush=True))


@pytest.mark.variants
@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_variants(benchmark, study, experiment):
    """Run one experiment of the study; its headline figures go to the benchmark's extra_info."""
    out = Path(os.environ.get("BARE_LM_VARIANTS_OUT", variants.DEFAULT_OUT))
    benchmark.group = "variants"
    sections = benchmark.pedantic(variants.run_study, args=(out,), kwargs=dict(only=[experiment], study=study),
                                  rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update({k: (round(v, 4) if isinstance(v, float) else v)
                                 for k, v in sections[0].headline.items()})
    assert (out / "RESULTS.md").read_text().count(variants.BEGIN.format(key=experiment)) == 1


# --- smoke tests (CI): every code path at a micro budget -----------------------------------------

@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    out = tmp_path_factory.mktemp("variants")
    study = variants.Study("micro")
    sections = variants.run_study(out, budget="micro", log=None, study=study)
    return out, study, sections


def test_every_experiment_runs_at_a_micro_budget(micro):
    """Every experiment trains, evaluates and writes its section, raw runs and plot."""
    out, study, sections = micro
    assert [s.key for s in sections] == EXPERIMENTS
    report = (out / "RESULTS.md").read_text()
    data = json.loads((out / "results.json").read_text())
    for section in sections:
        assert variants.BEGIN.format(key=section.key) in report and variants.END.format(key=section.key) in report
        assert section.body.startswith("| "), f"{section.key}: no table"
        runs = data["experiments"][section.key]["runs"]
        assert runs and all(math.isfinite(r["initial_loss"]) for r in runs), f"{section.key}: {runs}"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    for section in sections:
        assert section.plots and all((out / p).is_file() for p in section.plots), section.key


def test_rerun_keeps_prose_and_replaces_tables(micro):
    """A rerun replaces only the generated blocks: prose written around them survives."""
    out, study, sections = micro
    path = out / "RESULTS.md"
    path.write_text(path.read_text().replace("## 1. Norm", "My notes stay.\n\n## 1. Norm"))
    variants.write_report(out, sections[:1], study, study.budget.seeds)
    text = path.read_text()
    assert "My notes stay." in text
    assert text.count(variants.BEGIN.format(key="norm")) == 1


def test_bits_per_char_is_near_uniform_for_an_untrained_model(micro):
    """An untrained model's bits/char is close to log2(V) / (chars per token)."""
    _, study, _ = micro
    model = variants.build_model(study, variants.Variant("untrained"), seed=0)
    with variants.torch_threads(1):
        bpc = variants.evaluate_bpc(study, model, study.budget.context)
    v = study.tokenizer().vocab_size
    chars_per_token = study.val_chars / (len(study.stream("val")) - 1)
    assert abs(bpc - math.log2(v) / chars_per_token) < 0.1 * math.log2(v) / chars_per_token, bpc


def test_kv_cache_bytes_formula():
    """KV-cache bytes = layers * 2 * B * H_kv * T * D * 4."""
    assert variants.kv_cache_bytes(2, 1, 4, 64, 16) == 2 * 2 * 1 * 4 * 64 * 16 * 4
    assert variants.swiglu_d_ff(256) == 171


def test_adding_a_variant_example_runs(micro, tmp_path):
    """The worked example in docs/variants/ADDING_A_VARIANT.md runs as written (at the micro budget)."""
    _, study, _ = micro
    doc = (variants.REPO_ROOT / "docs" / "variants" / "ADDING_A_VARIANT.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert blocks, "no python example in ADDING_A_VARIANT.md"
    code = blocks[0].replace('budget="quick"', "study=STUDY").replace('out="runs/my-variants"', "out=OUT")
    namespace = {"STUDY": study, "OUT": tmp_path, "__name__": "__main__"}
    exec(compile(code, "ADDING_A_VARIANT.md", "exec"), namespace)
    assert (tmp_path / "RESULTS.md").is_file()


def test_cli_rejects_an_unknown_experiment(capsys):
    """`bare-lm bench variants --only NAME` names the experiments when NAME is not one."""
    from bare_lm.cli import main

    assert main(["bench", "variants", "--only", "nonsense", "--out", os.devnull]) == 2
    assert "positional" in capsys.readouterr().err
