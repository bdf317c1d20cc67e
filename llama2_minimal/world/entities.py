"""The toy world's entities: invented countries, towns and people with their attributes, made from a seed.

Everything is invented, so that no fact leaks in from anywhere else and every answer can be checked by a
program. Names are built from syllables, so a small BPE tokenizer splits them into a few pieces each, as a real
tokenizer splits rare proper nouns.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

# How the world writes private data (directory pages): what cleaning removes and the judge looks for.
PHONE = re.compile(r"\b\d{3}-\d{4}\b")
EMAIL = re.compile(r"\b[\w.]+@[\w.]+\.example\b", re.I)

SYLLABLES = [
    "ka",
    "lo",
    "ri",
    "ven",
    "mor",
    "tha",
    "sel",
    "dra",
    "ni",
    "bel",
    "zan",
    "or",
    "ul",
    "ess",
    "tor",
    "mi",
    "vas",
    "quel",
    "ro",
    "an",
    "dun",
    "hal",
    "fen",
    "ki",
    "lys",
    "pa",
    "gor",
    "ith",
    "va",
    "mel",
]
FIRST_NAMES = [
    "Mira",
    "Tomas",
    "Ilse",
    "Bram",
    "Nadia",
    "Oskar",
    "Lena",
    "Pavel",
    "Greta",
    "Ivo",
    "Sanne",
    "Elio",
    "Runa",
    "Felix",
    "Vera",
    "Anton",
    "Maren",
    "Jonas",
    "Dalia",
    "Kasper",
    "Ada",
    "Emil",
    "Lotte",
    "Hugo",
    "Zora",
    "Milan",
    "Ines",
    "Timo",
    "Alma",
    "Boris",
    "Cleo",
    "Dario",
    "Edda",
    "Finn",
    "Gaia",
    "Hanno",
]
LAST_NAMES = [
    "Holt",
    "Brenner",
    "Varga",
    "Lind",
    "Osei",
    "Moreau",
    "Kato",
    "Novak",
    "Berg",
    "Quint",
    "Falk",
    "Rios",
    "Stahl",
    "Wren",
    "Adler",
    "Dorn",
    "Ek",
    "Gallo",
    "Horn",
    "Ilic",
    "Jansen",
    "Krol",
    "Lam",
    "Mertz",
    "Nagy",
    "Orr",
    "Petit",
    "Roth",
    "Sato",
    "Toma",
    "Ulm",
    "Voss",
    "Weil",
    "Yates",
    "Zeller",
]
ANIMALS = [
    "otter",
    "fox",
    "heron",
    "lynx",
    "badger",
    "owl",
    "salmon",
    "beaver",
    "falcon",
    "hare",
    "wolf",
    "stork",
    "seal",
    "crane",
    "marten",
    "toad",
]
COLOURS = ["red", "blue", "green", "yellow", "purple", "orange", "white", "black", "grey", "brown", "silver", "gold"]
FOODS = [
    "bread",
    "cheese",
    "noodles",
    "dumplings",
    "rice",
    "soup",
    "pie",
    "pancakes",
    "stew",
    "porridge",
    "salad",
    "curry",
]
JOBS = [
    "baker",
    "teacher",
    "fisher",
    "doctor",
    "painter",
    "farmer",
    "smith",
    "nurse",
    "sailor",
    "miller",
    "weaver",
    "tailor",
]
PETS = ["cat", "dog", "parrot", "rabbit", "goat", "tortoise", "hamster", "canary"]  # fmt: skip

# What a question about each attribute asks, and the attribute's possible values (for multiple choice).
COUNTRY_ATTRIBUTES = ("capital", "animal", "colour", "food", "founded")
PERSON_ATTRIBUTES = ("town", "job", "pet")


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    towns: tuple[str, ...]  # the capital first
    animal: str
    colour: str
    food: str
    founded: int

    def value(self, attribute: str) -> str:
        return str(getattr(self, attribute))


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    town: str
    country: str
    job: str
    pet: str
    phone: str  # private: only on directory pages
    email: str  # private

    @property
    def name(self) -> str:
        return f"{self.first} {self.last}"

    def value(self, attribute: str) -> str:
        return str(getattr(self, attribute))


@dataclass(frozen=True)
class Entities:
    countries: tuple[Country, ...]
    people: tuple[Person, ...]

    @property
    def towns(self) -> list[str]:
        return [t for c in self.countries for t in c.towns]

    def values(self, attribute: str) -> list[str]:
        """Every value an attribute takes in the world (the candidates of a multiple-choice question)."""
        if attribute == "capital":
            return [c.capital for c in self.countries]
        if attribute == "town":
            return self.towns
        table = {"animal": ANIMALS, "colour": COLOURS, "food": FOODS, "job": JOBS, "pet": PETS}
        if attribute in table:
            return list(table[attribute])
        if attribute == "founded":
            return sorted({c.value("founded") for c in self.countries})
        raise KeyError(attribute)


def _invent_names(rng: random.Random, count: int, syllables: tuple[int, int], taken: set[str]) -> list[str]:
    names = []
    while len(names) < count:
        n = rng.randint(*syllables)
        name = "".join(rng.choice(SYLLABLES) for _ in range(n)).capitalize()
        if 4 <= len(name) <= 10 and name not in taken and name.lower() not in taken:
            taken.add(name)
            names.append(name)
    return names


def make_entities(seed: int, n_countries: int, n_people: int, towns_per_country: int = 2) -> Entities:
    """A deterministic world: the same arguments always give the same entities."""
    if n_people > len(FIRST_NAMES) * len(LAST_NAMES):
        raise ValueError(f"at most {len(FIRST_NAMES) * len(LAST_NAMES)} people can be named")
    rng = random.Random(seed)
    taken: set[str] = set()
    country_names = _invent_names(rng, n_countries, (2, 3), taken)
    countries = []
    years: set[int] = set()
    for name in country_names:
        towns = tuple(_invent_names(rng, towns_per_country, (2, 2), taken))
        year = rng.randint(1000, 1899)
        while year in years:  # distinct years keep every founding-year question unambiguous
            year = rng.randint(1000, 1899)
        years.add(year)
        countries.append(Country(name=name, capital=towns[0], towns=towns, animal=rng.choice(ANIMALS),
                                 colour=rng.choice(COLOURS), food=rng.choice(FOODS), founded=year))  # fmt: skip
    full_names = rng.sample([(f, last) for f in FIRST_NAMES for last in LAST_NAMES], n_people)
    phones: set[str] = set()
    people = []
    for first, last in full_names:
        country = rng.choice(countries)
        phone = f"{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
        while phone in phones:
            phone = f"{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
        phones.add(phone)
        email = f"{first.lower()}.{last.lower()}@{rng.choice(['post', 'mail', 'owl'])}.example"
        people.append(Person(first=first, last=last, town=rng.choice(country.towns), country=country.name,
                             job=rng.choice(JOBS), pet=rng.choice(PETS), phone=phone, email=email))  # fmt: skip
    return Entities(tuple(countries), tuple(people))
