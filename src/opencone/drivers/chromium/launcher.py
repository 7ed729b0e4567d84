"""Start one lean Chromium with a DevTools endpoint on 127.0.0.1 (of its own network namespace).

The flags follow the measurements in the project's raw-cost notes: the "lean"
``--disable-features`` set halves memory per page and start-up CPU, and the
background-networking flags keep Chromium from calling home on a closed network.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

from opencone.drivers.chromium.devtools import DevTools
from opencone.drivers.netns import NetNamespace
from opencone.drivers.processes import cmdline, descendants, kill_group
from opencone.drivers.spawn import Spawned, spawn

# Playwright's own disabled-feature list (it is not in charge of the launch here)
# merged with the lean set: one --disable-features flag, never two.
DISABLED_FEATURES = ",".join([
    "AvoidUnnecessaryBeforeUnloadCheckSync", "DestroyProfileOnBrowserClose", "HttpsUpgrades",
    "HttpsFirstBalancedModeAutoEnable", "LensOverlay", "MediaRouter", "PaintHolding",
    "ThirdPartyStoragePartitioning", "OptimizationHints", "NetworkTimeServiceQuerying",
    "AimEnabled", "PreconnectToSearch", "Translate", "InterestFeedContentSuggestions",
    # lean: no omnibox WebUI renderer per window, no spare renderer
    "WebUIOmniboxPopup", "WebUIOmniboxAimPopup", "WebUIOmniboxFullPopup", "SpareRendererForSitePerProcess",
])

OFFLINE_TLD = "invalid"  # RFC 2606: never resolves; Chromium's own service URLs are pointed there (below)

BASE_FLAGS = [
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--disable-breakpad",
    "--disable-client-side-phishing-detection",
    "--disable-hang-monitor",
    "--disable-popup-blocking",  # pages may open tabs; they appear in the tabs API
    "--disable-prompt-on-repost",
    "--disable-renderer-backgrounding",
    "--disable-background-timer-throttling",
    "--disable-backgrounding-occluded-windows",
    "--disable-ipc-flooding-protection",
    "--disable-smooth-scrolling",  # a scroll is done when the next action runs
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--no-service-autorun",
    "--password-store=basic",
    "--use-mock-keychain",
    "--metrics-recording-only",
    "--mute-audio",
    "--force-color-profile=srgb",
    # WebRTC sends UDP only through the proxy, which takes none: no route around the forwarder
    # (a browser in a namespace of its own has none anyway; one on the host's network would)
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    # navigator.webdriver false from the first document on (stealth, drivers/chromium/stealth.py);
    # a computer with stealth {"enabled": false} gets it back per tab (Emulation.setAutomationOverride)
    "--disable-blink-features=AutomationControlled",
    f"--disable-features={DISABLED_FEATURES}",
    # Chromium's own calls home that no flag or enterprise policy stops (measured on Debian's 156:
    # --disable-component-update, --disable-background-networking, --allow-browser-signin=false, the
    # BrowserSignin and GenAILocalFoundationalModelSettings policies all leave them): the on-demand
    # fetch of the on-device-model manifest (update.googleapis.com) and the Google-accounts listing
    # every profile does once its network is up (accounts.google.com/ListAccounts). Their service URLs
    # go to the reserved .invalid names, which proxy_flags sends past the forwarder and which fail
    # in Chromium's own resolver: nothing leaves, not even to the forwarder. Pages are untouched:
    # only Chromium's internal services use these URLs (a page can still open accounts.google.com).
    "--gaia-url=https://gaia.invalid",
    "--google-apis-url=https://apis.invalid",
    "--lso-url=https://lso.invalid",
    "--component-updater=url-source=https://update.invalid",
    f"--host-resolver-rules=MAP *.{OFFLINE_TLD} ~NOTFOUND",
]

DEVTOOLS_PORT = 9222  # inside a browser's own network namespace (below the kernel's ephemeral range)
_LISTENING = re.compile(rb"DevTools listening on (ws://\S+)")
LAUNCH_TIMEOUT_SECONDS = 30.0  # until DevTools answers


class LaunchError(RuntimeError):
    pass


@dataclass(slots=True)
class ChromiumProcess:
    process: Spawned
    devtools: DevTools
    user_data_dir: Path
    keep_profile: bool = False  # a desktop's browser: its profile outlives one Chromium (a closed window)
    wrapped: bool = False  # started inside a sandbox (``wrap``): ``process`` is the sandbox's
    _drain: asyncio.Task[None] | None = None
    _main_pid: int | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        """Its DevTools WebSocket, on the loopback of its own network (``devtools`` connects there)."""
        return self.devtools.ws_url

    def main_pid(self) -> int:
        """The browser process itself, for a signal only it must get (a clean exit). In a sandbox
        it is a descendant of ``pid``: bubblewrap passes no signal on, and dying, kills all.
        Found once, at launch (a scan of the process table)."""
        if self._main_pid is None:
            self._main_pid = self._find_main_pid()
        return self._main_pid

    def _sandbox_group(self) -> int | None:
        """Chromium's process group inside its sandbox, led by bubblewrap's init; None once that
        init is gone (its pid may be someone else's by then)."""
        with contextlib.suppress(psutil.Error, OSError):
            group = os.getpgid(self.main_pid())
            if psutil.Process(group).ppid() == self.process.pid:
                return group
        return None

    def _find_main_pid(self) -> int:
        # bubblewrap's subtree only (/proc/<pid>/task/*/children): a scan of every host process
        # through psutil cost ~65 us per process and was a fifth of the server's samples in a burst
        if self.wrapped:
            for child in descendants(self.process.pid):
                cmd = cmdline(child)  # ([] for one that ended meanwhile)
                if cmd and not cmd[0].endswith("bwrap") and any(a.startswith("--user-data-dir=") for a in cmd) \
                        and not any(a.startswith("--type=") for a in cmd):
                    return child
        return self.process.pid

    async def terminate(self, grace: float = 0.0) -> None:
        """End Chromium and every process in its group, then drop its profile (unless kept).

        ``grace`` > 0 lets Chromium flush its profile first (SIGTERM, then SIGKILL).
        With ``grace`` 0 the group is SIGKILLed and is gone when this returns; reaping
        and removing the profile (55-150 ms under load, measured) happen in the
        background, off the DELETE request's path. A profile left by a server that
        stops meanwhile is wiped by the next start with the rest of run/.
        """
        if self.wrapped and grace <= 0:  # its processes go at once, not after the sandbox's init (-10 ms)
            # in a thread: the /proc reads and a SIGKILL to a group of many threads took 2-6 ms of the
            # event loop per browser (py-spy of a wave of deletes), time every other request waited
            await asyncio.to_thread(self._kill_sandbox_group)
        await kill_group(self.process.pid, grace)
        if grace > 0:
            await self._reap_and_remove()
            return
        task = asyncio.get_running_loop().create_task(self._reap_and_remove())
        _cleanups.add(task)
        task.add_done_callback(_cleanups.discard)

    def _kill_sandbox_group(self) -> None:
        group = self._sandbox_group()
        if group is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)

    async def _reap_and_remove(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.wait(), 2)
        if self._drain:
            self._drain.cancel()
        await self.devtools.close()
        if not self.keep_profile:
            await asyncio.to_thread(shutil.rmtree, self.user_data_dir, True)


# background clean-ups still running; referenced so they are not garbage-collected
_cleanups: set[asyncio.Task[None]] = set()


def proxy_flags(proxy_server: str) -> list[str]:
    """Send all traffic to ``proxy_server`` (the computer's forwarder, drivers/proxy).

    Chromium never proxies loopback by default; ``<-loopback>`` removes that rule,
    so pages on 127.0.0.1 take the same route as the rest (and tests can see it).
    Names under ``.invalid`` (where BASE_FLAGS point Chromium's own services) skip the proxy and
    end in Chromium's resolver (``--host-resolver-rules``): no connection anywhere.
    """
    return [f"--proxy-server={proxy_server}", f"--proxy-bypass-list=<-loopback>;*.{OFFLINE_TLD}"]


def chromium_command(
    executable: str, user_data_dir: Path, width: int, height: int, headless: bool = True,
    extra_args: list[str] | None = None, proxy_server: str | None = None, user_agent: str | None = None,
    devtools_port: int = 0,
) -> list[str]:
    cmd = [executable, *BASE_FLAGS]
    if user_agent:  # every target has it from its first script (stealth.launch_user_agent)
        cmd.append(f"--user-agent={user_agent}")
    if proxy_server:
        cmd += proxy_flags(proxy_server)
    if headless:
        cmd.append("--headless=new")
        cmd.append("--hide-scrollbars")
    if os.geteuid() == 0:
        cmd.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    cmd += [
        "--remote-debugging-address=127.0.0.1",
        f"--remote-debugging-port={devtools_port}",
        f"--user-data-dir={user_data_dir}",
        f"--window-size={width},{height}",
        *(extra_args or []),
        "about:blank",
    ]
    return cmd


async def chromium_major_version(executable: str) -> str | None:
    """The major version of the Chromium at ``executable`` (``chromium --version``), or None."""
    try:
        proc = await asyncio.create_subprocess_exec(executable, "--version", stdin=asyncio.subprocess.DEVNULL,
                                                    stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.DEVNULL)
    except OSError:
        return None
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    match = re.search(rb"\b(\d+)\.\d+\.\d+\.\d+\b", out)
    return match.group(1).decode() if match else None


async def _drain(stream: asyncio.StreamReader) -> None:
    # Chromium logs a lot (D-Bus noise); the pipe must never fill up.
    with contextlib.suppress(Exception):
        while await stream.read(65536):
            pass


async def launch_chromium(
    executable: str,
    user_data_dir: Path,
    width: int = 1024,
    height: int = 768,
    *,
    headless: bool = True,
    env: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    proxy_server: str | None = None,
    user_agent: str | None = None,
    timeout: float = LAUNCH_TIMEOUT_SECONDS,
    keep_profile: bool = False,
    wrap: Callable[[list[str]], list[str]] | None = None,
    netns: NetNamespace | None = None,
    relay_dir: Path | None = None,
) -> ChromiumProcess:
    """``wrap`` turns Chromium's command line into the one to run: a sandbox around it, in which
    it runs unprivileged, so with its own sandbox too (``--no-sandbox`` is only for root).
    ``netns``: the network namespace it runs in (its DevTools port is on that loopback only);
    ``relay_dir`` holds the Unix socket through which Playwright reaches it there."""
    user_data_dir.mkdir(parents=True, exist_ok=True)
    # in a namespace of its own the port is always the same (nothing else is there); on the host, any free one
    cmd = chromium_command(executable, user_data_dir, width, height, headless, extra_args, proxy_server, user_agent,
                           DEVTOOLS_PORT if netns is not None else 0)
    if wrap is not None:
        cmd = wrap([a for a in cmd if a != "--no-sandbox"])
    try:
        proc = await spawn(cmd, stderr_pipe=True, env=env, netns=netns)
    except OSError as exc:
        raise LaunchError(f"cannot start Chromium at {executable!r}: {exc}") from exc
    assert proc.stderr is not None
    seen = b""
    try:
        async with asyncio.timeout(timeout):
            while True:
                line = await proc.stderr.readline()
                if not line:
                    raise LaunchError(f"Chromium exited before DevTools was ready: {seen[-2000:]!r}")
                seen += line
                match = _LISTENING.search(line)
                if match:
                    break
    except BaseException:
        await kill_group(proc.pid, grace=0.2)
        if not keep_profile:
            await asyncio.to_thread(shutil.rmtree, user_data_dir, True)
        raise
    chromium = ChromiumProcess(proc, DevTools(match.group(1).decode(), netns, relay_dir), user_data_dir, keep_profile,
                               wrap is not None)
    if wrap is not None:  # (DevTools answers: the browser process is up)
        chromium._main_pid = await asyncio.to_thread(chromium._find_main_pid)
    chromium._drain = asyncio.create_task(_drain(proc.stderr))
    return chromium
