"""Conversational sentences with names, places, dates, times, money and counts, from fixed templates.

Prose sources are short on dialogue and numbers; these fill the gap. Names and places come from
Faker's en_US provider (MIT). Digits are left in; the text cleaner writes them out as words.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

TEMPLATE_SEED = 20261123
NUM_TEMPLATE_SENTENCES = 12000
TEMPLATES = (
    "Hi, this is {first}, I'm calling about the appointment on {weekday} at {time}.",
    "Could you ask {first} {last} to call me back before {time}?",
    "The total comes to ${money}, and you can pay by card or cash.",
    "We moved to {city} in {year} and stayed there for {small} years.",
    "My flight leaves at {time} on the {ordinal} of {month}, so I'll need a ride.",
    "{first} said the meeting was pushed back to {weekday} afternoon.",
    "There were about {count} people at the concert last {weekday}.",
    "I think {first} works as a {job} somewhere near {city}.",
    "Honestly, I didn't expect the repair to cost ${money}.",
    "The package should arrive on {month} {ordinal}, according to the tracking page.",
    "Do you remember when {first} and {first2} drove all the way to {city}?",
    "Our team finished the quarter with {count} new customers, which is {small} percent more than last year.",
    "Please turn left after {small} blocks and look for the blue building on {street}.",
    "The train from {city} was {small} minutes late again this morning.",
    "Yeah, I talked to {first} yesterday and she said it's fine.",
    "Well, if the weather holds, we could meet at {time} near the old bridge.",
    "{first} {last} was born in {year} in a small town outside {city}.",
    "The invoice lists {small} items and a delivery fee of ${money}.",
    "So what do you think, should we order pizza or cook something at home?",
    "I'm sorry, could you repeat that? The line is really bad.",
    "We need {small} more chairs for the dinner on {weekday}.",
    "The score was {small} to {small2} at halftime, and then everything changed.",
    "Dr. {last} will see you at {time}, so please arrive ten minutes early.",
    "In {year}, the company opened its first office in {city}.",
    "Can you believe {first} ran a marathon in under {small} hours?",
    "Room {room} is on the {ordinal_floor} floor, just past the elevators.",
    "It's {temp} degrees outside, so you'll want a jacket.",
    "The recipe calls for {small} eggs, two cups of flour and a pinch of salt.",
    "Mr. {last} asked whether the report would be ready by {weekday}.",
    "I've been working as a {job} for about {small} years now.",
    "Let's split the bill, it's ${money} each.",
    "The population of {city} grew to roughly {count} people by {year}.",
    "Wait, did you say {time} or {time2}? I wrote down the wrong one.",
    "{first} lives at {house} {street}, right across from the library.",
    "Thanks for calling, {first}, I'll pass the message on to {first2}.",
)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December")


def _fields(fake, rng: random.Random) -> dict[str, str]:
    ordinal = rng.randint(1, 28)
    suffix = "th" if 10 <= ordinal % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(ordinal % 10, "th")
    floor = rng.randint(2, 19)
    floor_suffix = "th" if 10 <= floor <= 20 else {2: "nd", 3: "rd"}.get(floor % 10, "th")
    return {
        "first": fake.first_name(),
        "first2": fake.first_name(),
        "last": fake.last_name(),
        "city": fake.city(),
        "job": fake.job().split(",")[0].lower(),
        "street": fake.street_name(),
        "weekday": rng.choice(WEEKDAYS),
        "month": rng.choice(MONTHS),
        "time": f"{rng.randint(1, 12)}:{rng.choice(('00', '15', '30', '45', '05', '20'))}",
        "time2": f"{rng.randint(1, 12)}:{rng.choice(('00', '10', '30', '40'))}",
        "money": f"{rng.randint(1, 2500)}.{rng.randint(0, 99):02d}"
        if rng.random() < 0.6
        else str(rng.randint(1, 900)),
        "year": str(rng.randint(1905, 2025)),
        "small": str(rng.randint(2, 60)),
        "small2": str(rng.randint(0, 40)),
        "count": str(
            rng.choice((rng.randint(10, 999), rng.randint(1000, 99999), rng.randint(100000, 9000000)))
        ),
        "ordinal": f"{ordinal}{suffix}",
        "ordinal_floor": f"{floor}{floor_suffix}",
        "room": str(rng.randint(100, 999)),
        "temp": str(rng.randint(-10, 40)).lstrip("-"),
        "house": str(rng.randint(1, 9999)),
    }


def template_paragraphs() -> Iterator[tuple[str, str]]:
    """``("template", sentence)`` pairs from a fixed seed, so the corpus is reproducible."""
    from faker import Faker

    fake = Faker("en_US")
    fake.seed_instance(TEMPLATE_SEED)
    rng = random.Random(TEMPLATE_SEED)
    for _ in range(NUM_TEMPLATE_SENTENCES):
        yield "template", rng.choice(TEMPLATES).format(**_fields(fake, rng))
