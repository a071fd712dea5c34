"""bench/finetune.py runs end to end (--quick) and compares like with like: every trainer, full and LoRA,
processed the same tokens and started from the same loss. No timing is asserted: the figures are the bench's."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # runs the fine-tuning bench against TRL: over the quick loop's budget

pytest.importorskip("trl")
pytest.importorskip("peft")

BENCH = Path(__file__).resolve().parent.parent / "bench" / "finetune.py"
TRAINERS = ["mesascope", "trl-padded", "trl-padding-free", "bare"]


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("bench_finetune", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    out = tmp_path_factory.mktemp("bench") / "bench-finetune.json"
    argv, threads = sys.argv, torch.get_num_threads()
    sys.argv = [str(BENCH), "--quick", "--threads", "1", "--results", str(out)]
    try:
        from contextlib import redirect_stdout
        from io import StringIO

        buf = StringIO()
        with redirect_stdout(buf):
            module.main()
    finally:
        sys.argv = argv
        torch.set_num_threads(threads)
    return buf.getvalue(), json.loads(out.read_text())


def table_rows(printed: str) -> list[list[str]]:
    lines = printed.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("median of"))
    header = lines[start + 1].split()
    assert header == ["method", "trainer", "tokens", "positions", "tok/s", "peak", "MiB", "first", "loss"]
    rows = []
    for line in lines[start + 2:]:
        cells = line.split()
        if len(cells) != 7:
            break
        rows.append(cells)
    return rows


def test_table_has_every_trainer_for_full_and_lora(bench_run):
    printed, _ = bench_run
    rows = table_rows(printed)
    assert [(r[0], r[1]) for r in rows] == [(m, t) for m in ("full", "lora") for t in TRAINERS]
    for r in rows:
        assert float(r[4]) > 0 and float(r[5]) >= 0  # tokens/s measured, peak memory growth not negative
    for method in ("full", "lora"):
        line = next(line for line in printed.splitlines() if line.startswith(f"{method}: "))
        assert "mesascope/trl-padded" in line and "mesascope/bare" in line and "(tokens/s)" in line


def test_trainers_saw_the_same_tokens_and_loss(bench_run):
    printed, _ = bench_run
    rows = table_rows(printed)
    for method in ("full", "lora"):
        by = {r[1]: r for r in rows if r[0] == method}
        tokens = {name: int(r[2]) for name, r in by.items()}
        assert tokens["mesascope"] > 0
        assert set(tokens.values()) == {tokens["mesascope"]}, tokens
        # padding-free computes no pad position; the others pad rows, so compute at least the tokens
        assert int(by["trl-padding-free"][3]) == tokens["mesascope"]
        assert all(int(r[3]) >= tokens["mesascope"] for r in by.values())
        # same initial weights (and adapters), same first batch, same completion-only loss
        losses = [float(r[6]) for r in by.values()]
        assert max(losses) - min(losses) < 1e-3, losses


def test_results_file_holds_the_table_with_provenance(bench_run):
    printed, data = bench_run
    assert data["provenance"]["command"].startswith("python bench/finetune.py --quick")
    assert "machine" in data["provenance"]
    rows = table_rows(printed)
    assert [(r["method"], r["trainer"], r["tokens"]) for r in data["rows"]] == [(r[0], r[1], int(r[2])) for r in rows]
    for method in ("full", "lora"):
        ratio = data["ratios"][method]
        assert set(ratio) >= {f"throughput_{t}" for t in TRAINERS[1:]} | {f"memory_{t}" for t in TRAINERS[1:]}
