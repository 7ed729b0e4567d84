"""Saving and restoring a browser computer's Chromium profile.

A profile is saved after Chromium has been asked to exit (SIGTERM): on the way
out it flushes cookies, localStorage and IndexedDB to disk. Caches and the
files that tie a profile to one running process are left out. The cookies are
also read over CDP first and saved beside the profile in ``opencone-cookies.json``,
then put back on restore: session cookies, which Chromium never writes to disk,
survive too, and so does a cookie set a moment before the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from opencone.drivers.processes import _group_alive, kill_group

log = logging.getLogger(__name__)

SESSION_COOKIES = "opencone-cookies.json"

# directory names never saved (caches, crash dumps), wherever they are in the profile
SKIP_DIRS = frozenset({
    "Cache", "Code Cache", "GPUCache", "ShaderCache", "GrShaderCache", "GraphiteDawnCache", "DawnCache",
    "DawnGraphiteCache", "DawnWebGPUCache", "component_crx_cache", "extensions_crx_cache", "Crashpad",
    "Crash Reports", "BrowserMetrics", "blob_storage", "optimization_guide_model_store", "Safe Browsing",
    "segmentation_platform", "Download Service", "GCM Store",
    "opencone-uploads",  # copies given to file inputs (drivers/chromium/downloads.py): the page has them
})
# files tied to the Chromium that wrote them: a restored profile with them would not start
SKIP_FILES = frozenset({"SingletonLock", "SingletonSocket", "SingletonCookie", "DevToolsActivePort",
                        "BrowserMetrics-spare.pma", "RunningChromeVersion"})


def keep(relative: Path, is_dir: bool) -> bool:
    """Whether a path inside a profile belongs in its saved state."""
    name = relative.name
    if is_dir:
        return name not in SKIP_DIRS
    return name not in SKIP_FILES and not name.endswith(".tmp")


async def stop_for_save(computer: Any, grace: float) -> Path:
    """Let the browser exit cleanly (so it flushes its profile) and return the profile dir.

    The computer is closed afterwards as usual (``close`` kills what is left and
    removes the profile); its "gone" callbacks do not fire for this exit.
    """
    profile: Path = computer.process.user_data_dir
    with contextlib.suppress(Exception):
        cookies = await asyncio.wait_for(computer.context.cookies(), 3)
        (profile / SESSION_COOKIES).write_text(json.dumps(cookies))
    computer._gone_reason = computer._gone_reason or "saved"  # an exit we asked for, not a crash
    # Close the pages first: that commits their localStorage. Without it a value set just
    # before the end was lost on SIGTERM about 1 time in 8 on a loaded machine (measured:
    # 7/8 kept without closing, 16/16 with).
    with contextlib.suppress(Exception):
        await asyncio.wait_for(
            asyncio.gather(*(page.close() for page in list(computer.context.pages)), return_exceptions=True), 3)
    # SIGTERM the browser process alone: it shuts its network and storage services down in order,
    # and they flush cookies and localStorage on the way; a signal to the whole group kills them first
    process = computer.process.process
    with contextlib.suppress(ProcessLookupError):
        os.kill(computer.process.main_pid(), signal.SIGTERM)
    deadline = time.monotonic() + grace
    try:
        await asyncio.wait_for(process.wait(), grace)
        # its services (network: the cookie database) may still be writing: let them finish too
        while _group_alive(process.pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    except TimeoutError:
        log.warning("Chromium %s did not exit within %.1f s; its profile may miss recent changes",
                    process.pid, grace)
    await kill_group(process.pid, 0)  # what is left of the group
    return profile


async def wait_for_exit(computer: Any, timeout: float) -> bool:
    """Wait until a browser that is shutting down by itself (its last window was closed) has
    exited with every process of its group, so its profile is written; False on timeout."""
    process = computer.process.process
    deadline = time.monotonic() + timeout
    try:
        await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        return False
    while _group_alive(process.pid):  # its network service may still be writing the cookies
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def restore_session_cookies(computer: Any) -> None:
    path: Path = computer.process.user_data_dir / SESSION_COOKIES
    try:
        cookies = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if cookies:
        try:
            await computer.context.add_cookies(cookies)
        except Exception:
            log.warning("could not restore %d cookies", len(cookies), exc_info=True)
