"""Activations at named hook points, the same names on every architecture.

A hook point is named like TransformerLens's, `blocks.{i}.{site}`:
- `resid_pre`: the residual stream entering block i (the embeddings, for block 0);
- `attn_out`, `mlp_out`: what block i's attention and MLP submodules return;
- `resid_post`: the residual stream leaving block i. It is before the final norm, so the last
  block's is not `hidden_states[-1]`, which Hugging Face returns already normalised.
In a sequential block (GPT-2, Llama, Qwen2) and a parallel one (GPT-NeoX) alike,
resid_post = resid_pre + attn_out + mlp_out, with dropout off.

`capture` runs prompts through the model in batches and keeps, per hook, the last prompt token,
every real token, or the tokens a mask picks; in memory (`Activations`) or streamed to
safetensors shards on disk (`ActivationStore`), so a capture of any size holds one shard at a time.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

import numpy as np
import torch
from safetensors.numpy import save as safetensors_bytes
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..store import atomic_write_bytes, atomic_write_json
from .activation_store import (
    DEFAULT_SHARD_SIZE,
    STORE_FORMAT,
    ActivationStore,
    Activations,
    concat,
    forget_previous_store,
)


class Arch(NamedTuple):
    blocks: str  # dotted path of the list of transformer blocks, from the CausalLM wrapper
    attn: str  # attention submodule of one block
    mlp: str  # MLP submodule of one block
    norm: str = ""  # the final norm before the unembedding, from the CausalLM wrapper (the logit lens applies it)
    lora: tuple[str, ...] = ()  # LoRA's default targets: every attention and MLP projection (names as peft matches them)


_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# model_type -> where its pieces live. Supporting a new architecture is one line here.
ARCHITECTURES: dict[str, Arch] = {
    "gpt2": Arch("transformer.h", "attn", "mlp", "transformer.ln_f", ("c_attn", "c_proj", "c_fc")),
    "llama": Arch("model.layers", "self_attn", "mlp", "model.norm", _LLAMA_LIKE),
    "qwen2": Arch("model.layers", "self_attn", "mlp", "model.norm", _LLAMA_LIKE),
    "mistral": Arch("model.layers", "self_attn", "mlp", "model.norm", _LLAMA_LIKE),
    "gpt_neox": Arch("gpt_neox.layers", "attention", "mlp", "gpt_neox.final_layer_norm",
                     ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h")),
}
# The block paths alone, as earlier versions exported them (a view: edit ARCHITECTURES).
BLOCKS: dict[str, str] = {name: arch.blocks for name, arch in ARCHITECTURES.items()}

# Hook site -> (field of Arch naming the submodule, or None for the block itself; read its input?).
SITES: dict[str, tuple[str | None, bool]] = {
    "resid_pre": (None, True),
    "attn_out": ("attn", False),
    "mlp_out": ("mlp", False),
    "resid_post": (None, False),
}

# A position mask: a callable from one prompt's token ids to a bool per token, or one bool array per prompt.
Positions = Union[str, Callable[[np.ndarray], np.ndarray], Sequence[np.ndarray]]



def resid_post(layer: int) -> str:
    return f"blocks.{layer}.resid_post"


def _arch(model: nn.Module) -> Arch | None:
    return ARCHITECTURES.get(getattr(getattr(model, "config", None), "model_type", None) or "")


def find_blocks(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks: by the table, else the one ModuleList of the right length."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    n_layers = getattr(config, "num_hidden_layers", None)
    arch = _arch(model)
    if arch:
        # The table's paths start at the CausalLM wrapper; a bare base model lacks the first part.
        for p in (arch.blocks, arch.blocks.split(".", 1)[-1]):
            try:
                blocks = model.get_submodule(p)
            except AttributeError:
                continue
            if isinstance(blocks, nn.ModuleList):
                return blocks
    for module in model.modules():
        if isinstance(module, nn.ModuleList) and n_layers is not None and len(module) == n_layers:
            return module
    raise ValueError(f"cannot find the transformer blocks of model type {model_type!r}: add a row for it to "
                     f"mesascope.models.activations.ARCHITECTURES (known: {', '.join(sorted(ARCHITECTURES))})")


def final_norm(model: nn.Module) -> nn.Module:
    """The norm applied to the last block's output before the unembedding (by the table)."""
    arch = _arch(model)
    if arch is None or not arch.norm:
        raise ValueError(f"no final norm is known for model type {getattr(model.config, 'model_type', None)!r}: "
                         "add it to mesascope.models.activations.ARCHITECTURES")
    return model.get_submodule(arch.norm)


def n_blocks(model: nn.Module) -> int:
    return len(find_blocks(model))


def hook_points(model: nn.Module) -> list[str]:
    """Every hook point of `model`, block by block in the order the residual stream meets them."""
    # A model found only by its layer count has blocks but no known attention/MLP names.
    sites = list(SITES) if _arch(model) else ["resid_pre", "resid_post"]
    return [f"blocks.{i}.{site}" for i in range(n_blocks(model)) for site in sites]


def resolve_hooks(model: nn.Module, names_or_globs: str | Sequence[str]) -> list[str]:
    """Hook names and fnmatch patterns (`blocks.*.resid_post`) -> hook points, in `hook_points` order."""
    patterns = [names_or_globs] if isinstance(names_or_globs, str) else list(names_or_globs)
    if not patterns:
        raise ValueError("hooks is empty: name at least one hook point, e.g. 'blocks.*.resid_post'")
    valid = hook_points(model)
    chosen: set[str] = set()
    for pattern in patterns:
        hits = [v for v in valid if fnmatch.fnmatchcase(v, pattern)] if isinstance(pattern, str) else []
        if not hits:
            sites = ",".join(dict.fromkeys(v.split(".")[2] for v in valid))
            kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
            raise ValueError(f"hook {pattern!r} matches no hook point of this {kind} model: names are "
                             f"blocks.{{0..{n_blocks(model) - 1}}}.{{{sites}}}, e.g. {valid[-1]!r}; patterns such as "
                             f"'blocks.*.resid_post' or 'blocks.0.*' pick several")
        chosen.update(hits)
    return [v for v in valid if v in chosen]


def _hook_module(model: nn.Module, name: str) -> tuple[nn.Module, bool]:
    """The module a hook point reads, and whether it reads that module's input (else its output)."""
    _, layer, site = name.split(".")
    field, reads_input = SITES[site]
    block = find_blocks(model)[int(layer)]
    return (block if field is None else block.get_submodule(getattr(_arch(model), field))), reads_input


@contextmanager
def last_token_hooks(blocks: nn.ModuleList, layers: Sequence[int], store: list[list[torch.Tensor]]) -> Iterator[None]:
    """While open, each block in `layers` appends its output at the last position to store[k]."""

    def make_hook(k: int):
        def hook(module, args, output):
            # A block returns a tensor in transformers 5 and a tuple (hidden, cache, ...) before it.
            hidden = output if isinstance(output, torch.Tensor) else output[0]
            store[k].append(hidden[:, -1].detach().float().cpu())
        return hook

    handles = [blocks[layer].register_forward_hook(make_hook(k)) for k, layer in enumerate(layers)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _Selector:
    """Picks the kept positions from a [batch, seq, d] activation, inside the hook.

    Only the kept rows are copied, and they stay on the model's device until the batch ends:
    the hook never moves a whole sequence to the CPU.
    """

    rows: torch.Tensor | None = None  # flat indices into batch*seq; None keeps the last position

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            return hidden[:, -1].clone()  # a clone, in case a later module writes into `hidden` in place
        return hidden.flatten(0, 1).index_select(0, self.rows)


@contextmanager
def _recording(points: Sequence[tuple[nn.Module, bool]], select: _Selector, sink: dict[int, torch.Tensor]):
    """While open, each forward puts select(activation at point k) into sink[k]."""

    def on_output(k: int):
        def hook(module, args, output):
            # Blocks return a tensor in transformers 5; attention returns (output, weights).
            sink[k] = select(output if isinstance(output, torch.Tensor) else output[0])
        return hook

    def on_input(k: int):
        def hook(module, args, kwargs):
            sink[k] = select(args[0] if args else kwargs["hidden_states"])
        return hook

    handles = [module.register_forward_pre_hook(on_input(k), with_kwargs=True) if reads_input
               else module.register_forward_hook(on_output(k)) for k, (module, reads_input) in enumerate(points)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _check_positions(positions: Positions, n: int) -> str:
    if isinstance(positions, str):
        if positions not in ("last", "all"):
            raise ValueError(f"positions={positions!r}: use 'last', 'all', a callable(token_ids) -> bool mask, "
                             f"or one bool array per prompt")
        return positions
    if not callable(positions) and len(positions) != n:
        raise ValueError(f"positions holds {len(positions)} masks for {n} prompts: give one bool array per prompt")
    return "mask"


def _token_mask(positions: Positions, i: int, ids: np.ndarray) -> np.ndarray:
    """The bool mask over prompt i's own tokens (`ids`), checked against its length."""
    mask = np.asarray(positions(ids) if callable(positions) else positions[i], dtype=bool)
    if mask.shape != ids.shape:
        raise ValueError(f"the position mask of prompt {i} has shape {mask.shape}, but the prompt has {len(ids)} tokens: "
                         f"give one bool per token of tokenizer(prompt)['input_ids']")
    return mask


@dataclass
class _Run:
    """One capture's fixed parts; hooks are attached around calls to `chunk`."""

    body: nn.Module
    tokenizer: PreTrainedTokenizerBase
    prompts: Sequence[str]
    names: list[str]
    positions: Positions
    mode: str
    batch_size: int
    on_batch: Callable[[int], None] | None
    select: _Selector
    sink: dict[int, torch.Tensor]

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Prompts idx through the model: activations [hooks, rows, d], rows per prompt, each row's token index."""
        # Left padding puts every prompt's last token at position -1.
        enc = self.tokenizer([self.prompts[i] for i in idx], return_tensors="pt", padding=True, padding_side="left")
        ids, attn = enc["input_ids"], enc["attention_mask"]
        lengths = attn.sum(-1)
        if not bool(lengths.all()):
            raise ValueError(f"prompt {idx[int((lengths == 0).nonzero()[0])]} tokenizes to no tokens: drop empty prompts")
        pos = (attn.cumsum(-1) - 1).clamp(min=0)  # positions count from each row's first real token
        device = next(self.body.parameters()).device
        if self.mode == "last":
            counts, token_index = np.ones(len(idx), dtype=np.int64), (lengths - 1).numpy()
        else:
            keep = attn.bool()
            if self.mode == "mask":
                for r, i in enumerate(idx):
                    n = int(lengths[r])
                    keep[r, -n:] = torch.from_numpy(_token_mask(self.positions, int(i), ids[r, -n:].numpy()))
            self.select.rows = keep.flatten().nonzero().squeeze(1).to(device)
            counts, token_index = keep.sum(-1).numpy(), pos[keep].numpy()
        self.body(input_ids=ids.to(device), attention_mask=attn.to(device), position_ids=pos.to(device), use_cache=False)
        # One copy to the CPU per batch, all hooks at once.
        acts = torch.stack([self.sink[k] for k in range(len(self.names))]).float().cpu().numpy()
        if self.on_batch:
            self.on_batch(len(idx))
        return acts, counts, token_index

    def chunk(self, start: int, stop: int) -> Activations:
        """Prompts start..stop, their rows in prompt order."""
        # Sort by length so a batch wastes little on padding; rows go back to prompt order below.
        order = np.array(sorted(range(start, stop), key=lambda i: len(self.prompts[i])))
        batches = [(idx - start, *self.batch(idx)) for idx in np.split(order, range(self.batch_size, len(order),
                                                                                      self.batch_size))]
        counts = np.zeros(stop - start, dtype=np.int64)
        for local, _, c, _ in batches:
            counts[local] = c
        offsets = np.concatenate([[0], np.cumsum(counts)])
        d = batches[0][1].shape[-1]
        out = np.empty((len(self.names), int(offsets[-1]), d), dtype=np.float32)
        token_index = np.empty(int(offsets[-1]), dtype=np.int64)
        for local, acts, c, tok in batches:
            # A batch's rows run prompt by prompt; each lands at its prompt's offset plus its rank within the prompt.
            dest = np.repeat(offsets[local], c) + np.arange(len(tok)) - np.repeat(np.cumsum(c) - c, c)
            out[:, dest] = acts
            token_index[dest] = tok
        data = {name: out[k] for k, name in enumerate(self.names)}
        if self.mode == "last":
            return Activations(data, "last", stop - start)
        return Activations(data, self.mode, stop - start, offsets, token_index)


@torch.inference_mode()
def capture(model: nn.Module, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str],
            hooks: str | Sequence[str] = ("blocks.*.resid_post",), positions: Positions = "last", *,
            batch_size: int = 128, out_dir: str | Path | None = None, shard_size: int | None = None,
            on_batch: Callable[[int], None] | None = None) -> Activations | ActivationStore:
    """Activations at `hooks` (names or patterns, see `resolve_hooks`) for each prompt, float32.

    positions: "last" (each prompt's last token), "all" (every real token), a callable taking one
    prompt's token ids (np.int64 [n_tokens]) and returning a bool per token, or one such bool array
    per prompt. Without `out_dir` the result is an `Activations` in memory. With `out_dir`, prompts
    go through in shards of `shard_size` consecutive prompts (default 2048), each written to disk as
    soon as it is done, so memory holds about two copies of one shard whatever the number of
    prompts; the result is an `ActivationStore` reading that directory. `on_batch(k)` is called
    after each batch of k prompts.
    """
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a list of strings (wrap a single prompt in a list)")
    if not prompts:
        raise ValueError("prompts is empty: pass at least one prompt")
    if batch_size < 1 or (shard_size is not None and shard_size < 1):
        raise ValueError(f"batch_size ({batch_size}) and shard_size ({shard_size}) must be >= 1")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token, so prompts cannot be batched: set tokenizer.pad_token "
                         "(e.g. to tokenizer.eos_token)")
    names = resolve_hooks(model, hooks)
    mode = _check_positions(positions, len(prompts))
    model.eval()
    # The base model skips the LM head: its [batch, seq, vocab] logits would dwarf everything kept here.
    body = model.base_model if isinstance(model, PreTrainedModel) else model
    shard_size = shard_size or (DEFAULT_SHARD_SIZE if out_dir is not None else len(prompts))
    bounds = [(s, min(s + shard_size, len(prompts))) for s in range(0, len(prompts), shard_size)]
    run = _Run(body, tokenizer, prompts, names, positions, mode, batch_size, on_batch, _Selector(), {})
    with _recording([_hook_module(model, name) for name in names], run.select, run.sink):
        if out_dir is None:
            return concat([run.chunk(start, stop) for start, stop in bounds])
        out_dir = Path(out_dir)
        forget_previous_store(out_dir)
        shards = []
        for k, (start, stop) in enumerate(bounds):
            acts = run.chunk(start, stop)
            tensors = dict(acts.data)
            if acts.offsets is not None:
                tensors.update(offsets=acts.offsets, token_index=acts.token_index)
            file = f"shard-{k:05d}.safetensors"
            atomic_write_bytes(out_dir / file, safetensors_bytes(tensors))
            shards.append({"file": file, "start": start, "stop": stop, "rows": int(next(iter(acts.data.values())).shape[0])})
    d_model = int(acts.data[names[0]].shape[-1])
    # The index goes last: a directory without one is an unfinished capture, never a short one.
    atomic_write_json(out_dir / "index.json", {"format": STORE_FORMAT, "hooks": names, "positions": mode,
                                               "n_prompts": len(prompts), "d_model": d_model, "dtype": "float32",
                                               "shards": shards})
    return ActivationStore(out_dir)


def capture_last_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str], *,
                       batch_size: int = 128, layers: Sequence[int] | None = None,
                       on_batch: Callable[[int], None] | None = None) -> np.ndarray:
    """Residual stream after each block at each prompt's last token: float32 [n_layers, n_prompts, d_model]."""
    n = n_blocks(model)
    layers = list(range(n)) if layers is None else [range(n)[layer] for layer in layers]
    if not prompts or not layers:
        return np.empty((len(layers), len(prompts), 0), dtype=np.float32)
    acts = capture(model, tokenizer, prompts, [resid_post(layer) for layer in layers], "last", batch_size=batch_size,
                   on_batch=on_batch)
    return np.stack([acts[resid_post(layer)] for layer in layers])
