"""Write a SELF-MADE slice in MEND's zsRE eval format (NOT real zsRE data; there is no network here).

Questions about real countries (capital, official language, currency, continent) are each edited to a
counterfactual answer of the same kind, as zsRE edits are; `rephrase` asks the same question in other
words, `loc` is a natural-questions-style question with its answer. Every string is written here by hand
from common knowledge. Usage: python scripts/make_zsre_format_slice.py OUT.json [N] [SEED]
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

# country, capital, official language, currency, continent
COUNTRIES = [
    ("France", "Paris", "French", "euro", "Europe"),
    ("Germany", "Berlin", "German", "euro", "Europe"),
    ("Italy", "Rome", "Italian", "euro", "Europe"),
    ("Spain", "Madrid", "Spanish", "euro", "Europe"),
    ("Portugal", "Lisbon", "Portuguese", "euro", "Europe"),
    ("Japan", "Tokyo", "Japanese", "yen", "Asia"),
    ("China", "Beijing", "Mandarin", "yuan", "Asia"),
    ("India", "New Delhi", "Hindi", "rupee", "Asia"),
    ("Brazil", "Brasilia", "Portuguese", "real", "South America"),
    ("Argentina", "Buenos Aires", "Spanish", "peso", "South America"),
    ("Mexico", "Mexico City", "Spanish", "peso", "North America"),
    ("Canada", "Ottawa", "English", "Canadian dollar", "North America"),
    ("Australia", "Canberra", "English", "Australian dollar", "Oceania"),
    ("Egypt", "Cairo", "Arabic", "Egyptian pound", "Africa"),
    ("Kenya", "Nairobi", "Swahili", "shilling", "Africa"),
    ("Russia", "Moscow", "Russian", "ruble", "Europe"),
    ("Turkey", "Ankara", "Turkish", "lira", "Asia"),
    ("Poland", "Warsaw", "Polish", "zloty", "Europe"),
    ("Sweden", "Stockholm", "Swedish", "krona", "Europe"),
    ("Norway", "Oslo", "Norwegian", "krone", "Europe"),
    ("Greece", "Athens", "Greek", "euro", "Europe"),
    ("Thailand", "Bangkok", "Thai", "baht", "Asia"),
    ("South Korea", "Seoul", "Korean", "won", "Asia"),
    ("Peru", "Lima", "Spanish", "sol", "South America"),
    ("Nigeria", "Abuja", "English", "naira", "Africa"),
    ("Morocco", "Rabat", "Arabic", "dirham", "Africa"),
    ("Vietnam", "Hanoi", "Vietnamese", "dong", "Asia"),
    ("Iran", "Tehran", "Persian", "rial", "Asia"),
    ("Netherlands", "Amsterdam", "Dutch", "euro", "Europe"),
    ("Hungary", "Budapest", "Hungarian", "forint", "Europe"),
]
# relation: (column, question, rephrased question)
RELATIONS = {
    "capital": (1, "What is the capital of {}?", "Which city is the capital of {}?"),
    "language": (2, "What is the official language of {}?", "Which language is officially spoken in {}?"),
    "currency": (3, "What is the currency of {}?", "Which currency is used in {}?"),
    "continent": (4, "On which continent is {}?", "{} is located on which continent?"),
}
LOCALITY = [
    ("nq question: who wrote the novel moby dick", "Herman Melville"),
    ("nq question: who painted the ceiling of the sistine chapel", "Michelangelo"),
    ("nq question: how many players are on a soccer team on the field", "11"),
    ("nq question: what is the largest planet in our solar system", "Jupiter"),
    ("nq question: who was the first president of the united states", "George Washington"),
    ("nq question: what is the boiling point of water in fahrenheit", "212"),
    ("nq question: who developed the theory of general relativity", "Albert Einstein"),
    ("nq question: what gas do plants absorb from the air", "carbon dioxide"),
    ("nq question: how many continents are there on earth", "7"),
    ("nq question: who wrote the play hamlet", "William Shakespeare"),
    ("nq question: what is the longest river in the world", "the Nile"),
    ("nq question: who discovered penicillin", "Alexander Fleming"),
    ("nq question: what is the hardest natural substance", "diamond"),
    ("nq question: who composed the four seasons", "Antonio Vivaldi"),
    ("nq question: what is the chemical symbol for iron", "Fe"),
    ("nq question: how many sides does a hexagon have", "6"),
    ("nq question: who was the first man to walk on the moon", "Neil Armstrong"),
    ("nq question: what is the smallest prime number", "2"),
    ("nq question: which organ pumps blood through the body", "the heart"),
    ("nq question: who invented the telephone", "Alexander Graham Bell"),
    ("nq question: what is the freezing point of water in celsius", "0"),
    ("nq question: who wrote pride and prejudice", "Jane Austen"),
    ("nq question: what is the largest ocean on earth", "the Pacific Ocean"),
    ("nq question: who painted the starry night", "Vincent van Gogh"),
    ("nq question: what year did world war ii end", "1945"),
    ("nq question: how many legs does a spider have", "8"),
    ("nq question: what is the tallest animal in the world", "the giraffe"),
    ("nq question: who is the author of the harry potter books", "J. K. Rowling"),
    ("nq question: what is the main language spoken in quebec", "French"),
    ("nq question: what instrument has 88 keys", "the piano"),
]


def make(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    cases = [(country, relation) for country in COUNTRIES for relation in RELATIONS]
    rng.shuffle(cases)
    records = []
    for country, relation in cases[:n]:
        column, question, rephrase = RELATIONS[relation]
        true = country[column]
        alt = rng.choice(sorted({row[column] for row in COUNTRIES} - {true}))
        loc, loc_ans = rng.choice(LOCALITY)
        src = question.format(country[0])
        records.append(
            {
                "subject": country[0],
                "src": src,
                "pred": true,
                "rephrase": rephrase.format(country[0]),
                "alt": alt,
                "answers": [true],
                "loc": loc,
                "loc_ans": loc_ans,
                "cond": f"{true} >> {alt} || {src}",
            }
        )
    return records


if __name__ == "__main__":
    out = Path(sys.argv[1])
    out.parent.mkdir(parents=True, exist_ok=True)
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    out.write_text(json.dumps(make(n, int(sys.argv[3]) if len(sys.argv) > 3 else 0), indent=1) + "\n")
    print(f"wrote {n} self-made zsRE-format records to {out}")
