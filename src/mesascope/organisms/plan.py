"""What a build will cost, estimated before it starts: parameters, tokens, memory.

Read from configs and safetensors headers only (nothing is loaded), so the CLI can say it before
training: a researcher bringing a 7B base sees the memory it needs before the first step fails.
Memory is weights + gradients + AdamW's two moments (float32 for what trains) + activations for
one micro-batch (about 34 bytes per token, layer and hidden unit without checkpointing, Korthikanti
et al. 2022; one hidden vector per token and layer with it). An estimate: the build's measured
figures land in organism.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Recipe
from ..models.activations import ARCHITECTURES
from ..models.device import runtime
from ..models.load import check_model_dir, safetensors_header

_BYTES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class TrainingPlan:
    params: int
    trained: int
    tokens: int  # at most: steps x batch x max_length
    weight_bytes: int
    train_bytes: int  # gradients and optimizer state
    activation_bytes: int
    where: str

    @property
    def total_bytes(self) -> int:
        return self.weight_bytes + self.train_bytes + self.activation_bytes

    def describe(self) -> str:
        gib = 1024 ** 3
        return (f"plan: {self.params:,} parameters ({self.trained:,} trained) on {self.where}; at most "
                f"{self.tokens:,} training tokens; estimated memory {self.total_bytes / gib:.2f} GiB (weights "
                f"{self.weight_bytes / gib:.2f}, gradients + AdamW {self.train_bytes / gib:.2f}, activations "
                f"{self.activation_bytes / gib:.2f})")


def _tensors(path: Path) -> dict[str, tuple[list[int], str]]:
    """name -> (shape, dtype) from every safetensors header in a model directory (checked by check_model_dir)."""
    out = {}
    for f in sorted(path.glob("*.safetensors")):
        _, header = safetensors_header(f)
        out.update({k: (v["shape"], v["dtype"]) for k, v in header.items() if k != "__metadata__"})
    return out


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def training_plan(recipe: Recipe) -> TrainingPlan:
    rt = runtime()
    width = 4 if rt.torch_dtype == torch.float32 else 2
    train, cut = recipe.train, recipe.model.max_length
    base = recipe.base
    if base is not None and base.path is not None:
        config = check_model_dir(base.path)
        tensors = _tensors(Path(base.path))
        params = sum(_numel(s) for s, _ in tensors.values())
        weight_bytes = sum(_numel(s) * _BYTES.get(t, 4) for s, t in tensors.values())
        hidden = config.get("hidden_size") or config.get("n_embd") or 0
        layers = config.get("num_hidden_layers") or config.get("n_layer") or 0
        if base.method == "lora":
            targets = base.lora.target_modules or list(ARCHITECTURES.get(config.get("model_type"), ()).lora or ())
            mats = [s for k, (s, _) in tensors.items() if len(s) == 2 and k.rsplit(".", 2)[-2] in targets]
            trained = sum(base.lora.rank * (a + b) for a, b in mats)
        else:
            trained = params
    else:  # from scratch (or from a base recipe: its model spec sizes it)
        spec = (base.recipe if base is not None else recipe).model
        hidden, layers, _ = spec.dims
        params = layers * 12 * hidden * hidden + spec.vocab_size * hidden  # blocks + tied embedding
        weight_bytes = 4 * params
        trained = params if base is None or base.method == "full" else \
            layers * 7 * base.lora.rank * 2 * hidden  # ~7 projections a block, each r x (in + out)
    micro = train.batch_size // train.grad_accum
    per_token = (2 * hidden * layers if train.grad_checkpointing else 34 * hidden * layers) * width // 2
    return TrainingPlan(params=params, trained=trained, tokens=train.steps * train.batch_size * cut,
                        weight_bytes=weight_bytes, train_bytes=12 * trained,
                        activation_bytes=micro * cut * per_token, where=rt.describe())
