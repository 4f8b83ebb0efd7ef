"""Deterministic synthetic card transactions with habits, a daily rhythm, planted fraud and slow drift."""

from __future__ import annotations

import datetime as dt
import functools
from dataclasses import dataclass

import numpy as np
import pandas as pd

from batchinfer_assets.domain import DEFAULT_SEED

LABEL_COLUMN = "is_fraud"
SHIFT_EPOCH = dt.date(2025, 1, 1)

CHANNELS = ("pos", "online", "atm")
POS, ONLINE, ATM = 0, 1, 2

MERCHANT_CATEGORIES = (
    "grocery",
    "restaurants",
    "fuel",
    "travel",
    "electronics",
    "online_retail",
    "entertainment",
    "health",
    "utilities",
    "jewelry",
    "cash_withdrawal",
)
_CAT = {name: i for i, name in enumerate(MERCHANT_CATEGORIES)}
# Typical ticket size of a category relative to the customer's own level.
_CATEGORY_AMOUNT = np.array([1.0, 0.6, 0.9, 4.0, 2.5, 1.2, 0.8, 1.3, 1.6, 3.5, 2.0])
_CATEGORY_POPULARITY = np.array([3.0, 2.5, 1.5, 0.4, 0.5, 2.0, 1.0, 0.8, 0.8, 0.15, 0.0])
_WEEKEND_CATEGORY = np.array([1.1, 1.6, 0.7, 1.2, 1.0, 1.0, 1.7, 0.6, 0.4, 1.0, 1.0])
# Which categories can occur on which channel (cash only comes out of an ATM).
_CHANNEL_CATEGORY_MASK = np.array(
    [
        [1, 1, 1, 1, 1, 0, 1, 1, 0, 1, 0],  # pos
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0],  # online
        [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],  # atm
    ],
    dtype=float,
)
_RISKY_CATEGORIES = np.array([_CAT["electronics"], _CAT["jewelry"], _CAT["travel"]])

HOME_COUNTRIES = ("US", "GB", "DE", "FR", "CA", "MX", "BR", "IN", "JP")
_HOME_COUNTRY_PROBS = np.array([0.55, 0.08, 0.07, 0.06, 0.07, 0.05, 0.05, 0.04, 0.03])
# Countries that only appear as destinations (travel, foreign online shops, fraud).
_EXTRA_COUNTRIES = ("ES", "IT", "NL", "IE", "TH", "AE", "CN", "NG", "RU", "RO", "ID", "VN", "PH", "UA", "TR")
COUNTRIES = HOME_COUNTRIES + _EXTRA_COUNTRIES
COUNTRY_CURRENCY = {
    "US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "CA": "CAD", "MX": "MXN", "BR": "BRL",
    "IN": "INR", "JP": "JPY", "ES": "EUR", "IT": "EUR", "NL": "EUR", "IE": "EUR", "TH": "THB",
    "AE": "AED", "CN": "CNY", "NG": "NGN", "RU": "RUB", "RO": "RON", "ID": "IDR", "VN": "VND",
    "PH": "PHP", "UA": "UAH", "TR": "TRY",
}  # fmt: skip
CURRENCIES = tuple(sorted(set(COUNTRY_CURRENCY.values())))
_COUNTRY_CURRENCY_CODE = np.array([CURRENCIES.index(COUNTRY_CURRENCY[c]) for c in COUNTRIES])
_C = {name: i for i, name in enumerate(COUNTRIES)}
_TRAVEL_DESTINATIONS = np.array([_C[c] for c in ("US", "GB", "DE", "FR", "CA", "MX", "ES", "IT", "NL", "TH", "JP", "AE")])
_TRAVEL_WEIGHTS = np.array([3, 2, 1.5, 2, 1.5, 2, 2, 1.5, 1, 1, 1, 1.0])
_FOREIGN_SHOPS = np.array([_C[c] for c in ("US", "GB", "IE", "NL", "CN")])
_FRAUD_COUNTRIES = np.array([_C[c] for c in ("NG", "RU", "RO", "ID", "VN", "PH", "UA", "TR", "CN", "US", "GB", "MX", "BR")])
_FRAUD_COUNTRY_WEIGHTS = np.array([2, 2, 1.5, 1.5, 1.5, 1.5, 1, 1.5, 1.5, 1.5, 1, 1, 1.0])

# Hour-of-day shape: quiet nights, morning/lunch/evening peaks on weekdays, later and flatter on weekends.
_WEEKDAY_HOURS = np.array(
    [0.4, 0.25, 0.15, 0.12, 0.15, 0.35, 1.0, 2.2, 3.4, 3.0, 3.0, 3.6,
     4.6, 4.4, 3.4, 3.2, 3.5, 4.2, 4.8, 4.6, 3.8, 2.8, 1.8, 0.9]
)  # fmt: skip
_WEEKEND_HOURS = np.array(
    [1.0, 0.7, 0.45, 0.3, 0.2, 0.2, 0.3, 0.7, 1.5, 2.6, 3.6, 4.2,
     4.6, 4.6, 4.4, 4.2, 4.2, 4.4, 4.6, 4.4, 3.8, 3.0, 2.2, 1.5]
)  # fmt: skip
_EVENING = np.arange(24) >= 18

_MICROS_PER_HOUR = 3_600_000_000
_MICROS_PER_DAY = 24 * _MICROS_PER_HOUR


@dataclass(frozen=True)
class _Population:
    """Fixed customers and their habits."""

    customer_ids: np.ndarray
    home_country: np.ndarray
    home_currency: np.ndarray
    online_affinity: np.ndarray
    atm_affinity: np.ndarray
    amount_level: np.ndarray
    category_probs: np.ndarray
    activity: np.ndarray


def population_size(rows: int) -> int:
    """Number of customers behind a day of `rows` transactions.

    Proportional to `rows` so per-customer daily behaviour (transactions a day, gaps between them) is the
    same at any volume: a model trained on small days then sees the same feature distributions on big ones.
    """
    return max(50, rows // 8)


@functools.lru_cache(maxsize=8)
def _population(seed: int, size: int) -> _Population:
    """The customer population for a seed; independent of the day so habits persist."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, 0x5EED_C057, size])))
    home = rng.choice(len(HOME_COUNTRIES), size=size, p=_HOME_COUNTRY_PROBS)
    home_currency = _COUNTRY_CURRENCY_CODE[home]
    # Some customers bank in a currency other than their country's (expats, USD accounts).
    other = rng.random(size) < 0.04
    home_currency = np.where(other, CURRENCIES.index("USD"), home_currency)
    weights = rng.gamma(0.35, 1.0, size=(size, len(MERCHANT_CATEGORIES))) * _CATEGORY_POPULARITY + 1e-3
    weights[:, _CAT["cash_withdrawal"]] = 1.0
    ids = _numbered("C", size)
    return _Population(
        customer_ids=ids,
        home_country=home,
        home_currency=home_currency,
        online_affinity=rng.beta(2.0, 4.0, size),
        atm_affinity=rng.beta(1.0, 25.0, size),
        amount_level=rng.lognormal(3.2, 0.6, size),
        category_probs=weights / weights.sum(axis=1, keepdims=True),
        activity=rng.gamma(1.5, 1.0, size),
    )


def _months_since_epoch(day: dt.date) -> float:
    # Bounded so that days far from the epoch stay plausible rather than extrapolating the trend forever.
    return float(np.clip((day - SHIFT_EPOCH).days / 30.4375, -36.0, 60.0))


def _sample_rows(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    """One categorical draw per row of a (rows, k) probability matrix."""
    cdf = np.cumsum(probs, axis=1)
    u = rng.random(len(probs)) * cdf[:, -1]
    return np.minimum((u[:, None] > cdf).sum(axis=1), probs.shape[1] - 1)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def generate_day(day: dt.date, rows: int, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """One UTC day of synthetic transactions (landing columns plus `is_fraud`), deterministic in its arguments."""
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    pop = _population(seed, population_size(rows))
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, day.toordinal()])))
    months = _months_since_epoch(day)
    weekend = day.weekday() >= 5

    # Fraud: a few compromised cards, each used in a burst by someone else.
    # Capped so that bursts (at most 10 rows each) never take more than half of a tiny day.
    bursts = min(int(rng.poisson(rows * 0.019 / 4.5)), rows // 20)
    burst_sizes = np.minimum(2 + rng.poisson(2.5, bursts), 10)
    n_attack = int(burst_sizes.sum())
    n_legit = rows - n_attack

    # Legitimate traffic.
    cust = rng.choice(len(pop.activity), size=n_legit, p=pop.activity / pop.activity.sum())
    traveller_today = rng.random(len(pop.activity)) < 0.015
    destination = rng.choice(_TRAVEL_DESTINATIONS, size=len(pop.activity), p=_TRAVEL_WEIGHTS / _TRAVEL_WEIGHTS.sum())
    destination = np.where(destination == pop.home_country, _C["ES"], destination)

    online_p = _sigmoid(np.log(pop.online_affinity / (1 - pop.online_affinity)) + 0.06 * months)[cust]
    atm_p = pop.atm_affinity[cust]
    u = rng.random(n_legit)
    channel = np.where(u < atm_p, ATM, np.where(u < atm_p + online_p * (1 - atm_p), ONLINE, POS))

    cat_probs = pop.category_probs[cust] * _CHANNEL_CATEGORY_MASK[channel]
    if weekend:
        cat_probs = cat_probs * _WEEKEND_CATEGORY
    category = _sample_rows(rng, cat_probs)

    hours = (_WEEKEND_HOURS if weekend else _WEEKDAY_HOURS) * np.where(_EVENING, np.exp(0.04 * months), 1.0)
    hour = rng.choice(24, size=n_legit, p=hours / hours.sum())
    micros = hour * _MICROS_PER_HOUR + rng.integers(0, _MICROS_PER_HOUR, n_legit)

    home = pop.home_country[cust]
    travelling = traveller_today[cust] & (channel != ONLINE)
    foreign_shop = (channel == ONLINE) & (rng.random(n_legit) < 0.08)
    country = np.where(travelling, destination[cust], home)
    country = np.where(foreign_shop, rng.choice(_FOREIGN_SHOPS, size=n_legit), country)
    currency = pop.home_currency[cust]
    # Travellers sometimes pay in the local currency (dynamic currency conversion).
    local = travelling & (rng.random(n_legit) < 0.2)
    currency = np.where(local, _COUNTRY_CURRENCY_CODE[country], currency)

    inflation = 1.015**months
    amount = pop.amount_level[cust] * _CATEGORY_AMOUNT[category] * rng.lognormal(0.0, 0.5, n_legit) * inflation

    # Attack traffic: one burst per compromised card, mostly at night, abroad, online/ATM, big tickets.
    victim = rng.choice(len(pop.activity), size=bursts)
    a_cust = np.repeat(victim, burst_sizes)
    burst_id = np.repeat(np.arange(bursts), burst_sizes)
    start_hour = np.where(rng.random(bursts) < 0.55, rng.uniform(0, 5, bursts), rng.uniform(0, 22, bursts))
    gaps = rng.exponential(10 * 60 * 1e6, n_attack)
    first = np.r_[True, burst_id[1:] != burst_id[:-1]] if n_attack else np.zeros(0, dtype=bool)
    gaps[first] = 0.0
    offsets = np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first], burst_sizes)
    a_micros = np.minimum(start_hour[burst_id] * _MICROS_PER_HOUR + offsets, _MICROS_PER_DAY - 1).astype(np.int64)

    a_channel = rng.choice(3, size=n_attack, p=[0.15, 0.6, 0.25])
    online_cat = np.array([_CAT[c] for c in ("electronics", "jewelry", "travel", "online_retail", "entertainment")])
    a_category = np.where(
        a_channel == ONLINE,
        rng.choice(online_cat, size=n_attack, p=[0.35, 0.15, 0.2, 0.2, 0.1]),
        np.where(a_channel == ATM, _CAT["cash_withdrawal"], rng.choice(_RISKY_CATEGORIES[:2], size=n_attack)),
    )
    a_home = pop.home_country[a_cust]
    a_country = rng.choice(_FRAUD_COUNTRIES, size=n_attack, p=_FRAUD_COUNTRY_WEIGHTS / _FRAUD_COUNTRY_WEIGHTS.sum())
    a_country = np.where(rng.random(n_attack) < 0.2, a_home, a_country)
    a_currency = np.where(rng.random(n_attack) < 0.9, pop.home_currency[a_cust], _COUNTRY_CURRENCY_CODE[a_country])
    a_amount = (
        pop.amount_level[a_cust]
        * np.sqrt(_CATEGORY_AMOUNT[a_category])
        * rng.lognormal(1.4, 0.6, n_attack)
        * inflation
    )
    # Card testing: a fraudster often probes the card with a tiny online charge first.
    probe = first & (rng.random(n_attack) < 0.35)
    a_amount = np.where(probe, rng.uniform(0.5, 3.0, n_attack), a_amount)
    a_channel = np.where(probe, ONLINE, a_channel)
    a_category = np.where(probe, _CAT["online_retail"], a_category)

    all_cust = np.concatenate([cust, a_cust])
    attack = np.r_[np.zeros(n_legit, dtype=bool), np.ones(n_attack, dtype=bool)]
    channel = np.concatenate([channel, a_channel])
    category = np.concatenate([category, a_category])
    country = np.concatenate([country, a_country])
    currency = np.concatenate([currency, a_currency])
    micros = np.concatenate([micros, a_micros]).astype(np.int64)
    amount = np.concatenate([amount, a_amount])
    atm = channel == ATM
    amount = np.where(atm, np.maximum(20.0, np.round(amount / 20.0) * 20.0), np.round(amount, 2))

    # The label comes from a latent logistic score so that it is learnable but noisy both ways.
    hour_of_txn = micros // _MICROS_PER_HOUR
    night = hour_of_txn < 6
    abroad = country != pop.home_country[all_cust]
    risky = np.isin(category, _RISKY_CATEGORIES)
    overspend = np.clip(np.log(amount / (pop.amount_level[all_cust] * inflation)) - 0.5, 0, 3)
    logit = (
        -6.4
        + 7.0 * attack
        + 0.9 * night
        + 0.8 * abroad
        + 0.6 * risky
        + 0.4 * (channel != POS)
        + 0.5 * overspend
    )
    is_fraud = (rng.random(rows) < _sigmoid(logit)).astype(np.int8)

    order = np.argsort(micros, kind="stable")
    event_time = pd.Series(np.datetime64(day, "us") + micros[order].astype("timedelta64[us]")).dt.tz_localize("UTC")
    ids = _numbered(f"{day:%Y%m%d}-", rows)
    frame = pd.DataFrame(
        {
            "transaction_id": pd.array(ids, dtype="string"),
            "event_time": event_time,
            "customer_id": pd.array(pop.customer_ids[all_cust[order]], dtype="string"),
            "merchant_category": _labels(MERCHANT_CATEGORIES, category[order]),
            "amount": amount[order].astype(np.float64),
            "currency": _labels(CURRENCIES, currency[order]),
            "channel": _labels(CHANNELS, channel[order]),
            "country": _labels(COUNTRIES, country[order]),
            LABEL_COLUMN: is_fraud[order],
        }
    )
    return frame


def _numbered(prefix: str, n: int) -> np.ndarray:
    """`prefix` followed by 0..n-1 zero-padded to 7 digits."""
    if n == 0:
        return np.array([], dtype=object)
    return np.char.add(prefix, np.char.zfill(np.arange(n).astype(str), 7))


def _labels(names: tuple[str, ...], codes: np.ndarray) -> pd.arrays.StringArray:
    return pd.array(np.asarray(names, dtype=object)[codes], dtype="string")


def generate_days(start: dt.date, end: dt.date, rows_per_day: int, seed: int = DEFAULT_SEED) -> pd.DataFrame:
    """Consecutive days from `start` to `end` inclusive, concatenated with a fresh RangeIndex."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    return pd.concat([generate_day(d, rows_per_day, seed) for d in days], ignore_index=True)
