"""Element snapshots: Playwright's perception of a page, read once and remembered per tab.

The browser hands over Playwright's own ``page.aria_snapshot(mode="ai", boxes=True)``:
the accessibility tree as YAML-ish text with a ``[ref=eN]`` on each element one can act
on (``f1e3`` in a frame), iframes and shadow roots included, hidden elements left out,
each element's box in CSS pixels of its frame's viewport. Refs resolve back with
Playwright's ``page.get_by_ref``, in the driver; this module only reads the text:

- parses it into nodes (``parse``), keeping each line as Playwright wrote it, so the
  text form given back is Playwright's own form (the one Playwright MCP shows models);
- puts every box in screenshot pixels (frame offsets, device scale, a desktop's window)
  and marks what lies outside the viewport (``locate``);
- renders text or JSON, filtered (``interactive_only``, ``viewport_only``) and capped
  (``max_chars``, with a notice saying what was cut);
- remembers, per tab, the last snapshots: their ids, their refs (role and name), and
  the identity of each frame's document (``SnapshotBook``). An action on a ref names
  its snapshot (or the tab's latest); a ref of an older snapshot of a page that changed
  since is refused, and the browser refuses a ref whose document is not the one it was
  taken in, so a ref never lands on another element than the one it named.
"""

from __future__ import annotations

import json
import re
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from opencone.core import actions as a
from opencone.core.ids import new_id
from opencone.drivers.base import DriverError, ElementTarget, FrameProbe, PageSnapshot

SNAPSHOTS_KEPT = 8  # per tab: refs of older ones are refused as unknown
TABS_KEPT = 32  # tabs remembered per computer (the ones snapshot longest ago are forgotten first)
INTERACTIVE_ROLES = frozenset({
    "button", "link", "textbox", "searchbox", "checkbox", "radio", "combobox", "listbox", "option", "menuitem",
    "menuitemcheckbox", "menuitemradio", "slider", "spinbutton", "switch", "tab", "treeitem",
})
VALUE_ROLES = frozenset({"textbox", "searchbox", "combobox", "spinbutton", "slider"})
_HEX = re.compile(r"\\x([0-9a-fA-F]{2})")
_decoder = json.JSONDecoder()


def ref_prefix(ref: str) -> str:
    """The frame part of a ref: ``""`` for ``e5``, ``f1`` for ``f1e3``."""
    return ref[:ref.index("e")] if ref[0] == "f" else ""


@dataclass(slots=True)
class Node:
    """One line of the snapshot: an element, or a text (``role == "text"``)."""

    depth: int
    role: str
    line: str  # as Playwright wrote it, after "- "
    parent: int = -1  # index of the parent node
    name: str | None = None
    ref: str | None = None
    text: str | None = None  # a text's text, an element's own text, or a field's value
    attrs: dict[str, str | bool] | None = None  # (None rather than empty: thousands of nodes)
    props: list[str] | None = None  # its "/url: …" and "/placeholder: …" lines
    url: str | None = None
    placeholder: str | None = None
    css: tuple[int, int, int, int] | None = None  # the box as given: CSS px in its frame's viewport
    frame: str = ""  # the ref prefix of the frame it is in
    box: tuple[int, int, int, int] | None = None  # in screenshot pixels
    offscreen: bool = False
    value_of_parent: bool = False  # a field's value, written below its properties as a text
    index: int = 0  # its place in the snapshot's nodes

    @property
    def interactive(self) -> bool:
        return self.ref is not None and (self.role in INTERACTIVE_ROLES
                                         or (self.attrs is not None and self.attrs.get("cursor") == "pointer"))

    def describe(self) -> str:
        return f'{self.role} "{self.name}"' if self.name else self.role


def _value(raw: str) -> str:
    """A YAML scalar as Playwright writes one: plain, or double-quoted with JSON-like escapes."""
    if raw.startswith('"'):
        try:
            return str(json.loads(_HEX.sub(r"\\u00\1", raw)))
        except ValueError:
            return raw
    return raw


@dataclass(slots=True)
class Parsed:
    nodes: list[Node]
    first: dict[str, str]  # frame prefix -> the first ref in it (to look at its document)
    iframes: dict[str, str]  # an iframe's ref -> the prefix of the frame inside it (to place it)
    main: str  # the main frame's prefix


def parse(text: str) -> Parsed:
    """Playwright's ai snapshot text as nodes, in document order, each knowing its parent and frame."""
    nodes: list[Node] = []
    first: dict[str, str] = {}
    iframes: dict[str, str] = {}
    stack: list[Node] = []  # the open ancestors
    for line in text.split("\n"):
        body = line.lstrip(" ")
        if not body.startswith("- "):
            continue
        depth = (len(line) - len(body)) >> 1
        body = body[2:]
        while stack and stack[-1].depth >= depth:
            stack.pop()
        up = stack[-1] if stack else None
        parent = up.index if up is not None else -1
        if body[0] == "/":  # a property of the element above: /url, /placeholder
            if up is not None:
                if up.props is None:
                    up.props = []
                up.props.append(body)
                key, _, raw = body[1:].partition(": ")
                if key == "url":
                    up.url = _value(raw)
                elif key == "placeholder":
                    up.placeholder = _value(raw)
            continue
        if body.startswith("text: "):
            node = Node(depth, "text", body, parent, text=_value(body[6:]))
            if up is not None:
                node.frame = up.frame
                if up.role in VALUE_ROLES and up.text is None and up.props:  # (a field with a placeholder)
                    up.text, node.value_of_parent = node.text, True
            nodes.append(node)
            continue
        node = _element(depth, body, parent)
        ref = node.ref
        if ref is not None:
            prefix = ref[:ref.index("e")] if ref[0] == "f" else ""
            node.frame = prefix
            if prefix not in first:
                first[prefix] = ref
                anc = up  # the nearest ancestor with a ref: the iframe this frame is in, if any
                while anc is not None and anc.ref is None:
                    anc = nodes[anc.parent] if anc.parent >= 0 else None
                if anc is not None and anc.role == "iframe" and anc.ref is not None and anc.frame != prefix:
                    iframes[anc.ref] = prefix
        elif up is not None:
            node.frame = up.frame
        node.index = len(nodes)
        nodes.append(node)
        stack.append(node)
    main = nodes[0].frame if nodes and nodes[0].ref is not None else ""
    return Parsed(nodes, first, iframes, main)


def _element(depth: int, body: str, parent: int) -> Node:
    if body[0] == "'":  # a key YAML needed quoted: 'role "name: x" [ref=e1]'
        end = 1
        while True:
            end = body.index("'", end)
            if body[end + 1:end + 2] != "'":
                break
            end += 2
        key, rest = body[1:end].replace("''", "'"), body[end + 1:]
        value = rest[2:] if rest.startswith(": ") else None
    else:
        key, sep, value_raw = body.partition(": ")
        value = value_raw if sep else None
        if not sep and key.endswith(":"):
            key = key[:-1]
    space = key.find(" ")
    node = Node(depth, key if space < 0 else key[:space], body, parent)
    if space >= 0:
        i = space + 1
        if key.startswith('"', i):
            try:
                node.name, i = _decoder.raw_decode(key, i)
            except ValueError:
                pass
        rest = key[i:].strip()
        if rest.startswith("[") and rest.endswith("]"):
            attrs = None
            for part in rest[1:-1].split("] ["):
                k, eq, v = part.partition("=")
                if k == "ref":
                    node.ref = v
                elif k == "box":
                    x, y, w, h = v.split(",")
                    node.css = (int(x), int(y), int(w), int(h))
                else:
                    if attrs is None:
                        attrs = node.attrs = {}
                    attrs[k] = v if eq else True
    if value is not None:
        node.text = _value(value)
    return node


# -- where things are ---------------------------------------------------------------------
@dataclass(slots=True)
class Frame:
    document: str | None  # None: its document could not be looked at (its refs are refused)
    offset: tuple[float, float] = (0.0, 0.0)  # its viewport's top left in the page's viewport, CSS px
    clip: tuple[float, float, float, float] | None = None  # its visible rect there; None: the viewport


def frames_from(parsed: Parsed, page: PageSnapshot, probes: dict[str, FrameProbe | None]) -> dict[str, Frame]:
    """Each frame's document and place: the page's from the snapshot, the others from the
    browser's look at their iframes (outer ones first: an iframe's ref comes before its frame's)."""
    frames: dict[str, Frame] = {prefix: Frame(None) for prefix in parsed.first}
    frames[parsed.main] = Frame(page.document or None)
    for iframe_ref, prefix in parsed.iframes.items():
        probe = probes.get(iframe_ref)
        outer = frames.get(ref_prefix(iframe_ref))
        inner = frames.get(prefix)
        if probe is None or outer is None or inner is None:
            continue  # (its document unknown: its refs are refused)
        x, y, w, h = probe.content
        ox, oy = outer.offset[0] + x, outer.offset[1] + y
        rect = (ox, oy, w, h)
        inner.document = probe.document
        inner.offset = (ox, oy)
        inner.clip = rect if outer.clip is None else _intersect(outer.clip, rect)
    return frames


def _intersect(r1: tuple[float, float, float, float],
               r2: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    x1, y1 = max(r1[0], r2[0]), max(r1[1], r2[1])
    x2, y2 = min(r1[0] + r1[2], r2[0] + r2[2]), min(r1[1] + r1[3], r2[1] + r2[3])
    return (x1, y1, max(0.0, x2 - x1), max(0.0, y2 - y1))


def locate(parsed: Parsed, frames: dict[str, Frame], page: PageSnapshot) -> None:
    """Every box in screenshot pixels, and whether it is outside the viewport (or its frame's)."""
    scale, (gx, gy) = page.scale, page.origin
    vw, vh = page.viewport
    nodes = parsed.nodes
    places = {prefix: (f.offset[0], f.offset[1],
                       *((0.0, 0.0, vw, vh) if f.clip is None else _intersect((0.0, 0.0, vw, vh), f.clip)))
              for prefix, f in frames.items()}
    nowhere = (0.0, 0.0, 0.0, 0.0, vw, vh)
    for node in nodes:
        css = node.css
        if css is None:
            continue
        if node.ref is None and node.parent >= 0:  # (an iframe's children are in the frame inside it)
            up = nodes[node.parent]
            if up.role == "iframe" and up.ref in parsed.iframes:
                node.frame = parsed.iframes[up.ref]
        ox, oy, cx, cy, cw, ch = places.get(node.frame, nowhere)
        x, y, w, h = css
        px, py = x + ox, y + oy
        node.box = (round(gx + px * scale), round(gy + py * scale), round(w * scale), round(h * scale))
        node.offscreen = (px >= cx + cw or py >= cy + ch or px + w <= cx or py + h <= cy
                          or w <= 0 or h <= 0 or cw <= 0 or ch <= 0)


# -- remembering snapshots ---------------------------------------------------------------
@dataclass(slots=True)
class Remembered:
    snapshot_id: str
    tab_id: str
    url: str
    refs: dict[str, tuple[str, str | None]]  # ref -> (role, name)
    documents: dict[str, str | None]  # frame prefix -> its document then
    main: str = ""  # the page's own prefix


@dataclass(slots=True)
class Taken:
    """A snapshot just taken: its nodes, and what the book remembers of it."""

    memo: Remembered
    page: PageSnapshot
    nodes: list[Node]


class SnapshotBook:
    """The recent snapshots of one computer's tabs."""

    def __init__(self) -> None:
        self._tabs: dict[str, OrderedDict[str, Remembered]] = {}

    def add(self, memo: Remembered) -> None:
        kept = self._tabs.pop(memo.tab_id, None) or OrderedDict()
        self._tabs[memo.tab_id] = kept  # (last: the most recently snapshot tab)
        kept[memo.snapshot_id] = memo
        while len(kept) > SNAPSHOTS_KEPT:
            kept.popitem(last=False)
        while len(self._tabs) > TABS_KEPT:
            del self._tabs[next(iter(self._tabs))]

    def latest(self, tab_id: str) -> Remembered | None:
        kept = self._tabs.get(tab_id)
        return next(reversed(kept.values())) if kept else None

    def target(self, element: a.Element, tab_id: str) -> ElementTarget:
        """The element an action names, checked against the tab's snapshots (DriverError if not)."""
        if element.selector is not None:
            return ElementTarget(selector=element.selector, description=f"selector {element.selector!r}")
        ref = element.ref
        assert ref is not None
        kept = self._tabs.get(tab_id)
        latest = self.latest(tab_id)
        if not kept or latest is None:
            raise DriverError(f"ref {ref}: this tab has no element snapshot yet; take one first "
                              "(POST /computers/{id}/snapshot) and use its refs")
        memo = latest
        if element.snapshot_id is not None:
            found = kept.get(element.snapshot_id)
            if found is None:
                raise DriverError(f"snapshot {element.snapshot_id} is not one of this tab's last {SNAPSHOTS_KEPT} "
                                  f"snapshots (the latest is {latest.snapshot_id}); take a new snapshot")
            memo = found
        named = memo.refs.get(ref)
        if named is None:
            raise DriverError(f"ref {ref} is not in snapshot {memo.snapshot_id} (of {memo.url}); "
                              "use a ref that snapshot shows, or take a new snapshot")
        prefix = ref_prefix(ref)
        document = memo.documents.get(prefix)
        if memo is not latest:
            # the browser resolves refs against the latest snapshot: an older one's ref is good only
            # if the same document still has the same element under it
            if latest.documents.get(prefix) != document or latest.refs.get(ref) != named:
                raise DriverError(
                    f"ref {ref} ({_describe(named)}) of snapshot {memo.snapshot_id} is stale: the page changed "
                    f"since (snapshot {latest.snapshot_id} of {latest.url} no longer has it); refused, so that "
                    "nothing else is clicked; take a new snapshot")
        if document is None:
            raise DriverError(f"ref {ref}: the frame it is in could not be checked when snapshot "
                              f"{memo.snapshot_id} was taken; take a new snapshot")
        return ElementTarget(ref=ref, document=document, description=_describe(named),
                             snapshot_id=memo.snapshot_id, main_frame=prefix == memo.main)


def _describe(named: tuple[str, str | None]) -> str:
    role, name = named
    return f'{role} "{name}"' if name else role


_books: weakref.WeakKeyDictionary[Any, SnapshotBook] = weakref.WeakKeyDictionary()


def book(driver: Any) -> SnapshotBook:
    """The snapshot book of a computer (one per driver, gone with it)."""
    found = _books.get(driver)
    if found is None:
        found = _books[driver] = SnapshotBook()
    return found


def perceiving(driver: Any) -> Any:
    """The driver, if it can take element snapshots; else an action error saying so."""
    if not callable(getattr(driver, "page_snapshot", None)):
        raise DriverError(f"element snapshots and refs need a browser; this {driver.kind} computer has none")
    return driver


async def take(driver: Any, tab: str | None) -> Taken:
    """Snapshot the tab, place its frames and boxes, and remember it."""
    perceiving(driver)
    page: PageSnapshot = await driver.page_snapshot(tab)
    parsed = parse(page.text)
    probes: dict[str, FrameProbe | None] = await driver.probe_frames(list(parsed.iframes), tab) \
        if parsed.iframes else {}
    frames = frames_from(parsed, page, probes)
    locate(parsed, frames, page)
    nodes = parsed.nodes
    memo = Remembered(new_id("snap", 6), page.tab_id, page.url,
                      {n.ref: (n.role, n.name) for n in nodes if n.ref is not None},
                      {prefix: f.document for prefix, f in frames.items()}, parsed.main)
    book(driver).add(memo)
    return Taken(memo, page, nodes)


async def target(driver: Any, element: a.Element, tab: str | None) -> ElementTarget:
    perceiving(driver)
    tab_id = await driver.current_tab(tab)
    return book(driver).target(element, tab_id or "")


# -- rendering ------------------------------------------------------------------------------
def _kept(nodes: list[Node], viewport_only: bool) -> list[bool]:
    """Which nodes a viewport-only snapshot shows: those inside the viewport, their ancestors,
    and the texts of what is shown."""
    keep = [not viewport_only] * len(nodes)
    if not viewport_only:
        return keep
    for i, node in enumerate(nodes):
        if node.role == "text" or node.box is None or node.offscreen:
            continue
        j = i
        while j >= 0 and not keep[j]:
            keep[j] = True
            j = nodes[j].parent
    for i, node in enumerate(nodes):
        if node.role == "text" and node.parent >= 0 and keep[node.parent] and _leafish(nodes, node.parent):
            keep[i] = True
    return keep


def _leafish(nodes: list[Node], i: int) -> bool:
    """An element whose own texts are worth showing in a viewport-only snapshot: one inside the
    viewport (a text has no box of its own, so it goes with its element)."""
    return not nodes[i].offscreen


def _line(node: Node, boxes: bool, strip_colon: bool) -> str:
    """The node's line as Playwright wrote it, its box in screenshot pixels (or none), marked
    ``[offscreen]`` if it is outside the viewport."""
    line = node.line
    extra = " [offscreen]" if node.offscreen and node.ref is not None else ""
    if boxes and node.box is not None:
        x, y, w, h = node.box
        extra += f" [box={x},{y},{w},{h}]"
    css = node.css
    if css is not None:  # Playwright's box is the key's last attribute (after the name and the ref)
        token = f" [box={css[0]},{css[1]},{css[2]},{css[3]}]"
        after = line.find(f"[ref={node.ref}]") if node.ref is not None else 0
        start = line.find(token, max(after, 0))
        if start >= 0:
            line = line[:start] + extra + line[start + len(token):]
    elif extra and node.ref is not None:
        mark = f"[ref={node.ref}]"
        line = line.replace(mark, mark + extra, 1)
    if strip_colon and not node.props and line.endswith(":"):
        line = line[:-1]
    return line


def render(taken: Taken, spec: a.Snapshot) -> dict[str, Any]:
    """The ``snapshot`` action's result: text or JSON, filtered and capped."""
    nodes = taken.nodes
    total = sum(1 for n in nodes if n.ref is not None)
    keep = _kept(nodes, spec.viewport_only)
    if spec.interactive_only:
        keep = [k and n.interactive for k, n in zip(keep, nodes, strict=True)]
    page = taken.page
    out: dict[str, Any] = {
        "snapshot_id": taken.memo.snapshot_id, "format": spec.format, "url": page.url, "title": page.title,
        "tab_id": page.tab_id,
        "viewport": {"width": round(page.viewport[0] * page.scale), "height": round(page.viewport[1] * page.scale)},
    }
    budget = spec.max_chars
    shown = 0
    truncated = False
    if spec.format == "text":
        lines: list[str] = []
        used = 0
        for node, k in zip(nodes, keep, strict=True):
            if not k:
                continue
            depth = 0 if spec.interactive_only else node.depth
            pad = "  " * depth
            chunk = [pad + "- " + _line(node, spec.boxes, spec.interactive_only)]
            if node.props:
                chunk += [pad + "  - " + prop for prop in node.props]
            size = sum(len(c) + 1 for c in chunk)
            if used + size > budget:
                truncated = True
                break
            used += size
            lines.extend(chunk)
            shown += node.ref is not None
        out["snapshot"] = "\n".join(lines)
    else:
        elements: list[dict[str, Any]] = []
        main = nodes[0].frame if nodes else ""
        used = 2
        for node, k in zip(nodes, keep, strict=True):
            if not k or node.value_of_parent:
                continue
            item = _json(node, nodes, spec.interactive_only, main)
            size = len(node.line) + 48
            if used + size > budget:
                truncated = True
                break
            used += size
            elements.append(item)
            shown += node.ref is not None
        out["elements"] = elements
    out.update(total_elements=total, shown_elements=shown, truncated=truncated)
    if truncated:
        notice = (f"[snapshot truncated at max_chars={spec.max_chars}: {shown} of {total} elements shown; "
                  "ask with viewport_only or interactive_only, or a larger max_chars]")
        out["notice"] = notice
        if spec.format == "text":
            out["snapshot"] += ("\n" if out["snapshot"] else "") + "# " + notice
    return out


def _json(node: Node, nodes: list[Node], flat: bool, main: str) -> dict[str, Any]:
    if node.role == "text":
        item: dict[str, Any] = {"role": "text", "text": node.text or ""}
    else:
        item = {"ref": node.ref, "role": node.role}
        if node.name:
            item["name"] = node.name
        if node.text is not None:
            item["value" if node.role in VALUE_ROLES else "text"] = node.text
        for k, v in (node.attrs or {}).items():
            if k == "level" and isinstance(v, str) and v.isdigit():
                item[k] = int(v)
            else:
                item[k] = v
        if node.url is not None:
            item["url"] = node.url
        if node.placeholder is not None:
            item["placeholder"] = node.placeholder
        if node.box is not None:
            item["box"] = list(node.box)
        if node.offscreen:
            item["offscreen"] = True
        if node.frame != main:  # in a frame: its refs' prefix
            item["frame"] = node.frame
    if not flat:
        item["depth"] = node.depth
        parent = node.parent
        while parent >= 0 and nodes[parent].ref is None:
            parent = nodes[parent].parent
        item["parent"] = nodes[parent].ref if parent >= 0 else None
    return item
