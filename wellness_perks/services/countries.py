"""Countries: ISO 3166-1 alpha-2 codes, and per-country quota options like ``PK=2000``."""

from __future__ import annotations

import pycountry

from .errors import InvalidInput

COUNTRY_CODES = frozenset(c.alpha_2 for c in pycountry.countries)


def normalise_country(raw: str, field: str = "country") -> str:
    given = (raw or "").strip()
    code = given.upper()
    if code not in COUNTRY_CODES:
        raise InvalidInput(f"{given[:20]!r} is not an ISO 3166-1 alpha-2 country code",
                           field=field, code="country_invalid")
    return code


def parse_country_quota(option: str) -> tuple[str, int]:
    """``"PK=2000"`` -> ``("PK", 2000)``."""
    country, sep, number = option.partition("=")
    if not sep or not number.strip().isdigit():
        raise InvalidInput(f"country quota {option!r} must look like PK=2000",
                           field="country-quota")
    return normalise_country(country, field="country-quota"), int(number)


def parse_country_quotas(text: str) -> dict[str, int]:
    """Country quotas written one a line (or separated by commas): ``"PK=2000\\nIN=500"`` ->
    ``{"PK": 2000, "IN": 500}``; a country named twice is refused."""
    quotas: dict[str, int] = {}
    for item in (text or "").replace(",", "\n").splitlines():
        if not item.strip():
            continue
        country, number = parse_country_quota(item.strip())
        if country in quotas:
            raise InvalidInput(f"country quota {country} is given twice", field="country-quota")
        quotas[country] = number
    return quotas
