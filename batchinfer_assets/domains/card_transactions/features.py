"""Model-ready features computed from one or more days of landed transactions."""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURE_DESCRIPTIONS: dict[str, str] = {
    "log_amount": "log1p of the transaction amount",
    "amount_vs_customer_day_median": "log1p(amount) minus log1p of the customer's median amount that UTC day",
    "amount_share_of_customer_day": "the amount as a share of everything the customer spent that UTC day",
    "customer_day_log_txn_count": "log1p of the customer's number of transactions that UTC day",
    "customer_day_distinct_countries": "number of distinct countries the customer transacted in that UTC day",
    "customer_day_mismatch_share": "share of the customer's transactions that day whose currency is not the country's",
    "country_off_customer_day_mode": "1 when the country is not the customer's most frequent country that day",
    "log_minutes_since_prev_txn": "log1p of minutes since the customer's previous transaction that day (1440 if none)",
    "log_minutes_to_next_txn": "log1p of minutes until the customer's next transaction that day (1440 if none)",
    "hour_sin": "sine of the UTC time of day (24-hour cycle)",
    "hour_cos": "cosine of the UTC time of day (24-hour cycle)",
    "is_night": "1 when the UTC hour is between 00:00 and 05:59",
    "is_weekend": "1 on Saturday or Sunday (UTC)",
    "channel_pos": "1 for a card-present point-of-sale transaction",
    "channel_online": "1 for a card-not-present online transaction",
    "channel_atm": "1 for an ATM withdrawal",
    "merchant_risk_high": "1 for high-risk merchant categories (electronics, jewelry, travel)",
    "merchant_risk_medium": "1 for medium-risk merchant categories (online_retail, entertainment, cash_withdrawal)",
    "merchant_category_other": "1 for a merchant category outside the known list",
    "currency_country_mismatch": "1 when the currency is not the country's own currency (or the country is unknown)",
    "customer_day_night_share": "share of the customer's transactions that day made at night",
    "customer_day_high_risk_share": "share of the customer's transactions that day at high-risk merchants",
}
FEATURE_COLUMNS: tuple[str, ...] = tuple(FEATURE_DESCRIPTIONS)

# Fixed domain knowledge, never learned from data, so a feature means the same thing on every day.
# Constant within a day by construction: one day cannot be compared with a reference spanning all weekdays.
CALENDAR_FEATURES: tuple[str, ...] = ("is_weekend",)

HIGH_RISK_CATEGORIES = frozenset({"electronics", "jewelry", "travel"})
MEDIUM_RISK_CATEGORIES = frozenset({"online_retail", "entertainment", "cash_withdrawal"})
LOW_RISK_CATEGORIES = frozenset({"grocery", "restaurants", "fuel", "health", "utilities"})
KNOWN_CATEGORIES = HIGH_RISK_CATEGORIES | MEDIUM_RISK_CATEGORIES | LOW_RISK_CATEGORIES
COUNTRY_CURRENCY: dict[str, str] = {
    "US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "ES": "EUR", "IT": "EUR", "NL": "EUR",
    "IE": "EUR", "BE": "EUR", "AT": "EUR", "PT": "EUR", "FI": "EUR", "GR": "EUR", "CA": "CAD",
    "MX": "MXN", "BR": "BRL", "AR": "ARS", "IN": "INR", "JP": "JPY", "CN": "CNY", "KR": "KRW",
    "AU": "AUD", "NZ": "NZD", "CH": "CHF", "SE": "SEK", "NO": "NOK", "DK": "DKK", "PL": "PLN",
    "TH": "THB", "AE": "AED", "SG": "SGD", "HK": "HKD", "ZA": "ZAR", "NG": "NGN", "RU": "RUB",
    "RO": "RON", "ID": "IDR", "VN": "VND", "PH": "PHP", "UA": "UAH", "TR": "TRY",
}  # fmt: skip

_MINUTES_PER_DAY = 1440.0
_MICROS_PER_MINUTE = 60_000_000
_MICROS_PER_DAY = 86_400_000_000


def _group_mean(codes: np.ndarray, values: np.ndarray, n_groups: int, counts: np.ndarray) -> np.ndarray:
    """Per-row mean of `values` over the row's group."""
    return (np.bincount(codes, weights=values, minlength=n_groups) / counts)[codes]


def _minutes_to_neighbours(codes: np.ndarray, micros: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minutes since the previous and until the next transaction of the same group (a day if none)."""
    prev = np.full(len(codes), _MINUTES_PER_DAY)
    nxt = np.full(len(codes), _MINUTES_PER_DAY)
    order = np.lexsort((micros, codes))
    c, t = codes[order], micros[order]
    same = c[1:] == c[:-1]
    gap = np.diff(t)[same].astype(np.float64) / _MICROS_PER_MINUTE
    prev[order[1:][same]] = gap
    nxt[order[:-1][same]] = gap
    return prev, nxt


def build_features(transactions: pd.DataFrame) -> pd.DataFrame:
    """`transaction_id` plus FEATURE_COLUMNS as float32, one row per input row in input order."""
    n = len(transactions)
    event_time = pd.to_datetime(transactions["event_time"], utc=True)
    micros = np.asarray(event_time.dt.tz_localize(None), dtype="datetime64[us]").view(np.int64)
    day_number = micros // _MICROS_PER_DAY
    minute_of_day = (micros - day_number * _MICROS_PER_DAY) / _MICROS_PER_MINUTE
    amount = transactions["amount"].to_numpy(dtype=np.float64)
    log_amount = np.log1p(amount)
    country = transactions["country"].astype("string")
    currency = transactions["currency"].astype("string")
    channel = transactions["channel"].astype("string")
    category = transactions["merchant_category"].astype("string")

    customer_codes, _ = pd.factorize(transactions["customer_id"])
    group, _ = pd.factorize(customer_codes.astype(np.int64) * (1 << 32) + (day_number - day_number.min(initial=0)))
    n_groups = int(group.max(initial=-1)) + 1
    counts = np.bincount(group, minlength=n_groups).astype(np.float64)

    day_median = pd.Series(log_amount).groupby(group).transform("median").to_numpy()
    # Shares of amounts scaled by the customer-day's largest: the sum of up to n values <= 1 cannot overflow, where
    # two amounts near the float64 maximum (which validation accepts: finite and >= 0) summed to inf and gave 0.
    day_max = np.zeros(n_groups)
    np.maximum.at(day_max, group, amount)
    scaled = np.divide(amount, day_max[group], out=np.zeros_like(amount), where=day_max[group] > 0)
    day_total = np.bincount(group, weights=scaled, minlength=n_groups)[group]
    # A customer-day of zero amounts splits its (empty) total evenly.
    share = np.divide(scaled, day_total, out=1.0 / counts[group], where=day_total > 0)

    country_codes, _ = pd.factorize(country)
    pair, _ = pd.factorize(group.astype(np.int64) * (1 << 32) + country_codes)
    pair_counts = np.bincount(pair)[pair]
    group_max_pair = np.zeros(n_groups, dtype=np.int64)
    np.maximum.at(group_max_pair, group, pair_counts)
    _, first_row_of_pair = np.unique(pair, return_index=True)
    distinct_countries = np.bincount(group[first_row_of_pair], minlength=n_groups)[group]

    expected_currency = country.map(COUNTRY_CURRENCY)
    mismatch = (expected_currency != currency).fillna(True).to_numpy(dtype=np.float64)
    night = (minute_of_day < 6 * 60).astype(np.float64)
    high_risk = category.isin(HIGH_RISK_CATEGORIES).to_numpy(dtype=np.float64)
    prev_gap, next_gap = _minutes_to_neighbours(group, micros)
    angle = 2 * np.pi * minute_of_day / _MINUTES_PER_DAY
    weekday = (day_number + 3) % 7  # 1970-01-01 was a Thursday

    features = {
        "log_amount": log_amount,
        "amount_vs_customer_day_median": log_amount - day_median,
        "amount_share_of_customer_day": share,
        "customer_day_log_txn_count": np.log1p(counts[group]),
        "customer_day_distinct_countries": distinct_countries,
        "customer_day_mismatch_share": _group_mean(group, mismatch, n_groups, counts),
        "country_off_customer_day_mode": (pair_counts < group_max_pair[group]).astype(np.float64),
        "log_minutes_since_prev_txn": np.log1p(prev_gap),
        "log_minutes_to_next_txn": np.log1p(next_gap),
        "hour_sin": np.sin(angle),
        "hour_cos": np.cos(angle),
        "is_night": night,
        "is_weekend": (weekday >= 5).astype(np.float64),
        "channel_pos": (channel == "pos").fillna(False).to_numpy(dtype=np.float64),
        "channel_online": (channel == "online").fillna(False).to_numpy(dtype=np.float64),
        "channel_atm": (channel == "atm").fillna(False).to_numpy(dtype=np.float64),
        "merchant_risk_high": high_risk,
        "merchant_risk_medium": category.isin(MEDIUM_RISK_CATEGORIES).to_numpy(dtype=np.float64),
        "merchant_category_other": (~category.isin(KNOWN_CATEGORIES)).to_numpy(dtype=np.float64),
        "currency_country_mismatch": mismatch,
        "customer_day_night_share": _group_mean(group, night, n_groups, counts),
        "customer_day_high_risk_share": _group_mean(group, high_risk, n_groups, counts),
    }
    columns = {"transaction_id": pd.array(transactions["transaction_id"], dtype="string")}
    columns.update({name: np.asarray(features[name], dtype=np.float32) for name in FEATURE_COLUMNS})
    return pd.DataFrame(columns, index=pd.RangeIndex(n))

