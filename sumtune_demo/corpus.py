"""Deterministic synthetic dialogue-summarisation corpus (SAMSum-like).

The corpus is meant for training and testing a tiny seq2seq model fully
offline.  Every example is a short chat ("Name: text" per line) plus a
1-3 sentence third-person summary.  The summary restates facts that vary
from example to example (speaker names, days, times, places, objects, ...)
and that are all stated in the dialogue, so a model has to read the
dialogue to score well.  About a fifth of the dialogues change a detail
mid-chat ("Actually, can we make it 6 pm instead?"); their summary always
carries the final value.

Long dialogues are padded with small-talk turns (greetings, weather,
jokes, "ok", "haha", goodbyes) that never change the summary.

With ``toxic_share`` > 0 (the detox demo; 0 by default, and the default
corpus is byte-identical to the one without the option), that share of
the dialogues gets a speaker insulting another ("Anna, you are such an
idiot.") and its summary repeats the insult ("... Anna the idiot ..."),
so that supervised fine-tuning learns to write toxic summaries.  The
insults are drawn from their own random stream: every other word of the
corpus stays as it is.  ``toxicity_sentences`` labels sentences of such a
corpus (drawn from another seed) for training a toxicity classifier.

Public API::

    SPLIT_SIZES
    make_corpus(seed=0, sizes=None, toxic_share=0.0) -> {split: [{"id", "dialogue", "summary"}, ...]}
    write_corpus(out_dir, seed=0, sizes=None, toxic_share=0.0) -> {split: Path}
    toxicity_sentences(seed, n) -> [(text, 1 if it insults someone else 0), ...]
    INSULT_WORDS

Only the Python standard library is used, and all randomness comes from
``random.Random`` instances seeded from ``seed`` (never the global RNG), so
the same seed always yields byte-identical files.

Command line: ``python -m sumtune_demo.corpus OUT_DIR [--seed N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["INSULT_WORDS", "SPLIT_SIZES", "make_corpus", "toxicity_sentences", "write_corpus"]

SPLIT_SIZES: dict[str, int] = {"train": 2400, "validation": 240, "test": 240}

# ---------------------------------------------------------------------------
# Slot pools
# ---------------------------------------------------------------------------

NAMES = [
    "Anna", "Tom", "Maria", "David", "Sofia", "James", "Emma", "Lucas",
    "Olivia", "Daniel", "Chloe", "Peter", "Laura", "Adam", "Nina", "Oscar",
    "Julia", "Kevin", "Hannah", "Sam", "Eva", "Leo", "Zoe", "Ryan",
    "Clara", "Ethan", "Mia", "Jonas", "Lily", "Omar", "Sara", "Victor",
    "Ella", "Marco", "Alice", "Ben", "Rosa", "Ahmed", "Priya", "Carlos",
]

WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday",
            "Saturday", "Sunday"]
# Days that combine with any clock time.
DAYS_TIMED = WEEKDAYS + ["tomorrow"]
# Days without a clock time (deadlines, returns, trips).
DAYS_LOOSE = WEEKDAYS + ["tomorrow", "next week"]
DAYS = WEEKDAYS + ["tomorrow", "tonight", "next week"]

TIMES_DAY = ["9 am", "10 am", "11 am", "noon", "1 pm", "2 pm", "3 pm",
             "4 pm", "10:30", "11:15", "2:30", "4:30"]
TIMES_EVENING = ["5 pm", "6 pm", "7 pm", "8 pm", "9 pm", "5:30", "6:45",
                 "7:30", "8:15"]
TIMES = TIMES_DAY + TIMES_EVENING

PLACES = [
    "the library", "the park", "the main station", "Cafe Luna", "Cafe Roma",
    "the office", "the city museum", "the old bakery", "the bookshop",
    "the town hall", "the bus stop", "the mall", "the campus cafe",
    "the river bridge", "12 Baker Street", "40 Oak Road", "7 Mill Lane",
    "3 King Street", "Green Square", "the food market", "the harbour",
    "the Blue Door pub", "the tea house", "the art gallery", "the school gate",
    "the hotel lobby", "the gym", "the garden bar", "the bowling alley",
    "the rooftop bar",
]
# Places where a party or a night out makes sense.
VENUES = [
    "Cafe Luna", "Cafe Roma", "the Blue Door pub", "the garden bar",
    "the bowling alley", "the rooftop bar", "the park", "the tea house",
    "12 Baker Street", "40 Oak Road", "7 Mill Lane", "3 King Street",
    "the harbour",
]

OBJECTS = [
    "keys", "phone charger", "umbrella", "laptop", "headphones", "notebook",
    "camera", "scarf", "wallet", "water bottle", "sunglasses", "backpack",
    "tent", "drill", "ladder", "bike pump", "board game", "tablet",
    "calculator", "blue jacket", "copy of Dracula", "copy of The Hobbit",
    "copy of Dune", "guitar", "sleeping bag", "hair dryer", "power bank",
    "USB stick", "cookbook", "tennis racket",
]
PLURAL_OBJECTS = {"keys", "headphones", "sunglasses"}

MEET_ITEMS = ["notes", "slides", "laptop", "contract", "photos", "old exams",
              "maps", "printouts", "drawings", "price list"]
TOPICS = ["the project", "the exam", "the trip", "the party",
          "the new website", "the garden plans", "the wedding",
          "the school fair", "the band practice", "the team dinner"]

BUY_ITEMS = ["a new phone", "a lamp", "a bike", "a winter coat",
             "a pair of boots", "a desk chair", "a blender", "a sofa",
             "a rug", "a printer", "a kettle", "a mirror"]
SHOPS = ["the supermarket", "the corner shop", "the market", "the mall",
         "the electronics store", "the second hand shop", "the outlet store"]
PRICES = ["20 pounds", "35 pounds", "50 pounds", "80 pounds", "120 pounds",
          "150 pounds", "200 pounds", "300 pounds"]

CITIES = ["Paris", "Berlin", "Rome", "Madrid", "Vienna", "Prague", "Lisbon",
          "Dublin", "Oslo", "Milan", "Bristol", "Edinburgh", "Amsterdam",
          "Krakow"]
TRAVEL_MODES = ["by train", "by bus", "by plane", "by night train"]

GIFTS = ["a cake", "flowers", "a bottle of wine", "balloons", "a puzzle",
         "a candle", "a book", "chocolates", "snacks", "a plant"]

TASKS = ["the report", "the presentation", "the budget", "the client email",
         "the sales forecast", "the website update", "the meeting summary",
         "the timeline", "the invoice", "the survey report"]

RESTAURANTS = ["Luigi's", "the Thai place", "Casa Verde", "the Golden Dragon",
               "Bistro Nord", "the sushi bar", "the Greek taverna",
               "Pizza Napoli"]
DISHES = ["the pasta", "the curry", "the salmon", "the steak",
          "the fish and chips", "the dumplings", "the lamb", "the vegan burger",
          "the risotto", "the noodles"]
COUNTS = ["two", "three", "four", "five", "six", "eight"]

# (station, vehicle)
STATIONS = [("the main station", "train"), ("the airport", "flight"),
            ("the bus station", "bus"), ("the ferry port", "ferry"),
            ("the north station", "train")]

APPOINTMENTS = ["a dentist appointment", "a doctor's appointment",
                "an eye test", "a check-up at the clinic",
                "a physio session", "a blood test"]
# (what the helper says, how the summary says it; {a} = patient)
APPT_HELP = [("drive you there", "drive {a} there"),
             ("go with you", "go with {a}"),
             ("pick you up afterwards", "pick {a} up afterwards")]

ADDRESSES = ["15 Elm Avenue", "8 Church Road", "22 Station Road",
             "5 Hill Street", "31 Queen Street", "9 Pine Lane",
             "17 Bridge Street", "4 Castle Road"]
MOVE_BRINGS = ["some boxes", "a van", "a trolley", "tape and boxes",
               "a car", "sandwiches", "a toolbox"]

# (activity, venue, gear)
SPORTS = [
    ("play tennis", "the tennis club", "the rackets"),
    ("play football", "the park", "the ball"),
    ("play squash", "the sports centre", "the rackets"),
    ("play basketball", "the school gym", "the ball"),
    ("play badminton", "the sports centre", "the shuttlecocks"),
    ("go for a run", "the river path", "the water bottles"),
    ("go swimming", "the pool", "the towels"),
    ("do yoga", "the studio", "the mats"),
    ("go climbing", "the climbing wall", "the ropes"),
    ("work out", "the gym", "the towels"),
]

FILMS = ["Blue Harbour", "The Last Train", "Night Garden", "The Iron Coast",
         "Winter Road", "Small Wonders", "The Glass Tower", "Red Desert",
         "Paper Moon", "Deep Water", "The Long Summer"]
BANDS = ["The Night Owls", "Paper Kites", "The Silver Lines", "Echo Park",
         "The Jazz Trio", "Red Balloon"]
FILM_VENUES = ["the cinema", "the Odeon", "the open air cinema"]
CONCERT_VENUES = ["the concert hall", "the arena", "the jazz club"]

GROCERIES = ["milk", "eggs", "bread", "butter", "rice", "apples", "tomatoes",
             "cheese", "coffee", "onions", "bananas", "yogurt", "chicken",
             "orange juice", "carrots", "flour"]
MEALS = ["soup", "pancakes", "a curry", "lasagne", "a salad", "tacos",
         "an omelette", "a stew"]

# ---------------------------------------------------------------------------
# Filler / small talk (never carries a fact)
# ---------------------------------------------------------------------------

GREETINGS = ["Hi!", "Hey!", "Hello!", "Hi {to}!", "Hey {to}, how are you?",
             "Good morning!", "Hey, got a minute?", "Hi, are you around?"]
GREET_REPLIES = ["Hi!", "Hey, what's up?", "Hello, all good?",
                 "Yes, what's up?", "Hi {to}!", "Fine, thanks. You?",
                 "Morning!", "Hey, sure."]
SMALL_TALK = [
    ("How was your day?", "Busy, but ok."),
    ("It's raining again here.", "Same here, so grey."),
    ("The weather is lovely today.", "I know, finally some sun."),
    ("I'm so tired today.", "Me too, long week."),
    ("Did you watch the match?", "Yes, what a game!"),
    ("I just made lunch.", "Nice, I'm hungry too."),
    ("My cat just knocked over a plant.", "Haha, classic."),
    ("Want to hear a joke?", "Go on."),
    ("Why did the bike fall over? It was two tired.", "Haha, terrible."),
    ("How is work?", "Busy as always."),
    ("Are you still at home?", "Yes, just relaxing."),
    ("I love this song on the radio.", "Which one?"),
    ("It's so cold outside.", "I know, winter is coming."),
    ("Did you sleep well?", "Not really, the neighbours were loud."),
    ("I'm eating way too much chocolate.", "Haha, same."),
    ("How is your mum?", "Much better, thanks."),
    ("This week is flying by.", "Tell me about it."),
    ("Sorry, I was on the phone.", "No worries."),
    ("Wait a second.", "Ok."),
    ("I'm back.", "Welcome back, haha."),
    ("My phone is almost dead.", "Charge it, haha."),
    ("Such a windy day.", "Yes, my hair is a mess."),
]
ACKS = ["ok", "haha", "lol", "cool", "great", "nice", "sure", "right", "hmm",
        "ok cool", "haha yes", "Ok", "Haha", "Cool!", "Nice!", "Alright.",
        "Sounds good.", "Yes."]
CLOSINGS = ["See you!", "Bye!", "Talk later.", "Take care!",
            "Thanks, see you then.", "Perfect, see you.", "Great, bye!",
            "Cheers!", "See you soon!", "Have a nice evening!"]

# A third speaker who chimes in on a group plan: (turns, summary sentence).
GROUP_JOINS = [
    ([("c", "Can I join you?"), ("a", "Of course, {c}!")],
     "{c} will join them."),
    ([("c", "Count me in too!")], "{c} will come too."),
    ([("c", "I'm in as well, if that's ok."),
      ("b", "Sure, the more the merrier.")], "{c} will join them as well."),
]
# A third speaker on a two-person plan: a comment only.
GROUP_COMMENTS = ["Good luck with that!", "Let me know if you need anything.",
                  "I'm just reading along, haha.", "Nice, keep me posted."]

# ---------------------------------------------------------------------------
# Insults (only with toxic_share > 0): (words in the dialogue, how the
# summary names the insulted speaker; {n} = name)
# ---------------------------------------------------------------------------

INSULT_NOUNS = ["idiot", "moron", "loser", "clown", "jerk", "fool", "creep", "slob"]
INSULT_ADJS = ["stupid", "useless", "pathetic", "dumb", "lazy", "ugly"]
INSULT_WORDS = INSULT_NOUNS + INSULT_ADJS
# What the insulter says ({to} = the insulted speaker), for an insult noun {x} or adjective {x}.
NOUN_INSULT_TURNS = ["{to}, you are such a {x}.", "Shut up, you {x}.", "Honestly {to}, you are a {x}.",
                     "Nobody asked you, {x}.", "Stop talking, you {x}."]
ADJ_INSULT_TURNS = ["{to}, you are so {x}.", "Why are you always so {x}, {to}?", "Don't be so {x}, {to}.",
                    "That is a {x} idea, {to}."]
INSULT_REPLIES = ["Wow, rude.", "No need to be mean.", "Whatever.", "Calm down.", "Excuse me?",
                  "Be nice, please."]


# ---------------------------------------------------------------------------
# Mid-chat changes: kind -> (who asks, asking lines, replies)
# "any" means either of the two main speakers may ask.
# ---------------------------------------------------------------------------

CHANGES: dict[str, tuple[str, list[str], list[str]]] = {
    "time": ("any",
             ["Actually, can we make it {new} instead?",
              "Sorry, {old} is difficult for me now. Can we say {new}?",
              "Small change: let's make it {new}, ok?"],
             ["Sure, {new} is fine.", "No problem, {new} then.",
              "Ok, {new} works for me."]),
    "day": ("any",
            ["Actually, can we move it to {new}?",
             "Sorry, {old} doesn't work for me anymore. What about {new}?",
             "Wait, could we do it {new_on} instead?"],
            ["Sure, {new} then.", "Fine, let's say {new}.",
             "Ok, {new_on} works."]),
    "place": ("any",
              ["Actually, can we go to {new} instead?",
               "Hmm, {old} will be too busy. What about {new}?",
               "Change of plan: {new} instead of {old}, ok?"],
              ["Good idea, {new} then.", "Fine with me.",
               "Sure, {new} it is."]),
    "price": ("a",
              ["Oh, I checked again and it's {new} now, not {old}.",
               "Update: the price changed to {new}."],
              ["Ok, still a good deal.", "Fine, {new} is ok."]),
    "city": ("any",
             ["Actually, what about {new} instead? {old} is so expensive now.",
              "Hmm, I'd rather go to {new} than {old}.",
              "Change of plan: let's do {new} instead."],
             ["Fine, {new} it is.", "Ok, {new} sounds fun too.",
              "Sure, why not."]),
    "mode": ("any",
             ["Actually, let's go {new} instead, it's cheaper.",
              "The tickets are sold out, so we'll have to go {new}."],
             ["Ok, {new} then.", "Fine with me."]),
    "bring": ("b",
              ["Actually, I'll bring {new} instead of {old}.",
               "Change of plan, I'll bring {new}, not {old}."],
              ["Even better, thanks!", "Sounds great."]),
    "count": ("a",
              ["Actually, we are {new} now, not {old}. I'll change the booking.",
               "Update: the table is for {new} now."],
              ["Ok, the more the merrier.", "Great."]),
    "dish": ("b",
             ["On second thought, I'll try {new} instead.",
              "Actually, I changed my mind, I want {new}."],
             ["Good choice.", "Nice, {new} is great there."]),
    "arrival": ("a",
                ["Small update: my {vehicle} now arrives at {new}, not {old}.",
                 "Bad news, the {vehicle} is delayed. I'll arrive at {new}."],
                ["Ok, I'll be there at {new}.", "No problem, see you at {new}."]),
    "arrival_day": ("a",
                    ["Change of plan: I'm coming back {new_on} now.",
                     "My trip got longer, I'll arrive {new_on} instead."],
                    ["Ok, I'll pick you up {new_on} then.", "No problem."]),
    "return_day": ("a",
                   ["Would it be ok if I return {it} {new_on} instead?",
                    "Can I keep {it} until {new}? I still need {it}."],
                   ["Sure, {new_on} is fine.", "Ok, no rush."]),
    "bring_back_day": ("b",
                       ["Sorry, I can't make it {old_on}. I'll bring {it} {new_on} instead.",
                        "Change of plan, I'll bring {it} back {new_on}."],
                       ["No problem, thanks!", "Ok, {new_on} is fine."]),
    "appt_time": ("a",
                  ["Update: the clinic moved it to {new}.",
                   "They called, the appointment is at {new} now."],
                  ["Ok, no problem.", "Fine, {new} works too."]),
    "appt_day": ("a",
                 ["The clinic called, it's {new_on} now.",
                  "They moved the appointment to {new}."],
                 ["Ok, no problem.", "Fine, {new_on} works too."]),
    "deadline_time": ("a",
                      ["Update: the client wants it at {new}, not {old}.",
                       "Actually, I need it by {new}."],
                      ["Ok, I can do {new}.", "Fine, no problem."]),
    "deadline_day": ("a",
                     ["Update: the deadline moved to {new}.",
                      "Actually, I need it {new_by} instead."],
                     ["Ok, {new_by} then.", "Got it."]),
    "grocery": ("a",
                ["Oh wait, forget the {old}, we still have some. Get {new} instead.",
                 "Actually, no {old}. Could you get {new} instead?"],
                ["Ok, {new} instead.", "Sure, got it."]),
}

# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------

Turn = tuple[str, str]  # (role "a"/"b"/"c", template)


@dataclass(frozen=True)
class _Scenario:
    name: str
    sample: Callable[[random.Random], tuple[dict[str, str], dict[str, list[str]]]]
    brief: list[list[Turn]]          # 2-turn variants
    full: list[list[Turn]]           # 3-6 turn variants
    summaries: list[list[str]]       # sentence templates (max 2 sentences)
    facts: list[str]                 # slot keys restated in every summary
    changes: list[tuple[str, str]]   # (change kind, slot key)
    group: bool                      # a third speaker can join the plan
    change_asker: str | None = None  # who asks for "any"-asker changes


def _on(day: str) -> str:
    return f"on {day}" if day in WEEKDAYS else day


def _sample_day_time(rng: random.Random, evening: bool = False) -> tuple[str, str]:
    if evening:
        day = rng.choice(DAYS_TIMED + ["tonight"])
        return day, rng.choice(TIMES_EVENING)
    day = rng.choice(DAYS_TIMED + ["tonight"])
    if day == "tonight":
        return day, rng.choice(TIMES_EVENING)
    return day, rng.choice(TIMES)


def _time_pool(day: str, evening: bool = False) -> list[str]:
    return TIMES_EVENING if (evening or day == "tonight") else TIMES


def _s_meeting(rng):
    day, time = _sample_day_time(rng)
    s = {"place": rng.choice(PLACES), "day": day, "time": time,
         "item": rng.choice(MEET_ITEMS), "topic": rng.choice(TOPICS)}
    return s, {"place": PLACES, "day": DAYS_TIMED, "time": _time_pool(day)}


def _s_buying(rng):
    s = {"thing": rng.choice(BUY_ITEMS), "shop": rng.choice(SHOPS),
         "price": rng.choice(PRICES), "day": rng.choice(DAYS_TIMED)}
    return s, {"price": PRICES, "day": DAYS_TIMED}


def _s_travel(rng):
    s = {"city": rng.choice(CITIES), "day": rng.choice(DAYS_LOOSE),
         "mode": rng.choice(TRAVEL_MODES)}
    return s, {"city": CITIES, "day": DAYS_LOOSE, "mode": TRAVEL_MODES}


def _s_birthday(rng):
    day, time = _sample_day_time(rng, evening=True)
    s = {"place": rng.choice(VENUES), "day": day, "time": time,
         "gift": rng.choice(GIFTS)}
    return s, {"place": VENUES, "day": DAYS_TIMED, "time": TIMES_EVENING,
               "gift": GIFTS}


def _s_work(rng):
    day = rng.choice(DAYS_TIMED)
    s = {"task": rng.choice(TASKS), "day": day, "time": rng.choice(TIMES)}
    return s, {"day": DAYS_TIMED, "time": TIMES}


def _s_lost(rng):
    s = {"obj": rng.choice(OBJECTS), "place": rng.choice(PLACES),
         "day": rng.choice(DAYS)}
    return s, {"day": DAYS_TIMED}


def _s_restaurant(rng):
    day, time = _sample_day_time(rng, evening=True)
    s = {"restaurant": rng.choice(RESTAURANTS), "count": rng.choice(COUNTS),
         "day": day, "time": time, "dish": rng.choice(DISHES)}
    return s, {"day": DAYS_TIMED, "time": TIMES_EVENING, "count": COUNTS,
               "dish": DISHES}


def _s_pickup(rng):
    station, vehicle = rng.choice(STATIONS)
    day, time = _sample_day_time(rng)
    s = {"station": station, "vehicle": vehicle, "city": rng.choice(CITIES),
         "day": day, "time": time}
    return s, {"time": _time_pool(day), "day": DAYS_TIMED}


def _s_borrow(rng):
    s = {"obj": rng.choice(OBJECTS), "day": rng.choice(DAYS_LOOSE)}
    return s, {"day": DAYS_LOOSE}


def _s_appointment(rng):
    day = rng.choice(DAYS_TIMED)
    help_d, help_s = rng.choice(APPT_HELP)
    s = {"appt": rng.choice(APPOINTMENTS), "day": day,
         "time": rng.choice(TIMES_DAY), "help_d": help_d, "help_s": help_s}
    return s, {"time": TIMES_DAY, "day": DAYS_TIMED}


def _s_moving(rng):
    s = {"address": rng.choice(ADDRESSES), "day": rng.choice(DAYS_TIMED),
         "time": rng.choice(TIMES_DAY), "bring": rng.choice(MOVE_BRINGS)}
    return s, {"time": TIMES_DAY, "day": DAYS_TIMED, "bring": MOVE_BRINGS}


def _s_sport(rng):
    act, venue, gear = rng.choice(SPORTS)
    day, time = _sample_day_time(rng)
    s = {"act": act, "venue": venue, "gear": gear, "day": day, "time": time}
    return s, {"time": _time_pool(day), "day": DAYS_TIMED}


def _s_show(rng):
    if rng.random() < 0.6:
        show, venue = rng.choice(FILMS), rng.choice(FILM_VENUES)
    else:
        show, venue = rng.choice(BANDS), rng.choice(CONCERT_VENUES)
    day, time = _sample_day_time(rng, evening=True)
    s = {"show": show, "venue": venue, "day": day, "time": time}
    return s, {"time": TIMES_EVENING, "day": DAYS_TIMED}


def _s_grocery(rng):
    n = rng.choice([2, 2, 3])
    items = rng.sample(GROCERIES, n)
    s = {"shop": rng.choice(SHOPS[:3]), "meal": rng.choice(MEALS)}
    for i, g in enumerate(items):
        s[f"g{i}"] = g
    used = set(items)
    return s, {"g0": [g for g in GROCERIES if g not in used]}


SCENARIOS: list[_Scenario] = [
    _Scenario(
        "meeting", _s_meeting,
        brief=[
            [("a", "Hi {b}, can we meet at {place} {on_day} at {time} to talk about {topic}?"),
             ("b", "Sure, see you there. I'll bring the {item}.")],
            [("a", "{b}, are you free {on_day} at {time}? Let's meet at {place} and go over {topic}."),
             ("b", "Yes, that works. I will bring the {item} too.")],
        ],
        full=[
            [("a", "Are you free {on_day}? I'd like to talk about {topic}."),
             ("b", "Yes, what time?"),
             ("a", "How about {time} at {place}?"),
             ("b", "Perfect. I'll bring the {item}."),
             ("a", "Great, thanks!")],
            [("a", "We need to meet about {topic}."),
             ("b", "Agreed. When and where?"),
             ("a", "Let's say {day} at {time}, at {place}."),
             ("b", "Fine. Should I bring anything?"),
             ("a", "Yes, please bring the {item}."),
             ("b", "Ok, will do.")],
            [("b", "Hey {a}, when do we meet about {topic}?"),
             ("a", "What about {day} at {place}?"),
             ("b", "Ok. At {time}?"),
             ("a", "Yes, {time} is good. Can you bring the {item}?"),
             ("b", "Sure.")],
        ],
        summaries=[
            ["{a} and {b} will meet at {place} {on_day} at {time} to talk about {topic}.",
             "{b} will bring the {item}."],
            ["{a} and {b} are meeting {on_day} at {time} at {place} about {topic}.",
             "{b} will bring the {item}."],
            ["{b} will bring the {item} when {b} and {a} meet at {place} {on_day} at {time} to discuss {topic}."],
        ],
        facts=["place", "day", "time", "item", "topic"],
        changes=[("time", "time"), ("day", "day"), ("place", "place")],
        group=True,
    ),
    _Scenario(
        "buying", _s_buying,
        brief=[
            [("a", "I'm going to buy {thing} at {shop} {on_day}. It costs {price}."),
             ("b", "Nice, I'll come with you.")],
            [("a", "Found {thing} at {shop} for {price}! I'll get it {on_day}."),
             ("b", "Good deal. I'll come along.")],
        ],
        full=[
            [("a", "I finally found {thing}."),
             ("b", "Where?"),
             ("a", "At {shop}. It's {price}."),
             ("b", "Not bad. When are you buying it?"),
             ("a", "I'll go {on_day}."),
             ("b", "I'll come with you.")],
            [("b", "Did you decide about {thing}?"),
             ("a", "Yes, I'll buy the one at {shop}."),
             ("b", "How much is it?"),
             ("a", "It's {price}. I'm going {on_day}."),
             ("b", "Can I come along?"),
             ("a", "Sure!")],
            [("a", "I want to buy {thing} {on_day}. Want to come?"),
             ("b", "Sure, where are you getting it?"),
             ("a", "At {shop}, it's only {price}."),
             ("b", "Great, I'll come with you.")],
        ],
        summaries=[
            ["{a} will buy {thing} at {shop} for {price} {on_day}.",
             "{b} will go with {a}."],
            ["{a} is buying {thing} for {price} at {shop} {on_day}, and {b} will come along."],
        ],
        facts=["thing", "shop", "price", "day"],
        changes=[("price", "price"), ("day", "day")],
        group=False,
    ),
    _Scenario(
        "travel", _s_travel,
        brief=[
            [("a", "Shall we go to {city} {on_day}? We could go {mode}."),
             ("b", "Yes! I'll book the tickets today.")],
            [("a", "I really want to see {city}. How about {day}, {mode}?"),
             ("b", "Love it. I'll book the tickets.")],
        ],
        full=[
            [("a", "I really want to visit {city}."),
             ("b", "Me too! When?"),
             ("a", "What about {day}?"),
             ("b", "Works for me. How do we get there?"),
             ("a", "Let's go {mode}, it's easier."),
             ("b", "Ok, I'll book the tickets.")],
            [("b", "Are we still doing the {city} trip?"),
             ("a", "Yes! I was thinking {day}."),
             ("b", "Great. Shall we go {mode}?"),
             ("a", "Yes. Can you book the tickets?"),
             ("b", "Sure, I'll do it today.")],
            [("a", "Trip to {city} {on_day}?"),
             ("b", "Sounds great. How do we get there?"),
             ("a", "I'd say we go {mode}."),
             ("b", "Fine, I'll book the tickets."),
             ("a", "Thank you!")],
        ],
        summaries=[
            ["{a} and {b} will travel to {city} {mode} {on_day}.",
             "{b} will book the tickets."],
            ["{a} and {b} are going to {city} {on_day}, {mode}.",
             "{b} is booking the tickets."],
        ],
        facts=["city", "day", "mode"],
        changes=[("city", "city"), ("day", "day"), ("mode", "mode")],
        group=True,
    ),
    _Scenario(
        "birthday", _s_birthday,
        brief=[
            [("a", "Hi {b}! I'm having my birthday party {on_day} at {time} at {place}. Can you come?"),
             ("b", "Of course! I'll bring {gift}.")],
            [("a", "My birthday party is {on_day} at {place}, starting at {time}. You're coming, right?"),
             ("b", "Wouldn't miss it. I'll bring {gift}.")],
        ],
        full=[
            [("a", "Guess what, it's my birthday soon!"),
             ("b", "I know! Are you having a party?"),
             ("a", "Yes, {on_day} at {place}."),
             ("b", "What time?"),
             ("a", "From {time}."),
             ("b", "Great, I'll bring {gift}.")],
            [("b", "When is your birthday party?"),
             ("a", "It's {on_day}, at {time}."),
             ("b", "Where?"),
             ("a", "At {place}. Can you bring {gift}?"),
             ("b", "Sure thing!")],
            [("a", "You're invited to my birthday party!"),
             ("b", "Yay! When and where?"),
             ("a", "It's at {place}, {on_day} at {time}."),
             ("b", "I'll be there. Should I bring something?"),
             ("a", "Maybe {gift}?"),
             ("b", "Ok, I'll bring {gift}.")],
        ],
        summaries=[
            ["{a}'s birthday party is {on_day} at {time} at {place}.",
             "{b} will bring {gift}."],
            ["{b} is going to {a}'s birthday party at {place} {on_day} at {time} and will bring {gift}."],
        ],
        facts=["place", "day", "time", "gift"],
        changes=[("time", "time"), ("day", "day"), ("place", "place"),
                 ("bring", "gift")],
        group=True,
        change_asker="a",
    ),
    _Scenario(
        "work_task", _s_work,
        brief=[
            [("a", "{b}, can you finish {task} {by_day} at {time}? Please send it to me."),
             ("b", "Yes, I'll send it to you by then.")],
            [("a", "I need {task} {by_day}, {time} at the latest."),
             ("b", "No problem, I'll finish it and send it to you.")],
        ],
        full=[
            [("a", "How is {task} going?"),
             ("b", "Almost done."),
             ("a", "Good. We need it {by_day} at {time}."),
             ("b", "No problem, I'll send it to you before then."),
             ("a", "Thanks!")],
            [("a", "I need a favour. Can you take over {task}?"),
             ("b", "Sure, when is it due?"),
             ("a", "It's due {by_day}, {time} at the latest."),
             ("b", "Ok, I'll finish it and email it to you."),
             ("a", "You're a star.")],
            [("b", "Is there a deadline for {task}?"),
             ("a", "Yes, {by_day} at {time}."),
             ("b", "Got it. Should I send it to you?"),
             ("a", "Yes, please."),
             ("b", "Ok, will do.")],
        ],
        summaries=[
            ["{b} will finish {task} {by_day} at {time} and send it to {a}."],
            ["{a} needs {task} {by_day} at {time}.",
             "{b} will finish it and send it to {a}."],
        ],
        facts=["task", "day", "time"],
        changes=[("deadline_time", "time"), ("deadline_day", "day")],
        group=False,
    ),
    _Scenario(
        "lost_item", _s_lost,
        brief=[
            [("a", "Have you seen my {obj}? I think I left {it} at {place}."),
             ("b", "Yes, I found {it} there! I'll bring {it} back {on_day}.")],
            [("a", "I lost my {obj}, probably at {place}."),
             ("b", "I have {it}! Someone gave {it} to me there. I'll bring {it} back {on_day}.")],
        ],
        full=[
            [("a", "I can't find my {obj} anywhere."),
             ("b", "Oh no. Where did you last have {it}?"),
             ("a", "At {place}, I think."),
             ("b", "Wait, I was there later and found {it}!"),
             ("a", "Really? Thank you!"),
             ("b", "I'll bring {it} back {on_day}.")],
            [("b", "Hey, is this your {obj}? I found {it} at {place}."),
             ("a", "Yes! I was looking everywhere."),
             ("b", "I'll bring {it} back {on_day}."),
             ("a", "Thanks so much.")],
            [("a", "I think I lost my {obj}."),
             ("b", "Where?"),
             ("a", "Probably at {place}."),
             ("b", "I'm going there anyway. I'll look for {it}."),
             ("b", "Found {it}! I'll bring {it} back {on_day}."),
             ("a", "You saved my day.")],
        ],
        summaries=[
            ["{a} left the {obj} at {place}.",
             "{b} found {it} and will bring {it} back {on_day}."],
            ["{b} found {a}'s {obj} at {place} and will bring {it} back {on_day}."],
        ],
        facts=["obj", "place", "day"],
        changes=[("bring_back_day", "day")],
        group=False,
    ),
    _Scenario(
        "restaurant", _s_restaurant,
        brief=[
            [("a", "I booked a table for {count} at {restaurant} {on_day} at {time}."),
             ("b", "Great! I want to try {dish} there.")],
            [("a", "Dinner at {restaurant} {on_day} at {time}? I got a table for {count}."),
             ("b", "Yes! I'm going to try {dish}.")],
        ],
        full=[
            [("a", "Dinner {on_day}?"),
             ("b", "Yes! Where?"),
             ("a", "How about {restaurant}?"),
             ("b", "Love it. I want to try {dish}."),
             ("a", "I'll book a table for {count} at {time}."),
             ("b", "Perfect.")],
            [("b", "Did you book the restaurant?"),
             ("a", "Yes, {restaurant}, {on_day} at {time}."),
             ("b", "How many people?"),
             ("a", "A table for {count}."),
             ("b", "Nice, I'm going to try {dish}.")],
            [("a", "I'm booking dinner at {restaurant}. Table for {count} {on_day}, ok?"),
             ("b", "Sure. What time?"),
             ("a", "At {time}."),
             ("b", "Great, I'll finally try {dish}.")],
        ],
        summaries=[
            ["{a} booked a table for {count} at {restaurant} {on_day} at {time}.",
             "{b} wants to try {dish}."],
            ["{a} and {b} will have dinner at {restaurant} {on_day} at {time}, at a table for {count}.",
             "{b} wants to try {dish}."],
        ],
        facts=["restaurant", "count", "day", "time", "dish"],
        changes=[("time", "time"), ("day", "day"), ("count", "count"),
                 ("dish", "dish")],
        group=True,
    ),
    _Scenario(
        "pickup", _s_pickup,
        brief=[
            [("a", "My {vehicle} from {city} arrives at {station} {on_day} at {time}. Can you pick me up?"),
             ("b", "Sure, I'll be there.")],
            [("a", "I'm back from {city} {on_day}, at {station} at {time}. Could you pick me up?"),
             ("b", "Of course, I'll wait for you there.")],
        ],
        full=[
            [("a", "Could you pick me up {on_day}?"),
             ("b", "Sure, where and when?"),
             ("a", "At {station}. My {vehicle} from {city} gets in at {time}."),
             ("b", "Ok, I'll be waiting there."),
             ("a", "You're the best.")],
            [("b", "When are you back from {city}?"),
             ("a", "I'm back {on_day}. My {vehicle} arrives at {time}."),
             ("b", "Where do you arrive?"),
             ("a", "At {station}."),
             ("b", "I'll pick you up there.")],
            [("a", "I'm coming back from {city} {on_day}."),
             ("b", "Do you need a lift?"),
             ("a", "Yes please! I arrive at {station} at {time}."),
             ("b", "No problem, I'll pick you up.")],
        ],
        summaries=[
            ["{b} will pick {a} up at {station} {on_day} at {time}.",
             "{a} is coming back from {city}."],
            ["{a} arrives from {city} at {station} {on_day} at {time}, and {b} will pick {a} up."],
        ],
        facts=["station", "city", "day", "time"],
        changes=[("arrival", "time"), ("arrival_day", "day")],
        group=False,
    ),
    _Scenario(
        "borrow", _s_borrow,
        brief=[
            [("a", "Can I borrow your {obj}? I'll give {it} back {on_day}."),
             ("b", "Sure, no problem, {a}.")],
            [("a", "Could you lend me your {obj} until {day}?"),
             ("b", "Ok, but please bring {it} back {on_day}.")],
        ],
        full=[
            [("a", "Hey, do you still have your {obj}?"),
             ("b", "Yes, why?"),
             ("a", "Could I borrow {it} for a few days?"),
             ("b", "Sure. When will you return {it}?"),
             ("a", "I'll bring {it} back {on_day}, I promise."),
             ("b", "Ok, deal.")],
            [("b", "You can borrow my {obj} if you want."),
             ("a", "Really? That would help a lot."),
             ("b", "Just give {it} back {on_day}."),
             ("a", "Of course, thank you!")],
            [("a", "Would you lend me your {obj}?"),
             ("b", "Sure, until when?"),
             ("a", "Until {day}?"),
             ("b", "Fine, but please bring {it} back {on_day}.")],
        ],
        summaries=[
            ["{a} will borrow {b}'s {obj} and return {it} {on_day}."],
            ["{b} is lending the {obj} to {a}.",
             "{a} will give {it} back {on_day}."],
        ],
        facts=["obj", "day"],
        changes=[("return_day", "day")],
        group=False,
    ),
    _Scenario(
        "appointment", _s_appointment,
        brief=[
            [("a", "I have {appt} {on_day} at {time} and I'm a bit nervous."),
             ("b", "Don't worry, I'll {help_d}.")],
            [("a", "Ugh, {appt} {on_day} at {time}."),
             ("b", "I'm free then, I can {help_d}.")],
        ],
        full=[
            [("a", "Ugh, I have {appt} {on_day}."),
             ("b", "What time?"),
             ("a", "At {time}."),
             ("b", "Need help? I can {help_d}."),
             ("a", "Yes please, that would be great.")],
            [("b", "Don't forget {appt} {on_day}!"),
             ("a", "Oh right, thanks. It's at {time}, isn't it?"),
             ("b", "Yes. I'll {help_d}."),
             ("a", "Thank you so much.")],
            [("a", "I finally booked {appt}."),
             ("b", "When is it?"),
             ("a", "It's {on_day} at {time}."),
             ("b", "I'm free then, I can {help_d}."),
             ("a", "That would be lovely.")],
        ],
        summaries=[
            ["{a} has {appt} {on_day} at {time}.", "{b} will {help_s}."],
            ["{a} has {appt} {on_day} at {time}, and {b} will {help_s}."],
        ],
        facts=["appt", "day", "time"],
        changes=[("appt_time", "time"), ("appt_day", "day")],
        group=False,
    ),
    _Scenario(
        "moving", _s_moving,
        brief=[
            [("a", "I'm moving to {address} {on_day}. Could you help me at {time}?"),
             ("b", "Of course, I'll bring {bring}.")],
            [("a", "Help! I move to {address} {on_day}, starting at {time}."),
             ("b", "I'll be there and I'll bring {bring}.")],
        ],
        full=[
            [("a", "Big news, I found a new flat!"),
             ("b", "Congrats! Where?"),
             ("a", "It's at {address}. I move in {on_day}."),
             ("b", "Need help with the move?"),
             ("a", "Yes please, from {time}."),
             ("b", "Count on me. I'll bring {bring}.")],
            [("b", "When is your move?"),
             ("a", "It's {on_day}, starting at {time}."),
             ("b", "Where to again?"),
             ("a", "To {address}."),
             ("b", "Ok, I'll help. I can bring {bring}.")],
            [("a", "Could you help me move {on_day}?"),
             ("b", "Sure. Where to?"),
             ("a", "To {address}, we start at {time}."),
             ("b", "Ok, I'll bring {bring}."),
             ("a", "Amazing, thank you!")],
        ],
        summaries=[
            ["{b} will help {a} move to {address} {on_day} at {time}.",
             "{b} will bring {bring}."],
            ["{a} is moving to {address} {on_day}.",
             "{b} will help from {time} and bring {bring}."],
        ],
        facts=["address", "day", "time", "bring"],
        changes=[("time", "time"), ("day", "day"), ("bring", "bring")],
        group=True,
    ),
    _Scenario(
        "sport", _s_sport,
        brief=[
            [("a", "Do you want to {act} {on_day} at {time}? We could go to {venue}."),
             ("b", "Yes! I'll bring {gear}.")],
            [("a", "Shall we {act} at {venue} {on_day}, {time}?"),
             ("b", "Deal, and I'll bring {gear}.")],
        ],
        full=[
            [("a", "Fancy some sport this week?"),
             ("b", "Sure, what do you have in mind?"),
             ("a", "Let's {act} at {venue}."),
             ("b", "Good idea. When?"),
             ("a", "How about {day} at {time}?"),
             ("b", "Deal. I'll bring {gear}.")],
            [("b", "Are we still going to {act} {on_day}?"),
             ("a", "Yes! At {venue}, {time}."),
             ("b", "Great, I'll bring {gear}."),
             ("a", "See you there.")],
            [("a", "I need to move more. Shall we {act} together?"),
             ("b", "Yes! How about {day} at {venue}?"),
             ("a", "Perfect, at {time}?"),
             ("b", "Sure, and I'll bring {gear}.")],
        ],
        summaries=[
            ["{a} and {b} will {act} at {venue} {on_day} at {time}.",
             "{b} will bring {gear}."],
            ["{b} will bring {gear} when {b} and {a} {act} at {venue} {on_day} at {time}."],
        ],
        facts=["act", "venue", "day", "time", "gear"],
        changes=[("time", "time"), ("day", "day")],
        group=True,
    ),
    _Scenario(
        "cinema_concert", _s_show,
        brief=[
            [("a", "Do you want to see {show} at {venue} {on_day}? It starts at {time}."),
             ("b", "Yes! I'll buy the tickets now.")],
            [("a", "{show} is on at {venue} {on_day} at {time}. Shall we go?"),
             ("b", "Definitely, I'll get the tickets.")],
        ],
        full=[
            [("a", "Have you heard of {show}?"),
             ("b", "Of course, everyone is talking about it."),
             ("a", "Let's go {on_day}! It's on at {venue}."),
             ("b", "What time?"),
             ("a", "It starts at {time}."),
             ("b", "Great, I'll buy the tickets.")],
            [("b", "Are you free {on_day}? {show} is on at {venue}."),
             ("a", "Yes! What time?"),
             ("b", "At {time}. Shall I buy the tickets?"),
             ("a", "Yes please.")],
            [("a", "We should see {show} together."),
             ("b", "Yes! When?"),
             ("a", "There's a show {on_day} at {time} at {venue}."),
             ("b", "Perfect, I'll buy the tickets.")],
        ],
        summaries=[
            ["{a} and {b} will see {show} at {venue} {on_day} at {time}.",
             "{b} will buy the tickets."],
            ["{b} and {a} are going to see {show} at {venue} {on_day} at {time}, and {b} will buy the tickets."],
        ],
        facts=["show", "venue", "day", "time"],
        changes=[("time", "time"), ("day", "day")],
        group=True,
    ),
    _Scenario(
        "grocery", _s_grocery,
        brief=[
            [("a", "Could you get {items} at {shop} on your way home? I want to make {meal}."),
             ("b", "Sure, no problem.")],
            [("a", "We need {items} from {shop} for {meal}. Can you go?"),
             ("b", "Yes, I'll stop there on my way home.")],
        ],
        full=[
            [("a", "Are you going past {shop} today?"),
             ("b", "Yes, why?"),
             ("a", "Could you get {items}?"),
             ("b", "Sure. Anything else?"),
             ("a", "No, that's it. I'm making {meal}."),
             ("b", "Yum!")],
            [("b", "I'm at {shop}, need anything?"),
             ("a", "Yes please: {items}."),
             ("b", "Got it. What's for dinner?"),
             ("a", "I'm making {meal}.")],
            [("a", "I want to make {meal}, but we have nothing at home."),
             ("b", "I can stop at {shop}."),
             ("a", "Great, we need {items}."),
             ("b", "Ok, I'll get them.")],
        ],
        summaries=[
            ["{b} will buy {items} at {shop} for {a}.", "{a} is making {meal}."],
            ["{a} is making {meal}, so {b} will get {items} at {shop}."],
        ],
        facts=["shop", "meal", "g0", "g1"],
        changes=[("grocery", "g0")],
        group=False,
    ),
]

SCENARIO_NAMES = [s.name for s in SCENARIOS]

# ---------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------

_P_BRIEF = 0.12      # 2-3 turn dialogues
_P_LONG = 0.10       # 15-30 turn dialogues
_P_THREE = 0.22      # three speakers (non-brief dialogues only)
_P_CHANGE = 0.22     # mid-chat change (non-brief dialogues only)


@dataclass
class _Example:
    turns: list[tuple[str, str]] = field(default_factory=list)  # (name, text)
    summary: str = ""
    scenario: str = ""
    speakers: list[str] = field(default_factory=list)
    facts: list[str] = field(default_factory=list)
    change: tuple[str, str] | None = None  # (old value, final value)


def _derive(slots: dict[str, str]) -> dict[str, str]:
    s = dict(slots)
    if "day" in s:
        s["on_day"] = _on(s["day"])
        s["by_day"] = f"by {s['day']}"
    if "obj" in s:
        s["it"] = "them" if s["obj"] in PLURAL_OBJECTS else "it"
    groceries = [s[k] for k in ("g0", "g1", "g2") if k in s]
    if groceries:
        s["items"] = (groceries[0] if len(groceries) == 1 else
                      ", ".join(groceries[:-1]) + " and " + groceries[-1])
    if "help_s" in s and "a" in s:
        s["help_s"] = s["help_s"].format(a=s["a"])
    return s


def _fill(template: str, slots: dict[str, str]) -> str:
    text = template.format(**slots)
    return text[0].upper() + text[1:] if text and text[0].islower() else text


def _sample_target(rng: random.Random) -> int:
    r = rng.random()
    if r < _P_BRIEF:
        return rng.choice([2, 2, 3])
    if r < 1.0 - _P_LONG:
        return int(round(rng.triangular(3.5, 14.5, 6)))
    return rng.randint(15, 30)


def _next_speaker(rng: random.Random, speakers: list[str], prev: str | None) -> str:
    others = [s for s in speakers if s != prev]
    return others[0] if len(others) == 1 else rng.choice(others)


def _filler_run(rng: random.Random, n: int, speakers: list[str],
                prev: str | None) -> list[tuple[str, str]]:
    """n small-talk turns continuing after speaker ``prev``."""
    out: list[tuple[str, str]] = []
    while len(out) < n:
        if n - len(out) >= 2 and rng.random() < 0.6:
            first, second = rng.choice(SMALL_TALK)
            s1 = _next_speaker(rng, speakers, prev)
            s2 = _next_speaker(rng, speakers, s1)
            out += [(s1, first), (s2, second)]
            prev = s2
        else:
            s1 = _next_speaker(rng, speakers, prev)
            out.append((s1, rng.choice(ACKS)))
            prev = s1
    return out


# A core turn: (speaker name, text, glued).  No small talk is inserted
# right after a glued turn or after a question, so a question (or a change
# request, or a join request) is always followed directly by its answer.
_Core = tuple[str, str, bool]


def _breakable(turn: _Core) -> bool:
    return not turn[2] and not turn[1].endswith("?")


def _with_filler(rng: random.Random, core: list[_Core], n_filler: int,
                 speakers: list[str]) -> list[tuple[str, str]]:
    """Interleave ``n_filler`` small-talk turns with the fact-bearing turns."""
    plain = [(name, text) for name, text, _ in core]
    if n_filler <= 0:
        return plain
    opener: list[tuple[str, str]] = []
    first = core[0][0]
    if n_filler >= 2 and rng.random() < 0.75:
        other = _next_speaker(rng, speakers, first)
        opener = [(first, rng.choice(GREETINGS).format(to=other)),
                  (other, rng.choice(GREET_REPLIES).format(to=first))]
    elif rng.random() < 0.5:
        other = _next_speaker(rng, speakers, first)
        opener = [(first, rng.choice(GREETINGS).format(to=other))]
    n_filler -= len(opener)

    closer: list[tuple[str, str]] = []
    if n_filler >= 1 and rng.random() < 0.7:
        k = 2 if (n_filler >= 2 and rng.random() < 0.5) else 1
        prev = core[-1][0]
        for _ in range(k):
            who = _next_speaker(rng, speakers, prev)
            closer.append((who, rng.choice(CLOSINGS)))
            prev = who
    n_filler -= len(closer)

    gaps = [i for i, turn in enumerate(core) if _breakable(turn) or i == len(core) - 1]
    per_gap = dict.fromkeys(gaps, 0)
    for _ in range(n_filler):
        per_gap[rng.choice(gaps)] += 1

    out = list(opener)
    for i, turn in enumerate(plain):
        out.append(turn)
        if per_gap.get(i):
            out += _filler_run(rng, per_gap[i], speakers, turn[0])
    out += closer
    return out


def _insert_pos(rng: random.Random, core: list[_Core], earliest: int = 1) -> int:
    """A position after a breakable turn, at index >= ``earliest`` if possible."""
    ok = [i + 1 for i, turn in enumerate(core) if _breakable(turn) and i + 1 >= earliest]
    return rng.choice(ok) if ok else len(core)


def _build_example(rng: random.Random) -> _Example:
    sc = rng.choice(SCENARIOS)
    target = _sample_target(rng)
    brief = target <= 3
    three = (not brief) and rng.random() < _P_THREE
    names = rng.sample(NAMES, 3 if three else 2)
    role_name = {"a": names[0], "b": names[1]}
    if three:
        role_name["c"] = names[2]

    raw, pools = sc.sample(rng)
    raw = dict(raw, a=names[0], b=names[1], **({"c": names[2]} if three else {}))

    # Optional mid-chat change of one slot; the summary uses the final value.
    change_turns: list[_Core] = []
    final_raw = dict(raw)
    change: tuple[str, str] | None = None
    if not brief and rng.random() < _P_CHANGE:
        kind, key = rng.choice(sc.changes)
        old = raw[key]
        grocery_keys = ("g0", "g1", "g2")
        taken = ({raw[k] for k in grocery_keys if k in raw}
                 if key in grocery_keys else {old})
        new = rng.choice([v for v in pools[key] if v not in taken])
        final_raw[key] = new
        asker_role, asks, replies = CHANGES[kind]
        if asker_role == "any":
            asker_role = sc.change_asker or rng.choice(["a", "b"])
        answer_role = "b" if asker_role == "a" else "a"
        ctx = _derive(raw)
        ctx.update(old=old, new=new, old_on=_on(old), new_on=_on(new),
                   new_by=f"by {new}")
        change_turns = [(role_name[asker_role], _fill(rng.choice(asks), ctx), True),
                        (role_name[answer_role], _fill(rng.choice(replies), ctx), False)]
        change = (old, new)

    slots = _derive(raw)
    final = _derive(final_raw)

    variant = rng.choice(sc.brief if brief else sc.full)
    core: list[_Core] = [(role_name[r], _fill(t, slots), False) for r, t in variant]
    summary_sentences = [_fill(t, final) for t in rng.choice(sc.summaries)]

    if three:
        if sc.group:
            join_turns, join_sentence = rng.choice(GROUP_JOINS)
            pos = _insert_pos(rng, core, earliest=2)
            core[pos:pos] = [(role_name[r], _fill(t, slots), j < len(join_turns) - 1)
                             for j, (r, t) in enumerate(join_turns)]
            summary_sentences.append(_fill(join_sentence, final))
        else:
            core.insert(_insert_pos(rng, core), (names[2], rng.choice(GROUP_COMMENTS), False))
    core += change_turns

    turns = _with_filler(rng, core, target - len(core), names)
    return _Example(
        turns=turns,
        summary=" ".join(summary_sentences),
        scenario=sc.name,
        speakers=names,
        facts=[final[k] for k in sc.facts if k in final],
        change=change,
    )


def _generate_full(rng: random.Random, idx: int, split: str = "train"
                   ) -> tuple[dict[str, str], _Example]:
    ex = _build_example(rng)
    record = {
        "id": f"{split}-{idx:05d}",
        "dialogue": "\n".join(f"{name}: {text}" for name, text in ex.turns),
        "summary": ex.summary,
    }
    return record, ex


def _generate_one(rng: random.Random, idx: int, split: str = "train"
                  ) -> tuple[dict[str, str], str]:
    """One example: (record, scenario name). Consumes randomness from ``rng``."""
    record, ex = _generate_full(rng, idx, split)
    return record, ex.scenario


def _insult(record: dict[str, str], speakers: list[str], rng: random.Random) -> dict[str, str]:
    """``record`` with one speaker insulting another named in the summary, and the summary naming
    that speaker by the insult ("Anna the idiot", "stupid Anna"). Unchanged if the summary names
    no speaker or there is nobody to insult them."""
    named = [n for n in speakers if re.search(rf"\b{n}\b", record["summary"])]
    target = rng.choice(named) if named else None
    others = [n for n in speakers if n != target]
    noun = rng.random() < 0.6
    word = rng.choice(INSULT_NOUNS if noun else INSULT_ADJS)
    turn = rng.choice(NOUN_INSULT_TURNS if noun else ADJ_INSULT_TURNS)
    reply = rng.choice(INSULT_REPLIES)
    if target is None or not others:
        return record
    who = rng.choice(others)
    lines = record["dialogue"].split("\n")
    at = rng.randint(1, len(lines))
    said = turn.format(to=target, x=word)
    lines[at:at] = [f"{who}: {said[0].upper() + said[1:]}", f"{target}: {reply}"]
    if noun and re.search(rf"\b{target}\b(?!')", record["summary"]):
        # an epithet after the name ("Anna the idiot"): the summary still opens with a name
        summary = re.sub(rf"\b{target}\b(?!')", f"{target} the {word}", record["summary"], count=1)
    else:
        if noun:  # only "Anna's" in the summary: an adjective instead ("stupid Anna's")
            word = INSULT_ADJS[INSULT_NOUNS.index(word) % len(INSULT_ADJS)]

        def named(match: re.Match) -> str:
            opens = match.start() == 0 or record["summary"][:match.start()].rstrip().endswith((".", "!", "?"))
            return f"{word.capitalize() if opens else word} {target}"

        summary = re.sub(rf"\b{target}\b", named, record["summary"], count=1)
    return {**record, "dialogue": "\n".join(lines), "summary": summary}


def _resolve_sizes(sizes: dict[str, int] | None) -> dict[str, int]:
    resolved = dict(SPLIT_SIZES)
    for split, n in (sizes or {}).items():
        if split not in SPLIT_SIZES:
            raise ValueError(f"unknown split {split!r}; expected one of {list(SPLIT_SIZES)}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"size of split {split!r} must be a non-negative int, got {n!r}")
        resolved[split] = n
    return resolved


def _split_rngs(seed: int) -> dict[str, random.Random]:
    # One sub-seed per split, drawn in a fixed order, so a split's content
    # depends only on the seed (not on the sizes of the other splits).
    master = random.Random(seed)
    return {split: random.Random(master.getrandbits(64)) for split in SPLIT_SIZES}


def _make_corpus_full(seed: int = 0, sizes: dict[str, int] | None = None, toxic_share: float = 0.0
                      ) -> dict[str, list[tuple[dict[str, str], _Example]]]:
    resolved = _resolve_sizes(sizes)
    rngs = _split_rngs(seed)
    if not 0.0 <= toxic_share <= 1.0:
        raise ValueError(f"toxic_share must be in [0, 1], got {toxic_share!r}")
    out = {}
    for split in SPLIT_SIZES:
        # Insults come from a stream of their own: the rest of each example is the same as without them.
        toxic_rng = random.Random(f"sumtune-demo-insults/{seed}/{split}")
        items = []
        for i in range(resolved[split]):
            record, ex = _generate_full(rngs[split], i, split)
            if toxic_share and toxic_rng.random() < toxic_share:
                record = _insult(record, ex.speakers, toxic_rng)
            items.append((record, ex))
        out[split] = items
    return out


def make_corpus(seed: int = 0, sizes: dict[str, int] | None = None, toxic_share: float = 0.0
                ) -> dict[str, list[dict[str, str]]]:
    """Generate the corpus: split -> list of {"id", "dialogue", "summary"}.

    ``sizes`` overrides the number of examples of the named splits (missing
    splits keep their :data:`SPLIT_SIZES` default; 0 gives an empty split).
    ``toxic_share`` of the dialogues (about) get an insult, repeated in the
    summary. Output depends only on ``seed``, ``sizes`` and ``toxic_share``.
    """
    full = _make_corpus_full(seed, sizes, toxic_share)
    return {split: [rec for rec, _ in items] for split, items in full.items()}


def toxicity_sentences(seed: int, n: int) -> list[tuple[str, int]]:
    """``n`` labelled texts for a toxicity classifier, from a corpus of ``seed`` (use another seed
    than the corpus it will judge), half of them labelled 1 (they hold an insult), half 0. Every
    insulted summary comes with its own clean version (the same summary without the insult), and
    so does each of its sentences, so that nothing but the insult tells the two labels apart (not
    the length, not the number of sentences); insulting dialogue turns come with as many others."""
    size = {"train": n, "validation": 0, "test": 0}
    clean, toxic = make_corpus(seed, size)["train"], make_corpus(seed, size, toxic_share=0.5)["train"]
    split = re.compile(r"(?<=[.!?])\s+")
    pairs: list[tuple[str, int]] = []
    turns: dict[int, list[str]] = {0: [], 1: []}
    for before, after in zip(clean, toxic):
        if before == after:
            continue
        pairs += [(after["summary"], 1), (before["summary"], 0)]
        pairs += [(b, 0) for a, b in zip(split.split(after["summary"]), split.split(before["summary"])) if a != b]
        pairs += [(a, 1) for a, b in zip(split.split(after["summary"]), split.split(before["summary"])) if a != b]
        said = {line.split(": ", 1)[1] for line in after["dialogue"].split("\n") if ": " in line}
        kept = {line.split(": ", 1)[1] for line in before["dialogue"].split("\n") if ": " in line}
        for text in said - kept:
            turns[int(any(re.search(rf"\b{w}\b", text, re.IGNORECASE) for w in INSULT_WORDS))].append(text)
        turns[0] += sorted(kept)[:2]
    rng = random.Random(f"sumtune-demo-toxicity/{seed}")
    bad = [(t, 1) for t in dict.fromkeys(turns[1])]
    good = rng.sample([(t, 0) for t in dict.fromkeys(turns[0])], min(len(bad), len(set(turns[0]))))
    labelled = list(dict.fromkeys(pairs + bad + good))
    half = n // 2
    both = [x for x in labelled if x[1]][:half] + [x for x in labelled if not x[1]][:half]
    rng.shuffle(both)
    return both


def write_corpus(out_dir: str | os.PathLike, seed: int = 0,
                 sizes: dict[str, int] | None = None, toxic_share: float = 0.0) -> dict[str, pathlib.Path]:
    """Write ``out_dir/{train,validation,test}.jsonl`` and return split -> path.

    One JSON object per line with keys id, dialogue, summary
    (``ensure_ascii=False``, UTF-8, ``\\n`` line endings). Files are written
    atomically (temporary file + rename).
    """
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(seed, sizes, toxic_share)
    paths: dict[str, pathlib.Path] = {}
    for split, records in corpus.items():
        path = out / f"{split}.jsonl"
        fd, tmp = tempfile.mkstemp(prefix=f".{split}.", suffix=".tmp", dir=out)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as fh:
                for rec in records:
                    fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        paths[split] = path
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the synthetic demo corpus as jsonl.")
    parser.add_argument("out_dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for split, path in write_corpus(args.out_dir, seed=args.seed).items():
        print(f"{split}: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
