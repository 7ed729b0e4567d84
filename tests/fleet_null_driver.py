"""A driver factory that starts no browser, for placement runs of a thousand computers on one machine
(tests/test_fleet_ray.py): a node agent started with ``OPENCONE_FLEET_TEST_FACTORY=fleet_null_driver:factory``
makes computers that are records and nothing else. Everything above the driver (the node's ComputerService,
its store, the internal protocol, the replicas, placement, PostgreSQL) is the real code."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from opencone.drivers.base import Display


class _Pool:
    ready_count = 0
    launching = 0


class NullDriver:
    def __init__(self, display: Display) -> None:
        self.display = display

    def on_gone(self, callback: Callable[[str], None]) -> None:
        pass

    async def close(self) -> None:
        pass


class _NullFactory:
    kind = "browser"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.pool = _Pool()

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def create(self, display: Display, options: Mapping[str, Any]) -> NullDriver:
        return NullDriver(display)


class NullBrowsers(_NullFactory):
    kind = "browser"


class NullDesktops(_NullFactory):
    kind = "desktop"


class factory:  # noqa: N801 (the name the environment variable gives)
    browser = NullBrowsers
    desktop = NullDesktops
