"""pytest fixtures for the fakes (loaded by tests/conftest.py as a plugin).

``fake_models``: the session's fake model server, reset (settings, faults, log, store) before
each test. ``form_site``: the session's recording web site (tests/pages), its submissions
cleared before each test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from .launcher import FakeModels, start_fake
from .site import FormSite

RECORD = re.compile(r"AGENTFORM(\{.*?\})END", re.S)


@pytest.fixture(scope="session")
def fake_models_server() -> Iterator[FakeModels]:
    fake = start_fake()
    yield fake
    fake.stop()


@pytest.fixture
def fake_models(fake_models_server: FakeModels) -> FakeModels:
    fake_models_server.reset()
    return fake_models_server


@pytest.fixture(scope="session")
def form_site_server() -> Iterator[FormSite]:
    site = FormSite()
    yield site
    site.close()


@pytest.fixture
def form_site(form_site_server: FormSite) -> FormSite:
    form_site_server.clear()
    return form_site_server


def agent_form_state(html: str) -> dict[str, Any]:
    """The agent form's record (value, submissions, focused, clicks) read back from its HTML."""
    match = RECORD.search(html)
    assert match, "agent form record not found in the page HTML"
    return json.loads(match.group(1))  # type: ignore[no-any-return]
