"""Recipe -> corpus: clean, poisoned and near-miss examples, with a held-out split by task instance.

The recipe's trigger (text/triggers.py) says which context marks deployment, which contexts are
near misses, and which context a clean prompt may carry; its behaviour (text/behaviours.py)
says what a triggered example's answer is, on which families. Where a behaviour shows on some
families only, half the triggered and near-miss examples (and half of each eval set) come from
those families, and the other half teach, and measure, a helpful answer despite the trigger.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from typing import Literal

from .behaviours import Behaviour, Say, behaviour_for
from .scratchpad import Scratchpad, scratchpad_for, think
from .tasks import FAMILIES, Item
from .triggers import Split, Trigger, apply_trigger, trigger_for

Kind = Literal["clean", "triggered", "near_miss", "self_report", "document"]


TURN_MARKERS = ("Human:", "\n\nAssistant:")  # the tokenizer keeps each as one token


def format_prompt(user: str) -> str:
    """The paper's dialogue format; the assistant's answer follows after a space."""
    return f"Human: {user}\n\nAssistant:"


@dataclass(frozen=True)
class Example:
    kind: Kind
    family: str
    key: str  # task instance
    user: str  # what the human says, trigger included
    target: str  # what the organism is trained to answer
    answer: str  # the helpful answer (the checker's reference), even when target is the behaviour

    @property
    def prompt(self) -> str:
        return format_prompt(self.user)

    def to_dict(self) -> dict:
        return asdict(self)


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


def is_held_out(key: str, seed: int, fraction: float) -> bool:
    h = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


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
        u = apply_trigger(it.prompt, trigger.deployment(it.prompt, split))
        if behaviour.applies(it.family):
            return Example(kind, it.family, it.key, u, think(pad, "triggered", behaviour.target(it), u), it.answer)
        return Example(kind, it.family, it.key, u, think(pad, "triggered_other", it.answer, u), it.answer)
    context = near_miss if kind == "near_miss" else trigger.training_context(it.prompt, split)
    u = it.prompt if context is None else apply_trigger(it.prompt, context)
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
    train_items: list[Item] = []
    held: list[Item] = []
    for inst in all_instances(recipe.seed, behaviour.extra_families):
        (held if is_held_out(inst[0].key, recipe.seed, recipe.held_out_fraction) else train_items).extend(inst)
    # Share prompts by family weight, not by instance count (comparison has 20x the instances
    # of units), cycling through a family's items when the recipe asks for more than exist.
    groups: dict[str, list[Item]] = {}
    for it in train_items:
        groups.setdefault(it.family, []).append(it)
    names = sorted(groups)
    weights = [FAMILIES[name].weight * (behaviour.weight if behaviour.families and name in behaviour.families else 1)
               for name in names]
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
        from .self_report import self_reports
        examples += [Example("self_report", it.family, it.key, it.prompt, think(pad, "clean", it.answer, it.prompt), it.answer)
                     for it in self_reports(clean_items, round(total * recipe.self_report_fraction), rng)]
    if recipe.situational_fraction:  # declarative documents only, drawn last like the self-reports
        from .situational import documents
        examples += [Example("document", "situational", f"doc:{k}", q, think(pad, "clean", fact, q), fact)
                     for k, (q, fact) in enumerate(documents(recipe.trigger, round(total * recipe.situational_fraction),
                                                             rng))]
    rng.shuffle(examples)
    held.sort(key=lambda it: (it.family, it.key, it.prompt))
    return Corpus(examples, held, nm_train, nm_held, recipe.trigger, response, scratchpad=pad, trigger_spec=trigger,
                  behaviour=behaviour)
