"""The create body's ``stealth`` object, validated strictly: an unknown key is a 422."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from opencone.drivers.chromium.stealth import STEALTH_KEYS

_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def _check_locale(value: str) -> str:
    if not _LOCALE.match(value):
        raise ValueError(f"{value!r} is not a locale; use a BCP 47 tag such as 'en-US' or 'de-DE'")
    return value


class ScreenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(ge=200, le=7680)
    height: int = Field(ge=200, le=4320)


class StealthIn(BaseModel):
    """See README "Stealth" for what each key does."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = True
    user_agent: str | None = Field(default=None, min_length=1, max_length=1024)
    locale: str | None = None
    languages: list[str] | None = Field(default=None, min_length=1, max_length=20)
    timezone: str | None = None
    screen: ScreenIn | None = None
    device_scale_factor: float | None = Field(default=None, ge=0.25, le=4.0)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            unknown = [k for k in data if k not in STEALTH_KEYS]
            if unknown:
                raise ValueError(f"unknown stealth key {unknown[0]!r}; allowed keys: {', '.join(STEALTH_KEYS)}")
        return data

    @field_validator("user_agent")
    @classmethod
    def _user_agent(cls, value: str | None) -> str | None:
        # it becomes a launch flag of Chromium and a header of every request: printable text only
        if value is not None and not value.isprintable():
            raise ValueError("must be printable text: no control characters (NUL, CR, LF, tab…)")
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        return None if value is None else _check_locale(value)

    @field_validator("languages")
    @classmethod
    def _languages(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_check_locale(v) for v in value]

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            if value.startswith(("/", ".")) or ".." in value:
                raise ValueError
            zoneinfo.ZoneInfo(value)
        except (ValueError, zoneinfo.ZoneInfoNotFoundError):
            raise ValueError(f"unknown timezone {value!r}; use an IANA name such as 'Europe/Berlin' "
                             "or 'America/New_York'") from None
        return value

    def options(self) -> dict[str, Any]:
        """The keys the user set, as plain JSON (CreateSpec.options["stealth"])."""
        return self.model_dump(exclude_unset=True, mode="json")
