"""Gymnasium spaces for computers: free text, and the shared action schema.

Gymnasium's ``Text`` space only admits a fixed character set (alphanumerics by default), and a
page's snapshot holds any Unicode; ``Unicode`` admits any string up to a length. ``ActionSpace``
admits exactly what ``POST /computers/{id}/step`` takes (api/wire/step.py, the same pydantic
models the server validates with) and samples pointer actions inside the screen.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space
from pydantic import TypeAdapter, ValidationError

from opencone.api.wire.step import ACTION_NAMES, ToolAction

_tool: TypeAdapter[Any] = TypeAdapter(ToolAction)


class Unicode(spaces.Space[str]):
    """Any ``str`` of at most ``max_length`` characters."""

    def __init__(self, max_length: int = 1_000_000, seed: int | np.random.Generator | None = None) -> None:
        self.max_length = max_length
        super().__init__((), str, seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        n = int(self.np_random.integers(0, min(self.max_length, 32) + 1))
        return "".join(chr(int(c)) for c in self.np_random.integers(32, 127, n))

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    def __repr__(self) -> str:
        return f"Unicode({self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unicode) and other.max_length == self.max_length


@batch_space.register(Unicode)
def _batch_unicode(space: Unicode, n: int = 1) -> spaces.Tuple:
    return spaces.Tuple([Unicode(space.max_length) for _ in range(n)])


def validate(action: Any) -> Any:
    """The action as the server's model, or ``ValueError`` saying what is wrong (before any request)."""
    try:
        return _tool.validate_python(action)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ValueError(f"invalid action {action!r}: {where + ': ' if where else ''}{err['msg']}; actions are "
                         f"{{'action': name, ...}} with name one of {', '.join(ACTION_NAMES)}") from None


class ActionSpace(spaces.Space[dict[str, Any]]):
    """The shared action schema: ``{"action": "click", "ref": "e5"}``, ``{"action": "type", "text": …}``…

    ``sample()`` draws pointer actions only (a click, a move, a scroll at a pixel of the screen, or
    a short wait), which never type into a page: a smoke test that can run on any page.
    """

    def __init__(self, width: int, height: int, seed: int | np.random.Generator | None = None) -> None:
        self.width, self.height = width, height
        super().__init__(None, dict, seed)

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def sample(self, mask: Any = None, probability: Any = None) -> dict[str, Any]:
        rng = self.np_random
        x, y = int(rng.integers(0, self.width)), int(rng.integers(0, self.height))
        match int(rng.integers(0, 4)):
            case 0:
                return {"action": "click", "x": x, "y": y}
            case 1:
                return {"action": "move", "x": x, "y": y}
            case 2:
                return {"action": "scroll", "x": x, "y": y, "dy": int(rng.integers(-300, 301))}
        return {"action": "wait", "ms": int(rng.integers(0, 50))}

    def contains(self, x: Any) -> bool:
        try:
            validate(x)
        except ValueError:
            return False
        return True

    def __repr__(self) -> str:
        return f"ActionSpace({self.width}x{self.height}: {', '.join(ACTION_NAMES)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActionSpace) and (other.width, other.height) == (self.width, self.height)


@batch_space.register(ActionSpace)
def _batch_actions(space: ActionSpace, n: int = 1) -> spaces.Tuple:
    return spaces.Tuple([ActionSpace(space.width, space.height) for _ in range(n)])
