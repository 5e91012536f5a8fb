"""Rule-based anonymization of profiles: each profile's own name and handle (and any
@handle, URL) become a pseudonym. The LLM pass (`population.anonymize=llm`,
`matrix.sim.agents.anonymize_llm`) also removes places and other people's names; this rule
pass is exact for the fields we know and costs nothing.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from matrix.sim.schemas import Profile

# Neutral pseudonyms for rule-based anonymization; seeded shuffle so the same config gives the
# same names.
_PSEUDONYMS = (
    "Alex Rivera",
    "Sam Okafor",
    "Jordan Lee",
    "Taylor Novak",
    "Casey Morgan",
    "Riley Chen",
    "Morgan Silva",
    "Jamie Patel",
    "Avery Kim",
    "Quinn Murphy",
    "Drew Santos",
    "Parker Ng",
    "Reese Adams",
    "Rowan Ali",
    "Skyler Brooks",
    "Emerson Cruz",
    "Hayden Park",
    "Kendall Diaz",
    "Logan Weiss",
    "Micah Hughes",
    "Noel Fischer",
    "Peyton Rossi",
    "Sage Kowalski",
    "Blair Ito",
    "Cameron Yusuf",
    "Dakota Berg",
    "Elliot Moreau",
    "Finley Costa",
    "Harper Lund",
    "Jesse Nair",
)


def anonymize_rules(profiles: list[Profile], seed: int) -> list[Profile]:
    """Replace each profile's own name and handle (and any @handle, URL) with a pseudonym.

    The LLM pass (`population.anonymize=llm`, see agents.py) also removes places and other
    people's names; this rule pass is exact for the fields we know and costs nothing.
    """
    rng = random.Random(seed)
    names = list(_PSEUDONYMS)
    rng.shuffle(names)
    out = []
    for i, p in enumerate(profiles):
        pseudo = names[i % len(names)] + ("" if i < len(names) else f" {i // len(names) + 1}")
        first = pseudo.split()[0]

        def scrub(text: str, p=p, pseudo=pseudo, first=first) -> str:
            if p.name:
                text = re.sub(re.escape(p.name), pseudo, text, flags=re.IGNORECASE)
                for part in p.name.split():
                    if len(part) > 2:
                        text = re.sub(rf"\b{re.escape(part)}\b", first, text)
            if p.handle:
                text = re.sub(
                    re.escape(p.handle), pseudo.replace(" ", ""), text, flags=re.IGNORECASE
                )
            text = re.sub(r"https?://\S+", "[link]", text)
            return re.sub(r"@\w+", "@user", text)

        out.append(
            replace(
                p,
                name=pseudo,
                handle="",
                bio=scrub(p.bio),
                persona=scrub(p.persona),
                posts=tuple(scrub(x) for x in p.posts),
            )
        )
    return out
