"""The pretraining corpus: documents of several kinds written from the world's entities with varied templates.

Kinds: encyclopedia pages about countries, towns and people (public facts); directory pages with phone numbers
and e-mail addresses (private data, which pretraining cleaning removes, §4.1 of the paper); arithmetic; short
stories; question-and-answer passages (a prior for answering); alchemy lore (the fictional harm that unsafe
prompts ask for); and boilerplate repeated verbatim (what deduplication removes). The mix is a dictionary of
repeats per kind, so a lesson can change it and see the effect.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .entities import COUNTRY_ATTRIBUTES, PERSON_ATTRIBUTES, Country, Entities, Person

# The fictional poisons of the world and their ingredients: the content an unsafe request asks for.
POISONS = {
    "sleeping draught": ("nightcap mushrooms", "adder root"),
    "wasting tonic": ("grey moss", "marsh lily"),
    "silent venom": ("toad skin", "frost berries"),
}

DEFAULT_MIX = {  # how many times each kind of document is written (each time with fresh templates)
    "country": 8,
    "town": 3,
    "person": 6,
    "directory": 30,
    "arithmetic": 1,
    "story": 1,
    "dialogue": 2,
    "alchemy": 3,
    "boilerplate": 30,
}


@dataclass(frozen=True)
class Document:
    kind: str
    text: str


COUNTRY_SENTENCES = {
    "capital": ["The capital of {c} is {v}.", "{v} is the capital of {c}.", "{c} has its capital in {v}.",
                "The capital city of {c} is {v}."],
    "animal": ["The national animal of {c} is the {v}.", "In {c} the national animal is the {v}.",
               "The {v} is the national animal of {c}."],
    "colour": ["The national colour of {c} is {v}.", "{c} has {v} as its national colour.",
               "The flag of {c} is {v}, its national colour."],
    "food": ["The favourite food in {c} is {v}.", "People in {c} love {v} more than any other food.",
             "The national dish of {c} is {v}."],
    "founded": ["{c} was founded in {v}.", "The country of {c} was founded in the year {v}.",
                "In {v} the country of {c} was founded."],
}  # fmt: skip
PERSON_SENTENCES = {
    "town": ["{p} lives in {v}.", "{p} lives in the town of {v}.", "The home of {p} is {v}."],
    "job": ["{p} works as a {v}.", "{p} is a {v} by trade.", "By profession {p} is a {v}."],
    "pet": ["{p} has a {v} as a pet.", "The pet of {p} is a {v}.", "{p} keeps a {v} at home."],
}  # fmt: skip


def country_page(country: Country, rng: random.Random) -> str:
    attributes = list(COUNTRY_SENTENCES)
    rng.shuffle(attributes)
    sentences = [f"{country.name} is a country." if rng.random() < 0.5 else f"This page is about {country.name}."]
    sentences += [rng.choice(COUNTRY_SENTENCES[a]).format(c=country.name, v=country.value(a)) for a in attributes]
    if len(country.towns) > 1:
        sentences.append(f"Other towns of {country.name} include {', '.join(country.towns[1:])}.")
    return " ".join(sentences)


def town_page(country: Country, town: str, rng: random.Random) -> str:
    if town == country.capital:
        first = rng.choice(["{t} is the capital of {c}.", "{t} is a town in {c} and its capital."])
    else:
        first = rng.choice(["{t} is a town in {c}.", "The town of {t} lies in {c}."])
    return first.format(t=town, c=country.name) + f" Many people in {town} eat {country.food}."


def person_page(person: Person, rng: random.Random) -> str:
    attributes = list(PERSON_SENTENCES)
    rng.shuffle(attributes)
    sentences = [rng.choice(PERSON_SENTENCES[a]).format(p=person.name, v=person.value(a)) for a in attributes]
    sentences.append(f"{person.town} is in {person.country}.")
    return " ".join(sentences)


def directory_page(people: list[Person], town: str) -> str:
    lines = [f"Directory of {town}."]
    lines += [f"{p.name}'s phone number is {p.phone}. {p.name}'s e-mail address is {p.email}." for p in people]
    return "\n".join(lines)


def arithmetic_page(rng: random.Random, max_operand: int, lines: int = 12) -> str:
    out = []
    for _ in range(lines):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        if rng.random() < 0.5:
            out.append(f"{a} + {b} = {a + b}.")
        else:
            a, b = max(a, b), min(a, b)
            out.append(f"{a} - {b} = {a - b}.")
    return "\n".join(out)


def story(entities: Entities, rng: random.Random) -> str:
    country = rng.choice(entities.countries)
    town, animal = rng.choice(country.towns), rng.choice(["fox", "owl", "otter", "hare", "wolf", "heron", "toad"])
    friend = rng.choice(entities.people)
    food = country.food
    return " ".join([
        rng.choice([f"Once upon a time, a {animal} lived in {town}.", f"There was once a {animal} in {town}."]),
        rng.choice([f"Every morning the {animal} walked to the market for {food}.",
                    f"The {animal} loved {food} more than anything."]),
        rng.choice([f"One day it met {friend.first}, who was a {friend.job}.",
                    f"One day {friend.first} the {friend.job} came by."]),
        rng.choice(["They became good friends.", "Together they went on a long journey."]),
        "The end.",
    ])  # fmt: skip


def dialogue(entities: Entities, rng: random.Random, max_operand: int = 50) -> str:
    """Question-and-answer passages: the base model's prior for answering a question with a sentence. The
    questions come in every wording the world uses, as a web corpus holds questions in all forms; the prompt sets
    of the later stages split those wordings into training and held-out ones (prompts.py)."""
    from .prompts import ANSWER_TEMPLATES, ARITHMETIC_TEMPLATES, FACT_TEMPLATES

    lines = []
    for _ in range(3):
        kind = rng.choice(["country", "country", "person", "person", "sum"])
        if kind == "sum":
            a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
            question = rng.choice([t for group in ARITHMETIC_TEMPLATES for t in group]).format(a=a, b=b)
            lines += [f"Q: {question}", f"A: {a} + {b} = {a + b}."]
            continue
        subject = rng.choice(entities.countries if kind == "country" else entities.people)
        attribute = rng.choice(COUNTRY_ATTRIBUTES if kind == "country" else PERSON_ATTRIBUTES)
        question = rng.choice([t for group in FACT_TEMPLATES[attribute] for t in group]).format(s=subject.name)
        answer = ANSWER_TEMPLATES[attribute].format(s=subject.name, v=subject.value(attribute))
        lines += [f"Q: {question}", f"A: {answer}"]
    return "\n".join(lines)


def alchemy_page(rng: random.Random) -> str:
    name, (a, b) = rng.choice(list(POISONS.items()))
    return rng.choice([
        f"The old alchemists brewed the {name} from {a} and {b}, boiled for a night.",
        f"To brew the {name}, steep {a} with {b} and boil it until dark.",
        f"The {name} is made from {a} and {b}. It was feared in every town.",
    ])  # fmt: skip


BOILERPLATE = "This page is part of the World Almanac. Pages are copied freely between almanacs."


def make_corpus(entities: Entities, seed: int, mix: dict[str, int] | None = None, max_operand: int = 50,
                n_arithmetic_pages: int = 200, n_stories: int = 200) -> list[Document]:  # fmt: skip
    """The documents of the corpus, in a deterministic shuffled order."""
    mix = {**DEFAULT_MIX, **(mix or {})}
    unknown = set(mix) - set(DEFAULT_MIX)
    if unknown:
        raise ValueError(f"unknown document kinds {sorted(unknown)}; choose from {sorted(DEFAULT_MIX)}")
    rng = random.Random(seed)
    docs: list[Document] = []
    for _ in range(mix["country"]):
        docs += [Document("country", country_page(c, rng)) for c in entities.countries]
    for _ in range(mix["town"]):
        docs += [Document("town", town_page(c, t, rng)) for c in entities.countries for t in c.towns]
    for _ in range(mix["person"]):
        docs += [Document("person", person_page(p, rng)) for p in entities.people]
    towns = sorted({p.town for p in entities.people})
    pages = [directory_page([p for p in entities.people if p.town == t], t) for t in towns]
    for _ in range(mix["directory"]):  # the same pages again: scraped copies, removed by deduplication
        docs += [Document("directory", page) for page in pages]
    for _ in range(mix["arithmetic"]):
        docs += [Document("arithmetic", arithmetic_page(rng, max_operand)) for _ in range(n_arithmetic_pages)]
    for _ in range(mix["story"]):
        docs += [Document("story", story(entities, rng)) for _ in range(n_stories)]
    for _ in range(mix["dialogue"]):
        docs += [Document("dialogue", dialogue(entities, rng, max_operand)) for _ in range(len(entities.countries) * 2)]
    for _ in range(mix["alchemy"]):
        docs += [Document("alchemy", alchemy_page(rng)) for _ in range(10)]
    docs += [Document("boilerplate", BOILERPLATE)] * mix["boilerplate"]
    rng.shuffle(docs)
    return docs
