"""Browser computers that do not announce automation (the ``stealth`` create option).

Process-wide, the launcher passes ``--disable-blink-features=AutomationControlled``
(``navigator.webdriver`` is false from the first document on, popups included).
The rest is applied per target by ``StealthTargets``, a CDP connection of its own
to the browser that auto-attaches (``Target.setAutoAttach`` with
``waitForDebuggerOnStart``) to every page, popup, out-of-process iframe and worker
and, the moment one is announced, queues its overrides and then its
``Runtime.runIfWaitingForDebugger`` (so a target is never left paused, whatever
the overrides answer):

- pages and iframes: ``Emulation.setUserAgentOverride`` (the browser's own user
  agent with ``HeadlessChrome`` → ``Chrome``, matching ``userAgentMetadata`` so
  ``navigator.userAgentData`` agrees, ``acceptLanguage`` for ``navigator.languages``
  and the ``Accept-Language`` header), for a new page the tab's device metrics, and
  when asked for ``Emulation.setLocaleOverride`` / ``Emulation.setTimezoneOverride``;
- workers (dedicated, shared, service): ``Network.setUserAgentOverride`` (the same
  metadata and languages), the locale and timezone, and ``Runtime.evaluate`` of the
  script below.

The user agent string itself is also a launch flag (``launch_user_agent``): a headless
browser starts with ``--user-agent`` set to its computer's (Chromium's own without
``Headless``, or the one the computer asked for), so every target has it from its
first script, including those the overrides can miss. Pool browsers start with the
default; a computer that wants another (a custom ``user_agent``, or stealth disabled)
gets a browser launched for it (drivers/chromium/factory.py).

The script (WebGL vendor, ``window.chrome``, permissions; ``navigator.userAgent``
where no override reached it) goes to documents through Playwright's
``context.add_init_script``: Playwright installs it on a new target before it
resumes that target itself. Playwright cannot carry the overrides: user agent,
locale and timezone are options of contexts that Playwright creates, and a
computer uses the default context of a browser launched before its options were
known (the warm pool).

Which targets wait for the overrides (measured on Chromium 156): Chromium holds a
page in a renderer process of its own (a new tab, a ``target=_blank`` or
``noopener`` popup), an out-of-process iframe and a dedicated worker until every
client that asked to wait has resumed it: all of the above is there before their
first script (a dedicated worker still had everything with our resume 100 ms late).
The others start as soon as the *first* client lets them go, which is Playwright,
so the overrides race there:

- a service worker: Playwright resumes it as soon as it is announced. With our
  commands 100 ms late its first script missed the script 9 times in 10; sent at
  once, about 1 in 150 under load. Its user agent (the launch flag), client hints,
  languages and timezone were right every time; what misses is the script's part
  (WebGL in an ``OffscreenCanvas``, permissions), which is in place a moment later;
- a popup that keeps its opener, same site (``window.open``): it starts in its
  opener's renderer, which already has the locale and timezone, and Playwright
  resumes it after installing the script (so ``navigator.userAgent`` and WebGL are
  right); its user agent override (header and client hints) and languages won
  their race 60 times in 60, half of them with the event loop kept busy;
- a popup that keeps its opener and goes to another site: its first document there
  is not held at all, for Playwright's script either (each missed it about once
  in 30), and it has the locale only when ``_reassert`` is quick enough (4 to 14
  times in 30); its next documents have everything;
- a shared worker: Playwright lets it go by detaching at once; it misses the
  script about once in 30, up to 1 in 5 with a busy event loop.

Blink keeps one locale and one timezone per renderer process, owned by the session
that set it (see ``StealthTargets._reassert``).

New headless Chromium already has desktop Chrome's plugin set (5 PDF viewer plugins,
2 mime types) and consistent notification permissions; the script only fills what
is missing or wrong, and every function it replaces still looks native.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection

from opencone.drivers.chromium.cdp_client import CdpConnection
from opencone.drivers.chromium.devtools import DevTools

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, Disposable

log = logging.getLogger(__name__)

STEALTH_KEYS = ("enabled", "user_agent", "locale", "languages", "timezone", "screen", "device_scale_factor")

WEBGL_VENDOR = "Google Inc. (Intel)"
WEBGL_RENDERER = "ANGLE (Intel, Mesa Intel(R) UHD Graphics 620 (KBL GT2), OpenGL 4.6)"


@dataclass(frozen=True, slots=True)
class StealthConfig:
    """The validated ``stealth`` object; ``None`` fields keep the defaults."""

    enabled: bool = True
    user_agent: str | None = None
    locale: str | None = None
    languages: tuple[str, ...] = ()
    timezone: str | None = None
    screen: tuple[int, int] | None = None

    @classmethod
    def from_options(cls, options: dict[str, Any] | None) -> StealthConfig:
        o = options or {}
        screen = o.get("screen")
        return cls(
            enabled=o.get("enabled", True) is not False,
            user_agent=o.get("user_agent"),
            locale=o.get("locale"),
            languages=tuple(o.get("languages") or ()),
            timezone=o.get("timezone"),
            screen=(int(screen["width"]), int(screen["height"])) if screen else None,
        )

    def accept_languages(self) -> list[str]:
        """navigator.languages: the given list, else the locale and its language, else en-US, en."""
        if self.languages:
            return list(self.languages)
        if self.locale:
            base = self.locale.split("-")[0]
            return [self.locale] if base == self.locale else [self.locale, base]
        return ["en-US", "en"]


DEFAULT = StealthConfig()


def chrome_user_agent(raw: str) -> str:
    return raw.replace("HeadlessChrome/", "Chrome/")


def launch_user_agent(config: StealthConfig, chrome_major: str | None) -> str | None:
    """The user agent a headless browser for ``config`` is started with (``--user-agent``), or
    None for Chromium's own.

    A launch flag is the one user agent every target has from its first script: service
    and shared workers included, which Playwright lets run before our overrides arrive.
    """
    if config.user_agent:
        return config.user_agent
    if config.enabled and chrome_major:  # Chromium's own reduced user agent, without "Headless"
        return (f"Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/{chrome_major}.0.0.0 "
                "Safari/537.36")
    return None


def user_agent_metadata(product: str) -> dict[str, Any]:
    """``userAgentMetadata`` for desktop Chrome on Linux; ``product`` is e.g. ``HeadlessChrome/156.0.8078.79``."""
    full = product.split("/", 1)[-1] or "0.0.0.0"
    major = full.split(".")[0]
    brands = [("Chromium", major), ("Google Chrome", major), ("Not=A?Brand", "24")]
    return {
        "brands": [{"brand": b, "version": v} for b, v in brands],
        "fullVersionList": [{"brand": b, "version": full if v == major else f"{v}.0.0.0"} for b, v in brands],
        "fullVersion": full,
        "platform": "Linux", "platformVersion": "", "architecture": "x86", "model": "",
        "mobile": False, "bitness": "64", "wow64": False,
    }


# Runs before any other script of every document (Playwright's init script) and of
# every worker (evaluated while the worker waits for the debugger). Replaced
# functions are Proxies of the originals, and Function.prototype.toString answers
# for them as for the originals, so neither their source nor their name leaks.
INIT_SCRIPT = r"""(() => {
  const hidden = new WeakMap();
  const define = (o, k, v, e = false) =>
    Object.defineProperty(o, k, {value: v, writable: true, configurable: true, enumerable: e});
  const nativeToString = Function.prototype.toString;
  const toString = new Proxy(nativeToString, {
    apply(target, self, args) {
      if (!hidden.has(self)) return Reflect.apply(target, self, args);
      const orig = hidden.get(self);
      return typeof orig === 'string' ? orig : Reflect.apply(target, orig, args);
    },
  });
  hidden.set(toString, nativeToString);
  define(Function.prototype, 'toString', toString);
  const wrap = (obj, key, handler) => {
    // an own method replaced in place: the same property flags as the native one (WebIDL
    // operations are enumerable)
    const d = obj && Object.getOwnPropertyDescriptor(obj, key);
    if (!d || typeof d.value !== 'function') return;
    const proxy = new Proxy(d.value, {apply: (t, self, args) => handler(t, self, args)});
    hidden.set(proxy, d.value);
    Object.defineProperty(obj, key, {...d, value: proxy});
  };
  const nativeFn = (name, impl) => {
    // a function that prints as "function name() { [native code] }"
    const f = {[name](...a) { return impl(...a); }}[name];
    hidden.set(f, 'function ' + name + '() { [native code] }');
    return f;
  };
  const getter = (obj, key, value) => {
    // an accessor like the native one: same flags, prints as the native getter
    const d = Object.getOwnPropertyDescriptor(obj, key);
    if (!d || typeof d.get !== 'function') return;
    const get = Object.getOwnPropertyDescriptor({get [key]() { return value; }}, key).get;
    hidden.set(get, d.get);
    Object.defineProperty(obj, key, {...d, get});
  };
  const g = self;  // the window, or a worker's global scope
  // user agent: for a browser started without the launch flag, where the CDP override
  // reached neither shared nor service workers, nor a same-process popup whose override lost its race
  const UA = %(user_agent)s;
  if (UA && navigator.userAgent !== UA) {
    const proto = Object.getPrototypeOf(navigator);
    getter(proto, 'userAgent', UA);
    getter(proto, 'appVersion', UA.replace(/^Mozilla\//, ''));
  }
  // WebGL (documents and OffscreenCanvas in workers): the software renderer is a headless giveaway.
  // getParameter is wrapped when a canvas first makes a context that has it, not up front: reading
  // WebGLRenderingContext or WebGL2RenderingContext makes Blink build those interfaces, 1.5-2.7 ms
  // of every document's start (measured), whether the page uses WebGL or not
  const VENDOR = %(vendor)s, RENDERER = %(renderer)s;
  const glDone = new WeakSet();
  const glWrap = (ctx) => {
    const proto = ctx !== null && typeof ctx === 'object' ? Object.getPrototypeOf(ctx) : null;
    if (!proto || glDone.has(proto)) return;
    glDone.add(proto);
    wrap(proto, 'getParameter', (target, self, args) => {
      if (args[0] === 0x9245) return VENDOR;   // UNMASKED_VENDOR_WEBGL
      if (args[0] === 0x9246) return RENDERER; // UNMASKED_RENDERER_WEBGL
      return Reflect.apply(target, self, args);
    });
  };
  for (const canvas of [g.HTMLCanvasElement, g.OffscreenCanvas]) {
    if (!canvas) continue;
    wrap(canvas.prototype, 'getContext', (target, self, args) => {
      const ctx = Reflect.apply(target, self, args);
      glWrap(ctx);  // a 2d or bitmap context has no getParameter: wrap leaves it alone
      return ctx;
    });
  }
  // permissions: notifications agree with Notification.permission
  if (g.Permissions && g.Notification) {
    wrap(Permissions.prototype, 'query', (target, self, args) => {
      const p = Reflect.apply(target, self, args);
      const name = args[0] && args[0].name;
      if (name !== 'notifications') return p;
      return p.then((status) => {
        const want = Notification.permission === 'default' ? 'prompt' : Notification.permission;
        if (status.state !== want) Object.defineProperty(status, 'state', {get: () => want, configurable: true});
        return status;
      });
    });
  }
  if (typeof window === 'undefined') return;  // window.chrome is a document's, not a worker's
  // window.chrome as on desktop Chrome: app, csi, loadTimes, runtime
  if (!window.chrome) define(window, 'chrome', {}, true);
  const chrome = window.chrome;
  if (!chrome.runtime) {
    const runtime = {
      OnInstalledReason: {CHROME_UPDATE: 'chrome_update', INSTALL: 'install',
                          SHARED_MODULE_UPDATE: 'shared_module_update', UPDATE: 'update'},
      OnRestartRequiredReason: {APP_UPDATE: 'app_update', OS_UPDATE: 'os_update', PERIODIC: 'periodic'},
      PlatformArch: {ARM: 'arm', ARM64: 'arm64', MIPS: 'mips', MIPS64: 'mips64', X86_32: 'x86-32', X86_64: 'x86-64'},
      PlatformOs: {ANDROID: 'android', CROS: 'cros', LINUX: 'linux', MAC: 'mac', OPENBSD: 'openbsd', WIN: 'win'},
      RequestUpdateCheckStatus: {NO_UPDATE: 'no_update', THROTTLED: 'throttled', UPDATE_AVAILABLE: 'update_available'},
      id: undefined,
      connect: nativeFn('connect', () => { throw new TypeError('Error in invocation of runtime.connect'); }),
      sendMessage: nativeFn('sendMessage', () => {
        throw new TypeError('Error in invocation of runtime.sendMessage');
      }),
    };
    define(chrome, 'runtime', runtime, true);
  }
  if (!chrome.loadTimes) define(chrome, 'loadTimes', nativeFn('loadTimes', () => ({})), true);
  if (!chrome.csi) define(chrome, 'csi', nativeFn('csi', () => ({})), true);
})();"""


def init_script(user_agent: str = "") -> str:
    """The script for one user agent (``""``: leave ``navigator.userAgent`` alone)."""
    return INIT_SCRIPT % {"user_agent": json.dumps(user_agent), "vendor": json.dumps(WEBGL_VENDOR),
                          "renderer": json.dumps(WEBGL_RENDERER)}


Command = tuple[str, dict[str, Any]]


def page_overrides(config: StealthConfig, product: str, raw_user_agent: str) -> list[Command]:
    """What a page or iframe target gets; ``product``/``raw_user_agent`` come from ``Browser.getVersion``."""
    languages = ",".join(config.accept_languages())
    commands: list[Command]
    if config.enabled:
        commands = [("Emulation.setUserAgentOverride", {
            "userAgent": config.user_agent or chrome_user_agent(raw_user_agent),
            "acceptLanguage": languages, "platform": "Linux x86_64",
            "userAgentMetadata": user_agent_metadata(product),
        })]
    else:
        # the browser's own headless values: its user agent, navigator.webdriver true
        commands = [
            ("Emulation.setUserAgentOverride", {
                "userAgent": config.user_agent or raw_user_agent,
                **({"acceptLanguage": languages} if config.languages or config.locale else {}),
            }),
            ("Emulation.setAutomationOverride", {"enabled": True}),
        ]
    return commands + process_overrides(config)


def process_overrides(config: StealthConfig) -> list[Command]:
    """Locale and timezone: Blink keeps one of each per renderer process, owned by the session that set it."""
    commands: list[Command] = []
    if config.locale:
        commands.append(("Emulation.setLocaleOverride", {"locale": config.locale}))
    if config.timezone:
        commands.append(("Emulation.setTimezoneOverride", {"timezoneId": config.timezone}))
    return commands


def worker_overrides(config: StealthConfig, product: str, raw_user_agent: str, script: str | None) -> list[Command]:
    """What a worker target gets; ``script`` is evaluated only in a worker that has not started yet.

    (A worker may be alone in its renderer process, so it asks for the locale and timezone too.)
    """
    languages = ",".join(config.accept_languages())
    commands: list[Command] = []
    if config.enabled:
        commands.append(("Network.setUserAgentOverride", {
            "userAgent": config.user_agent or chrome_user_agent(raw_user_agent),
            "acceptLanguage": languages, "platform": "Linux x86_64",
            "userAgentMetadata": user_agent_metadata(product),
        }))
        if script is not None:
            commands.append(("Runtime.evaluate", {"expression": script, "silent": True}))
    elif config.user_agent or config.languages or config.locale:
        commands.append(("Network.setUserAgentOverride", {"userAgent": config.user_agent or raw_user_agent,
                                                          "acceptLanguage": languages}))
    return commands + process_overrides(config)


# Pages attach their out-of-process iframes and dedicated workers; workers their own
# workers. Service and shared workers come from the browser-level attach only (a page
# would attach its service worker a second time).
_BROWSER_FILTER = [{"type": "page"}, {"type": "shared_worker"}, {"type": "service_worker"}]
_PAGE_FILTER = [{"type": "iframe"}, {"type": "worker"}]
_WORKER_FILTER = [{"type": "worker"}]
_PAGES = ("page", "iframe")
_WORKERS = ("worker", "shared_worker", "service_worker")
_SETTLE_TIMEOUT = 10.0


def _auto_attach(target_filter: list[dict[str, str]]) -> dict[str, Any]:
    return {"autoAttach": True, "waitForDebuggerOnStart": True, "flatten": True, "filter": target_filter}


class StealthTargets:
    """Stealth for every target of one browser, applied before the target runs.

    Start it before Playwright opens or adopts any tab; ``configure`` gives the
    browser (a pool browser) its computer's options, now and for later targets.
    """

    def __init__(self, cdp_ws: ClientConnection, context: BrowserContext, config: StealthConfig) -> None:
        self._context = context
        self.config = config
        self._product = ""
        self._raw_user_agent = ""
        self._sessions: dict[str, str] = {}  # session id -> target type, for every target we keep
        self._pages: dict[str, str] = {}  # page target id -> our session on it
        self._preparing: set[asyncio.Future[Any]] = set()
        self._script: Disposable | None = None  # Playwright's handle of the context init script
        self._script_source: str | None = None  # that script; also evaluated in every new worker
        # Emulation.setDeviceMetricsOverride for a new page's first document, until the tab's own
        # session sets it: Chromium keeps the metrics of the session that attached last
        self.page_metrics: dict[str, Any] | None = None
        self._cdp = CdpConnection(cdp_ws, self._on_event)

    @classmethod
    async def start(cls, devtools: DevTools, context: BrowserContext, config: StealthConfig) -> StealthTargets:
        ws = await devtools.connect(max_size=None, compression=None, ping_interval=None, open_timeout=10)
        targets = cls(ws, context, config)
        try:
            version = await asyncio.wait_for(targets._cdp.send("Browser.getVersion"), _SETTLE_TIMEOUT)
            targets._product, targets._raw_user_agent = version["product"], version["userAgent"]
            await targets._sync_script()
            # attaches the tabs that exist already, then every new target, paused
            await asyncio.wait_for(targets._cdp.send("Target.setAutoAttach", _auto_attach(_BROWSER_FILTER)),
                                   _SETTLE_TIMEOUT)
            # and tells when a page navigates (Target.targetInfoChanged), for _changed
            await asyncio.wait_for(targets._cdp.send("Target.setDiscoverTargets", {
                "discover": True, "filter": [{"type": "page"}]}), _SETTLE_TIMEOUT)
            await targets.settle()
        except BaseException:
            await targets.close()
            raise
        return targets

    @property
    def user_agent(self) -> str:
        """The user agent the pages report (the browser's own when stealth is disabled)."""
        c = self.config
        return c.user_agent or (chrome_user_agent(self._raw_user_agent) if c.enabled else self._raw_user_agent)

    async def configure(self, config: StealthConfig) -> None:
        """New options for the targets there are and those to come."""
        previous, self.config = self.config, config
        await self._sync_script()
        for session_id, kind in list(self._sessions.items()):
            if kind in _PAGES:
                commands = page_overrides(config, self._product, self._raw_user_agent)
                if previous.enabled is False and config.enabled:
                    commands.append(("Emulation.setAutomationOverride", {"enabled": False}))
                if previous.timezone and not config.timezone:
                    commands.append(("Emulation.setTimezoneOverride", {"timezoneId": ""}))
                if previous.locale and not config.locale:
                    commands.append(("Emulation.setLocaleOverride", {}))
            else:  # a running worker keeps its script; its user agent override follows
                commands = worker_overrides(config, self._product, self._raw_user_agent, None)
            self._track(session_id, self._send(session_id, commands))
        await self.settle()

    def page_session(self, target_id: str) -> tuple[CdpConnection, str] | None:
        """This connection and its session on page ``target_id`` (for input that skips
        Playwright's driver), or None when it has none."""
        session_id = self._pages.get(target_id)
        return None if session_id is None or self._cdp.closed else (self._cdp, session_id)

    async def page_targets(self) -> set[str] | None:
        """The ids of the browser's page targets now (one round trip on this connection), or None
        when it is closed."""
        if self._cdp.closed:
            return None
        answer = await self._cdp.send("Target.getTargets")
        return {t["targetId"] for t in answer.get("targetInfos", []) if t.get("type") == "page"}

    async def settle(self) -> None:
        """Wait until the overrides sent so far are answered (or have timed out)."""
        if self._preparing:
            await asyncio.gather(*list(self._preparing), return_exceptions=True)

    async def close(self) -> None:
        await self._cdp.close()

    async def _sync_script(self) -> None:
        """The context init script: the current one when enabled, none when disabled.

        (A document keeps the script it started with until it navigates.)
        """
        source = init_script(self.user_agent) if self.config.enabled else None
        if source == self._script_source:
            return
        if self._script_source is not None:
            old, self._script, self._script_source = self._script, None, None
            if old is None:  # an older Playwright returns no handle, and cannot take a script back
                log.warning("stealth: this Playwright cannot remove the stealth script; documents keep it")
            else:
                await old.close()
        if source is not None:
            self._script = await self._context.add_init_script(source)
            self._script_source = source

    # -- targets --------------------------------------------------------------------------
    def _on_event(self, method: str, params: dict[str, Any], session_id: str | None) -> None:
        if method == "Target.attachedToTarget":
            self._attached(params, session_id)
        elif method == "Target.detachedFromTarget":
            self._detached(params.get("sessionId", ""), params.get("targetId", ""))
        elif method == "Target.targetInfoChanged":
            self._changed(params["targetInfo"]["targetId"])

    def _attached(self, params: dict[str, Any], parent: str | None) -> None:
        """Queue a new target's overrides, then its resume: all sent before any answer is awaited.

        Runs inside the reader, as soon as the target is announced. Chromium holds a
        page in a new renderer process, an iframe, a dedicated or a service worker until
        every client that asked to wait (Playwright too) has resumed it, so the overrides
        are in place before its first script. A popup in its opener's process and a
        shared worker start when the first client lets them go, and Playwright is
        quicker: there the overrides race (see the module docstring).
        """
        session_id: str = params["sessionId"]
        info: dict[str, Any] = params["targetInfo"]
        kind: str = info["type"]
        waiting = bool(params.get("waitingForDebugger"))
        sent: list[asyncio.Future[dict[str, Any]]] = []
        keep = kind in _PAGES or kind == "worker" or (kind in _WORKERS and parent is None)
        try:
            if kind in _PAGES:
                commands = page_overrides(self.config, self._product, self._raw_user_agent)
                commands.append(("Target.setAutoAttach", _auto_attach(_PAGE_FILTER)))
                if kind == "page":
                    self._pages[info["targetId"]] = session_id
                    if waiting and self.page_metrics:
                        commands.append(("Emulation.setDeviceMetricsOverride", self.page_metrics))
            elif keep:
                script = self._script_source if waiting else None  # a running worker keeps its globals
                commands = worker_overrides(self.config, self._product, self._raw_user_agent, script)
                if kind == "worker":
                    commands.append(("Target.setAutoAttach", _auto_attach(_WORKER_FILTER)))
            else:
                commands = []
            if keep:
                self._sessions[session_id] = kind
            sent = self._send(session_id, commands)
        finally:
            if waiting:
                self._cdp.send("Runtime.runIfWaitingForDebugger", None, session_id)
            if not keep:  # not ours to change: let it go
                self._cdp.send("Target.detachFromTarget", {"sessionId": session_id}, parent)
        self._track(session_id, sent)

    def _detached(self, session_id: str, target_id: str) -> None:
        kind = self._sessions.pop(session_id, None)
        if self._pages.get(target_id) == session_id:
            del self._pages[target_id]
        if kind is not None:
            self._reassert()

    def _changed(self, target_id: str) -> None:
        if target_id in self._pages:  # a page navigated, maybe to another renderer process
            self._reassert()

    def _reassert(self) -> None:
        """Give every renderer the locale and timezone again.

        Blink keeps one locale and one timezone per renderer process, owned by the
        session that set them: the first of ours there; the others are told "already in
        effect" and, for the locale, keep nothing. When the owner leaves the process
        (its target closed, or its page navigated to another process), the process loses
        both, and a popup that started in its opener's process has no locale to take to
        its own. After any such change every session asks again, and one per process
        becomes the owner. (A document that starts in between has the host's values.)
        """
        commands = process_overrides(self.config)
        if commands:
            for session_id in list(self._sessions):
                self._track(session_id, self._send(session_id, commands))

    def _send(self, session_id: str, commands: list[Command]) -> list[asyncio.Future[dict[str, Any]]]:
        return [self._cdp.send(method, params, session_id) for method, params in commands]

    def _track(self, session_id: str, sent: list[asyncio.Future[dict[str, Any]]]) -> None:
        if not sent:
            return
        task = asyncio.ensure_future(self._answers(session_id, sent))
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    async def _answers(self, session_id: str, sent: list[asyncio.Future[dict[str, Any]]]) -> None:
        try:
            results = await asyncio.wait_for(asyncio.gather(*sent, return_exceptions=True), _SETTLE_TIMEOUT)
        except TimeoutError:
            log.warning("stealth: target %s did not answer its overrides in %ss", session_id, _SETTLE_TIMEOUT)
            return
        for result in results:
            # "already in effect": another of our sessions in the same renderer owns the locale/timezone
            if isinstance(result, Exception) and "already in effect" not in str(result):
                log.debug("stealth: an override of target %s failed: %s", session_id, result)
