"""The fake models' one skill: fill in tests/pages/agent_form.html, deciding every step from
the screenshot the request carried.

Each protocol module turns a request into a ``View`` (the user's texts, the images of the
latest turn, how many model turns came before); ``decide`` reads the newest image and
plans from what the screen shows:

* the green "submitted" banner          → done, with a final answer naming the value;
* the field idle (blue)                 → click the field, type the value, click submit;
* the field focused and empty (amber)   → type the value, click submit;
* the field filled (cyan)               → click submit;
* the very screenshot of the turn before → wait, once (the screen was not repainted yet);
* no screenshot, one it cannot decode, or nothing it recognises → say so, and do nothing.

A protocol that takes one action per turn uses the plan's first step; the GA ``computer``
tool batches them all. The value to type is what the newest user text says after the word
``type``, in quotes (``type 'blue-42' into the field and submit``), so an injected message
can change it. Coordinates leave here in image pixels; ``Space`` puts them in a dialect's.
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, field

from .screen import Image, ImageError, Screen, decode_base64, decode_data_url, find_targets, image_size

VALUE = re.compile(r"""\btype\s+(['"\u2018\u201c])(.+?)['"\u2019\u201d]""", re.I | re.S)


# -- what a request showed ----------------------------------------------------------------------
@dataclass
class ImageRef:
    """One image as a request carried it: a data URL or bare base64 (Anthropic), or a URL the
    fake cannot fetch. Decoded on first use; the fast mode only reads its size."""

    data_url: str | None = None
    b64: str | None = None
    media_type: str | None = None
    _image: Image | None = None
    _error: str | None = None

    def image(self) -> Image | None:
        if self._image is None and self._error is None:
            try:
                self._image = decode_data_url(self.data_url) if self.data_url is not None else \
                    decode_base64(self.b64 or "")
            except ImageError as exc:
                self._error = str(exc)
        return self._image

    @property
    def error(self) -> str | None:
        self.image()
        return self._error

    def sha1(self) -> str | None:
        if self._image is not None:
            return self._image.sha1
        raw = self.raw()
        return hashlib.sha1(raw).hexdigest() if raw else None

    def raw(self) -> bytes | None:
        import base64
        import binascii

        payload = self.b64 if self.data_url is None else self.data_url.partition(",")[2]
        if self.data_url is not None and not self.data_url.startswith("data:"):
            return None
        try:
            return base64.b64decode(payload or "")
        except (binascii.Error, ValueError):
            return None

    def describe(self, decode: bool = True) -> dict[str, object]:
        """For the log; without ``decode`` (the fast mode) from the header only."""
        if not decode and self._image is None:
            raw = self.raw()
            size = image_size(raw) if raw else None
            if raw and size:
                fmt = "png" if raw[:4] == b"\x89PNG" else "jpeg"
                return {"w": size[0], "h": size[1], "format": fmt, "bytes": len(raw),
                        "sha1": hashlib.sha1(raw).hexdigest()}
        img = self.image()
        if img is not None:
            return img.describe()
        shown = self.data_url[:80] if self.data_url and not self.data_url.startswith("data:") else None
        return {"error": self._error, **({"url": shown} if shown else {})}


@dataclass
class View:
    user_texts: list[str] = field(default_factory=list)     # every user text, oldest first
    latest_texts: list[str] = field(default_factory=list)   # those of the latest turn (after the last model turn)
    latest_images: list[ImageRef] = field(default_factory=list)
    earlier_images: list[ImageRef] = field(default_factory=list)  # the images before it, oldest first
    model_turns: int = 0                                    # model turns before this request

    def add(self, texts: list[str], images: list[ImageRef], latest: bool) -> None:
        self.user_texts += texts
        if latest:
            self.latest_texts += texts
            self.latest_images += images
        else:
            self.earlier_images += images

    @property
    def all_images(self) -> int:
        return len(self.earlier_images) + len(self.latest_images)

    def summary(self, decode: bool = True) -> dict[str, object]:
        return {"user_texts": self.user_texts, "latest_texts": self.latest_texts,
                "latest_images": [i.describe(decode) for i in self.latest_images], "all_images": self.all_images,
                "model_turns": self.model_turns}


def wanted_value(texts: list[str]) -> str | None:
    """The value the newest user text asks to type (``type 'x'`` / ``type "x"``)."""
    for text in reversed(texts):
        match = VALUE.search(text)
        if match:
            return match.group(2)
    return None


# -- the plan -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Click:
    target: str
    x: float  # image pixels
    y: float


@dataclass(frozen=True)
class Type:
    text: str


@dataclass(frozen=True)
class Wait:
    """The screen has not changed since the last action: give it a moment (once)."""


@dataclass(frozen=True)
class Done:
    answer: str


@dataclass(frozen=True)
class Say:
    """No action: the model answers with this text (no screenshot, nothing recognised…)."""

    text: str


@dataclass(frozen=True)
class Screenshot:
    """Ask for a screenshot: only on a first turn that brought none, and only where the
    protocol has such an action (OpenAI and Anthropic computer tools)."""


Step = Click | Type | Wait | Done | Say | Screenshot


@dataclass
class Plan:
    steps: list[Step]
    image: Image | None = None
    screen: Screen | None = None

    @property
    def first(self) -> Step:
        return self.steps[0]

    @property
    def size(self) -> tuple[int, int]:
        """Width and height of the image the plan was made on."""
        if self.image is not None:
            return self.image.width, self.image.height
        if self.screen is not None:
            return self.screen.width, self.screen.height
        return 1280, 720

    @property
    def actions(self) -> list[Step]:
        """The leading steps that act on the computer (what a batching tool sends at once)."""
        out: list[Step] = []
        for step in self.steps:
            if not isinstance(step, Click | Type | Wait | Screenshot):
                break
            out.append(step)
        return out

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {"steps": [describe_step(s) for s in self.steps]}
        if self.screen is not None:
            out["screen"] = self.screen.describe()
        return out


def intent(step: Step) -> str:
    """What a model would say it is about to do (reasoning summaries, Anthropic's text blocks)."""
    if isinstance(step, Click):
        return {"field": "I see the empty text field; I will click it.",
                "submit": "The value is in the field; I will click the submit button."}.get(
            step.target, f"I will click the {step.target}.")
    if isinstance(step, Type):
        return f"The text field has the focus; I will type '{step.text}'."
    if isinstance(step, Screenshot):
        return "I need to see the screen first."
    if isinstance(step, Wait):
        return "The screen has not changed since my last action; I will wait a moment."
    return step.answer if isinstance(step, Done) else step.text if isinstance(step, Say) else ""


def describe_step(step: Step) -> dict[str, object]:
    name = type(step).__name__.lower()
    return {"step": name, **{k: (round(v, 1) if isinstance(v, float) else v) for k, v in vars(step).items()}}


def decide(view: View, *, can_ask_screenshot: bool = False) -> Plan:
    refs = view.latest_images
    images = [r.image() for r in refs]
    decoded = [i for i in images if i is not None]
    if not decoded:
        errors = [r.error for r in refs if r.error]
        if errors:
            return Plan([Say(f"I could not see the screenshot: {errors[-1]}.")])
        if view.model_turns == 0 and can_ask_screenshot:
            return Plan([Screenshot()])
        return Plan([Say("I received no screenshot, so I cannot see the screen and will not guess.")])
    image = decoded[-1]
    screen = find_targets(image.pixels)
    value = wanted_value(view.user_texts)
    plan = Plan([], image, screen)
    if unchanged_once(view, image):
        plan.steps = [Wait()]
        return plan
    if "submitted" in screen.blobs:
        plan.steps = [Done(f"Submitted '{value}'." if value else "The form was submitted.")]
        return plan
    target = screen.field
    if target is None:
        plan.steps = [Say(f"I see nothing I recognise on this {image.width}x{image.height} screenshot: "
                          "no text field, no submit button.")]
        return plan
    if value is None:
        plan.steps = [Say("I see the form but was not told what to type (say: type 'something').")]
        return plan
    submit = screen.blobs.get("submit")
    steps: list[Step] = []
    if screen.field_state == "idle":
        steps.append(Click("field", target.cx, target.cy))
    if screen.field_state in ("idle", "focused"):
        steps.append(Type(value))
    if submit is not None:
        steps.append(Click("submit", submit.cx, submit.cy))
    elif screen.field_state == "filled":
        steps.append(Say("The field is filled but I cannot find the submit button."))
    plan.steps = steps
    return plan


def unchanged_once(view: View, image: Image) -> bool:
    """The newest screenshot is the very one of the turn before (the last action shows no
    effect yet: a screen not repainted), and the one before that differed: wait once, then
    act on what is shown, as a model would (a screen that stays stale never gets done)."""
    if not view.model_turns or not view.earlier_images:
        return False
    previous = view.earlier_images[-1].sha1()
    before = view.earlier_images[-2].sha1() if len(view.earlier_images) > 1 else None
    return previous == image.sha1 and before != previous


def fast(view: View, steps: int) -> Plan:
    """The benchmark mode: no decoding, no looking. A click at the image's centre (its size
    read from the header) until ``steps`` model turns were taken, then done."""
    if view.model_turns >= steps:
        return Plan([Done(f"fast mode: done after {view.model_turns} steps")])
    for ref in reversed(view.latest_images):
        raw = ref.raw()
        size = image_size(raw) if raw else None
        if size:
            return Plan([Click("center", size[0] / 2, size[1] / 2)], screen=Screen(*size))
    return Plan([Click("center", 640, 360)], screen=Screen(1280, 720))


# -- coordinate spaces -------------------------------------------------------------------------------
def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 100 * 28 * 28,
                 max_pixels: int = 16384 * 28 * 28) -> tuple[int, int]:
    """The (height, width) a Qwen2.5-VL-family processor (UI-TARS 1.5) resizes an image to:
    both multiples of ``factor``, the area within [min_pixels, max_pixels], the aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio of {width}x{height} is over 200")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class Space:
    """A dialect's coordinate space over an image of ``width`` x ``height`` pixels.

    kind: ``pixels`` (the image's own), ``display`` (a declared display of ``dw`` x ``dh``),
    ``grid1000`` (0–1000, Qwen3-VL), ``grid999`` (0–999, Northstar/Lightcone),
    ``smart`` (pixels of the smart-resized image, UI-TARS 1.5)."""

    kind: str
    width: int
    height: int
    dw: int = 0
    dh: int = 0

    def point(self, x: float, y: float) -> tuple[int, int]:
        w, h = self.width, self.height
        if self.kind == "pixels":
            return _clamp(round(x), w - 1), _clamp(round(y), h - 1)
        if self.kind == "display":
            return _clamp(round(x * self.dw / w), self.dw - 1), _clamp(round(y * self.dh / h), self.dh - 1)
        if self.kind == "grid1000":
            return _clamp(round(x / w * 1000), 1000), _clamp(round(y / h * 1000), 1000)
        if self.kind == "grid999":
            return _clamp(round(x / w * 1000), 999), _clamp(round(y / h * 1000), 999)
        if self.kind == "smart":
            rh, rw = smart_resize(h, w)
            return _clamp(round(x * rw / w), rw - 1), _clamp(round(y * rh / h), rh - 1)
        raise ValueError(f"unknown coordinate space {self.kind!r}")


def _clamp(v: int, hi: int) -> int:
    return max(0, min(hi, v))


def display_mismatch(image: Image | None, dw: int, dh: int) -> str | None:
    """Why an image does not fit a declared display (more than a pixel off either way), or None."""
    if image is None or not dw or not dh:
        return None
    if abs(image.width - dw) <= 1 and abs(image.height - dh) <= 1:
        return None
    return (f"The screenshot is {image.width}x{image.height} but the computer tool declares a {dw}x{dh} "
            "display, so I cannot say where to click; send screenshots of the declared size.")
