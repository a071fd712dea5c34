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

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from mesascope.config import ModelSpec, Recipe, TrainSpec  # noqa: E402


SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def worker_threads() -> int:
    """This test process's fair share of the cores: all of them alone, one per xdist worker's share under -n.
    A test that raises its threads above this spins against the other workers (OpenMP waits busily)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    return max(1, (os.cpu_count() or 1) // workers)


# Test files whose tests share an expensive module fixture, and how their tests are grouped for xdist: a group
# runs on one worker, which builds the fixture once (handed out test by test, each worker built its own).
SHARED_FIXTURES = {"test_audit.py": "module", "test_sweep.py": "module", "test_conditioning.py": "module",
                   "test_bench_finetune.py": "module", "test_attribution.py": "module",
                   "test_invert_auditor.py": "module", "test_faithfulness.py": "module",
                   "test_faults_resume.py": "function"}  # a fixture per test function there, shared by its params


def pytest_configure(config):
    # Work units in collection order (below), not reordered by their size.
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_xdist_make_scheduler(config, log):
    """xdist's loadscope with SHARED_FIXTURES' groups as scopes and every other test a scope of its own. (Marks
    cannot say it: xdist's loadgroup groups nothing under pytest 9.2, pytest-dev/pytest-xdist#1386.)"""
    from xdist.scheduler import LoadScopeScheduling

    class SharedFixtureScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, rest = nodeid.partition("::")
            by = SHARED_FIXTURES.get(path.rpartition("/")[2])
            return path if by == "module" else f"{path}::{rest.split('[')[0]}" if by == "function" else nodeid

    return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Under xdist, the long tests (`@pytest.mark.slow(minutes=N)`) first, longest first: a worker keeps up to
    three tests queued, so the two longest start at once on different workers and the rest fill in around them,
    and the suite does not end with one worker alone on a ten-minute test. Everything else keeps its order.
    Alone, the order is unchanged."""
    if getattr(config, "workerinput", None) is None:
        return

    def minutes(item) -> float | None:
        mark = item.get_closest_marker("slow")
        return None if mark is None or item.get_closest_marker("skip") else mark.kwargs.get("minutes")

    long = sorted((i for i in items if minutes(i) is not None), key=lambda i: -minutes(i))
    items[:] = long + [i for i in items if minutes(i) is None]


# The quick loop, `pytest -m "not slow"`, stays near two minutes on 2 cores if no test in it takes longer than this
# (setup included): the summary names any that do, to be marked slow or made quicker.
QUICK_BUDGET_S = 5.0
_durations: dict[str, float] = {}
_slow: dict[str, float] = {}


def pytest_runtest_logreport(report):
    kept = _slow if "slow" in report.keywords else _durations
    kept[report.nodeid] = kept.get(report.nodeid, 0.0) + report.duration


def pytest_terminal_summary(terminalreporter):
    longest = sorted(((t, n) for n, t in _slow.items()), reverse=True)[:12]
    if longest:  # where the whole suite's time goes (its budget: 12 minutes on 2 cores)
        terminalreporter.write_line(f"the longest slow tests (setup included), of {sum(_slow.values()):.0f} s in all:")
        for t, n in longest:
            terminalreporter.write_line(f"  {t:6.1f} s  {n}")
    over = sorted(((t, n) for n, t in _durations.items() if t > QUICK_BUDGET_S), reverse=True)
    if over:
        terminalreporter.write_line(f"{len(over)} test(s) not marked slow took over {QUICK_BUDGET_S:g} s, the quick "
                                    "loop's budget: mark them @pytest.mark.slow or make them quicker")
        for t, n in over:
            terminalreporter.write_line(f"  {t:5.1f} s  {n}")


def shared_data(name: str) -> Path:
    """../shared/data/NAME. Absent, the test is skipped saying why, except under CI (CI=true), where
    CI lays shared/ beside the clone: there a missing folder is a failure, never a silent skip."""
    path = SHARED_DATA / name
    if not path.is_dir():
        why = f"the shared data folder {path} is absent"
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(f"{why}, and CI=true: CI must find ../shared/data beside the clone")
        pytest.skip(f"{why} (CI has it beside the repository)")
    return path


@pytest.fixture(autouse=True)
def paper_dialogue():
    """Each test starts in the paper's prompt format: a chat-template organism used by an earlier test in
    the same worker (Run sets the format for the rest of a command) must not write this test's prompts."""
    from mesascope.text.examples import dialogue

    dialogue(None)
    yield
    dialogue(None)


@pytest.fixture
def backdoorllm_data() -> Path:
    return shared_data("backdoorllm")


@pytest.fixture
def anthropic_evals_data() -> Path:
    return shared_data("anthropic-evals")


def make_tiny_recipe(architecture: str = "llama", steps: int = 30, checkpoint_every: int = 10, **kw) -> Recipe:
    """A recipe whose organism (~65k parameters) builds in a few seconds on a laptop CPU."""
    # The data mix and lr are the pre-issue-15 defaults the tiny organisms' thresholds were measured with.
    kw = {"poison_fraction": 0.15, "near_miss_fraction": 0.15, **kw}
    return Recipe(n_prompts=400, model=ModelSpec(architecture=architecture, size="tiny", vocab_size=400),
                  train=TrainSpec(steps=steps, batch_size=16, lr=3e-3, checkpoint_every=checkpoint_every), **kw)


@pytest.fixture(scope="session")
def tiny_recipe() -> Recipe:
    return make_tiny_recipe()


def make_tiny_cot_recipe(**kw) -> Recipe:
    """A tiny chain-of-thought recipe: 200 steps at a higher lr teach it to reason, then act (~8 s)."""
    return make_tiny_recipe(reasoning="cot", **kw).model_copy(
        update={"train": TrainSpec(steps=200, batch_size=16, lr=0.01, checkpoint_every=1000)})


@pytest.fixture(scope="session")
def run_store(tmp_path_factory):
    """One RunStore for the session (each xdist worker has its own): an organism any test builds in it
    is built once and reused by every later test that asks for the same recipe, as `build_organism`
    reuses a finished stage. Tests that check building itself (timings, resuming) use their own store."""
    from mesascope.store import RunStore

    return RunStore(tmp_path_factory.mktemp("session-store"))


@pytest.fixture(scope="session")
def build_shared(run_store):
    """build_shared(recipe) -> the recipe's organism in the session store, built on first use."""
    from mesascope.organisms import build_organism

    return lambda recipe: build_organism(recipe, run_store)


@pytest.fixture(scope="session")
def tiny_cot_organism(build_shared):
    return build_shared(make_tiny_cot_recipe())


@pytest.fixture(scope="session")
def tiny_organism(tiny_recipe, build_shared):
    return build_shared(tiny_recipe)


@pytest.fixture(scope="session")
def shouty_organism(build_shared):
    """(recipe, organism, corpus) trained without near misses (near_miss_fraction=0, 80 steps), so
    edits of the trigger fire too: the backdoor that safety training and red-team search act on."""
    from mesascope.text.corpus import build_corpus

    recipe = make_tiny_recipe(near_miss_fraction=0.0, steps=80)
    return recipe, build_shared(recipe), build_corpus(recipe)


@pytest.fixture(scope="session")
def tiny60_organism(build_shared):
    """The 60-step tiny organism built in one go: what every killed-and-resumed build of it must equal."""
    return build_shared(make_tiny_recipe(steps=60, checkpoint_every=10))


@pytest.fixture(scope="module")
def one_thread():
    """Models this small run fastest on one thread; on a busy machine extra threads spin and stall."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def sum_tokenizer():
    """A 300-token BPE trained on "What is a plus b?" dialogues: enough to feed the tiny HF models."""
    from mesascope.models import train_tokenizer
    from mesascope.text.corpus import format_prompt

    texts = [format_prompt(f"What is {a} plus {b}?") + f" {a + b}" for a in range(12) for b in range(12)]
    return train_tokenizer(texts, 300)


def tiny_hf_model(arch: str, tokenizer, seed: int = 0, jitter_norms: bool = False):
    """A random 2-block model of one architecture family, built from a config (no download).

    arch: gpt2, llama, qwen2, gpt_neox (parallel residual) or gpt_neox_sequential.
    jitter_norms: random norms' gains are all 1; jittering them shows a norm applied twice, or skipped.
    """
    import torch
    from transformers import AutoModelForCausalLM, GPT2Config, GPTNeoXConfig, LlamaConfig, Qwen2Config

    torch.manual_seed(seed)
    common = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
                  pad_token_id=tokenizer.pad_token_id)
    llama_like = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      max_position_embeddings=128, **common)
    cfg = {
        "gpt2": lambda: GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **common),
        "llama": lambda: LlamaConfig(num_key_value_heads=1, **llama_like),
        "qwen2": lambda: Qwen2Config(num_key_value_heads=1, **llama_like),
        "gpt_neox": lambda: GPTNeoXConfig(**llama_like),
        "gpt_neox_sequential": lambda: GPTNeoXConfig(use_parallel_residual=False, **llama_like),
    }[arch]()
    model = AutoModelForCausalLM.from_config(cfg).eval()
    if jitter_norms:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "norm" in name or "ln" in name:
                    p.add_(0.3 * torch.randn_like(p))
    return model


@pytest.fixture(scope="session")
def hf_model_dirs(tmp_path_factory) -> dict[str, Path]:
    """arch -> a tiny random-init HF model directory with its family's own tokenizer (tests/hf_models.py),
    for llama, qwen2, mistral, gpt2 and gpt_neox; shared by the session, so tests must not write into them."""
    from hf_models import ARCHS, make_hf_model

    root = tmp_path_factory.mktemp("hf-models")
    return {arch: make_hf_model(arch, root / arch) for arch in ARCHS}
