"""A statistical stand-in for a census, for sites too large to simulate datagram by datagram.

A census of N factories costs about N x (1 + machinetypes) datagrams, and every factory
runs one each pass, so a site costs N^2 per pass: 5,000 factories would need ~10^9
datagram events per simulated hour. The model draws the same outcome without the
datagrams, under the assumptions the real census makes true enough:
- each status is heard at one attempt with q = (1 - loss)^2 (query and reply both pass),
  independently of the others (in reality the statuses of one factory share the query);
- attempts happen at the retransmission schedule of `RetransmitPolicy` with the mean
  round-trip time of the network (vacd), or once per round of 2 s silence (Vac 03);
- a status not heard after the attempts that fit before the deadline is lost, with
  probability `miss_probability`.
The simulator uses this per machinetype: with few statuses lost it draws exactly which
(`bernoulli_positions`); with many (Vac 03 loses ~18 % at 50 % loss) it draws how many
(`binomial_count`) and the site approximates their sum (see site.py). The simulator's
tests compare the model with the real census on the same network.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property

from vacd.sim.events import NetworkConditions
from vacd.sim.vac03 import VAC_ROUNDS, VAC_SILENCE_SECONDS
from vacquery.client import RetransmitPolicy

# Up to this many expected losses a draw names each lost status; above it only counts them.
EXACT_LOSSES_LIMIT = 24.0


@dataclass(frozen=True)
class ModelOutcome:
    lost: tuple[int, ...]  # indexes, in 0..statuses-1, of the statuses not heard
    duration_seconds: float


@dataclass(frozen=True)
class CensusModel:
    conditions: NetworkConditions
    policy: str  # "vacd" or "vac03"
    deadline_seconds: float
    retransmit: RetransmitPolicy = RetransmitPolicy()

    @property
    def round_trip_seconds(self) -> float:
        return self.conditions.delay_min_seconds + self.conditions.delay_max_seconds

    @cached_property
    def reply_times(self) -> tuple[float, ...]:
        """When the reply to each attempt arrives, for the attempts a census can make."""
        rtt = self.round_trip_seconds
        if self.policy == "vac03":
            return tuple((attempt - 1) * (VAC_SILENCE_SECONDS + rtt) + rtt for attempt in range(1, VAC_ROUNDS + 1))
        times, sent, attempt = [], 0.0, 1
        while sent + rtt <= self.deadline_seconds:
            times.append(sent + rtt)
            sent += self.retransmit.timeout(rtt, attempt)
            attempt += 1
        return tuple(times)

    @property
    def hear_once(self) -> float:
        """Probability that one attempt hears one status: the query and the reply both pass."""
        return (1.0 - self.conditions.loss) ** 2

    @cached_property
    def miss_probability(self) -> float:
        """Probability that a status is still unheard after every attempt the census makes."""
        if not self.reply_times or self.hear_once <= 0.0:
            return 1.0
        return (1.0 - self.hear_once) ** len(self.reply_times)

    def duration_after(self, attempts: int, complete: bool) -> float:
        rtt = self.round_trip_seconds
        if self.policy == "vac03":
            # Each round ends after 2 s of silence; the census ends after the last round.
            return attempts * (VAC_SILENCE_SECONDS + rtt)
        if not complete:
            return self.deadline_seconds
        return self.reply_times[attempts - 1]

    def sample_duration(self, statuses: int, any_lost: bool, rng: random.Random) -> float:
        """How long a census of `statuses` statuses takes, given whether it missed any."""
        attempts = len(self.reply_times)
        if statuses == 0:
            return 0.0
        if any_lost or attempts == 0:
            return self.duration_after(max(attempts, 1), False)
        # Attempts needed by the slowest status, given that none needed more than `attempts`.
        miss_one = 1.0 - self.hear_once
        target = rng.random() * (1.0 - self.miss_probability) ** statuses
        for attempt in range(1, attempts + 1):
            if (1.0 - miss_one ** attempt) ** statuses >= target:
                return self.duration_after(attempt, True)
        return self.duration_after(attempts, True)

    def sample(self, statuses: int, rng: random.Random) -> ModelOutcome:
        """Draw which of `statuses` statuses one census misses and how long it takes."""
        lost = bernoulli_positions(statuses, self.miss_probability, rng)
        return ModelOutcome(lost, self.sample_duration(statuses, bool(lost), rng))


def bernoulli_positions(count: int, probability: float, rng: random.Random) -> tuple[int, ...]:
    """Indexes where `count` independent Bernoulli(probability) trials succeed, in O(successes)."""
    if probability <= 0.0:
        return ()
    if probability >= 1.0:
        return tuple(range(count))
    log_miss = math.log1p(-probability)
    positions: list[int] = []
    position = -1
    while True:
        position += 1 + int(math.log(1.0 - rng.random()) / log_miss)
        if position >= count:
            return tuple(positions)
        positions.append(position)


def binomial_count(count: int, probability: float, rng: random.Random) -> int:
    """A Binomial(count, probability) draw: exact when few succeed, else the normal approximation."""
    mean = count * probability
    if mean <= EXACT_LOSSES_LIMIT or count * (1.0 - probability) <= EXACT_LOSSES_LIMIT:
        return len(bernoulli_positions(count, probability, rng))
    spread = math.sqrt(mean * (1.0 - probability))
    return min(count, max(0, round(rng.gauss(mean, spread))))
