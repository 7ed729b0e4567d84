"""The ``opencua`` and ``json`` chat dialects of the fake (chat.py routes to them).

* ``opencua`` (OpenCUA-7B/32B as vLLM serves them): text ``# Step N:`` / ``## Thought:`` /
  ``## Action:`` / ``## Code:`` and a ```` ```python ```` block of pyautogui calls, in pixels of
  the smart-resized screenshot (factor 28). The idle field gets two calls in one block,
  ``pyautogui.click(x=…, y=…)`` then ``pyautogui.write(message=…)``; the submit button
  ``pyautogui.click(x, y)`` (positional); a stale screen ``computer.wait()``; done
  ``computer.terminate(status='success', answer=…)``; a screenshot showing nothing it knows
  ``computer.terminate(status='failure', answer=…)``; no screenshot: a Thought and no code.
* ``json`` / ``json-pixels``: the request must carry ``response_format`` of type
  ``json_schema``, strict, with a schema of ``{"thought": string, "actions": [{action: enum…}]}``
  (else 400, as vLLM refuses a schema it cannot guide by); the answer is that object, every
  action with all the schema's fields (unused ones null), the whole plan in one turn (click
  the field, type, click submit), done ``{"action": "done", "text": <answer>}``, nothing
  recognised ``fail``. Coordinates 0–1000 (``json``) or screenshot pixels (``json-pixels``).
  The answer is checked against the request's own schema (what guided decoding guarantees);
  one that would not fit is a 400 naming why.
"""

from __future__ import annotations

import json
from typing import Any

from . import policy
from .policy import Click, Done, Plan, Say, Space, Type, Wait


# -- opencua -------------------------------------------------------------------------------------------------------
def opencua_text(plan: Plan, space: Space, step: int, garbage: bool) -> str:
    first = plan.first
    head = f"# Step {step}:\n## Thought:\n{policy.intent(first)}\n\n"
    if garbage:
        return head + "## Action:\nClick it.\n\n## Code:\n```python\npyautogui.click(x=\n```"
    if isinstance(first, Say):
        if plan.image is None:  # no screenshot: nothing to act on, no code
            return f"# Step {step}:\n## Thought:\n{first.text}"
        return head.replace(policy.intent(first), first.text) + "## Action:\nGive up: the task cannot be done here." \
            f"\n\n## Code:\n```code\ncomputer.terminate(status='failure', answer={first.text!r})\n```"
    lines: list[str] = []
    action = ""
    if isinstance(first, Click):
        x, y = space.point(first.x, first.y)
        if first.target == "field":
            lines.append(f"pyautogui.click(x={x}, y={y})")
            action = "Click the text field"
            if len(plan.steps) > 1 and isinstance(plan.steps[1], Type):
                lines.append(f"pyautogui.write(message={plan.steps[1].text!r})")
                action += " and type the value"
        else:
            lines.append(f"pyautogui.click({x}, {y})")
            action = f"Click the {first.target} button"
    elif isinstance(first, Type):
        lines.append(f"pyautogui.write(message={first.text!r})")
        action = "Type the value into the field"
    elif isinstance(first, Wait):
        lines.append("computer.wait()")
        action = "Wait for the screen to change"
    elif isinstance(first, Done):
        lines.append(f"computer.terminate(status='success', answer={first.answer!r})")
        action = "The form is submitted: end the task"
    code = "\n".join(lines)
    return head + f"## Action:\n{action}.\n\n## Code:\n```python\n{code}\n```"


# -- json ----------------------------------------------------------------------------------------------------------
def schema_problem(body: dict[str, Any]) -> str | None:
    """Why the request's response_format cannot guide a computer-use answer, or None."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return ("this model answers in JSON only under guided decoding: send response_format "
                "{\"type\": \"json_schema\", \"json_schema\": {\"name\", \"strict\": true, \"schema\"}}")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("schema"), dict):
        return "response_format.json_schema must be an object with a name and a schema"
    if spec.get("strict") is not True:
        return "response_format.json_schema.strict must be true"
    schema = spec["schema"]
    props = schema.get("properties") or {}
    if schema.get("type") != "object" or set(schema.get("required") or []) != {"thought", "actions"}:
        return "the schema must be an object that requires thought and actions"
    if (props.get("thought") or {}).get("type") != "string" or (props.get("actions") or {}).get("type") != "array":
        return "the schema's thought must be a string and its actions an array"
    items = props["actions"].get("items") or {}
    enum = ((items.get("properties") or {}).get("action") or {}).get("enum") or []
    missing = {"click", "type", "done", "fail", "wait"} - set(enum)
    if items.get("type") != "object" or missing:
        return f"the schema's actions must be objects whose action enum has {', '.join(sorted(missing)) or '…'}"
    for node in (schema, items):
        if node.get("additionalProperties") is not False or set(node.get("required") or []) != set(node["properties"]):
            return "a strict schema needs additionalProperties: false and every property required, at every level"
    return None


def _fits(value: Any, schema: dict[str, Any], where: str) -> str | None:
    """A small JSON-schema check (type, enum, properties, required, additionalProperties, items)."""
    kinds = schema.get("type")
    kinds = [kinds] if isinstance(kinds, str) else kinds or []
    checks = {"object": lambda v: isinstance(v, dict), "array": lambda v: isinstance(v, list),
              "string": lambda v: isinstance(v, str), "null": lambda v: v is None,
              "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
              "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
              "boolean": lambda v: isinstance(v, bool)}
    if kinds and not any(checks[k](value) for k in kinds):
        return f"{where}: {value!r} is not {' or '.join(kinds)}"
    if "enum" in schema and value not in schema["enum"]:
        return f"{where}: {value!r} is not one of {schema['enum']}"
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        for key in schema.get("required") or []:
            if key not in value:
                return f"{where}: {key} is required"
        if schema.get("additionalProperties") is False and set(value) - set(props):
            return f"{where}: {sorted(set(value) - set(props))} not allowed"
        for key, sub in props.items():
            if key in value:
                why = _fits(value[key], sub, f"{where}.{key}")
                if why:
                    return why
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for n, v in enumerate(value):
            why = _fits(v, schema["items"], f"{where}[{n}]")
            if why:
                return why
    return None


def json_answer(plan: Plan, space: Space, body: dict[str, Any], garbage: bool) -> tuple[str, str | None]:
    """(the answer's text, why it would not fit the request's schema or None)."""
    if garbage:  # a stream cut short: no JSON
        return '{"thought": "I will click the field", "actions": [{"action": "cl', None
    schema = body["response_format"]["json_schema"]["schema"]
    fields = list(schema["properties"]["actions"]["items"]["properties"])

    def act(name: str, **values: Any) -> dict[str, Any]:
        return {**dict.fromkeys(fields), "action": name, **values}

    first = plan.first
    actions: list[dict[str, Any]] = []
    if isinstance(first, Done):
        actions.append(act("done", text=first.answer))
    elif isinstance(first, Say):
        if plan.image is not None:
            actions.append(act("fail", text=first.text))
    else:
        for step in plan.actions:
            if isinstance(step, Click):
                x, y = space.point(step.x, step.y)
                actions.append(act("click", x=x, y=y))
            elif isinstance(step, Type):
                actions.append(act("type", text=step.text))
            elif isinstance(step, Wait):
                actions.append(act("wait", seconds=1))
    thought = first.text if isinstance(first, Say) else policy.intent(first)
    answer = {"thought": thought, "actions": actions}
    return json.dumps(answer), _fits(answer, schema, "answer")
