"""The benchmark's results as data, and the table `make bench` prints from them."""

import statistics
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Row:
    """One way of getting the drugs into Redis, measured: how many, how long, and how it was set up."""

    key: str  # A..E, what the ratios name
    label: str
    drugs: int
    seconds: float
    setup: str = ""
    redis_cpu: float | None = None  # seconds of Redis server CPU the row cost (INFO cpu)

    @property
    def rate(self) -> float:
        return self.drugs / self.seconds if self.seconds > 0 else 0.0

    def progress(self) -> str:
        """One line said as soon as the row is measured."""
        return f"{self.key}: {self.drugs:,} drugs in {self.seconds:.1f} s ({self.rate:,.0f}/s), {self.label}"


@dataclass(frozen=True)
class Ratio:
    """A ratio of two rows' rates, with the target issue 10 sets for it."""

    numerator: str
    denominator: str
    target: float
    meaning: str


RATIOS = (
    Ratio("B", "A", 50.0, "drugsync at max concurrency vs the original design, same 70 ms API"),
    Ratio("C", "D", 0.9, "drugsync end to end vs the Redis ceiling"),
    Ratio("D", "E", 1.4, "drugsync's write path vs RedisVL's SearchIndex.load"),
)


@dataclass(frozen=True)
class Memory:
    """Redis memory per document of one storage layout, index included."""

    layout: str
    documents: int
    used_bytes: int
    rate: float  # documents/s written through drugsync's write path into this layout

    @property
    def per_document(self) -> float:
        return self.used_bytes / self.documents if self.documents else 0.0


@dataclass(frozen=True)
class Rounds:
    """Rows measured in turns, round after round (C, D, E, then again). A ratio of two of them is
    taken within each round, where both met the machine in the same state, and the median of the
    rounds' ratios is what counts: the fastest run of each row, taken from different rounds, would
    pair one row's lucky moment with another's."""

    rows: list[dict[str, Row]] = field(default_factory=list)

    def median_row(self, key: str) -> Row:
        """The row's run of median rate (the lower middle one of an even count)."""
        runs = sorted((found[key] for found in self.rows), key=lambda row: row.rate)
        return runs[(len(runs) - 1) // 2]

    def ratios(self, ratio: Ratio) -> list[float] | None:
        """The ratio in each round; None unless every round measured both rows."""
        values = [ratio_value(found, ratio) for found in self.rows]
        if not values or any(value is None for value in values):
            return None
        return [value for value in values if value is not None]


def ratio_value(rows: dict[str, Row], ratio: Ratio) -> float | None:
    """The ratio of the two rows' rates; None when either row is missing or measured nothing."""
    top, bottom = rows.get(ratio.numerator), rows.get(ratio.denominator)
    if top is None or bottom is None or bottom.rate == 0:
        return None
    return top.rate / bottom.rate


def render(
    rows: list[Row], memory: list[Memory], recall: float | None, queries: int, rounds: Rounds | None = None
) -> str:
    """The table: each row's drugs, wall time and rate; the ratios against their targets (of rows
    measured in `rounds`: the median of each round's ratio, the rounds' own listed); memory per
    document for each layout; recall@10 of the HNSW settings."""
    lines = [f"{'':<3}{'row':<58} {'drugs':>8} {'wall s':>8} {'drugs/s':>9} {'redis cpu s':>11}  setup"]
    for row in rows:
        cpu = "" if row.redis_cpu is None else f"{row.redis_cpu:.1f}"
        lines.append(
            f"{row.key:<3}{row.label:<58} {row.drugs:>8,} {row.seconds:>8.1f} {row.rate:>9,.0f} {cpu:>11}"
            f"  {row.setup}"
        )
    by_key = {row.key: row for row in rows}
    lines.append("")
    for ratio in RATIOS:
        per_round = rounds.ratios(ratio) if rounds is not None else None
        value = ratio_value(by_key, ratio) if per_round is None else statistics.median(per_round)
        shown = "n/a" if value is None else f"{value:,.2f}"
        verdict = "" if value is None else ("  met" if value >= ratio.target else "  NOT met")
        name = f"{ratio.numerator}/{ratio.denominator}"
        how = (
            "" if per_round is None else f"; the median of rounds {', '.join(f'{v:.2f}' for v in per_round)}"
        )
        lines.append(f"{name:<5} {shown:>8}  (target >= {ratio.target:g}{verdict}): {ratio.meaning}{how}")
    lines.append("")
    for entry in memory:
        lines.append(
            f"memory per document, {entry.layout:<14} {entry.per_document / 1024:>7.2f} KB"
            f"  (used_memory delta incl. index / {entry.documents:,}); written at {entry.rate:,.0f}/s"
        )
    if recall is not None:
        lines.append(f"recall@10 of HNSW vs exact cosine: {recall:.3f} over {queries} queries")
    return "\n".join(lines)
