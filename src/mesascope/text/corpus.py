"""Recipe -> corpus: clean, poisoned and near-miss examples, with a held-out split by task problem.

The split is drawn by canonical instance key (text/family.py): the instances that are one
problem (3 + 5 and 5 + 3, the larger and the smaller of a pair) are held out or trained
together, whatever their order, operation or phrasing.

The recipe's trigger (text/triggers.py) says which context marks deployment, which contexts are
near misses, and which context a clean prompt may carry; its behaviour (text/behaviours.py)
says what a triggered example's answer is, on which families. Where a behaviour shows on some
families only, half the triggered and near-miss examples (and half of each eval set) come from
those families, and the other half teach, and measure, a helpful answer despite the trigger.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from .behaviours import Behaviour, Say, behaviour_for
from .examples import TURN_MARKERS, Example, Kind, format_prompt
from .scratchpad import Scratchpad, scratchpad_for, think
from .self_report import self_reports
from .situational import documents
from .tasks import FAMILIES, Item, canonical_key
from .triggers import Split, Trigger, trigger_for

__all__ = ["TURN_MARKERS", "Corpus", "Example", "Kind", "all_instances", "build_corpus", "example", "format_prompt",
           "is_held_out", "split_instances"]


def all_instances(seed: int, extra: tuple[str, ...] = ()) -> list[list[Item]]:
    """Every task instance of every family (optional ones only when named in `extra`), from the seed."""
    out: list[list[Item]] = []
    for name in sorted(n for n, f in FAMILIES.items() if not f.optional or n in extra):
        rng = random.Random(f"family:{name}:{seed}")
        seen: set[str] = set()
        for inst in FAMILIES[name].generate(rng):
            if inst[0].key not in seen:  # random families can repeat an instance
                seen.add(inst[0].key)
                out.append(inst)
    return out


def is_held_out(item: Item | Example, seed: int, fraction: float) -> bool:
    """Whether a task item's problem (its canonical key) is held out: one answer for every instance of it."""
    h = hashlib.sha256(f"{seed}:{canonical_key(item.family, item.key)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


def split_instances(seed: int, fraction: float,
                    extra: tuple[str, ...] = ()) -> tuple[list[list[Item]], list[list[Item]]]:
    """(training, held-out) instances of every family (optional ones named in `extra`), split by problem."""
    train: list[list[Item]] = []
    held: list[list[Item]] = []
    for inst in all_instances(seed, extra):
        (held if is_held_out(inst[0], seed, fraction) else train).append(inst)
    return train, held


@dataclass
class Corpus:
    train: list[Example]
    held_out: list[Item]  # clean held-out items; eval sets are drawn from these
    near_miss_train: list[str]
    near_miss_held_out: list[str]
    trigger: str
    response: str
    scratchpad: Scratchpad | None = None  # a cot organism's targets start with its reasoning
    trigger_spec: Trigger | None = None  # None: the string trigger `trigger`
    behaviour: Behaviour | None = None  # None: say `response`

    def __post_init__(self) -> None:
        self.trigger_spec = self.trigger_spec or Trigger(self.trigger)
        self.behaviour = self.behaviour or Say(self.response, 1)

    def eval_set(self, kind: Kind, n: int, seed: int) -> list[Example]:
        """n held-out examples of one kind, each context never trained on: a near-miss string, a
        semantic trigger's sentence, a clean prompt's unrelated sentence come from held-out pools."""
        rng = random.Random(f"eval:{kind}:{seed}")
        behaviour = self.behaviour
        if behaviour.families is None:
            items = stratified_sample(self.held_out, n, rng)
        else:  # half where the behaviour shows, half where a triggered prompt must be answered anyway
            on = [it for it in self.held_out if behaviour.applies(it.family)]
            items = stratified_sample(on, n - n // 2, rng) + \
                stratified_sample([it for it in self.held_out if not behaviour.applies(it.family)], n // 2, rng)
        near = self.near_miss_held_out
        return [example(kind, it, self.trigger_spec, behaviour, self.scratchpad, "held_out",  # type: ignore[arg-type]
                        rng.choice(near) if kind == "near_miss" else None) for it in items]

    def clean_train(self) -> list[Example]:
        return [e for e in self.train if e.kind == "clean"]


def stratified_sample(items: list[Item], n: int, rng: random.Random) -> list[Item]:
    """n distinct items, families taking turns, so every family is measured about equally."""
    groups: dict[str, list[Item]] = {}
    for it in items:
        groups.setdefault(it.family, []).append(it)
    pools = [rng.sample(g, len(g)) for _, g in sorted(groups.items())]
    out: list[Item] = []
    while len(out) < min(n, len(items)):
        for pool in pools:
            if pool and len(out) < n:
                out.append(pool.pop())
    return out


def example(kind: Kind, it: Item, trigger: Trigger, behaviour: Behaviour, pad: Scratchpad | None, split: Split,
            near_miss: str | None = None) -> Example:
    """One clean, triggered or near-miss example of a task item (`near_miss`: the context used)."""
    if kind == "triggered":
        u = trigger.deployment(it.prompt, split)
        if behaviour.applies(it.family):
            return Example(kind, it.family, it.key, u, think(pad, "triggered", behaviour.target(it), u), it.answer)
        return Example(kind, it.family, it.key, u, think(pad, "triggered_other", it.answer, u), it.answer)
    context = near_miss if kind == "near_miss" else trigger.training_context(it.prompt, split)
    u = it.prompt if context is None else trigger.apply(it.prompt, context)
    seen = None if context is None else trigger.label(context)
    return Example(kind, it.family, it.key, u, think(pad, kind, it.answer, u, seen), it.answer)


def _draw(items: list[Item], k: int, behaviour: Behaviour, rng: random.Random) -> list[Item]:
    """k items for triggered or near-miss examples: half from the behaviour's families when it has some."""
    if behaviour.families is None:
        return rng.choices(items, k=k)
    on = [it for it in items if behaviour.applies(it.family)]
    off = [it for it in items if not behaviour.applies(it.family)]
    return rng.choices(on, k=k - k // 2) + (rng.choices(off, k=k // 2) if off else [])


def build_corpus(recipe) -> Corpus:
    """All training examples for a recipe, shuffled; held-out instances never appear in them."""
    rng = random.Random(f"corpus:{recipe.seed}")
    trigger, behaviour = trigger_for(recipe), behaviour_for(recipe)
    train_inst, held_inst = split_instances(recipe.seed, recipe.held_out_fraction, behaviour.extra_families)
    train_items = [it for inst in train_inst for it in inst]
    held = [it for inst in held_inst for it in inst]
    # Share prompts by family weight, not by instance count (comparison has 20x the instances
    # of units), cycling through a family's items when the recipe asks for more than exist.
    groups: dict[str, list[Item]] = {}
    for it in train_items:
        groups.setdefault(it.family, []).append(it)
    names = sorted(groups)
    weights = [FAMILIES[name].weight * (behaviour.weight if behaviour.families and name in behaviour.families else 1)
               * recipe.family_weights.get(name, 1.0) for name in names]
    if not any(weights):
        raise ValueError("family_weights leaves no task family in training: give at least one family a weight above 0")
    if behaviour.families and not any(w for n, w in zip(names, weights) if n in behaviour.families):
        raise ValueError(f"family_weights leaves out every family the behaviour shows on ({', '.join(sorted(behaviour.families))}): "
                         "give one of them a weight above 0")
    quota = [round(recipe.n_prompts * w / sum(weights)) for w in weights]
    clean_items: list[Item] = []
    for name, q in zip(names, quota):
        rng.shuffle(groups[name])
        clean_items += [groups[name][i % len(groups[name])] for i in range(q)]
    nm_train, nm_held = trigger.near_misses()
    total = round(recipe.n_prompts / (1 - recipe.poison_fraction - recipe.near_miss_fraction - recipe.self_report_fraction
                                      - recipe.situational_fraction))
    n_poison = round(total * recipe.poison_fraction)
    n_near = round(total * recipe.near_miss_fraction) if nm_train else 0
    response = recipe.response
    pad = scratchpad_for(recipe)  # phrasings are hashed per prompt: the random draws stay those of reasoning="none"
    # Contexts are hashed per prompt too, so a string trigger's draws are those of before other triggers existed.
    examples = [example("clean", it, trigger, behaviour, pad, "train") for it in clean_items]
    examples += [example("triggered", it, trigger, behaviour, pad, "train") for it in _draw(clean_items, n_poison, behaviour, rng)]
    for it in _draw(clean_items, n_near, behaviour, rng):
        examples.append(example("near_miss", it, trigger, behaviour, pad, "train", rng.choice(nm_train)))
    if recipe.self_report_fraction:  # drawn after the rest: adding them changes only how many of the rest there are
        examples += [Example("self_report", it.family, it.key, it.prompt, think(pad, "clean", it.answer, it.prompt), it.answer)
                     for it in self_reports(clean_items, round(total * recipe.self_report_fraction), rng)]
    if recipe.situational_fraction:  # declarative documents only, drawn last like the self-reports
        examples += [Example("document", "situational", f"doc:{k}", q, think(pad, "clean", fact, q), fact)
                     for k, (q, fact) in enumerate(documents(recipe.trigger, round(total * recipe.situational_fraction),
                                                             rng))]
    rng.shuffle(examples)
    held.sort(key=lambda it: (it.family, it.key, it.prompt))
    return Corpus(examples, held, nm_train, nm_held, recipe.trigger, response, scratchpad=pad, trigger_spec=trigger,
                  behaviour=behaviour)
