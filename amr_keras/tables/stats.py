"""Statistics of a table: mean and spread over seeds, and the one criterion of a comparison.

Every comparison of two rows is the paired 95% interval of the per-seed difference (``paired_ci95``), read by
``gap_verdict``: ahead, behind or open.
"""

import math
import statistics


def mean_std(values):
    """``(mean, sample standard deviation, n)`` of the values that are not ``None``; std is ``None`` for n < 2."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None, 0
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else None), len(values)


def format_percent(values):
    """Fractions as a percentage: ``"92.00 ± 2.00"`` (mean ± sample std), one value alone, ``"–"`` for none."""
    mean, std, n = mean_std(values)
    if not n:
        return "–"
    return f"{100 * mean:.2f}" if std is None else f"{100 * mean:.2f} ± {100 * std:.2f}"


def paired_ci95(diffs):
    """95% confidence interval ``[low, high]`` of the mean of paired differences (Student's t, n - 1 degrees of
    freedom); ``None`` with fewer than 2 differences. With 3 seeds the half-width is 2.48 standard deviations."""
    if len(diffs) < 2:
        return None
    from scipy import stats

    mean, std, n = mean_std(diffs)
    half = stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)
    return [mean - half, mean + half]


def gap_verdict(ci95):
    """What a gap's 95% interval says: ``"ahead"`` (the first row leads) only when it lies above 0, ``"behind"``
    when it lies below 0, ``"open"`` when it holds 0 (the sign is not settled); ``None`` without an interval."""
    if ci95 is None:
        return None
    low, high = ci95
    return "ahead" if low > 0 else "behind" if high < 0 else "open"
