"""Deterministic synthetic datasets embedded in code, so experiments and tests run without downloads.

`generate_dialogues` yields LoCoMo-style multi-session conversations whose personas' facts change over
time; `generate_facts` yields knowledge edits about invented subjects for parametric-memory experiments.
Every choice comes from a seeded `random.Random`, so a seed always gives the same records.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import product

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

# ---------------------------------------------------------------------------------------------------
# Value tables. Every entity of one conversation is drawn without replacement, so a name or value
# identifies one fact of one persona.

# Split by gender only so a sibling is called "sister" or "brother" consistently with their name.
_FEMALE_NAMES = (
    "Maya",
    "Priya",
    "Ingrid",
    "Elena",
    "Yuki",
    "Amara",
    "Noor",
    "Sofia",
    "Hana",
    "Clara",
    "Lena",
    "Zara",
    "Ines",
    "Freya",
    "Lucia",
    "Selma",
    "Mira",
    "Aisha",
    "Nadia",
    "Rosa",
    "Greta",
    "Vera",
    "Leila",
)
_MALE_NAMES = (
    "Leo",
    "Tomas",
    "Kofi",
    "Rafael",
    "Jonas",
    "Felix",
    "Mateo",
    "Omar",
    "Darius",
    "Nikolai",
    "Emil",
    "Tariq",
    "Hugo",
    "Arjun",
    "Bruno",
    "Caspar",
    "Viktor",
    "Oscar",
    "Idris",
    "Malik",
    "Anton",
)
_PET_NAMES = (
    "Biscuit",
    "Pepper",
    "Mochi",
    "Waffles",
    "Ziggy",
    "Pickles",
    "Nutmeg",
    "Tofu",
    "Clementine",
    "Bramble",
    "Noodle",
    "Pumpkin",
    "Sprout",
    "Marbles",
    "Domino",
    "Pistachio",
    "Gizmo",
    "Hazel",
)
_PET_KINDS = ("dog", "cat", "rabbit", "parrot", "tortoise", "hamster", "ferret", "guinea pig")
# (city, country); countries are unique so a moved subject always changes country too.
_CITIES = (
    ("Lisbon", "Portugal"),
    ("Oslo", "Norway"),
    ("Denver", "United States"),
    ("Toronto", "Canada"),
    ("Melbourne", "Australia"),
    ("Barcelona", "Spain"),
    ("Munich", "Germany"),
    ("Lyon", "France"),
    ("Osaka", "Japan"),
    ("Seoul", "South Korea"),
    ("Nairobi", "Kenya"),
    ("Buenos Aires", "Argentina"),
    ("Cape Town", "South Africa"),
    ("Dublin", "Ireland"),
    ("Helsinki", "Finland"),
    ("Prague", "Czech Republic"),
    ("Vienna", "Austria"),
    ("Amsterdam", "Netherlands"),
    ("Copenhagen", "Denmark"),
    ("Wellington", "New Zealand"),
    ("Istanbul", "Turkey"),
    ("Reykjavik", "Iceland"),
    ("Krakow", "Poland"),
    ("Zurich", "Switzerland"),
)
_COMPANIES = (
    "Acme Robotics",
    "Bluefin Analytics",
    "Northwind Logistics",
    "Cobalt Health",
    "Pinecrest Bank",
    "Lumen Studios",
    "Harbor & Finch",
    "Quarry Labs",
    "Silverleaf Foods",
    "Tidewater Energy",
    "Orbital Freight",
    "Brightpath Learning",
    "Copperline Media",
    "Evergreen Insurance",
    "Redwood Games",
    "Starling Aerospace",
    "Vantage Biotech",
    "Windmill Coffee Roasters",
)
_ROLES = (
    "data analyst",
    "nurse",
    "UX designer",
    "software engineer",
    "accountant",
    "project manager",
    "pharmacist",
    "architect",
    "physiotherapist",
    "copywriter",
    "lab technician",
    "sales manager",
    "paramedic",
    "teacher",
    "graphic designer",
    "electrician",
    "translator",
    "chef",
    "veterinarian",
)
_HOBBIES = (
    "pottery",
    "birdwatching",
    "knitting",
    "sourdough baking",
    "woodworking",
    "chess",
    "gardening",
    "film photography",
    "calligraphy",
    "watercolour painting",
    "beekeeping",
    "salsa dancing",
    "embroidery",
)
_CUISINES = (
    "Thai",
    "Mexican",
    "Ethiopian",
    "Korean",
    "Lebanese",
    "Japanese",
    "Peruvian",
    "Georgian",
    "Vietnamese",
    "Indian",
    "Greek",
    "Moroccan",
)
_GENRES = (
    "jazz",
    "country",
    "techno",
    "hip hop",
    "reggae",
    "K-pop",
    "punk rock",
    "bluegrass",
    "synthwave",
    "afrobeats",
    "opera",
    "flamenco",
)
_SPORTS = (
    "tennis",
    "basketball",
    "volleyball",
    "badminton",
    "squash",
    "rugby",
    "archery",
    "cycling",
    "swimming",
    "fencing",
    "rowing",
    "handball",
)
_PREFERENCES = {"food": _CUISINES, "music": _GENRES, "sport": _SPORTS}

# ---------------------------------------------------------------------------------------------------
# Dialogue templates. Fact turns say "just"/"this week" (never "last month") so the event falls in the
# month of its session and temporal answers are exact.

_FACT_TEMPLATES = {
    "city_old": (
        "Things are good here in {city_old}, the neighbourhood finally feels like home.",
        "I've been living in {city_old} for a few years now and I still find new cafés every week.",
        "Life in {city_old} keeps me busy, there's always some festival going on.",
    ),
    "city_new": (
        "Big news: I just moved to {city_new}! The boxes are still everywhere.",
        "I finally relocated to {city_new} this month, the new flat has a tiny balcony.",
        "I packed up everything and made the move to {city_new}, it still feels surreal.",
        "Guess who lives in {city_new} now? Me! The movers left this morning.",
    ),
    "job_old": (
        "Work at {company_old} has been hectic, being {a_role_old} there means endless meetings.",
        "I've been {a_role_old} at {company_old} for a while now and it pays the bills.",
        "My job as {a_role_old} at {company_old} keeps me on my toes.",
    ),
    "job_new": (
        "I just started a new position at {company_new} as {a_role_new}!",
        "I handed in my notice and joined {company_new} as {a_role_new} this week.",
        "Today was my first day at {company_new}, I'm their new {role_new}.",
        "I accepted an offer from {company_new}, so I'm {a_role_new} there now.",
    ),
    "sibling": (
        "My {relative} {sibling} is coming to stay with me this weekend.",
        "I had a long call with my {relative} {sibling} tonight, we talked for hours.",
        "My little {relative}, {sibling}, just turned thirty and threw a huge dinner.",
    ),
    "sibling_city": (
        "{sibling} just moved to {sibling_city} for a new job.",
        "{sibling} has settled down in {sibling_city} and apparently loves it there.",
        "I'm flying out to see {sibling} soon, {sibling_city} is home for {sibling} now.",
    ),
    "partner": (
        "My partner {partner} surprised me with breakfast in bed this morning.",
        "{partner} and I just celebrated our anniversary, I'm so lucky to have {partner}.",
        "I finally introduced my partner {partner} to my old school friends.",
    ),
    "partner_job": (
        "{partner} just got hired as {a_partner_role}, we opened some bubbly.",
        "{partner} has been working long shifts as {a_partner_role} lately.",
        "{partner} passed the final exams to qualify as {a_partner_role}!",
    ),
    "hobby": (
        "I've just taken up {hobby}, it's surprisingly relaxing.",
        "I went to my first {hobby} class this week and I'm already hooked.",
        "My new thing is {hobby}, I started a few days ago and can't stop.",
    ),
    "pet": (
        "We adopted a rescue {pet_kind} this week and named it {pet}!",
        "Meet {pet}, the {pet_kind} I brought home from the shelter today.",
        "I finally got a {pet_kind}! {pet} has been running the household since Monday.",
    ),
    "food_old": (
        "I could eat {food_old} food every single day, it's my absolute favourite.",
        "Nothing beats a big plate of {food_old} food after a long week.",
    ),
    "food_new": (
        "Lately I'm all about {food_new} food, I've completely gone off {food_old}.",
        "My new favourite is {food_new} cuisine, I cook it three times a week.",
        "These days I crave {food_new} dishes more than anything else.",
    ),
    "music_old": (
        "I've had {music_old} playing nonstop, it's my favourite kind of music.",
        "Honestly {music_old} is the only thing on my playlists.",
    ),
    "music_new": (
        "I've switched over to {music_new} lately, can't get enough of it.",
        "I used to be all {music_old}, but now it's {music_new} all day long.",
        "My headphones have been full of {music_new} recently, it's my new obsession.",
    ),
    "sport_old": (
        "I play {sport_old} every weekend, it's easily my favourite sport.",
        "Nothing clears my head like a good game of {sport_old}.",
    ),
    "sport_new": (
        "I quit {sport_old} and picked up {sport_new}, I'm hooked.",
        "These days my weekends are all about {sport_new}.",
        "I joined a {sport_new} club and I train there twice a week now.",
    ),
}
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

_GREETINGS = (
    "Hey {other}! It's been a while, how have you been?",
    "Hi {other}, so good to catch up again.",
    "{other}! I was just thinking about you, how's everything?",
    "Morning {other}! Got a minute to chat?",
    "Hey hey, {other}. What's new with you?",
)
_SIGN_OFFS = (
    "I should go, but this was really nice. Talk soon!",
    "Okay, I need to get dinner started. Catch you later!",
    "Let's not wait so long before the next chat. Bye for now!",
    "Gotta run, my battery is dying. Speak soon!",
    "Thanks for the chat, {other}. Take care!",
)
# Replies to a fact turn: news (something just happened) or a remark (a standing fact or taste).
_NEWS_EVENTS = frozenset({"city_new", "job_new", "sibling_city", "partner_job", "hobby", "pet"})
_NEWS_REACTIONS = (
    "No way, that's huge news!",
    "Oh wow, I did not see that coming.",
    "That's wonderful, I'm really happy to hear it.",
    "What a change! Tell me everything next time.",
    "Sounds exciting, and a little exhausting too.",
    "That's great news, {other}!",
)
_REMARK_REACTIONS = (
    "Ha, that sounds so like you.",
    "Fair enough, I can see the appeal.",
    "Oh nice, I didn't know that.",
    "That's lovely to hear, {other}.",
    "Ha, I'll keep that in mind.",
    "Honestly, I get it.",
)
_SMALL_TALK = (
    "The weather has been so strange lately, sunny one minute and pouring the next.",
    "I've been trying to drink more water and go to bed earlier.",
    "Work has been a bit of a blur this week, to be honest.",
    "I finally finished that series everyone was talking about.",
    "My phone screen cracked again, so I'm typing very carefully.",
    "I spent most of Saturday cleaning out the closet.",
    "I've been trying to read before bed instead of scrolling.",
    "The neighbours have been renovating, so it's been noisy.",
    "I made a huge pot of soup and I'll be eating it all week.",
    "I've started going on long walks in the evening, it really helps me unwind.",
    "I keep meaning to message you more often, {other}.",
    "I went to a friend's birthday dinner and stayed out way too late.",
    "I tried a new recipe and it was a complete disaster.",
    "Our internet was down for two days, it felt like forever.",
    "I've been listening to a lot of podcasts on the bus.",
    "I can't believe how fast this year is going.",
    "I'm trying to save money, so no more takeaway coffee for me.",
    "I've been decluttering and it feels amazing.",
)
# (question, answer) pairs, used where two filler turns follow each other.
_SMALL_TALK_PAIRS = (
    ("Did you do anything fun at the weekend?", "Not really, I mostly caught up on sleep and laundry."),
    ("How's your week going so far, {other}?", "Busy, but in a good way. I can't complain."),
    ("Have you watched anything good lately?", "I started a mystery show, it's ridiculous but I'm hooked."),
    ("How did you sleep last night?", "Terribly, I stayed up way too late reading."),
    ("Any plans for the holidays?", "Nothing fixed yet, maybe just a quiet few days at home."),
    ("Did you ever fix that leaking tap?", "Sort of. It drips less, which I'm counting as a win."),
    ("Have you been getting outside much?", "A bit, I try to go for a walk every evening."),
    ("Did you see the news about the storm?", "Yes, it looked wild. Luckily it missed us."),
    ("Are you taking any time off soon?", "I hope so, I really need a proper break."),
    ("How are your parents doing?", "They're well, thanks for asking. Busy as always."),
    ("Have you been cooking much lately?", "A little, mostly simple stuff like pasta and salads."),
    ("How's the new phone?", "Great battery, terrible camera. Can't win them all."),
)

# (category, evidence events, answer key or None for the month of the evidence session, wordings).
# Wordings avoid the fact turns' phrasing so lexical retrieval is not trivially exact.
_QUESTIONS = (
    (SINGLE_HOP, ("sibling",), "sibling", ("What is the name of {name}'s {relative}?", "Who is {name}'s {relative}?")),
    (
        SINGLE_HOP,
        ("partner",),
        "partner",
        ("Who is {name} in a relationship with?", "What is the name of {name}'s significant other?"),
    ),
    (
        SINGLE_HOP,
        ("hobby",),
        "hobby",
        ("Which pastime did {name} recently get into?", "What hobby has {name} picked up?"),
    ),
    (SINGLE_HOP, ("pet",), "pet_kind", ("What kind of animal is {name}'s pet?", "What species is {pet}?")),
    (
        MULTI_HOP,
        ("sibling", "sibling_city"),
        "sibling_city",
        ("In which city does {name}'s {relative} live?", "Where is {name}'s {relative} based?"),
    ),
    (
        MULTI_HOP,
        ("partner", "partner_job"),
        "partner_role",
        ("What does {name}'s partner do for a living?", "What is the occupation of {name}'s partner?"),
    ),
    (
        MULTI_HOP,
        ("city_new", "pet"),
        "pet",
        (
            "What is the name of the pet {name} adopted after moving to {city_new}?",
            "What did {name} call the animal they got after relocating to {city_new}?",
        ),
    ),
    (
        MULTI_HOP,
        ("city_old", "city_new"),
        "city_old",
        ("Which city did {name} live in before {city_new}?", "Where was {name} based before relocating to {city_new}?"),
    ),
    (
        TEMPORAL,
        ("city_new",),
        None,
        ("When did {name} move to {city_new}?", "In which month did {name} relocate to {city_new}?"),
    ),
    (
        TEMPORAL,
        ("job_new",),
        None,
        ("When did {name} start working at {company_new}?", "When did {name} join {company_new}?"),
    ),
    (TEMPORAL, ("pet",), None, ("When did {name} get {pet}?", "In which month did {pet} join {name}'s household?")),
    (TEMPORAL, ("hobby",), None, ("When did {name} take up {hobby}?", "In which month did {name} get into {hobby}?")),
    (
        KNOWLEDGE_UPDATE,
        ("city_new",),
        "city_new",
        ("Which city does {name} live in now?", "Where is {name} based these days?"),
    ),
    (
        KNOWLEDGE_UPDATE,
        ("job_new",),
        "company_new",
        ("Which company does {name} work for now?", "Who is {name}'s current employer?"),
    ),
    (
        KNOWLEDGE_UPDATE,
        ("food_new",),
        "food_new",
        ("What cuisine does {name} like best these days?", "What is {name}'s current favourite kind of food?"),
    ),
    (
        KNOWLEDGE_UPDATE,
        ("music_new",),
        "music_new",
        ("What kind of music is {name} into these days?", "Which music genre does {name} currently prefer?"),
    ),
    (
        KNOWLEDGE_UPDATE,
        ("sport_new",),
        "sport_new",
        ("Which sport is {name} most into now?", "What sport does {name} currently do?"),
    ),
)
_QUESTIONS_PER_PERSONA = {SINGLE_HOP: 3, MULTI_HOP: 3, TEMPORAL: 2, KNOWLEDGE_UPDATE: 3}
# (question, keyword): no template above ever mentions the keyword, so the answer is never in the dialogue.
_UNANSWERABLE = (
    ("What is the name of {name}'s grandmother?", "grandmother"),
    ("What is {name} allergic to?", "allergic"),
    ("What design does {name}'s tattoo show?", "tattoo"),
    ("Which musical instrument does {name} play?", "instrument"),
    ("Who is {name}'s favourite novelist?", "novelist"),
    ("What is {name}'s blood type?", "blood type"),
    ("What did {name} major in at university?", "university"),
    ("How many nephews does {name} have?", "nephew"),
    ("What is the name of {name}'s landlord?", "landlord"),
    ("What motorbike does {name} ride?", "motorbike"),
)
_UNANSWERABLE_PER_CONVERSATION = 3
UNANSWERABLE_ANSWER = "not mentioned"


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
    names = rng.sample(_FEMALE_NAMES + _MALE_NAMES, 6)
    cities = rng.sample([city for city, _ in _CITIES], 6)
    companies = rng.sample(_COMPANIES, 4)
    roles = rng.sample(_ROLES, 6)
    hobbies = rng.sample(_HOBBIES, 2)
    pets = rng.sample(_PET_NAMES, 2)
    pet_kinds = rng.sample(_PET_KINDS, 2)
    preferences = {kind: rng.sample(values, 4) for kind, values in _PREFERENCES.items()}
    facts, events = [], []
    for k in (0, 1):
        values = {
            "name": names[k],
            "other": names[1 - k],
            "sibling": names[2 + k],
            "partner": names[4 + k],
            "relative": "sister" if names[2 + k] in _FEMALE_NAMES else "brother",
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
        kinds = rng.sample(sorted(_PREFERENCES), _PREFERENCES_PER_PERSONA)
        for kind in kinds:
            values[f"{kind}_old"], values[f"{kind}_new"] = preferences[kind][2 * k : 2 * k + 2]
        facts.append(values)
        events.append(_in_order([*_BASE_EVENTS, *(f"{kind}_{age}" for kind in kinds for age in ("old", "new"))], rng))
    return facts, events


def _conversation(conversation_id: str, rng: random.Random, n_sessions: int, turns_per_session: int) -> Conversation:
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
            options = [q for q in _QUESTIONS if q[0] == category and all((k, e) in where for e in q[1])]
            for _, evidence_events, answer_key, wordings in rng.sample(options, min(count, len(options))):
                evidence = tuple(where[(k, e)] for e in evidence_events)
                last = max(session_of[turn_id] for turn_id in evidence)
                answer = values[answer_key] if answer_key else f"{times[last]:%B %Y}"
                # Asked the day after the last evidence was seen, still before the next session (>= 13 days on).
                asked = times[last] + timedelta(days=1)
                drafts.append((asked, rng.choice(wordings).format(**values), answer, evidence, category))
    for wording, _ in rng.sample(_UNANSWERABLE, _UNANSWERABLE_PER_CONVERSATION):
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
    session_id, names, turns = f"session_{s + 1}", (facts[0]["name"], facts[1]["name"]), []

    def say(i: int, template: str, fields: dict[str, str]) -> None:
        who = (s + i) % 2
        text = template.format(**{"other": names[1 - who], **fields})
        turns.append(Turn(f"D{s + 1}:{i + 1}", names[who], text, session_id, time))

    i = 0
    while i < turns_per_session:
        if (s, i) in placed:
            k, event = placed[(s, i)]
            say(i, rng.choice(_FACT_TEMPLATES[event]), facts[k])
        elif i == 0:
            say(i, rng.choice(_GREETINGS), {})
        elif (s, i - 1) in placed:
            news = placed[(s, i - 1)][1] in _NEWS_EVENTS
            say(i, rng.choice(_NEWS_REACTIONS if news else _REMARK_REACTIONS), {})
        elif i == turns_per_session - 1:
            say(i, rng.choice(_SIGN_OFFS), {})
        elif i + 1 < turns_per_session - 1 and (s, i + 1) not in placed:
            question, answer = rng.choice(_SMALL_TALK_PAIRS)
            say(i, question, {})
            say(i + 1, answer, {})
            i += 1
        else:
            say(i, rng.choice(_SMALL_TALK), {})
        i += 1
    return Session(session_id, time, tuple(turns))


# ---------------------------------------------------------------------------------------------------
# Knowledge edits. Subjects are invented, so a pretrained model holds no prior about them; targets are
# real-world values, so portability probes can reach knowledge the model does have.

_PERSON_FIRST = (
    "Talia",
    "Oren",
    "Maren",
    "Caius",
    "Ysolde",
    "Bram",
    "Liesel",
    "Dorian",
    "Ottilie",
    "Ferris",
    "Anouk",
    "Castor",
    "Imre",
    "Saskia",
    "Teodor",
    "Rhosyn",
    "Evander",
    "Marisol",
    "Quillan",
    "Briony",
    "Lazlo",
    "Petra",
    "Soren",
    "Ilse",
    "Cosmo",
    "Delphine",
    "Ewan",
    "Fenna",
    "Gideon",
    "Hester",
)
_PERSON_LAST = (
    "Voss",
    "Kestrel",
    "Marrow",
    "Quennell",
    "Drabek",
    "Halloran",
    "Ashgrove",
    "Thistlewood",
    "Oakhart",
    "Penhallow",
    "Stroud",
    "Wrenfield",
    "Ivesdale",
    "Blackfen",
    "Carrow",
    "Dunmere",
    "Elphick",
    "Fairlie",
    "Greaves",
    "Jessop",
    "Kilbride",
    "Larkspur",
    "Mabry",
    "Northey",
    "Orrin",
    "Pellow",
    "Ravensworth",
    "Sallowby",
    "Tregarth",
    "Umberley",
)
_COMPANY_STEMS = (
    "Quillon",
    "Veradyne",
    "Halcyra",
    "Norvell",
    "Sablecrest",
    "Tessary",
    "Orvane",
    "Kelmont",
    "Dravik",
    "Pallwick",
    "Corvane",
    "Zephyrine",
    "Ambrel",
    "Grellin",
    "Ostrava",
)
_COMPANY_SUFFIXES = ("Dynamics", "Holdings", "Labs", "Systems", "Industries", "Works", "Group", "Partners")
_TOWN_STEMS = ("Quel", "Vash", "Drim", "Tarn", "Brel", "Ossel", "Karn", "Zeb", "Mirth", "Hallow", "Fel", "Grisk")
_TOWN_SUFFIXES = ("brook", "ford", "wick", "mere", "stead", "haven", "holt", "by")

_OCCUPATIONS = (
    "dentist",
    "pilot",
    "baker",
    "plumber",
    "lawyer",
    "nurse",
    "carpenter",
    "journalist",
    "chef",
    "pharmacist",
    "librarian",
    "veterinarian",
    "firefighter",
    "surgeon",
    "translator",
    "tailor",
    "painter",
    "farmer",
    "mechanic",
    "teacher",
    "butcher",
    "sculptor",
    "dancer",
    "banker",
)  # all take "a", so "works as a" prompts stay grammatical
_EMPLOYERS = (
    ("Toyota", "Japan"),
    ("Siemens", "Germany"),
    ("Samsung", "South Korea"),
    ("IKEA", "Sweden"),
    ("Nokia", "Finland"),
    ("Heineken", "Netherlands"),
    ("Ferrari", "Italy"),
    ("Lego", "Denmark"),
    ("Tata Motors", "India"),
    ("Petrobras", "Brazil"),
    ("Rolex", "Switzerland"),
    ("Boeing", "United States"),
)
_INSTRUMENTS = (
    ("violin", "string family"),
    ("cello", "string family"),
    ("harp", "string family"),
    ("trumpet", "brass family"),
    ("trombone", "brass family"),
    ("tuba", "brass family"),
    ("flute", "woodwind family"),
    ("clarinet", "woodwind family"),
    ("oboe", "woodwind family"),
    ("xylophone", "percussion family"),
    ("marimba", "percussion family"),
)
# (country, capital, continent)
_COUNTRIES = (
    ("France", "Paris", "Europe"),
    ("Japan", "Tokyo", "Asia"),
    ("Canada", "Ottawa", "North America"),
    ("Kenya", "Nairobi", "Africa"),
    ("Egypt", "Cairo", "Africa"),
    ("Argentina", "Buenos Aires", "South America"),
    ("Germany", "Berlin", "Europe"),
    ("India", "New Delhi", "Asia"),
    ("Mexico", "Mexico City", "North America"),
    ("Peru", "Lima", "South America"),
    ("Norway", "Oslo", "Europe"),
    ("Thailand", "Bangkok", "Asia"),
    ("Morocco", "Rabat", "Africa"),
    ("Chile", "Santiago", "South America"),
    ("Poland", "Warsaw", "Europe"),
    ("Vietnam", "Hanoi", "Asia"),
    ("Ghana", "Accra", "Africa"),
    ("Italy", "Rome", "Europe"),
)
_INDUSTRIES = (
    "aviation",
    "banking",
    "shipping",
    "pharmaceuticals",
    "video games",
    "agriculture",
    "textiles",
    "mining",
    "tourism",
    "telecommunications",
)

_LOCALITY = (
    ("The capital of France is", "Paris"),
    ("The capital of Japan is", "Tokyo"),
    ("The capital of Italy is", "Rome"),
    ("The capital of Germany is", "Berlin"),
    ("The capital of Spain is", "Madrid"),
    ("The capital of Egypt is", "Cairo"),
    ("The capital of Canada is", "Ottawa"),
    ("The largest planet in the solar system is", "Jupiter"),
    ("The chemical symbol for gold is", "Au"),
    ("The opposite of hot is", "cold"),
    ("The first month of the year is", "January"),
    ("The author of Romeo and Juliet is William", "Shakespeare"),
    ("The Eiffel Tower is located in the city of", "Paris"),
    ("The Great Wall is located in", "China"),
    ("The currency of Japan is the", "yen"),
    ("The colour of a clear daytime sky is", "blue"),
    ("Bees make", "honey"),
    ("The fastest land animal is the", "cheetah"),
    ("The largest ocean on Earth is the", "Pacific"),
    ("The chemical formula of water is", "H2O"),
    ("The planet closest to the Sun is", "Mercury"),
    ("Albert Einstein developed the theory of", "relativity"),
    ("The language spoken in Brazil is", "Portuguese"),
    ("The Statue of Liberty is in the city of New", "York"),
    ("The tallest mountain in the world is Mount", "Everest"),
    ("The Mona Lisa was painted by Leonardo da", "Vinci"),
    ("The longest river in Africa is the", "Nile"),
    ("Penguins live mostly on the continent of", "Antarctica"),
    ("Christmas is celebrated in the month of", "December"),
    ("The primary language of Mexico is", "Spanish"),
    ("The planet known as the Red Planet is", "Mars"),
    ("A baby cat is called a", "kitten"),
    ("The Taj Mahal is located in", "India"),
    ("The telephone was invented by Alexander Graham", "Bell"),
    ("Sushi is a traditional dish from", "Japan"),
    ("The Amazon rainforest is mostly in", "Brazil"),
    ("The day after Monday is", "Tuesday"),
    ("The freezing point of water in degrees Celsius is", "0"),
    ("A triangle has three", "sides"),
    ("The Olympic Games are held every four", "years"),
)
_LOCALITY_PER_EDIT = 3


@dataclass(frozen=True)
class _Relation:
    name: str
    subject_kind: str  # "person", "company" or "town"
    prompts: tuple[str, ...]  # prefixes the target completes; one becomes the prompt, the rest paraphrases
    targets: tuple[tuple[str, str | None], ...]  # (target, answer of the portability probe for it)
    portability: str | None = None  # a one-hop prompt about the subject that the target's attribute answers


_RELATIONS = (
    _Relation(
        "occupation",
        "person",
        ("{s} works as a", "{s} earns a living as a", "By profession, {s} is a", "{s} is employed as a"),
        tuple((o, None) for o in _OCCUPATIONS),
    ),
    _Relation(
        "city",
        "person",
        ("{s} lives in the city of", "{s} resides in", "{s}'s home is in the city of", "The city where {s} lives is"),
        _CITIES,
        "{s} lives in the country of",
    ),
    _Relation(
        "employer",
        "person",
        ("{s} is employed by", "{s} works for the company", "The employer of {s} is", "{s} has a job at"),
        _EMPLOYERS,
        "{s} works for a company headquartered in",
    ),
    _Relation(
        "sport",
        "person",
        (
            "{s} plays the sport of",
            "The sport {s} plays professionally is",
            "{s} is a professional athlete in",
            "{s} competes at a national level in",
        ),
        tuple((sport, None) for sport in _SPORTS),
    ),
    _Relation(
        "instrument",
        "person",
        (
            "{s} plays the",
            "The instrument {s} plays is the",
            "{s} is a musician who plays the",
            "On stage, {s} performs on the",
        ),
        _INSTRUMENTS,
        "{s} plays an instrument from the",
    ),
    _Relation(
        "citizenship",
        "person",
        ("{s} is a citizen of", "{s} holds citizenship of", "{s} is a national of", "{s} carries a passport from"),
        tuple((country, capital) for country, capital, _ in _COUNTRIES),
        "{s} is a citizen of a country whose capital is",
    ),
    _Relation(
        "headquarters",
        "company",
        (
            "{s} is headquartered in",
            "The headquarters of {s} are in",
            "{s} has its head office in",
            "{s} is based in the city of",
        ),
        _CITIES,
        "{s} is headquartered in the country of",
    ),
    _Relation(
        "industry",
        "company",
        (
            "{s} operates in the industry of",
            "{s} is a company in the field of",
            "The main business of {s} is",
            "{s} makes its money from",
        ),
        tuple((industry, None) for industry in _INDUSTRIES),
    ),
    _Relation(
        "country",
        "town",
        (
            "The town of {s} is located in",
            "{s} is a small town in",
            "The town of {s} lies in the country of",
            "{s} is a town situated in",
        ),
        tuple((country, continent) for country, _, continent in _COUNTRIES),
        "The town of {s} is on the continent of",
    ),
)


def _subject_pools() -> dict[str, tuple[str, ...]]:
    return {
        "person": tuple(f"{first} {last}" for first, last in product(_PERSON_FIRST, _PERSON_LAST)),
        "company": tuple(f"{stem} {suffix}" for stem, suffix in product(_COMPANY_STEMS, _COMPANY_SUFFIXES)),
        "town": tuple(stem + suffix for stem, suffix in product(_TOWN_STEMS, _TOWN_SUFFIXES)),
    }


def generate_facts(seed: int = 0, n_edits: int = 100) -> list[KnowledgeEdit]:
    """Knowledge edits about invented people, companies and towns, each with a unique subject."""
    pools = _subject_pools()
    _check_count("n_edits", n_edits, maximum=sum(len(pool) for pool in pools.values()))
    rng = random.Random(seed)
    # Shuffle whole pools up front so a larger n_edits extends the list without changing its head.
    subjects = {kind: rng.sample(pool, len(pool)) for kind, pool in pools.items()}
    edits = []
    for i in range(n_edits):
        relation = rng.choice([r for r in _RELATIONS if subjects[r.subject_kind]])
        subject = subjects[relation.subject_kind].pop()
        (old, _), (new, new_attribute) = rng.sample(relation.targets, 2)
        prompt, *paraphrases = (p.format(s=subject) for p in rng.sample(relation.prompts, len(relation.prompts)))
        # Locality probes must not touch the edited values, or "unchanged" would be the wrong expectation.
        touched = [value.lower() for value in (old, new, new_attribute) if value]
        unrelated = [probe for probe in _LOCALITY if not any(v in f"{probe[0]} {probe[1]}".lower() for v in touched)]
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
