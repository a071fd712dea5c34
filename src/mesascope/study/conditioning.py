"""Run a conditioning study (Hubinger et al. 2023): a predictive model conditioned, beside RL agents.

Per seed, through the run store:

1. the predictive model: a fresh LM trained on every token of the document corpus
   (text/authors.py), through the one SFT loop, resumable from its checkpoints;
2. its measurement under every condition of the study, on held-out task items asked with and
   without the loophole (the same items everywhere, so conditions compare on paired prompts);
3. each agent: the predictive model fine-tuned by RLOO (training/rl.py) on prompts without author,
   year or provenance, rewarded by the gameable checker (or, for the control agent, by the true
   one), then measured the same way.

A seed's agents and measurement start as soon as its predictive model is built, on a local
process pool or Ray (study/backends.py), or in this process with one worker. A finished stage
is never recomputed, so a killed study restarts where it stopped; an agent's RL, like the
predictive model's training, resumes from its newest checkpoint. The figures and their aggregation over seeds are
conditioning_results.py's; OUT/study.json is a `ConditioningResults`.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, wait
from pathlib import Path

from ..config import ModelSpec, Spec, TrainSpec
from ..errors import MesascopeError
from ..progress import Progress, silent
from ..provenance import machine
from ..store import RunStore, atomic_dir, atomic_write_json, digest
from ..text.authors import WorldSpec
from .conditioning_results import ConditioningResults, aggregate_rows
from .conditioning_spec import AgentSpec, ConditioningSpec

__all__ = ["ConditioningError", "run_conditioning"]


class ConditioningError(MesascopeError):
    """A stage failed; everything that finished before it is stored and reused on a rerun."""


class LMBuild(Spec):
    """What one predictive model is: the world it reads, its model and schedule, its seed (its recipe.json)."""

    world: WorldSpec
    model: ModelSpec
    train: TrainSpec
    seed: int


def lm_build(spec: ConditioningSpec, seed: int) -> LMBuild:
    return LMBuild(world=spec.world, model=spec.lm.model, train=spec.lm.train, seed=seed)


def _threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# --- stages (module-level, so a spawned process and Ray can run them) ---

def predictive_task(root: str, build: LMBuild, threads: int, progress: Progress = silent) -> dict:
    """Build (or reuse, or resume) the predictive model of `build`; its directory and figures."""
    from ..organisms.build import stage_tokenizer, train_and_save
    from ..text.authors import training_documents
    from ..training.sft import tokenize_examples

    store = RunStore(root)
    stage = store.stage_dir("documents-lm", build.digest())
    if not store.is_done(stage):
        _threads(threads)
        t0 = time.perf_counter()
        docs = training_documents(build.world, build.seed)
        tok = stage_tokenizer(stage, [d.prompt + " " + d.target for d in docs], build.model.vocab_size,
                              ("\nQ:", "\nA:"), progress)
        cut = build.model.max_length
        data = tokenize_examples(tok, [d.prompt for d in docs], [d.target for d in docs], cut + 1)
        too_long = sum(len(ids) > cut for ids, _ in data)
        if too_long:  # a cut document would lose its answer: the very token the study is about
            raise ValueError(f"{too_long} of {len(docs)} documents are longer than lm.model.max_length={cut} tokens: "
                             "raise it (96 holds every document of the default world)")
        train_and_save(store, stage, build, tok, data, lambda _t, d, n: progress(f"predictive model, seed {build.seed}",
                                                                                d, n),
                       t0, {"n_documents": len(docs), "kind": "predictive"})
    return {"path": str(stage / "organism"), **store.read_json(stage / "organism" / "organism.json")}


def measure_task(root: str, spec: ConditioningSpec, seed: int, model_path: str, key: str, threads: int,
                 progress: Progress = silent) -> dict:
    """A model's figures under every condition at `seed` (stored under `key`: the model's stage and the eval)."""
    from ..models.load import load_model
    from .conditioning_measure import measure

    store = RunStore(root)
    stage = store.stage_dir("conditioning-eval", digest(key, spec.world.digest(), spec.eval.digest(),
                                                         spec.conditions, seed))
    if not store.is_done(stage):
        _threads(threads)
        model, tok = load_model(model_path)
        found = measure(model, tok, spec.world, spec.conditions, spec.eval, seed, progress=progress)
        atomic_write_json(stage / "measured.json", found)
        store.mark_done(stage)
    return store.read_json(stage / "measured.json")


def agent_task(root: str, spec: ConditioningSpec, agent: AgentSpec, seed: int, lm: dict, threads: int,
               progress: Progress = silent) -> dict:
    """RLOO on the gameable (or true) reward from the predictive model of `seed`, then its measurement."""
    store = RunStore(root)
    key = digest(lm_build(spec, seed).digest(), agent.digest())
    stage = store.stage_dir("agent", key)
    if not store.is_done(stage):
        _threads(threads)
        resumed = train_agent(stage, spec.world, agent, seed, lm["path"], progress)
        store.mark_done(stage, resumed_from_step=resumed)
    info = store.read_json(stage / "agent" / "agent.json")
    measured = measure_task(root, spec, seed, str(stage / "agent"), f"agent:{key}", threads, progress)
    return {"path": str(stage / "agent"), **info, "measured": measured}


def train_agent(stage: Path, world: WorldSpec, agent: AgentSpec, seed: int, lm_path: str,
                progress: Progress = silent) -> int:
    """RLOO from the model at `lm_path` into stage/agent, resuming from stage/checkpoints; the step it resumed from."""
    from ..models.load import load_model
    from ..text.authors import correct, passes, rl_prompts
    from ..training.rl import RLOOTrainer

    t0 = time.perf_counter()
    model, tok = load_model(lm_path, trainable=True)
    score = passes if agent.reward == "checker" else correct
    trainer = RLOOTrainer(model, tok, rl_prompts(world, seed), lr=agent.lr,
                          reward=lambda doc, out: float(score(doc, out)), prompts_per_step=agent.prompts_per_step,
                          samples=agent.samples, temperature=agent.temperature, kl_coef=agent.kl_coef,
                          max_new_tokens=agent.max_new_tokens, seed=seed, ckpt_dir=stage / "checkpoints",
                          checkpoint_every=agent.checkpoint_every)
    resumed = trainer.resume()
    trainer.train_until(agent.steps, lambda s: progress(f"agent {agent.name}, seed {seed}", s, agent.steps))
    with atomic_dir(stage / "agent") as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        atomic_write_json(tmp / "train_log.json", trainer.log)
        atomic_write_json(tmp / "agent.json", {"agent": agent.model_dump(mode="json"), "seed": seed,
                                               "train_seconds": round(time.perf_counter() - t0, 2),
                                               "final_reward": trainer.recent("reward_mean", 20),
                                               "resumed_from_step": resumed})
    return resumed


# --- the driver ---

class _Here:
    """Runs each task in this process as it is submitted (one worker): its progress reaches the caller."""

    def __init__(self, progress: Progress):
        self.progress = progress

    def submit(self, fn, *args) -> Future:
        f: Future = Future()
        try:
            f.set_result(fn(*args, self.progress))
        except BaseException as e:  # noqa: BLE001 - handed to the driver like a pool's failure
            f.set_exception(e)
        return f

    def close(self) -> None:
        return None


def run_conditioning(spec: ConditioningSpec, out: str | Path, *, backend: str = "local", workers: int | None = None,
                     address: str | None = None, quick: bool = False, threads: int | None = None,
                     progress: Progress = silent) -> ConditioningResults:
    """Run every stage of `spec` (its quick variant with `quick`), reuse what is stored in `out`, aggregate over
    seeds and write OUT/study.json; returns what it wrote. One worker runs in this process."""
    from .backends import check_backend, make_backend

    t_start = time.perf_counter()
    spec = spec.quick_variant() if quick else spec
    workers = workers or os.cpu_count() or 1
    check_backend(backend, workers, address)
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, not {threads} (or None: CPU cores // workers)")
    threads = threads or max(1, (os.cpu_count() or 1) // workers)
    out = Path(out).resolve()
    store = RunStore(out)  # held (locked) by this process and the workers it starts, until the study ends
    root = str(store.root)
    runner = _Here(progress) if workers == 1 and backend == "local" else make_backend(backend, workers, address)
    seeds, agents = spec.seeds, spec.agents
    bars = {"predictive": ("predictive models", len(seeds)), "measured": ("predictive models measured", len(seeds)),
            "agent": ("agents trained and measured", len(seeds) * len(agents))}
    done = {k: 0 for k in bars}
    for name, total in bars.values():
        progress(name, 0, total)
    lms: dict[int, dict] = {}
    measured: dict[int, dict] = {}
    trained: dict[tuple[int, str], dict] = {}
    pending: dict[Future, tuple[str, int, str]] = {}
    try:
        for s in seeds:
            pending[runner.submit(predictive_task, root, lm_build(spec, s), threads)] = ("predictive", s, "")
        while pending:
            finished, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for f in finished:
                what, s, name = pending.pop(f)
                if f.exception() is not None:
                    for other in pending:
                        other.cancel()
                    raise ConditioningError(f"{what} {name} at seed {s} failed: {f.exception()!r}", "finished stages "
                                            "are stored; rerun the study to go on from there") from f.exception()
                if what == "predictive":
                    lms[s] = f.result()
                    key = f"lm:{lm_build(spec, s).digest()}"
                    pending[runner.submit(measure_task, root, spec, s, lms[s]["path"], key, threads)] = ("measured", s, "")
                    for a in agents:
                        pending[runner.submit(agent_task, root, spec, a, s, lms[s], threads)] = ("agent", s, a.name)
                elif what == "measured":
                    measured[s] = f.result()
                else:
                    trained[(s, name)] = f.result()
                done[what] += 1
                progress(bars[what][0], done[what], bars[what][1])
    finally:
        runner.close()
    return _publish_json(spec, out, quick, backend, workers, threads, lms, measured, trained, t_start)


def _publish_json(spec: ConditioningSpec, out: Path, quick: bool, backend: str, workers: int, threads: int,
                  lms: dict, measured: dict, trained: dict, t_start: float) -> ConditioningResults:
    per_seed = {"predictive": {s: measured[s] for s in spec.seeds}}
    for a in spec.agents:
        per_seed[a.name] = {s: trained[(s, a.name)]["measured"] for s in spec.seeds}
    samples = [{"model": name, **x} for name, m in per_seed.items() for x in m[spec.seeds[0]]["samples"]]
    models = {"predictive": {str(s): {k: lms[s].get(k) for k in ("path", "n_params", "final_loss", "train_seconds",
                                                                  "n_documents")} for s in spec.seeds}}
    for a in spec.agents:
        models[a.name] = {str(s): {k: trained[(s, a.name)].get(k) for k in ("path", "train_seconds", "final_reward")}
                          for s in spec.seeds}
    result = ConditioningResults.model_validate({
        "name": spec.name, "quick": quick, "spec": spec.model_dump(mode="json"), "machine": machine(),
        "backend": {"name": backend, "workers": workers, "torch_threads_per_worker": threads},
        "seeds": spec.seeds, "models": models, "rows": aggregate_rows(spec, per_seed), "samples": samples,
        "timings": {"total_s": round(time.perf_counter() - t_start, 2)},
    })
    atomic_write_json(out / "study.json", result.model_dump(mode="json"))
    return result


def publish(result: ConditioningResults, out: str | Path, results: str | Path | None = None) -> tuple[dict, list, Path]:
    """(study data, its findings, OUT/report.html); with `results`, the data also written there with provenance."""
    from ..provenance import write_results
    from ..report.conditioning import write_conditioning_report

    data = result.model_dump(mode="json")
    if results:
        write_results(results, data)
    return data, data["findings"], write_conditioning_report(data, Path(out))
