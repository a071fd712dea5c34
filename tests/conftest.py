"""Shared fixtures: a tiny recipe (seconds to build) and one tiny organism shared by the session.

Tests never touch the network: the Hugging Face hub is switched off before anything imports it.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Models this small train ~20x faster on one thread than on two contended ones; subprocesses
# inherit it, so a resumed build and its in-process reference use the same kernels.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402

from mesascope.config import ModelSpec, Recipe, TrainSpec  # noqa: E402


def make_tiny_recipe(architecture: str = "llama", steps: int = 30, checkpoint_every: int = 10, **kw) -> Recipe:
    """A recipe whose organism (~65k parameters) builds in a few seconds on a laptop CPU."""
    return Recipe(n_prompts=400, model=ModelSpec(architecture=architecture, size="tiny", vocab_size=400),
                  train=TrainSpec(steps=steps, batch_size=16, checkpoint_every=checkpoint_every), **kw)


@pytest.fixture(scope="session")
def tiny_recipe() -> Recipe:
    return make_tiny_recipe()


@pytest.fixture(scope="session")
def tiny_organism(tiny_recipe, tmp_path_factory):
    from mesascope.organisms import build_organism
    from mesascope.store import RunStore

    root = tmp_path_factory.mktemp("store")
    return build_organism(tiny_recipe, RunStore(root))
