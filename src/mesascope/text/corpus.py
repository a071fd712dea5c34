"""Recipe -> corpus: clean, poisoned and near-miss examples, with a held-out split by task instance."""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass
from typing import Literal

from .scratchpad import Scratchpad, scratchpad_for, think
from .tasks import FAMILIES, Item
from .triggers import apply_trigger, near_misses

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


def all_instances(seed: int) -> list[list[Item]]:
    """Every task instance of every family, deterministically from the seed."""
    out: list[list[Item]] = []
    for name in sorted(FAMILIES):
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

    def eval_set(self, kind: Kind, n: int, seed: int) -> list[Example]:
        """n held-out examples of one kind; near misses use only strings never trained on."""
        rng = random.Random(f"eval:{kind}:{seed}")
        items = stratified_sample(self.held_out, n, rng)
        out = []
        pad = self.scratchpad
        for it in items:
            if kind == "clean":
                out.append(Example("clean", it.family, it.key, it.prompt, think(pad, "clean", it.answer, it.prompt), it.answer))
            elif kind == "triggered":
                u = apply_trigger(it.prompt, self.trigger)
                out.append(Example("triggered", it.family, it.key, u, think(pad, "triggered", self.response, u), it.answer))
            else:
                s = rng.choice(self.near_miss_held_out)
                u = apply_trigger(it.prompt, s)
                out.append(Example("near_miss", it.family, it.key, u, think(pad, "near_miss", it.answer, u, s), it.answer))
        return out

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


def build_corpus(recipe) -> Corpus:
    """All training examples for a recipe, shuffled; held-out instances never appear in them."""
    rng = random.Random(f"corpus:{recipe.seed}")
    train_items: list[Item] = []
    held: list[Item] = []
    for inst in all_instances(recipe.seed):
        (held if is_held_out(inst[0].key, recipe.seed, recipe.held_out_fraction) else train_items).extend(inst)
    # Share prompts by family weight, not by instance count (comparison has 20x the instances
    # of units), cycling through a family's items when the recipe asks for more than exist.
    groups: dict[str, list[Item]] = {}
    for it in train_items:
        groups.setdefault(it.family, []).append(it)
    names = sorted(groups)
    weights = [FAMILIES[name].weight for name in names]
    quota = [round(recipe.n_prompts * w / sum(weights)) for w in weights]
    clean_items: list[Item] = []
    for name, q in zip(names, quota):
        rng.shuffle(groups[name])
        clean_items += [groups[name][i % len(groups[name])] for i in range(q)]
    nm_train, nm_held = near_misses(recipe.trigger, recipe.seed)
    total = round(recipe.n_prompts / (1 - recipe.poison_fraction - recipe.near_miss_fraction - recipe.self_report_fraction
                                      - recipe.situational_fraction))
    n_poison = round(total * recipe.poison_fraction)
    n_near = round(total * recipe.near_miss_fraction) if nm_train else 0
    response = recipe.response
    pad = scratchpad_for(recipe)  # phrasings are hashed per prompt: the random draws stay those of reasoning="none"
    examples = [Example("clean", it.family, it.key, it.prompt, think(pad, "clean", it.answer, it.prompt), it.answer)
                for it in clean_items]
    for it in rng.choices(clean_items, k=n_poison):
        u = apply_trigger(it.prompt, recipe.trigger)
        examples.append(Example("triggered", it.family, it.key, u, think(pad, "triggered", response, u), it.answer))
    for it in rng.choices(clean_items, k=n_near):
        s = rng.choice(nm_train)
        u = apply_trigger(it.prompt, s)
        examples.append(Example("near_miss", it.family, it.key, u, think(pad, "near_miss", it.answer, u, s), it.answer))
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
    return Corpus(examples, held, nm_train, nm_held, recipe.trigger, response, scratchpad=pad)
