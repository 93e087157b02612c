"""The campaigns' seeded chooser. Cases were once drawn by hypothesis, whose choices (and so the published counts)
change from one hypothesis release to the next; Python's seeded `random.Random` gives the same sequence for the same
seed on every Python 3 release, so case N of a campaign is the same recipe everywhere."""

from __future__ import annotations

import random


class Draw:
    """Seeded choices for case `seed` of the campaign named `campaign` (each campaign its own sequences)."""

    TEXT = 'abcxyz019._- \n\t\x00é€ﬁ𝔘٣．'  # ASCII, separators, control, Latin-1, BMP, astral, Arabic digit

    def __init__(self, seed: int, campaign: str):
        self.rng = random.Random(f'{campaign}-{seed}')

    def integer(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def boolean(self) -> bool:
        return self.rng.random() < 0.5

    def choice(self, options):
        return options[self.rng.randrange(len(options))]

    def subset(self, options, min_size: int, max_size: int | None = None) -> list:
        """Distinct members, in a random order."""
        options = list(options)
        hi = len(options) if max_size is None else min(max_size, len(options))
        return self.rng.sample(options, self.integer(min(min_size, hi), hi))

    def items(self, options, min_size: int, max_size: int) -> list:
        """Members with repetition."""
        return [self.choice(options) for _ in range(self.integer(min_size, max_size))]

    def text(self, max_size: int) -> str:
        return ''.join(self.choice(self.TEXT) for _ in range(self.integer(0, max_size)))
