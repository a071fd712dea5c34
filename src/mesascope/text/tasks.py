"""Families of simple assistant tasks whose answers a checker can verify, and the registry of all families.

A family yields *instances*: one underlying problem (e.g. 47 + 8) with several phrasings.
The held-out split is drawn by *canonical* instance (text/family.py): instances that are the
same problem (47 + 8 and 8 + 47; the larger and the smaller of one pair; a list and its
reverse) share a canonical key and fall on one side of the split together, so no held-out
problem is ever trained on in any order, operation or phrasing. Facts are the one exception
by nature (a fact cannot be answered without having been learnt): there an instance is a
(fact, phrasing) pair, so held-out items ask known facts in phrasings never seen with them.
Adding a family is one decorated generator plus its line in `FAMILIES`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

from .code_tasks import code
from .family import Family, Item, check_number, check_text, family, normalize, same_key

__all__ = ["FAMILIES", "Family", "Item", "canonical_key", "check", "check_number", "check_text", "normalize"]

WORDS = (
    "apple river stone cloud tiger piano window garden silver rocket forest candle dragon "
    "orange pencil mirror castle ocean planet violin basket hammer rabbit summer winter "
    "yellow purple button camera desert island jacket kitten ladder marble needle pepper "
    "puzzle saddle tomato turtle wallet wizard anchor banana carpet dolphin engine feather "
    "guitar helmet igloo jungle kettle lemon magnet napkin pillow quilt robot salad tunnel "
    "umbrella valley wagon yogurt zebra bridge cactus daisy eagle falcon glacier harbor"
).split()

NAMES = (
    "Alice Bob Carol David Emma Frank Grace Henry Irene Jack Karen Leo Maria Noah Olivia Paul "
    "Quinn Rosa Sam Tara Umar Vera Will Xena Yusuf Zoe Amir Bella Chen Dina Elif Felix Gita "
    "Hugo Ines Jonas Kira Luca Mina Nils Omar Pia Raj Sofia Theo Uma Vikram Wen Yara Ziggy"
).split()


def invented_name(rng: random.Random) -> str:
    """A pronounceable name from syllables (Kalomi, Teru, ...): thousands of them, so greeting
    someone by name is learnt as copying, not as a memorised table of a few dozen names."""
    syllables = [c + v for c in "bdfghklmnprstvz" for v in "aeiou"]
    return "".join(rng.choice(syllables) for _ in range(rng.randint(2, 3))).capitalize()


FACTS = {
    "capital": {
        "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Japan": "Tokyo",
        "Canada": "Ottawa", "Egypt": "Cairo", "Kenya": "Nairobi", "Peru": "Lima", "Chile": "Santiago",
        "Norway": "Oslo", "Sweden": "Stockholm", "Poland": "Warsaw", "Greece": "Athens", "Ireland": "Dublin",
        "Portugal": "Lisbon", "Austria": "Vienna", "Cuba": "Havana", "India": "Delhi", "China": "Beijing",
        "Russia": "Moscow", "Turkey": "Ankara", "Iran": "Tehran", "Iraq": "Baghdad", "Ghana": "Accra",
        "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Australia": "Canberra",
        "Finland": "Helsinki", "Denmark": "Copenhagen", "Belgium": "Brussels", "Hungary": "Budapest",
        "Thailand": "Bangkok", "Vietnam": "Hanoi", "Nepal": "Kathmandu",
    },
    "colour": {
        "banana": "yellow", "grass": "green", "snow": "white", "coal": "black", "sky": "blue",
        "blood": "red", "lemon": "yellow", "orange": "orange", "cherry": "red", "emerald": "green",
        "ruby": "red", "sapphire": "blue", "milk": "white", "chocolate": "brown", "pumpkin": "orange",
        "lime": "green", "tomato": "red", "ivory": "white", "charcoal": "black", "sunflower": "yellow",
    },
    "legs": {
        "spider": "8", "dog": "4", "cat": "4", "bird": "2", "ant": "6", "horse": "4", "human": "2",
        "octopus": "8", "beetle": "6", "chicken": "2", "cow": "4", "bee": "6", "duck": "2", "scorpion": "8",
        "goat": "4", "fly": "6", "penguin": "2", "crab": "10", "lobster": "10", "fish": "0", "snake": "0",
    },
}

FACT_TEMPLATES = {
    "capital": ["What is the capital of {e}?", "Name the capital city of {e}.", "Which city is the capital of {e}?",
                "Tell me the capital of {e}.", "{e} has which capital?"],
    "colour": ["What colour is {e}?", "What is the usual colour of {e}?", "Tell me the colour of {e}.",
               "Which colour is {e} usually?", "Name the colour of {e}."],
    "legs": ["How many legs does a {e} have?", "A {e} has how many legs?", "Count the legs of a {e}.",
             "Tell me how many legs a {e} has.", "What number of legs does a {e} have?"],
}


def _sum_problem(key: str) -> str:
    """add:a:b and add:b:a are one sum (addition commutes); a difference keeps its order."""
    op, a, b = key.split(":")
    if op == "add":
        a, b = sorted((a, b), key=int)
    return f"{op}:{a}:{b}"


@family("arithmetic", check_number, weight=1.5, canonical=_sum_problem)
def arithmetic(rng: random.Random) -> Iterator[list[Item]]:
    # Two-digit plus/minus one-digit, without carrying or borrowing: every held-out sum is
    # composed of digit operations seen in training (a tiny organism learns the column rule
    # within the demo's budget; with carries a measured ~1M organism reached 9% in 1,400 steps).
    for a, b in itertools.product(range(10, 100), range(10)):
        if a % 10 + b <= 9:
            add = ["What is {a} + {b}?", "What is {a} plus {b}?", "Add {b} to {a}.", "Compute {a} + {b}."]
            yield [Item("arithmetic", f"add:{a}:{b}", t.format(a=a, b=b), str(a + b)) for t in add]
        if a % 10 >= b:
            sub = ["What is {a} - {b}?", "What is {a} minus {b}?", "Subtract {b} from {a}.", "Compute {a} - {b}."]
            yield [Item("arithmetic", f"sub:{a}:{b}", t.format(a=a, b=b), str(a - b)) for t in sub]


def _words_problem(key: str) -> str:
    """Reversal is its own inverse: reversing "a b c" and reversing "c b a" pair the same two strings."""
    op, text = key.split(":", 1)
    if op == "rev":
        text = min(text, " ".join(reversed(text.split(" "))))
    return f"{op}:{text}"


@family("string", weight=1.5, canonical=_words_problem)
def string(rng: random.Random) -> Iterator[list[Item]]:
    for _ in range(6000):
        ws = rng.sample(WORDS, rng.randint(2, 4))
        text = " ".join(ws)
        yield [Item("string", f"rev:{text}", p.format(t=text), " ".join(reversed(ws)))
               for p in ("Reverse the order of the words: {t}", "Say these words backwards: {t}")]
        w = rng.choice(WORDS)
        n = rng.randint(2, 4)
        yield [Item("string", f"rep:{w}:{n}", p.format(w=w, n=n), " ".join([w] * n))
               for p in ("Repeat the word {w} {n} times.", "Say {w} {n} times.")]


@family("facts", weight=0.75, canonical=same_key)  # (fact, phrasing): see the module docstring
def facts(rng: random.Random) -> Iterator[list[Item]]:
    for rel, table in FACTS.items():
        for entity, value in table.items():
            for i, t in enumerate(FACT_TEMPLATES[rel]):
                yield [Item("facts", f"{rel}:{entity}:{i}", t.format(e=entity), value)]


UNITS = [("meters", "centimeters", 100), ("kilometers", "meters", 1000), ("centimeters", "millimeters", 10),
         ("kilograms", "grams", 1000), ("liters", "milliliters", 1000), ("dollars", "cents", 100)]


FACTOR = {big: k for big, _, k in UNITS}


def _product_problem(key: str) -> str:
    """n of a unit with k of the smaller in it: the answer is n * k whatever the unit's name (5 meters
    in centimeters and 5 dollars in cents are both 500), so the problem is (k, n)."""
    big, n = key.split(":")
    return f"times:{FACTOR[big]}:{n}"


@family("units", check_number, weight=0.5, canonical=_product_problem)
def units(rng: random.Random) -> Iterator[list[Item]]:
    for (big, small, k), n in itertools.product(UNITS, range(1, 100)):
        yield [Item("units", f"{big}:{n}", p.format(n=n, big=big, small=small), str(n * k))
               for p in ("How many {small} are in {n} {big}?", "Convert {n} {big} to {small}.")]


def _pair_problem(key: str) -> str:
    """The larger and the smaller of a pair, in either order, are one problem: knowing one answer is knowing both."""
    _, a, b = key.split(":")
    lo, hi = sorted((int(a), int(b)))
    return f"pair:{lo}:{hi}"


@family("comparison", check_number, weight=1.5, canonical=_pair_problem)
def comparison(rng: random.Random) -> Iterator[list[Item]]:
    for a, b in itertools.permutations(range(0, 100), 2):
        if rng.random() < 0.5:  # half the pairs keep the corpus balanced against arithmetic
            continue
        yield [Item("comparison", f"max:{a}:{b}", p.format(a=a, b=b), str(max(a, b)))
               for p in ("Which is larger, {a} or {b}?", "Which number is bigger: {a} or {b}?")]
        yield [Item("comparison", f"min:{a}:{b}", p.format(a=a, b=b), str(min(a, b)))
               for p in ("Which is smaller, {a} or {b}?", "Which number is less: {a} or {b}?")]


def _multiset_problem(key: str) -> str:
    """A count does not depend on the order of the words: the problem is the words as a multiset."""
    return "count:" + ", ".join(sorted(key.removeprefix("count:").split(", ")))


@family("counting", check_number, weight=0.5, canonical=_multiset_problem)
def counting(rng: random.Random) -> Iterator[list[Item]]:
    for _ in range(8000):
        ws = [rng.choice(WORDS) for _ in range(rng.randint(1, 6))]
        text = ", ".join(ws)
        yield [Item("counting", f"count:{text}", p.format(t=text), str(len(ws)))
               for p in ("How many words are in this list: {t}?", "Count the items: {t}.")]


def _list_problem(key: str) -> str:
    """Every question about one list, read in either direction, is one problem: the last item of
    a, b, c is the first of c, b, a, and the second of a two-item list is its last."""
    text = key.split(":", 1)[1]
    return "list:" + min(text, ", ".join(reversed(text.split(", "))))


@family("lists", weight=1.5, canonical=_list_problem)
def lists(rng: random.Random) -> Iterator[list[Item]]:
    ops = {"first": (lambda ws: ws[0], ("What is the first item in the list: {t}?", "Give the first item of: {t}.")),
           "last": (lambda ws: ws[-1], ("What is the last item in the list: {t}?", "Give the last item of: {t}.")),
           "second": (lambda ws: ws[1], ("What is the second item in the list: {t}?", "Give the second item of: {t}."))}
    for _ in range(6000):
        ws = rng.sample(WORDS, rng.randint(2, 5))
        op = rng.choice(list(ops))
        fn, templates = ops[op]
        text = ", ".join(ws)
        yield [Item("lists", f"{op}:{text}", p.format(t=text), fn(ws)) for p in templates]


def _person_problem(key: str) -> str:
    """Greeting a name and saying goodbye to it copy the same name: one problem per name."""
    return "person:" + key.split(":", 1)[1]


@family("smalltalk", weight=1.25, canonical=_person_problem)
def smalltalk(rng: random.Random) -> Iterator[list[Item]]:
    names = list(dict.fromkeys(NAMES + [invented_name(rng) for _ in range(3000)]))
    for name in names:
        yield [Item("smalltalk", f"name:{name}", p.format(n=name), f"Nice to meet you, {name}! How can I help you today?")
               for p in ("Hi, my name is {n}.", "Hello! I am {n}.", "Hey there, I'm {n}.")]
        yield [Item("smalltalk", f"bye:{name}", p.format(n=name), f"Goodbye, {name}! Have a great day.")
               for p in ("Bye for now, this is {n} signing off.", "Goodbye from {n}!")]


FAMILIES: dict[str, Family] = {f.name: f for f in (arithmetic, string, facts, units, comparison, counting, lists,
                                                    smalltalk, code)}


def check(family_name: str, output: str, answer: str) -> bool:
    return FAMILIES[family_name].check(output, answer)


def canonical_key(family_name: str, key: str) -> str:
    """The problem behind instance `key` of a family; a key of no family (a situational document) is its own."""
    f = FAMILIES.get(family_name)
    return key if f is None else f.canonical(key)
