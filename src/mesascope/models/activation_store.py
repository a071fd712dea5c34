"""Captured activations: in memory (`Activations`) or streamed to disk as safetensors shards (`ActivationStore`).

`interp.activations.capture` produces both; this module only holds and reads them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors import safe_open

STORE_FORMAT = "mesascope-activations/1"
DEFAULT_SHARD_SIZE = 2048  # prompts per shard on disk: ~4 MB for 4 hooks of width 128 at the last token


@dataclass
class Activations:
    """Captured activations in memory, float32, one array per hook.

    positions="last": `self[hook]` is [n_prompts, d], row i for prompt i.
    positions="all" or a mask: ragged; prompt i's kept tokens are rows offsets[i]:offsets[i+1] of
    `self[hook]` ([n_rows, d]), in token order, and token_index[r] is row r's position in its prompt
    (counting its own tokens, from 0, padding excluded).
    """

    data: dict[str, np.ndarray]
    positions: str  # "last", "all" or "mask"
    n_prompts: int
    offsets: np.ndarray | None = None
    token_index: np.ndarray | None = None

    @property
    def hooks(self) -> list[str]:
        return list(self.data)

    def __getitem__(self, hook: str) -> np.ndarray:
        if hook not in self.data:
            raise KeyError(f"{hook!r} was not captured; captured: {', '.join(self.data)}")
        return self.data[hook]

    def __len__(self) -> int:
        return self.n_prompts

    def per_prompt(self, hook: str) -> list[np.ndarray]:
        """One [kept tokens, d] array per prompt (for positions='last', one [1, d] each)."""
        x = self[hook]
        return list(x[:, None]) if self.offsets is None else np.split(x, self.offsets[1:-1])


def concat(parts: Sequence[Activations]) -> Activations:
    """Activations of consecutive prompt ranges, joined into one."""
    first = parts[0]
    if len(parts) == 1:
        return first
    data = {h: np.concatenate([p.data[h] for p in parts]) for h in first.data}
    offsets = token_index = None
    if first.offsets is not None:
        ends = np.cumsum([0] + [int(p.offsets[-1]) for p in parts])
        offsets = np.concatenate([[0]] + [p.offsets[1:] + e for p, e in zip(parts, ends)])
        token_index = np.concatenate([p.token_index for p in parts])
    return Activations(data, first.positions, sum(p.n_prompts for p in parts), offsets, token_index)


class ActivationStore:
    """A capture streamed to disk: shard-NNNNN.safetensors files (consecutive prompts each) and index.json."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        index_path = self.path / "index.json"
        if not index_path.exists():
            raise FileNotFoundError(f"{self.path} holds no finished capture (no index.json): run capture(..., "
                                    f"out_dir={str(self.path)!r}) to completion first")
        index = json.loads(index_path.read_text(encoding="utf-8"))
        if index.get("format") != STORE_FORMAT:
            raise ValueError(f"{index_path} is not a mesascope activation store (format {index.get('format')!r}, "
                             f"expected {STORE_FORMAT!r})")
        self.index = index
        self.hooks: list[str] = index["hooks"]
        self.positions: str = index["positions"]
        self.n_prompts: int = index["n_prompts"]

    def __len__(self) -> int:
        return self.n_prompts

    def _read(self, file: str, names: Sequence[str]) -> dict[str, np.ndarray]:
        with safe_open(self.path / file, framework="numpy") as f:
            return {name: f.get_tensor(name) for name in names}

    def __getitem__(self, hook: str) -> np.ndarray:
        """One hook over every prompt, shard by shard: the other hooks are never read."""
        if hook not in self.hooks:
            raise KeyError(f"{hook!r} was not captured; captured: {', '.join(self.hooks)}")
        return np.concatenate([self._read(s["file"], [hook])[hook] for s in self.index["shards"]])

    def shards(self, hooks: Sequence[str] | None = None) -> Iterator[tuple[int, Activations]]:
        """(first prompt index, that shard's Activations), one shard in memory at a time."""
        hooks = self.hooks if hooks is None else list(hooks)
        ragged = self.positions != "last"
        for s in self.index["shards"]:
            arrays = self._read(s["file"], hooks + (["offsets", "token_index"] if ragged else []))
            offsets, token_index = arrays.pop("offsets", None), arrays.pop("token_index", None)
            yield s["start"], Activations(arrays, self.positions, s["stop"] - s["start"], offsets, token_index)

    def load(self) -> Activations:
        """Everything, in memory."""
        return concat([acts for _, acts in self.shards()])


def forget_previous_store(out_dir: Path) -> None:
    """Remove an earlier capture's index, then its shards, so a crash now cannot leave a mix of old and new."""
    index = out_dir / "index.json"
    if not index.exists():
        return
    old = json.loads(index.read_text(encoding="utf-8"))
    if old.get("format") != STORE_FORMAT:
        raise ValueError(f"{out_dir} holds an index.json that is not a mesascope activation store: pick another out_dir")
    index.unlink()
    for s in old.get("shards", []):
        (out_dir / s["file"]).unlink(missing_ok=True)
