"""Which countries get fan charts (evaluation.fan_countries), and why: one rule for the report
and the results page."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.errors import ConfigError

# The default (evaluation.fan_countries: null): the euro area's four largest economies where the
# data has them, else the first N_FAN_COUNTRIES countries A-Z.
PREFERRED_FAN_COUNTRIES = ("DE", "FR", "IT", "ES")
N_FAN_COUNTRIES = 4


def choose_fan_countries(
    chosen: Sequence[str] | None, present: Sequence[str]
) -> tuple[list[str], str]:
    """The countries with fan charts and why (the report says it); a chosen country absent
    from `present` (the prepared data's countries) is a ConfigError."""
    present = list(present)
    if chosen is not None:
        unknown = [c for c in chosen if c not in present]
        if unknown:
            shown = present if len(present) <= 12 else [*present[:12], "..."]
            raise ConfigError("evaluation.fan_countries", f"countries of the data {shown}", unknown)
        return list(chosen), "set by evaluation.fan_countries"
    preferred = [c for c in PREFERRED_FAN_COUNTRIES if c in present]
    big4 = f"the euro area's four largest economies ({', '.join(PREFERRED_FAN_COUNTRIES)})"
    if preferred:
        return preferred, f"the default: {big4} that the data has; evaluation.fan_countries sets others"  # fmt: skip
    return sorted(present)[:N_FAN_COUNTRIES], (
        f"the default: the data has none of {big4}, so the first {N_FAN_COUNTRIES} countries "
        "A–Z; evaluation.fan_countries sets others"
    )
