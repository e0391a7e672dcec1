"""Deterministic synthetic datasets shipped with the package, so experiments and tests run without downloads.

`generate_dialogues` yields LoCoMo-style multi-session conversations whose personas' facts change over
time; `generate_facts` yields knowledge edits about invented subjects for parametric-memory experiments.
Every choice comes from a seeded `random.Random`, so a seed always gives the same records.
"""

from __future__ import annotations

import functools
import json
import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib import resources
from itertools import product
from typing import Any, ClassVar

from memos_lab.data.schema import (
    KNOWLEDGE_UPDATE,
    MULTI_HOP,
    SINGLE_HOP,
    TEMPORAL,
    UNANSWERABLE,
    Conversation,
    KnowledgeEdit,
    LocalityProbe,
    Question,
    Session,
    Turn,
)
from memos_lab.errors import ConfigError
from memos_lab.settings import Settings, uses_settings

# ---------------------------------------------------------------------------------------------------
# Dialogue structure. The fact templates (in the word tables) say "just"/"this week" (never "last month"),
# so the event falls in the month of its session and temporal answers are exact.

# A later fact presupposes an earlier one (a new city replaces the old; the pet comes after the move).
_AFTER = {
    "city_new": "city_old",
    "pet": "city_new",
    "job_new": "job_old",
    "sibling_city": "sibling",
    "partner_job": "partner",
    "food_new": "food_old",
    "music_new": "music_old",
    "sport_new": "sport_old",
}
_BASE_EVENTS = (
    "city_old",
    "city_new",
    "job_old",
    "job_new",
    "sibling",
    "sibling_city",
    "partner",
    "partner_job",
    "hobby",
    "pet",
)
_PREFERENCES_PER_PERSONA = 2
_FACTS_PER_PERSONA = len(_BASE_EVENTS) + 2 * _PREFERENCES_PER_PERSONA

# Events whose fact turn is news (something just happened) and gets a news reaction, not a remark's.
_NEWS_EVENTS = frozenset({"city_new", "job_new", "sibling_city", "partner_job", "hobby", "pet"})
_QUESTIONS_PER_PERSONA = {SINGLE_HOP: 3, MULTI_HOP: 3, TEMPORAL: 2, KNOWLEDGE_UPDATE: 3}
_UNANSWERABLE_PER_CONVERSATION = 3
UNANSWERABLE_ANSWER = "not mentioned"


@dataclass(frozen=True)
class SyntheticDialoguesSettings(Settings):
    section: ClassVar[str] = "dataset"
    seed: int = 0
    n_conversations: int = 8
    n_sessions: int = 8
    turns_per_session: int = 16


@uses_settings(SyntheticDialoguesSettings)
def generate_dialogues(
    seed: int = 0, n_conversations: int = 8, n_sessions: int = 8, turns_per_session: int = 16
) -> list[Conversation]:
    """Multi-session dialogues between two personas whose facts change over time, with questions.

    Defaults give 8 conversations of 8 sessions x 16 turns (1024 turns) and 25 questions each.
    """
    _check_count("n_conversations", n_conversations)
    _check_count("n_sessions", n_sessions)
    _check_count("turns_per_session", turns_per_session)
    # Speakers alternate and every turn but a session's opening greeting can hold a fact.
    if n_sessions * (turns_per_session - 1) < 2 * _FACTS_PER_PERSONA:
        raise ConfigError(
            f"n_sessions * (turns_per_session - 1) must be at least {2 * _FACTS_PER_PERSONA} so each speaker can "
            f"state {_FACTS_PER_PERSONA} facts, got n_sessions={n_sessions} and turns_per_session={turns_per_session}"
        )
    # One generator per conversation: a larger n_conversations extends the list without changing its head.
    return [
        _conversation(f"synth-{i}", random.Random(f"dialogues:{seed}:{i}"), n_sessions, turns_per_session)
        for i in range(n_conversations)
    ]


def _check_count(name: str, value: int, maximum: int | None = None) -> None:
    too_big = maximum is not None and isinstance(value, int) and value > maximum
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or too_big:
        valid = "a positive integer" if maximum is None else f"an integer between 1 and {maximum}"
        raise ConfigError(f"{name} must be {valid}, got {value!r}")


def _with_article(noun: str) -> str:
    return ("an " if noun[0].lower() in "aeio" else "a ") + noun


def _fact_slots(n_sessions: int, turns_per_session: int, who: int) -> list[tuple[int, int]]:
    """Positions where persona `who` speaks, except each session's opening greeting.

    Speakers alternate within a session, and the opener alternates between sessions.
    """
    return [(s, i) for s in range(n_sessions) for i in range(1, turns_per_session) if (s + i) % 2 == who]


def _in_order(events: list[str], rng: random.Random) -> list[str]:
    """A random order of `events` in which every event comes after the one it presupposes."""
    order: list[str] = []
    pending = list(events)
    while pending:
        ready = [e for e in pending if _AFTER.get(e) is None or _AFTER[e] in order]
        order.append(rng.choice(ready))
        pending.remove(order[-1])
    return order


def _personas(rng: random.Random) -> tuple[list[dict[str, str]], list[list[str]]]:
    """The two personas' fact values (template fields) and the fact events each one will state."""
    w = _words()
    names = rng.sample(w.female_names + w.male_names, 6)
    cities = rng.sample([city for city, _ in w.cities], 6)
    companies = rng.sample(w.companies, 4)
    roles = rng.sample(w.roles, 6)
    hobbies = rng.sample(w.hobbies, 2)
    pets = rng.sample(w.pet_names, 2)
    pet_kinds = rng.sample(w.pet_kinds, 2)
    preferences = {kind: rng.sample(values, 4) for kind, values in w.preferences.items()}
    facts, events = [], []
    for k in (0, 1):
        values = {
            "name": names[k],
            "other": names[1 - k],
            "sibling": names[2 + k],
            "partner": names[4 + k],
            "relative": "sister" if names[2 + k] in w.female_names else "brother",
            "city_old": cities[3 * k],
            "city_new": cities[3 * k + 1],
            "sibling_city": cities[3 * k + 2],
            "company_old": companies[2 * k],
            "company_new": companies[2 * k + 1],
            "role_old": roles[3 * k],
            "role_new": roles[3 * k + 1],
            "partner_role": roles[3 * k + 2],
            "hobby": hobbies[k],
            "pet": pets[k],
            "pet_kind": pet_kinds[k],
        }
        for key in ("role_old", "role_new", "partner_role"):
            values[f"a_{key}"] = _with_article(values[key])
        kinds = rng.sample(sorted(w.preferences), _PREFERENCES_PER_PERSONA)
        for kind in kinds:
            values[f"{kind}_old"], values[f"{kind}_new"] = preferences[kind][2 * k : 2 * k + 2]
        facts.append(values)
        events.append(_in_order([*_BASE_EVENTS, *(f"{kind}_{age}" for kind in kinds for age in ("old", "new"))], rng))
    return facts, events


def _conversation(conversation_id: str, rng: random.Random, n_sessions: int, turns_per_session: int) -> Conversation:
    w = _words()
    facts, events = _personas(rng)
    names = (facts[0]["name"], facts[1]["name"])
    placed: dict[tuple[int, int], tuple[int, str]] = {}  # (session, index) -> (persona, event)
    for k in (0, 1):
        slots = sorted(rng.sample(_fact_slots(n_sessions, turns_per_session, k), len(events[k])))
        placed.update({slot: (k, event) for slot, event in zip(slots, events[k], strict=False)})

    times, time = [], datetime(2022, 1, 1) + timedelta(days=rng.randrange(730))
    for s in range(n_sessions):
        time += timedelta(days=rng.randint(14, 45) if s else 0)
        times.append(time.replace(hour=rng.randint(8, 21), minute=rng.choice((0, 15, 30, 45))))

    sessions = tuple(
        _session(s, times[s].isoformat(), facts, placed, turns_per_session, rng) for s in range(n_sessions)
    )
    where = {fact: f"D{s + 1}:{i + 1}" for (s, i), fact in placed.items()}  # (persona, event) -> turn id
    session_of = {turn.turn_id: s for s, session in enumerate(sessions) for turn in session.turns}

    drafts = []  # (asked at, question, answer, evidence, category)
    for k, values in enumerate(facts):
        for category, count in _QUESTIONS_PER_PERSONA.items():
            options = [q for q in w.questions if q[0] == category and all((k, e) in where for e in q[1])]
            for _, evidence_events, answer_key, wordings in rng.sample(options, min(count, len(options))):
                evidence = tuple(where[(k, e)] for e in evidence_events)
                last = max(session_of[turn_id] for turn_id in evidence)
                answer = values[answer_key] if answer_key else f"{times[last]:%B %Y}"
                # Asked the day after the last evidence was seen, still before the next session (>= 13 days on).
                asked = times[last] + timedelta(days=1)
                drafts.append((asked, rng.choice(wordings).format(**values), answer, evidence, category))
    for wording, _ in rng.sample(w.unanswerable, _UNANSWERABLE_PER_CONVERSATION):
        drafts.append((times[-1], wording.format(name=rng.choice(names)), UNANSWERABLE_ANSWER, (), UNANSWERABLE))
    drafts.sort(key=lambda draft: draft[0])  # stable: ties keep generation order
    questions = tuple(
        Question(f"{conversation_id}-q{n}", question, answer, evidence, category, time=asked.isoformat())
        for n, (asked, question, answer, evidence, category) in enumerate(drafts, 1)
    )
    return Conversation(conversation_id, names, sessions, questions)


def _session(
    s: int,
    time: str,
    facts: list[dict[str, str]],
    placed: dict[tuple[int, int], tuple[int, str]],
    turns_per_session: int,
    rng: random.Random,
) -> Session:
    """Session `s`: placed fact turns, a reaction after each, and small talk around them."""
    w = _words()
    session_id, names, turns = f"session_{s + 1}", (facts[0]["name"], facts[1]["name"]), []

    def say(i: int, template: str, fields: dict[str, str]) -> None:
        who = (s + i) % 2
        text = template.format(**{"other": names[1 - who], **fields})
        turns.append(Turn(f"D{s + 1}:{i + 1}", names[who], text, session_id, time))

    i = 0
    while i < turns_per_session:
        if (s, i) in placed:
            k, event = placed[(s, i)]
            say(i, rng.choice(w.fact_templates[event]), facts[k])
        elif i == 0:
            say(i, rng.choice(w.greetings), {})
        elif (s, i - 1) in placed:
            news = placed[(s, i - 1)][1] in _NEWS_EVENTS
            say(i, rng.choice(w.news_reactions if news else w.remark_reactions), {})
        elif i == turns_per_session - 1:
            say(i, rng.choice(w.sign_offs), {})
        elif i + 1 < turns_per_session - 1 and (s, i + 1) not in placed:
            question, answer = rng.choice(w.small_talk_pairs)
            say(i, question, {})
            say(i + 1, answer, {})
            i += 1
        else:
            say(i, rng.choice(w.small_talk), {})
        i += 1
    return Session(session_id, time, tuple(turns))


# ---------------------------------------------------------------------------------------------------
# Knowledge edits. Subjects are invented, so a pretrained model holds no prior about them; targets are
# real-world values, so portability probes can reach knowledge the model does have.

_LOCALITY_PER_EDIT = 3


def _subject_pools() -> dict[str, tuple[str, ...]]:
    w = _words()
    return {
        "person": tuple(f"{first} {last}" for first, last in product(w.person_first, w.person_last)),
        "company": tuple(f"{stem} {suffix}" for stem, suffix in product(w.company_stems, w.company_suffixes)),
        "town": tuple(stem + suffix for stem, suffix in product(w.town_stems, w.town_suffixes)),
    }


@dataclass(frozen=True)
class SyntheticFactsSettings(Settings):
    section: ClassVar[str] = "dataset"
    seed: int = 0
    n_edits: int = 100


@uses_settings(SyntheticFactsSettings)
def generate_facts(seed: int = 0, n_edits: int = 100) -> list[KnowledgeEdit]:
    """Knowledge edits about invented people, companies and towns, each with a unique subject."""
    w = _words()
    pools = _subject_pools()
    _check_count("n_edits", n_edits, maximum=sum(len(pool) for pool in pools.values()))
    rng = random.Random(seed)
    # Shuffle whole pools up front so a larger n_edits extends the list without changing its head.
    subjects = {kind: rng.sample(pool, len(pool)) for kind, pool in pools.items()}
    edits = []
    for i in range(n_edits):
        relation = rng.choice([r for r in w.relations if subjects[r.subject_kind]])
        subject = subjects[relation.subject_kind].pop()
        (old, _), (new, new_attribute) = rng.sample(relation.targets, 2)
        prompt, *paraphrases = (p.format(s=subject) for p in rng.sample(relation.prompts, len(relation.prompts)))
        # Locality probes must not touch the edited values, or "unchanged" would be the wrong expectation.
        touched = [value.lower() for value in (old, new, new_attribute) if value]
        unrelated = [probe for probe in w.locality if not any(v in f"{probe[0]} {probe[1]}".lower() for v in touched)]
        portability: tuple[LocalityProbe, ...] = ()
        if relation.portability:
            portability = (LocalityProbe(relation.portability.format(s=subject), new_attribute),)
        edits.append(
            KnowledgeEdit(
                edit_id=f"fact-{i}",
                subject=subject,
                relation=relation.name,
                prompt=prompt,
                target_new=new,
                target_old=old,
                paraphrases=tuple(paraphrases),
                locality=tuple(LocalityProbe(p, a) for p, a in rng.sample(unrelated, _LOCALITY_PER_EDIT)),
                portability=portability,
                metadata={"source": "synthetic", "subject_type": relation.subject_kind},
            )
        )
    return edits


# ---------------------------------------------------------------------------------------------------
# Word tables: package data (synthetic_words.json beside this module, shipped in the wheel), read once on
# first use. Every record depends on their order: a change to the file changes the datasets.

WORDS_FILE = "synthetic_words.json"


@dataclass(frozen=True)
class _Relation:
    name: str
    subject_kind: str  # "person", "company" or "town"
    prompts: tuple[str, ...]  # prefixes the target completes; one becomes the prompt, the rest paraphrases
    targets: tuple[tuple[str, str | None], ...]  # (target, answer of the portability probe for it)
    portability: str | None = None  # a one-hop prompt about the subject that the target's attribute answers


@dataclass(frozen=True)
class _Words:
    female_names: tuple[str, ...]  # names split by gender only so a sibling is a "sister" or "brother" consistently
    male_names: tuple[str, ...]
    pet_names: tuple[str, ...]
    pet_kinds: tuple[str, ...]
    cities: tuple[tuple[str, str], ...]  # (city, country)
    companies: tuple[str, ...]
    roles: tuple[str, ...]
    hobbies: tuple[str, ...]
    preferences: dict[str, tuple[str, ...]]  # food, music, sport -> values
    fact_templates: dict[str, tuple[str, ...]]  # event -> wordings of its fact turn
    greetings: tuple[str, ...]
    sign_offs: tuple[str, ...]
    news_reactions: tuple[str, ...]
    remark_reactions: tuple[str, ...]
    small_talk: tuple[str, ...]
    small_talk_pairs: tuple[tuple[str, str], ...]  # (question, answer), where two filler turns follow each other
    # (category, evidence events, answer key or None for the month of the evidence session, wordings); the
    # wordings avoid the fact turns' phrasing so lexical retrieval is not trivially exact
    questions: tuple[tuple[str, tuple[str, ...], str | None, tuple[str, ...]], ...]
    unanswerable: tuple[tuple[str, str], ...]  # (question, keyword no template ever mentions)
    person_first: tuple[str, ...]
    person_last: tuple[str, ...]
    company_stems: tuple[str, ...]
    company_suffixes: tuple[str, ...]
    town_stems: tuple[str, ...]
    town_suffixes: tuple[str, ...]
    locality: tuple[tuple[str, str], ...]  # (prompt, answer) facts a pretrained model knows
    relations: tuple[_Relation, ...]


@functools.cache
def _words() -> _Words:
    raw = json.loads(resources.files("memos_lab.data").joinpath(WORDS_FILE).read_text(encoding="utf-8"))
    talk, facts = raw["dialogues"], raw["facts"]
    sports = tuple(talk["sports"])
    countries = [tuple(row) for row in facts["countries"]]  # (country, capital, continent)
    targets: dict[str, tuple[tuple[str, str | None], ...]] = {
        "occupation": tuple((occupation, None) for occupation in facts["occupations"]),
        "city": _pairs(talk["cities"]),
        "employer": _pairs(facts["employers"]),
        "sport": tuple((sport, None) for sport in sports),
        "instrument": _pairs(facts["instruments"]),
        "citizenship": tuple((country, capital) for country, capital, _ in countries),
        "headquarters": _pairs(talk["cities"]),
        "industry": tuple((industry, None) for industry in facts["industries"]),
        "country": tuple((country, continent) for country, _, continent in countries),
    }
    return _Words(
        female_names=tuple(talk["female_names"]),
        male_names=tuple(talk["male_names"]),
        pet_names=tuple(talk["pet_names"]),
        pet_kinds=tuple(talk["pet_kinds"]),
        cities=_pairs(talk["cities"]),
        companies=tuple(talk["companies"]),
        roles=tuple(talk["roles"]),
        hobbies=tuple(talk["hobbies"]),
        preferences={"food": tuple(talk["cuisines"]), "music": tuple(talk["genres"]), "sport": sports},
        fact_templates={event: tuple(wordings) for event, wordings in talk["fact_templates"].items()},
        greetings=tuple(talk["greetings"]),
        sign_offs=tuple(talk["sign_offs"]),
        news_reactions=tuple(talk["news_reactions"]),
        remark_reactions=tuple(talk["remark_reactions"]),
        small_talk=tuple(talk["small_talk"]),
        small_talk_pairs=_pairs(talk["small_talk_pairs"]),
        questions=tuple(
            (q["category"], tuple(q["evidence"]), q["answer"], tuple(q["wordings"])) for q in talk["questions"]
        ),
        unanswerable=_pairs(talk["unanswerable"]),
        person_first=tuple(facts["person_first"]),
        person_last=tuple(facts["person_last"]),
        company_stems=tuple(facts["company_stems"]),
        company_suffixes=tuple(facts["company_suffixes"]),
        town_stems=tuple(facts["town_stems"]),
        town_suffixes=tuple(facts["town_suffixes"]),
        locality=_pairs(facts["locality"]),
        relations=tuple(
            _Relation(
                name, relation["subject_kind"], tuple(relation["prompts"]), targets[name], relation["portability"]
            )
            for name, relation in facts["relations"].items()
        ),
    )


def _pairs(rows: list[list[Any]]) -> tuple[tuple[Any, Any], ...]:
    return tuple((first, second) for first, second in rows)
