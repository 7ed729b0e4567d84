"""``/v1/models`` and ``opencone models``: what the registry holds, in OpenAI's model shape.

A models-file entry is one model. A family configured from the environment
(``openai/*`` from ``OPENAI_API_KEY``, ``anthropic/*``, ``tzafon.*``) routes every
id with its prefix, so it is listed as what it is, one object whose id is the
pattern (``openai/*``) with ``"family": true``: opencone does not know which names
the upstream has without asking it (``opencone models --check`` does ask). Every
object also says its ``provider`` and whether it is the ``default``; base URLs
and keys are never shown by the API (the CLI, run by whoever runs the server,
shows base URLs).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from opencone.gateway.registry import ModelEntry, ModelRegistry, NoModelConfigured, Pattern, UnknownModel

if TYPE_CHECKING:  # the vendors' SDKs take a second to import: only `--check` needs them
    from opencone.gateway.clients import UpstreamClients

_OWNER = {"openai": "openai", "openai-chat": "openai-compatible", "anthropic": "anthropic", "lightcone": "lightcone"}


def _entry_object(entry: ModelEntry, default: str | None, created: int) -> dict[str, Any]:
    obj: dict[str, Any] = {"id": entry.id, "object": "model", "created": created, "owned_by": entry.owned_by,
                           "provider": entry.provider, "family": False, "default": entry.id == default}
    if entry.dialect:
        obj["dialect"] = entry.dialect
    return obj


def _family_object(pattern: Pattern, default: str | None, created: int) -> dict[str, Any]:
    """``default``: the default id when this family routes it (not a file entry's)."""
    return {"id": f"{pattern.prefix}*", "object": "model", "created": created, "owned_by": _OWNER[pattern.provider],
            "provider": pattern.provider, "family": True,
            "default": bool(default and default.startswith(pattern.prefix)),
            "description": f"every id {pattern.prefix}<name> goes to {pattern.provider} as "
                           f"{'<name>' if pattern.strip else f'{pattern.prefix}<name>'} ({pattern.api_key_env})"}


def _default(registry: ModelRegistry) -> str | None:
    try:
        return registry.default_id() if registry.configured else None
    except LookupError:
        return None


def models(registry: ModelRegistry, created: int) -> list[dict[str, Any]]:
    default = _default(registry)
    return [*(_entry_object(e, default, created) for e in registry.entries.values()),
            *(_family_object(p, _routed(registry, default), created) for p in registry.patterns)]


def _routed(registry: ModelRegistry, default: str | None) -> str | None:
    return None if default in registry.entries else default


def model(registry: ModelRegistry, model_id: str, created: int) -> dict[str, Any]:
    """One model object: a file entry, a family by its pattern, or an id a family routes.
    Raises the registry's NoModelConfigured / UnknownModel."""
    default = _default(registry)
    for pattern in registry.patterns:
        if model_id == f"{pattern.prefix}*":
            return _family_object(pattern, _routed(registry, default), created)
    entry = registry.resolve(model_id)
    return _entry_object(entry, default, created)


# -- opencone models ---------------------------------------------------------------------------
def rows(registry: ModelRegistry) -> list[dict[str, Any]]:
    """The CLI's table: the API's listing plus where each goes (base URL, upstream model, the
    variable its key comes from; never the key)."""
    default = _default(registry)
    out = [{"id": e.id, "provider": e.provider, "upstream_model": e.upstream_model,
            "base_url": e.base_url or _SDK_DEFAULT[e.provider], "dialect": e.dialect or "",
            "key": e.api_key_env or "", "default": e.id == default} for e in registry.entries.values()]
    routed = _routed(registry, default)
    out += [{"id": f"{p.prefix}*", "provider": p.provider,
             "upstream_model": "<name>" if p.strip else f"{p.prefix}<name>",
             "base_url": p.base_url or _SDK_DEFAULT[p.provider], "dialect": "", "key": p.api_key_env,
             "default": bool(routed and routed.startswith(p.prefix))} for p in registry.patterns]
    return out


_SDK_DEFAULT = {"openai": "https://api.openai.com/v1", "openai-chat": "", "anthropic": "https://api.anthropic.com",
                "lightcone": "https://api.tzafon.ai"}


# -- opencone models --check -------------------------------------------------------------------
@dataclass
class Check:
    id: str
    ok: bool
    detail: str


async def check(registry: ModelRegistry, clients: UpstreamClients) -> list[Check]:
    """Ask each upstream for its models list: does it answer, and does it take our key?"""
    targets: list[tuple[str, ModelEntry]] = [(e.id, e) for e in registry.entries.values()]
    targets += [(f"{p.prefix}*", p.entry(f"{p.prefix}x")) for p in registry.patterns]
    return list(await asyncio.gather(*(_check_one(label, entry, clients) for label, entry in targets)))


async def _check_one(label: str, entry: ModelEntry, clients: UpstreamClients) -> Check:
    try:
        if entry.provider == "anthropic":
            page = await clients.anthropic(entry).models.list()
        else:
            page = await clients.openai(entry).models.list()
        names = [m.id for m in page.data]
    except Exception as exc:  # whatever the SDK raised: said, not raised
        status = getattr(exc, "status_code", None)
        what = f"answered {status}" if status else "did not answer"
        cause = f" ({exc.__cause__})" if exc.__cause__ is not None and not status else ""
        return Check(label, False, f"{what}: {getattr(exc, 'message', None) or exc}{cause}"[:300])
    if entry.source == "file" and names and entry.upstream_model not in names:
        return Check(label, False, f"answers, but does not list {entry.upstream_model!r} "
                                   f"(it lists {', '.join(names[:5])}{'…' if len(names) > 5 else ''})")
    return Check(label, True, f"answers ({len(names)} models)")


__all__ = ["Check", "NoModelConfigured", "UnknownModel", "check", "model", "models"]
