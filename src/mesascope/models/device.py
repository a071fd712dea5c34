"""Where models run and in what precision: one `Runtime` for build, stress, every detector and generation.

The CLI sets it once per command (`--device`, `--dtype`); library code asks `runtime()` and never
guesses. The CPU default is float32, as before; `auto` picks the GPU when torch sees one, and
bfloat16 there when the card supports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from contextvars import ContextVar
from functools import cache
from typing import Literal

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from ..config import Spec
from .build import causal_lm

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@cache
def cpu_has_bfloat16() -> bool:
    """Whether this CPU has bfloat16 matrix instructions (AVX-512 bfloat16, or AMX); True where torch cannot say."""
    cpu = torch.cpu
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(checks):
        return True
    return any(c() for c in checks if c is not None)


class DeviceError(ValueError):
    """A device or precision this machine cannot give; the message says which to use instead."""


class Runtime(Spec):
    device: DeviceName = "auto"
    dtype: DTypeName = "auto"

    @property
    def torch_device(self) -> torch.device:
        if self.device == "auto":
            if torch.cuda.is_available():
                return torch.device("cuda")
            return torch.device("mps" if torch.backends.mps.is_available() else "cpu")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise DeviceError(f"--device cuda, but this torch ({torch.__version__}) sees no CUDA GPU: use --device cpu "
                              "(or auto), or install a CUDA build of torch")
        if self.device == "mps" and not torch.backends.mps.is_available():
            raise DeviceError("--device mps, but torch sees no Apple GPU here: use --device cpu (or auto)")
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        if self.dtype == "bfloat16" and self.torch_device.type == "cpu" and not cpu_has_bfloat16():
            raise DeviceError("--dtype bfloat16 on a CPU without bfloat16 matrix instructions (AVX-512 bfloat16 or "
                              "AMX): it runs many times slower than float32 here (bench/train_throughput.py --isa "
                              "avx2); use --dtype float32 (or auto)")
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        dev = self.torch_device
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    def autocast(self, model: torch.nn.Module | None = None):
        """Mixed precision for training: float32 weights and optimizer, matrix products in the runtime's dtype.

        On the CPU, `model`'s attention (transformers' sdpa) then runs in float32: bfloat16 attention's backward
        there is several times slower than float32's at organism sizes, and it undid most of what bfloat16
        products gain (bench/train_throughput.py, the sft+bf16 row)."""
        dtype = self.torch_dtype
        if dtype == torch.float32:
            return nullcontext()
        stack = ExitStack()
        stack.enter_context(torch.autocast(self.torch_device.type, dtype=dtype))
        if self.torch_device.type == "cpu" and model is not None:
            stack.enter_context(float32_attention(model))
        return stack

    def describe(self) -> str:
        return f"{self.torch_device.type}/{str(self.torch_dtype).removeprefix('torch.')}"


def _sdpa_float32(module, query, key, value, attention_mask, **kwargs):
    """transformers' sdpa attention with its inputs in float32 and autocast off; the output in the inputs' dtype."""
    dtype = query.dtype
    if attention_mask is not None and attention_mask.is_floating_point():
        attention_mask = attention_mask.float()
    with torch.autocast(query.device.type, enabled=False):
        out, weights = sdpa_attention_forward(module, query.float(), key.float(), value.float(), attention_mask,
                                              **kwargs)
    return out.to(dtype), weights


FLOAT32_SDPA = "mesascope_sdpa_float32"
AttentionInterface.register(FLOAT32_SDPA, _sdpa_float32)
# sdpa's masks too: without this transformers masks an unknown implementation as causal only, so the examples
# packed into one row (training/sft.py `collate_packed`) would see each other.
AttentionMaskInterface.register(FLOAT32_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])


@contextmanager
def float32_attention(model: torch.nn.Module) -> Iterator[None]:
    """Within the block, a transformers model whose attention is sdpa computes it in float32 (`_sdpa_float32`);
    its own setting comes back afterwards, so nothing saved or handed back differs. Other attention
    implementations (eager, flash, a peft wrapper's base's) are left as they are."""
    lm = causal_lm(model)
    config = getattr(lm, "config", None)
    if getattr(config, "_attn_implementation", None) != "sdpa":
        yield
        return
    lm.set_attn_implementation(FLOAT32_SDPA)
    try:
        yield
    finally:
        lm.set_attn_implementation("sdpa")


_CURRENT: ContextVar[Runtime] = ContextVar("mesascope_runtime", default=Runtime())


def runtime() -> Runtime:
    return _CURRENT.get()


@contextmanager
def use_runtime(rt: Runtime | None = None, **kw) -> Iterator[Runtime]:
    """Run the enclosed stages on `rt` (or Runtime(**kw)); checked here, so a bad device fails before any work."""
    rt = rt or Runtime(**kw)
    rt.torch_device, rt.torch_dtype  # noqa: B018 - validate now, one line, before anything trains
    token = _CURRENT.set(rt)
    try:
        yield rt
    finally:
        _CURRENT.reset(token)
