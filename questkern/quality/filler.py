"""Varied filler text for the quality suite: a bank of distinct sentences written here.

Repeating one filler sentence (the classic passkey prompt) makes every non-needle page
alike, so the needle's page stands out for any bound; real text does not. The bank
combines ``SUBJECTS x ACTIONS x SETTINGS`` (30 x 30 x 24 = 21,600 distinct sentences)
and :func:`sentences` draws them without repetition in a seeded order, so an 8K-token
haystack holds about 600 different sentences. No digits appear in the filler (the
needles' values are numbers) and none of the needle key words do.
"""

from __future__ import annotations

import random

SUBJECTS = (
    "The old fisherman",
    "A young teacher",
    "The city council",
    "My neighbour",
    "The baker on the corner",
    "A tired nurse",
    "The museum guide",
    "Our driver",
    "The quiet librarian",
    "A group of students",
    "The farmer's daughter",
    "The night watchman",
    "A travelling musician",
    "The village doctor",
    "Her brother",
    "The new manager",
    "A curious child",
    "The ship's captain",
    "The retired judge",
    "A street painter",
    "The head gardener",
    "Two old friends",
    "The careful engineer",
    "A local reporter",
    "The shop owner",
    "The youngest soldier",
    "A shy poet",
    "The tailor",
    "Their grandmother",
    "The mountain guide",
)
ACTIONS = (
    "repaired the wooden fence",
    "painted a small boat",
    "wrote a long letter",
    "planted rows of beans",
    "carried the heavy baskets",
    "cleaned the dusty windows",
    "baked bread for the market",
    "counted the sheep",
    "read an old newspaper",
    "sang a quiet song",
    "climbed the narrow stairs",
    "fixed the broken clock",
    "washed the muddy boots",
    "opened the rusty gate",
    "folded the clean linen",
    "sharpened the kitchen knives",
    "swept the stone courtyard",
    "mended a torn sail",
    "gathered dry firewood",
    "sorted the morning mail",
    "tuned the piano",
    "polished the silver cups",
    "watered the tomato plants",
    "studied a faded map",
    "fed the hungry geese",
    "built a shelf for books",
    "lit the oil lamps",
    "brewed a pot of tea",
    "measured the cloth",
    "stacked the empty crates",
)
SETTINGS = (
    "before the winter storm",
    "near the river bank",
    "after a long day",
    "while the bells were ringing",
    "under the grey sky",
    "in the early morning",
    "beside the old mill",
    "at the edge of town",
    "during the harvest festival",
    "as the sun went down",
    "behind the chapel",
    "on a windy afternoon",
    "without saying a word",
    "in the crowded square",
    "next to the bakery",
    "when the rain stopped",
    "at the foot of the hill",
    "inside the warm kitchen",
    "by the light of a candle",
    "along the dusty road",
    "in the cold cellar",
    "before anyone woke up",
    "near the harbour wall",
    "at the back of the barn",
)


def sentence_bank() -> list[str]:
    """All distinct filler sentences, in a fixed order."""
    return [f"{s} {a} {t}." for s in SUBJECTS for a in ACTIONS for t in SETTINGS]


def sentences(seed: int | str):
    """An endless iterator of filler sentences: the bank in a seeded order, reshuffled when exhausted."""
    bank = sentence_bank()
    rng = random.Random(f"filler-{seed}")
    while True:
        order = list(range(len(bank)))
        rng.shuffle(order)
        for i in order:
            yield bank[i]
