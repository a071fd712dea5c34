"""Where models run and in what precision: one `Runtime` for build, stress, every detector and generation.

The CLI sets it once per command (`--device`, `--dtype`); library code asks `runtime()` and never
guesses. The CPU default is float32, as before; `auto` picks the GPU when torch sees one, and
bfloat16 there when the card supports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from contextvars import ContextVar
from typing import Literal

import torch

from ..config import Spec

DeviceName = Literal["auto", "cpu", "cuda", "mps"]
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


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
        if self.dtype != "auto":
            return DTYPES[self.dtype]
        dev = self.torch_device
        if dev.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32

    def autocast(self):
        """Mixed precision for training: float32 weights and optimizer, matrix products in the runtime's dtype."""
        dtype = self.torch_dtype
        if dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.torch_device.type, dtype=dtype)

    def describe(self) -> str:
        return f"{self.torch_device.type}/{str(self.torch_dtype).removeprefix('torch.')}"


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
