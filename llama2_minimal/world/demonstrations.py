"""Demonstrations written by annotators (§3.1), and the flawed responses a careless writer or a weak model makes.

A careful annotator writes the prompt's reference: the right value in a well-formed sentence, a story with its
required elements, a refusal that names the risk for an unsafe request. A sloppy annotator (the paper's point that
"a few thousand good examples beat many poor ones", and that vendors differed in quality) writes a flawed answer
part of the time: a wrong value, the right fact about another entity, a terse or malformed line, or it simply
complies with an unsafe request.

The same flaws make the hard negatives of the preference data (§3.2.1): pairs that differ only in whether the
fact's value is right, or only in which entity it is about, force a reward model to read the prompt.
"""

from __future__ import annotations

import random

from .corpus import POISONS
from .entities import Entities
from .prompts import ANSWER_TEMPLATES, STORY_ANIMALS, Prompt, story_reference

# Every flaw a response can have, by prompt kind (what the flaw functions below can write).
FLAWS = {
    "fact": (
        "wrong_value",
        "wrong_entity",
        "wrong_question",
        "other_request",
        "terse",
        "truncated",
        "malformed",
        "refusal",
    ),
    "arithmetic": ("wrong_value", "wrong_question", "other_request", "terse", "truncated", "malformed", "refusal"),
    "story": ("wrong_element", "other_request", "too_short", "truncated", "malformed", "refusal"),
    "borderline": ("off_topic", "other_request", "truncated", "malformed", "refusal"),
    "unsafe": ("comply", "comply_wrong", "vague"),
}
SLOPPY_FLAWS = {  # what a careless annotator does (it does not refuse normal requests, it complies with unsafe ones)
    kind: tuple(f for f in flaws if f != "refusal") for kind, flaws in FLAWS.items()
}


def careful(prompt: Prompt) -> str:
    """The careful annotator's demonstration: the prompt's reference answer."""
    return prompt.reference


def sloppy(prompt: Prompt, entities: Entities, rng: random.Random, error_rate: float = 0.5) -> str:
    """The sloppy annotator's demonstration: the reference, or with probability error_rate a flawed answer."""
    if rng.random() >= error_rate:
        return prompt.reference
    return flawed(prompt, entities, rng, rng.choice(SLOPPY_FLAWS[prompt.kind]))


def _other(values: list[str], right: str, rng: random.Random) -> str:
    return rng.choice([v for v in values if v != right])


def flawed(prompt: Prompt, entities: Entities, rng: random.Random, flaw: str) -> str:
    """A response to the prompt with one flaw (one of FLAWS[prompt.kind])."""
    if flaw not in FLAWS[prompt.kind]:
        raise ValueError(f"flaw {flaw!r} does not apply to a {prompt.kind} prompt: choose from {FLAWS[prompt.kind]}")
    if flaw == "refusal":
        return "I can't help with that."
    if flaw == "other_request":  # a good answer to another kind of request: a story for a question, a sum ...
        return _answer_of_another_kind(prompt.kind, entities, rng)
    if flaw == "truncated":  # cut off in the middle, as a sample that ran out of tokens
        words = prompt.reference.split()
        return " ".join(words[: max(1, min(len(words) - 1, rng.randint(2, 5)))])
    if flaw == "malformed":  # the right content, badly written: lower case, no full stop, prompt markup
        text = prompt.reference.rstrip(".")
        return rng.choice([f"A: {text[:1].lower()}{text[1:]}", f"{text[:1].lower()}{text[1:]}",
                           f"{prompt.reference} {prompt.reference}"])  # fmt: skip
    if prompt.kind == "fact":
        if flaw == "wrong_value":
            value = _other(entities.values(prompt.attribute), prompt.answer, rng)
            return ANSWER_TEMPLATES[prompt.attribute].format(s=prompt.subject, v=value)
        if flaw == "wrong_entity":  # the right sentence about another entity of the same kind
            people = [p.name for p in entities.people]
            names = people if prompt.subject in people else [c.name for c in entities.countries]
            other = _other(names, prompt.subject, rng)
            if prompt.subject in people:
                value = next(p for p in entities.people if p.name == other).value(prompt.attribute)
            else:
                value = next(c for c in entities.countries if c.name == other).value(prompt.attribute)
            return ANSWER_TEMPLATES[prompt.attribute].format(s=other, v=value)
        if flaw == "wrong_question":  # a true fact about the right entity, but not the one asked for
            subject = next(e for e in (*entities.people, *entities.countries) if e.name == prompt.subject)
            attribute = rng.choice([a for a in ANSWER_TEMPLATES if a != prompt.attribute and hasattr(subject, a)])
            return ANSWER_TEMPLATES[attribute].format(s=prompt.subject, v=subject.value(attribute))
        return prompt.answer.lower() if prompt.answer.isalpha() else prompt.answer  # terse
    if prompt.kind == "arithmetic":
        if flaw == "wrong_value":
            a, b = prompt.reference.split(" = ")[0].split(" + ")
            wrong = int(prompt.answer) + rng.choice([-10, -2, -1, 1, 2, 10])
            return f"{a} + {b} = {wrong}."
        if flaw == "wrong_question":  # the right sum of other numbers
            a, b = rng.randint(0, 50), rng.randint(0, 50)
            while str(a + b) == prompt.answer:
                a, b = rng.randint(0, 50), rng.randint(0, 50)
            return f"{a} + {b} = {a + b}."
        return prompt.answer  # terse: a bare number is right but not a sentence
    if prompt.kind == "story":
        animal, town = prompt.required
        if flaw == "wrong_element":
            other_animal = _other(list(STORY_ANIMALS), animal, rng)
            other_town = _other(entities.towns, town, rng)
            return story_reference(other_animal, other_town, "bread")
        return f"Once upon a time, a {animal} lived in {town}."  # too short: one sentence
    if prompt.kind == "borderline":
        return "That is an interesting question about the world."  # off topic: says nothing of what was asked
    # unsafe
    if flaw == "comply":
        if prompt.category == "privacy":
            noun = "phone number" if prompt.attribute == "phone" else "e-mail address"
            return f"The {noun} of {prompt.subject} is {prompt.answer}."
        first, second = prompt.answer.split(" and ")
        return f"To brew the {prompt.subject}, steep {first} with {second} and boil it until dark."
    if flaw == "comply_wrong":  # tries to do what was asked, and gets it wrong: unsafe and unhelpful
        if prompt.category == "privacy":
            fake = f"{rng.randint(200, 999)}-{rng.randint(1000, 9999)}"
            if prompt.attribute == "phone":
                return f"The phone number of {prompt.subject} is {fake}."
            return f"The e-mail address of {prompt.subject} is {prompt.subject.split()[0].lower()}@mail.example."
        other = next(i for pair in POISONS.values() for i in pair if i not in prompt.answer.split(" and "))
        return f"To brew the {prompt.subject}, boil {other} until dark."
    return "That is hard to say."  # vague: neither helps nor refuses


def _answer_of_another_kind(kind: str, entities: Entities, rng: random.Random) -> str:
    choices = [k for k in ("fact", "arithmetic", "story") if k != kind]
    other = rng.choice(choices)
    if other == "story":
        country = rng.choice(entities.countries)
        return story_reference(rng.choice(STORY_ANIMALS), rng.choice(country.towns), country.food)
    if other == "arithmetic":
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        return f"{a} + {b} = {a + b}."
    subject = rng.choice([*entities.countries, *entities.people])
    attribute = rng.choice([a for a in ANSWER_TEMPLATES if hasattr(subject, a)])
    return ANSWER_TEMPLATES[attribute].format(s=subject.name, v=subject.value(attribute))
