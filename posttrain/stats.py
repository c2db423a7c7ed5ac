"""How much a rate, or a change in a rate, can be trusted: intervals and paired tests.

- wilson(k, n): the 95% Wilson score interval of a proportion (good at small n and
  near 0 or 1, where the normal approximation leaves [0, 1]).
- mcnemar(lost, gained): the exact two-sided McNemar test of a paired change. Two
  checkpoints graded on the same items differ only on the discordant ones; under no
  change each discordant item is equally likely to go either way (Binomial(d, 1/2)).
- paired_change(before, after): the change in a rate between two checkpoints on the
  same items, with its 95% interval (paired Wald), the counts of items lost and
  gained, McNemar's p, and whether it is beyond noise (p < alpha).
Pure functions, tested on hand-computed cases (tests/test_stats.py). Intervals are
flat keys (ci95_low, ci95_high), so `dvc metrics show/diff` lists them like any number.
"""

from __future__ import annotations

from math import comb, sqrt

Z95 = 1.959963984540054


def rate(flags: list[bool]) -> float:
    """The share of True, to 4 places (0.0 for no flags)."""
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def wilson(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of k successes in n trials; (0, 1) when n is 0."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(lost: int, gained: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts (1.0 with none)."""
    d = lost + gained
    if d == 0:
        return 1.0
    tail = sum(comb(d, i) for i in range(min(lost, gained) + 1)) / 2**d
    return min(1.0, 2 * tail)


def rate_summary(flags: list[bool]) -> dict:
    """A rate with its n and 95% Wilson interval."""
    n, k = len(flags), sum(flags)
    low, high = wilson(k, n)
    return {"value": round(k / n, 4) if n else 0.0, "n": n, "ci95_low": round(low, 4), "ci95_high": round(high, 4)}


def paired_change(before: dict[str, bool], after: dict[str, bool], alpha: float = 0.05) -> dict:
    """The change from `before` to `after` over the items both were graded on (by id)."""
    ids = [i for i in before if i in after]
    n = len(ids)
    lost = sum(before[i] and not after[i] for i in ids)
    gained = sum(after[i] and not before[i] for i in ids)
    delta = (gained - lost) / n if n else 0.0
    # Paired Wald interval: var(d_i) over items with d_i in {-1, 0, 1}.
    se = sqrt(max(0.0, (lost + gained) / n - delta * delta) / n) if n else 0.0
    p = mcnemar(lost, gained)
    return {"delta": round(delta, 4), "n": n,
            "ci95_low": round(delta - Z95 * se, 4), "ci95_high": round(delta + Z95 * se, 4),
            "lost": lost, "gained": gained, "p_value": round(p, 4), "significant": p < alpha}
