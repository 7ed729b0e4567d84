"""Browser computers that do not announce automation (the ``stealth`` create option).

Process-wide, the launcher passes ``--disable-blink-features=AutomationControlled``
(``navigator.webdriver`` is false from the first document on, popups included).
Per tab, at registration, ``apply`` sends a handful of pipelined CDP commands:

- ``Emulation.setUserAgentOverride``: the browser's own user agent with
  ``HeadlessChrome`` → ``Chrome``, matching ``userAgentMetadata`` (so
  ``navigator.userAgentData`` agrees) and ``acceptLanguage`` (``navigator.languages``
  and the ``Accept-Language`` header);
- ``Page.addScriptToEvaluateOnNewDocument`` (``runImmediately``): ``INIT_SCRIPT``;
- when asked for: ``Emulation.setLocaleOverride`` and ``Emulation.setTimezoneOverride``.

New headless Chromium already has desktop Chrome's plugin set (5 PDF viewer plugins,
2 mime types) and consistent notification permissions; the script only fills what
is missing or wrong, and every function it replaces still looks native.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

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


# Runs before any page script in every document (and once in the current one).
# Replaced functions are Proxies of the originals, and Function.prototype.toString
# answers for them as for the originals, so neither their source nor their name leaks.
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
    const orig = obj && obj[key];
    if (typeof orig !== 'function') return;
    const proxy = new Proxy(orig, {apply: (t, self, args) => handler(t, self, args)});
    hidden.set(proxy, orig);
    define(obj, key, proxy);
  };
  const nativeFn = (name, impl) => {
    // a function that prints as "function name() { [native code] }"
    const f = {[name](...a) { return impl(...a); }}[name];
    hidden.set(f, 'function ' + name + '() { [native code] }');
    return f;
  };
  // WebGL: the software renderer (SwiftShader) is a headless giveaway
  const VENDOR = %(vendor)s, RENDERER = %(renderer)s;
  for (const ctx of [window.WebGLRenderingContext, window.WebGL2RenderingContext]) {
    if (!ctx) continue;
    wrap(ctx.prototype, 'getParameter', (target, self, args) => {
      if (args[0] === 0x9245) return VENDOR;   // UNMASKED_VENDOR_WEBGL
      if (args[0] === 0x9246) return RENDERER; // UNMASKED_RENDERER_WEBGL
      return Reflect.apply(target, self, args);
    });
  }
  // permissions: notifications agree with Notification.permission
  if (window.Permissions && window.Notification) {
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


def init_script() -> str:
    return INIT_SCRIPT % {"vendor": json.dumps(WEBGL_VENDOR), "renderer": json.dumps(WEBGL_RENDERER)}


_SCRIPT = init_script()


async def apply(cdp: Any, config: StealthConfig, product: str, raw_user_agent: str,
                previous_script: str | None) -> str | None:
    """Configure one tab; returns the identifier of its init script (None when disabled).

    ``cdp`` is the tab's CDP session; ``product``/``raw_user_agent`` come from
    ``Browser.getVersion``. Re-applying (a pool browser given its computer's options)
    replaces the previous script and overrides.
    """
    calls: list[Any] = []
    if previous_script is not None and not config.enabled:
        # (the current document keeps its patches until it navigates; the script is the
        # same whatever the options, so an enabled tab keeps it)
        calls.append(cdp.send("Page.removeScriptToEvaluateOnNewDocument", {"identifier": previous_script}))
    languages = config.accept_languages()
    if config.enabled:
        calls.append(cdp.send("Emulation.setUserAgentOverride", {
            "userAgent": config.user_agent or chrome_user_agent(raw_user_agent),
            "acceptLanguage": ",".join(languages),
            "platform": "Linux x86_64",
            "userAgentMetadata": user_agent_metadata(product),
        }))
    else:
        # the browser's own headless values: its user agent, navigator.webdriver true
        calls.append(cdp.send("Emulation.setUserAgentOverride", {
            "userAgent": config.user_agent or raw_user_agent,
            **({"acceptLanguage": ",".join(languages)} if config.languages or config.locale else {}),
        }))
        calls.append(cdp.send("Emulation.setAutomationOverride", {"enabled": True}))
    if config.locale:
        calls.append(cdp.send("Emulation.setLocaleOverride", {"locale": config.locale}))
    if config.timezone:
        calls.append(cdp.send("Emulation.setTimezoneOverride", {"timezoneId": config.timezone}))
    script = None
    if config.enabled and previous_script is not None:
        await asyncio.gather(*calls)
        return previous_script
    if config.enabled:
        calls.append(cdp.send("Page.enable"))  # the renderer runs new-document scripts of enabled sessions only
        script = cdp.send("Page.addScriptToEvaluateOnNewDocument", {"source": _SCRIPT, "runImmediately": True})
        calls.append(script)
    results = await asyncio.gather(*calls)
    return results[-1]["identifier"] if script is not None else None
