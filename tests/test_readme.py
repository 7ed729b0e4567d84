"""The README's quick start, run word for word against a real server."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from conftest import Server

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quickstart_matches_the_example_file() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"`examples/quickstart.py`:\n\n```python\n(.*?)```", readme, re.S)
    assert block, "README has no quick-start code block"
    example = (ROOT / "examples" / "quickstart.py").read_text()
    assert block.group(1).strip() in example


def test_quickstart_runs(server: Server) -> None:
    env = {**os.environ, "TZAFON_API_KEY": server.api_key, "LIGHTCONE_BASE_URL": server.base_url}
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "page says: Hello from opencone" in out.stdout
    assert re.search(r"screenshot: \d{4,} bytes of JPEG at http://127\.0\.0\.1:\d+/files/", out.stdout)
    assert "tabs: ['data:text/html,<h1>Hello from opencone" in out.stdout
