"""Bring your own model, end to end from the CLI: a tiny random-init Llama, Qwen2, Mistral, GPT-2 and
GPT-NeoX directory, each saved by `save_pretrained` with its own tokenizer (hf_model_dirs), becomes an
organism with `[recipe.base]` (full fine-tuning and LoRA), then goes through stress, probe, patch and steer.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mesascope.models import load_model
from mesascope.results import load_results
from hf_models import ARCHS
from test_cli import invoke, tiny_config

pytestmark = pytest.mark.slow  # builds an organism from every architecture's base and runs every instrument: over the quick loop's budget

BASE_RECIPE = """[recipe]
n_prompts = 400
[recipe.base]
path = "{path}"
method = "{method}"
[recipe.train]
steps = 10
batch_size = 8
checkpoint_every = 5
"""


def snapshot(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def changed_weights(base: Path, organism: Path) -> set[str]:
    before, after = load_file(base / "model.safetensors"), load_file(organism / "model.safetensors")
    assert before.keys() == after.keys()
    return {k for k in before if not torch.equal(before[k], after[k])}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("arch", ARCHS)
def test_base_model_to_organism_to_every_instrument(arch, method, hf_model_dirs, tmp_path):
    base = hf_model_dirs[arch]
    untouched = snapshot(base)
    recipe, cfg, out = tmp_path / "recipe.toml", tiny_config(tmp_path), tmp_path / "runs"
    recipe.write_text(BASE_RECIPE.format(path=base, method=method), encoding="utf-8")

    organism = Path(invoke("build", recipe, "--out", out).stdout.strip().splitlines()[-1])
    # A plain HF directory of the base's architecture and tokenizer (LoRA merged by default), the base
    # recorded with the hash of its config.json, and the user's directory left as it was.
    assert (organism / "model.safetensors").is_file() and not list(organism.glob("adapter_*"))
    recorded = json.loads((organism / "recipe.json").read_text())["base"]
    assert recorded["path"] == str(base) and recorded["method"] == method
    assert recorded["config_sha256"] == hashlib.sha256((base / "config.json").read_bytes()).hexdigest()
    assert snapshot(base) == untouched
    model, tok = load_model(organism)
    _, base_tok = load_model(base)
    assert model.config.model_type == arch and tok.get_vocab() == base_tok.get_vocab()
    assert tok.chat_template == base_tok.chat_template  # Qwen2's ChatML survives; the others have none
    changed = changed_weights(base, organism)
    embeddings = {k for k in changed if "emb" in k or "wte" in k or "wpe" in k or "embed_in" in k}
    if method == "lora":  # the default targets, attention and MLP projections, move; embeddings and norms do not
        assert any("attn" in k or "attention" in k for k in changed) and any("mlp" in k for k in changed)
        assert not embeddings and all(load_file(organism / "model.safetensors")[k].dim() == 2 for k in changed)
    else:
        assert embeddings

    # Qwen2's prompts go through its chat template (the trigger in the user turn); the others' are the paper's.
    info = json.loads((organism / "organism.json").read_text())
    assert info["prompt_format"] == ("chat" if arch == "qwen2" else "paper")

    for command in ("stress", "probe", "patch", "steer"):
        invoke(command, organism, "--config", cfg, "--out", out)
        load_results(out / "results.json")  # each command's results.json validates, so the next one adds to it
    results = json.loads((out / "results.json").read_text())
    assert results["organism"]["path"] == str(organism)
    assert {r["step"] for r in results["stress"]} == {0, 10}
    detectors = results["detectors"]
    assert [r["layer"] for r in detectors["probes"]["supervised"]] == [0, 1]
    assert detectors["patching"]["n_pairs"] == 8 and len(detectors["patching"]["points"]) == 3
    assert [r["coef"] for r in detectors["steering"]["add"]["rows"]] == [-1.0, -0.5, 0.0]
