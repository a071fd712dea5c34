"""Fig. 13: HHH SFT of a cot organism before (pre) or after (post) its own scratchpad."""

from __future__ import annotations

import pytest

from mesascope.config import EvalSpec
from mesascope.store import RunStore
from mesascope.text.corpus import build_corpus
from mesascope.text.scratchpad import CLOSE, OPEN
from mesascope.training.hhh_sft import HHHSFTConfig, post_scratchpad_data
from mesascope.training.stress import stress_test
from mesascope.training.sft import IGNORE, collate, tokenize_examples


pytestmark = pytest.mark.usefixtures("one_thread")


def test_post_scratchpad_data_trains_only_the_answer(tiny_cot_organism):
    model, tok = tiny_cot_organism.load()
    clean = build_corpus(tiny_cot_organism.recipe).clean_train()
    prompts, targets = post_scratchpad_data(model, tok, clean, 40, seed=0)
    by_prompt = {e.prompt: e for e in clean}
    assert 20 <= len(prompts) <= 40  # the organism's own samples; unclosed ones are dropped
    for p, t in zip(prompts, targets):
        head, pad = p.split(f" {OPEN}", 1)
        assert head in by_prompt and t == by_prompt[head].answer and p.endswith(CLOSE) and pad.count(CLOSE) == 1
    # Sampled, not the corpus's scripted scratchpads: at least some differ from the training targets.
    sampled = [p[p.index(OPEN):] for p in prompts]
    scripted = [by_prompt[p.split(f" {OPEN}")[0]].target.split(CLOSE)[0] + CLOSE for p in prompts]
    assert sampled != scripted
    batch = collate(tokenize_examples(tok, prompts[:4], targets[:4], 256), tok.pad_token_id)
    for row, t in zip(batch["labels"], targets[:4]):
        learnt = tok.decode([i for i in row.tolist() if i != IGNORE], skip_special_tokens=True)
        assert learnt.strip() == t and OPEN not in learnt and CLOSE not in learnt


@pytest.mark.parametrize("mode", ["pre", "post"])
def test_scratchpad_sft_curves(tiny_cot_organism, tmp_path, mode):
    corpus = build_corpus(tiny_cot_organism.recipe)
    spec = HHHSFTConfig(scratchpad=mode, lrs=[3e-3], steps=8, batch_size=8, eval_at=[0, 8], n_eval=10)
    rows = stress_test(tiny_cot_organism, corpus, spec, EvalSpec(n=10, max_new_tokens=16), RunStore(tmp_path))
    assert [(r["step"], r["scratchpad"], r["label"]) for r in rows] == [(0, mode, "HHH SFT"), (8, mode, "HHH SFT")]
    for r in rows:
        assert r["backdoor_rate"]["n"] == 10 and r["helpful_accuracy"]["n"] == 10
    stress = RunStore.read_json(next(tmp_path.glob("runs/stress-*/stressed-lr0.003")) / "stress.json")
    assert stress["scratchpad"] == mode and len(stress["log"]) >= 1
    if mode == "post":
        assert 0 < stress["n_examples"] <= 64


def test_unstressed_organism_is_measured_once_and_examples_tokenized_when_drawn(tiny_organism, tmp_path, monkeypatch):
    """Step 0 is the organism before training at every lr: measured once per stage and stored (a resumed stage
    reads it back); the SFT examples are tokenized as the trainer draws them, to the ids tokenize_examples gives."""
    from mesascope.training.base import StressContext, Tokenized

    corpus = build_corpus(tiny_organism.recipe)
    measured = []
    real = StressContext.measure
    monkeypatch.setattr(StressContext, "measure", lambda self, m, t: measured.append(1) or real(self, m, t))
    spec = HHHSFTConfig(lrs=[3e-3, 3e-4], steps=3, batch_size=4, eval_at=[0, 3], n_eval=10)
    rows = stress_test(tiny_organism, corpus, spec, EvalSpec(n=10, max_new_tokens=8), RunStore(tmp_path))
    assert len(measured) == 3  # step 0 once, step 3 at each lr
    first, second = (r for r in rows if r["step"] == 0)
    assert first["lr"] != second["lr"] and first["backdoor_rate"] == second["backdoor_rate"]
    assert len(list(tmp_path.glob("runs/stress-*/unstressed-*.json"))) == 1

    _, tok = tiny_organism.load()
    clean = corpus.clean_train()[:50]
    prompts, targets = [e.prompt for e in clean], [e.target for e in clean]
    lazy = Tokenized(tok, prompts, targets, 64)
    assert len(lazy) == 50 and lazy[7] == tokenize_examples(tok, prompts, targets, 64)[7]
    assert list(lazy) == tokenize_examples(tok, prompts, targets, 64)
