// What this global scope reports, taken the moment it runs: shared by the popup, the
// workers page and its workers (tests/test_stealth.py).
function stealthProbe() {
  const r = {};
  r.user_agent = navigator.userAgent;
  r.app_version = navigator.appVersion;
  r.ua_data_brands = navigator.userAgentData ? navigator.userAgentData.brands.map((b) => b.brand) : null;
  r.ua_data_platform = navigator.userAgentData ? navigator.userAgentData.platform : null;
  r.languages = Array.from(navigator.languages || []);
  r.webdriver = navigator.webdriver;
  r.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone;
  r.locale = Intl.DateTimeFormat().resolvedOptions().locale;
  try {
    const canvas = typeof document !== 'undefined' ? document.createElement('canvas') : new OffscreenCanvas(1, 1);
    const gl = canvas.getContext('webgl');
    const ext = gl && gl.getExtension('WEBGL_debug_renderer_info');
    r.webgl_vendor = ext ? gl.getParameter(ext.UNMASKED_VENDOR_WEBGL) : null;
    r.webgl_renderer = ext ? gl.getParameter(ext.UNMASKED_RENDERER_WEBGL) : null;
  } catch (e) { r.webgl_vendor = 'error: ' + e; }
  if (typeof window !== 'undefined') r.screen = [screen.width, screen.height];
  const getter = Object.getOwnPropertyDescriptor(Object.getPrototypeOf(navigator), 'userAgent').get;
  r.ua_getter = Function.prototype.toString.call(getter);
  return r;
}
