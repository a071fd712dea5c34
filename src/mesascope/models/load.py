"""Load any local Hugging Face causal LM directory, after checking it is one we can read safely.

A model directory is what `save_pretrained` writes: config.json, safetensors weights, a tokenizer.
A LoRA organism saved unmerged is an adapter directory (adapter_config.json and adapter weights)
whose config names its base directory; it loads merged into that base, as a plain model. Weights are read only from safetensors: a directory that
holds only a pickle checkpoint (`pytorch_model.bin`, `*.pt`) is refused and never unpickled, and a
safetensors file whose header disagrees with its size (a truncated copy) is named before transformers
fails on it somewhere deep.
"""

from __future__ import annotations

import hashlib
import json
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from .device import runtime

hf_logging.disable_progress_bar()  # the library never prints; the CLI draws its own progress bars
hf_logging.set_verbosity_error()


@contextmanager
def quiet_peft():
    """peft asks transformers a deprecated question on every wrap; the warning is theirs to fix, not the user's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield

ADAPTER_CONFIG = "adapter_config.json"
PICKLES = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class ModelError(ValueError):
    """A model directory mesascope cannot use; the message names the problem and the fix."""


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).exists()


def safetensors_header(file: Path) -> tuple[int, dict]:
    """(header length, the JSON header: tensor name -> dtype, shape, data_offsets) of a safetensors file,
    read without its data; a header longer than the file is a ValueError."""
    with open(file, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        if n > file.stat().st_size - 8:
            raise ValueError(f"{file}: header length {n} is past the end of the file")
        return n, json.loads(fh.read(n))


def check_safetensors(file: Path) -> dict:
    """The file's header, once its tensors are known to fit the file exactly (8-byte length, JSON header,
    then the data)."""
    size = file.stat().st_size
    try:
        n, header = safetensors_header(file)
        end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    except (ValueError, struct.error, KeyError, TypeError, UnicodeDecodeError):
        raise ModelError(f"{file} is not a readable safetensors file (corrupt header): copy or save it again") from None
    if 8 + n + end != size:
        raise ModelError(f"{file} is truncated or corrupt ({size} bytes, its header describes {8 + n + end}): "
                         "copy or save it again") from None
    return header


def check_model_dir(path: str | Path) -> dict:
    """The directory's config.json, once the directory is known to be a loadable model; else a one-line ModelError."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path} is not a directory: give the folder that save_pretrained wrote "
                         "(config.json, model.safetensors, tokenizer.json)")
    if is_adapter(path):
        cfg = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))
        base = cfg.get("base_model_name_or_path")
        if not base or not Path(base).is_dir():
            raise ModelError(f"{path} is a LoRA adapter whose base {base!r} is not a local directory: put the base "
                             f"model there, or set base_model_name_or_path in {path / ADAPTER_CONFIG}")
        for f in path.glob("*.safetensors"):
            check_safetensors(f)
        return check_model_dir(base)
    if not (path / "config.json").exists():
        raise ModelError(f"{path} is not a Hugging Face model directory (no config.json): give the folder that "
                         "save_pretrained wrote")
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelError(f"{path / 'config.json'} is not valid JSON ({e}): save the model again") from None
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        pickles = sorted(p.name for pat in PICKLES for p in path.glob(pat))
        if pickles:
            raise ModelError(f"{path} holds only a pickle checkpoint ({', '.join(pickles)}), which mesascope never "
                             "unpickles: convert it to safetensors (load it where you trust it, then "
                             "save_pretrained(dir, safe_serialization=True))")
        raise ModelError(f"{path} has no weights (no *.safetensors): save the model with save_pretrained")
    for f in weights:
        check_safetensors(f)
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
        raise ModelError(f"{path} has no tokenizer (tokenizer.json): save the tokenizer beside the model with "
                         "tokenizer.save_pretrained(dir)")
    return config


def config_sha256(path: str | Path) -> str:
    """Hash of a model directory's config.json (of the base, for an adapter directory)."""
    path = Path(path)
    if is_adapter(path):
        path = Path(json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"])
    return hashlib.sha256((path / "config.json").read_bytes()).hexdigest()


def load_tokenizer(path: str | Path) -> PreTrainedTokenizerBase:
    """The directory's tokenizer, left-padded for batched generation (pad = EOS when it has no pad token)."""
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def load_model(path: str | Path, dtype: torch.dtype | None = None, device: torch.device | str | None = None,
               trainable: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) of any local HF causal LM directory: an organism, a LoRA adapter directory, or
    GPT-2 / Llama / Qwen2 / Mistral / NeoX weights on disk. Device and dtype default to the runtime's
    (models/device.py); a model loaded to be fully trained keeps float32 weights (autocast does the rest)."""
    path = Path(path)
    check_model_dir(path)
    rt = runtime()
    dtype = dtype or (torch.float32 if trainable else rt.torch_dtype)
    device = device or rt.torch_device
    if is_adapter(path):
        from peft import PeftModel

        base = json.loads((path / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]
        model, _ = load_model(base, dtype=dtype, device=device)
        # Merged in memory: every tool (hooks, generation, stress training) then sees a plain model whose
        # outputs equal the merged organism's to float rounding (tests/test_byo_model.py).
        with quiet_peft():
            model = PeftModel.from_pretrained(model, path).merge_and_unload()
        model.requires_grad_(True)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype, use_safetensors=True)
        model.to(device)
    if not trainable:
        model.eval()
    return model, load_tokenizer(path)
