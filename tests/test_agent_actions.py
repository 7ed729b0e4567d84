"""Each adapter's action vocabulary, both ways (spec §c.3): what the fake models never send
(keys, scrolls, drags with paths, waits, triple clicks, hovers, held modifiers), read from the
provider's own reply format, and written back from canonical actions for a replay. Pure: the
adapters' ``parse`` and ``request`` need no upstream, so these run without a server.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from opencone.agent.adapters import anthropic as an
from opencone.agent.adapters import chat
from opencone.agent.adapters import openai_actions as oa
from opencone.agent.adapters.base import (
    Call,
    Conversation,
    Decision,
    ModelOutputError,
    ModelTurn,
    Observation,
    Outcome,
    Screenshot,
    Text,
)
from opencone.agent.adapters.keys import chord, to_xdotool
from opencone.agent.adapters.responses import LightconeAdapter, ResponsesAdapter
from opencone.core import actions as a

W, H = 1280, 720
P = a.Point


def shot(w: int = W, h: int = H) -> Screenshot:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (w, h), (250, 250, 250)).save(out, "JPEG")
    return Screenshot(out.getvalue(), w, h)


def conv(*items: Any, display: tuple[int, int] = (W, H), max_images: int = 3) -> Conversation:
    return Conversation("harness", (Text("do it"), Observation(shot(*display)), *items), display,
                        max_images=max_images)


# -- key names ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("given", "canonical"), [
    (["CTRL", "A"], ["Control", "a"]),
    ("ctrl+shift+t", ["Control", "Shift", "t"]),
    ("Return", ["Enter"]),
    (["BackSpace"], ["Backspace"]),
    ("Page_Down", ["PageDown"]),
    ("super_l", ["Meta"]),
    ("KP_5", ["5"]),
    (["ESC"], ["Escape"]),
    (["ARROWLEFT"], ["ArrowLeft"]),
    ('["ctrl", "c"]', ["Control", "c"]),
    ("ctrl++", ["Control", "+"]),
    ("comma", [","]),
])
def test_key_names_as_models_write_them(given: Any, canonical: list[str]) -> None:
    assert chord(given) == canonical


def test_uitars_space_joined_hotkeys_and_xdotool_back() -> None:
    assert chord("ctrl c", allow_space=True) == ["Control", "c"]
    assert to_xdotool(["Control", "Shift", "t"]) == "ctrl+shift+t"
    assert to_xdotool(["Enter"]) == "Return"


# -- OpenAI and Northstar actions ----------------------------------------------------------------------------------

TO_PX, FROM_PX = oa.pixels((W, H))


@pytest.mark.parametrize(("native", "canonical"), [
    ({"type": "click", "button": "wheel", "x": 10, "y": 20}, [a.Click(at=P(x=10, y=20), button="middle")]),
    ({"type": "click", "button": "right", "x": 10, "y": 20}, [a.Click(at=P(x=10, y=20), button="right")]),
    ({"type": "double_click", "x": 5, "y": 6}, [a.Click(at=P(x=5, y=6), count=2)]),
    ({"type": "triple_click", "x": 5, "y": 6}, [a.Click(at=P(x=5, y=6), count=3)]),
    ({"type": "move", "x": 300, "y": 40}, [a.MoveMouse(at=P(x=300, y=40))]),
    ({"type": "drag", "path": [{"x": 1, "y": 2}, {"x": 30, "y": 40}, {"x": 50, "y": 60}]},
     [a.Drag(path=[P(x=1, y=2), P(x=30, y=40), P(x=50, y=60)])]),
    ({"type": "drag", "x": 1, "y": 2, "end_x": 3, "end_y": 4}, [a.Drag(path=[P(x=1, y=2), P(x=3, y=4)])]),
    ({"type": "keypress", "keys": ["CTRL", "L"]}, [a.PressKeys(keys=["Control", "l"])]),
    ({"type": "key", "keys": "ctrl+a"}, [a.PressKeys(keys=["Control", "a"])]),
    ({"type": "scroll", "x": 100, "y": 200, "scroll_x": 0, "scroll_y": 300},
     [a.Scroll(at=P(x=100, y=200), dy=300)]),
    ({"type": "hscroll", "x": 100, "y": 200, "scroll_y": -120}, [a.Scroll(at=P(x=100, y=200), dx=-120)]),
    ({"type": "wait"}, [a.Wait(ms=1000)]),
    ({"type": "type", "text": "hi"}, [a.TypeText(text="hi")]),
    ({"type": "point_and_type", "x": 9, "y": 9, "text": "hi"}, [a.TypeText(text="hi", at=P(x=9, y=9))]),
    ({"type": "navigate", "url": "https://example.com/"}, [a.Navigate(url="https://example.com/")]),
    ({"type": "screenshot"}, []),
    # modifiers held while clicking (GA): down, click, up in reverse
    ({"type": "click", "button": "left", "x": 1, "y": 1, "keys": ["SHIFT", "CTRL"]},
     [a.KeyDown(key="Shift"), a.KeyDown(key="Control"), a.Click(at=P(x=1, y=1)), a.KeyUp(key="Control"),
      a.KeyUp(key="Shift")]),
])
def test_openai_actions_become_canonical_ones(native: dict[str, Any], canonical: list[a.Action]) -> None:
    assert oa.from_openai(native, TO_PX) == canonical


def test_openai_actions_that_name_nothing_are_refused() -> None:
    for bad in ({"type": "dance"}, {"type": "click", "button": "left", "x": "left-ish", "y": 1},
                {"type": "drag", "path": [{"x": 1, "y": 2}]}, {"type": "keypress", "keys": ["HYPERSPACE"]}, "x"):
        with pytest.raises(oa.ActionError):
            oa.from_openai(bad, TO_PX)


def test_canonical_actions_written_back_as_openai_ones_read_the_same() -> None:
    acts = [a.Click(at=P(x=10, y=20)), a.Click(at=P(x=10, y=20), count=2), a.Click(at=P(x=3, y=4), button="right"),
            a.MoveMouse(at=P(x=5, y=5)), a.Drag(path=[P(x=1, y=2), P(x=3, y=4), P(x=5, y=6)]),
            a.TypeText(text="x"), a.PressKeys(keys=["Control", "a"]), a.Scroll(at=P(x=1, y=1), dy=-200)]
    for act in acts:
        native = oa.to_openai(act, FROM_PX)
        assert native is not None and all(isinstance(native[k], int) for k in ("x", "y") if k in native)
        assert oa.from_openai(native, TO_PX) == [act]


def test_northstar_grid_coordinates() -> None:
    to_px, from_px = oa.grid((1000, 500))
    assert to_px(500, 500) == P(x=500, y=250) and to_px(999, 999).x == pytest.approx(999)
    assert from_px(P(x=999, y=499)) == (999, 998)


# -- Anthropic --------------------------------------------------------------------------------------------------------

ANTHROPIC_TO_PX = an.AnthropicAdapter("claude-sonnet-4-5", None)._to_px((1600, 900))  # type: ignore[arg-type]


@pytest.mark.parametrize(("inp", "canonical"), [
    ({"action": "triple_click", "coordinate": [683, 384]}, [a.Click(at=P(x=800, y=450), count=3)]),
    ({"action": "mouse_move", "coordinate": [683, 384]}, [a.MoveMouse(at=P(x=800, y=450))]),
    ({"action": "left_click_drag", "start_coordinate": [0, 0], "coordinate": [683, 384]},
     [a.Drag(path=[P(x=0, y=0), P(x=800, y=450)])]),
    ({"action": "scroll", "coordinate": [683, 384], "scroll_direction": "up", "scroll_amount": 3},
     [a.Scroll(at=P(x=800, y=450), dy=-300)]),
    ({"action": "scroll", "coordinate": [683, 384], "scroll_direction": "right", "scroll_amount": 2},
     [a.Scroll(at=P(x=800, y=450), dx=200)]),
    ({"action": "key", "text": "ctrl+s"}, [a.PressKeys(keys=["Control", "s"])]),
    ({"action": "key", "text": "Return", "repeat": 2}, [a.PressKeys(keys=["Enter"])] * 2),
    ({"action": "hold_key", "text": "shift", "duration": 0.5},
     [a.KeyDown(key="Shift"), a.Wait(ms=500), a.KeyUp(key="Shift")]),
    ({"action": "wait", "duration": 2}, [a.Wait(ms=2000)]),
    ({"action": "left_click", "coordinate": [683, 384], "text": "ctrl"},
     [a.KeyDown(key="Control"), a.Click(at=P(x=800, y=450)), a.KeyUp(key="Control")]),
    ({"action": "left_mouse_down"}, [a.MouseDown()]),
    ({"action": "zoom", "region": [0, 0, 100, 100]}, []),
])
def test_anthropic_inputs_become_canonical_actions_scaled_back(inp: dict[str, Any],
                                                               canonical: list[a.Action]) -> None:
    """The model saw the 1600x900 screen at 1366x768: its (683, 384) is the screen's (800, 450)."""
    assert an.model_size(1600, 900) == (1366, 768)
    assert an.from_anthropic(inp, ANTHROPIC_TO_PX) == canonical


def test_anthropic_a_click_without_a_coordinate_is_where_the_pointer_is() -> None:
    assert an.from_anthropic({"action": "left_click"}, ANTHROPIC_TO_PX, P(x=7, y=8)) == [a.Click(at=P(x=7, y=8))]
    with pytest.raises(oa.ActionError):
        an.from_anthropic({"action": "left_click"}, ANTHROPIC_TO_PX, None)


def test_anthropic_model_sizes_and_tool_versions() -> None:
    assert an.model_size(1024, 768) == (1024, 768) and an.model_size(2048, 1536) == (1024, 768)
    assert an.model_size(1920, 1200) == (1280, 800) and an.model_size(1280, 720) == (1280, 720)
    w, h = an.model_size(3000, 1000)
    assert w <= 1568 and w * h <= 1_150_000 and abs(w / h - 3) < 0.01
    assert an.tool_version("claude-opus-4-5")[0] == "computer_20251124"
    assert an.tool_version("claude-sonnet-4-6")[0] == "computer_20251124"
    assert an.tool_version("claude-sonnet-4-5-20250929")[0] == "computer_20250124"
    assert an.tool_version("claude-3-7-sonnet-latest")[0] == "computer_20250124"


def test_anthropic_results_come_first_and_old_screenshots_become_stubs() -> None:
    adapter = an.AnthropicAdapter("claude-sonnet-4-5", None)  # type: ignore[arg-type]
    items: list[Any] = []
    for k in range(5):
        block = {"type": "tool_use", "id": f"t{k}", "name": "computer",
                 "input": {"action": "left_click", "coordinate": [10, 10]}}
        decision = Decision((Call(f"t{k}", (a.Click(at=P(x=10, y=10)),), block, "left_click"),),
                            native={"content": [block]}, dialect="anthropic")
        items += [ModelTurn(decision), Observation(shot(), (Outcome(f"t{k}", k != 2, "no" if k == 2 else None),)),
                  Text("by the way", "user", "injected")]
    messages = adapter.request(conv(*items))["messages"]
    images = json.dumps(messages).count('"type": "image"')
    assert images == 3  # the newest three of six
    for message in messages[2:]:
        if message["role"] == "user":
            kinds = [b["type"] for b in message["content"]]
            assert kinds[0] == "tool_result" and kinds[-1] == "text"
    failed = [b for m in messages for b in m["content"] if b.get("type") == "tool_result" and b.get("is_error")]
    assert [b["tool_use_id"] for b in failed] == ["t2"]


def test_a_turn_of_another_provider_is_written_anew_for_anthropic() -> None:
    """The gateway's case: a conversation that came as OpenAI items goes to Anthropic."""
    adapter = an.AnthropicAdapter("claude-sonnet-4-5", None)  # type: ignore[arg-type]
    decision = Decision((Call("call_1", (a.Drag(path=[P(x=0, y=0), P(x=100, y=50)]),)),
                         Call("call_2", (a.PressKeys(keys=["Control", "a"]),))), text="dragging",
                        dialect="openai-responses")
    messages = adapter.request(conv(ModelTurn(decision), Observation(shot(), (Outcome("call_1", True),
                                                                            Outcome("call_2", True)))))["messages"]
    uses = [b for b in messages[1]["content"] if b["type"] == "tool_use"]
    assert [u["input"] for u in uses] == [
        {"action": "left_click_drag", "start_coordinate": [0, 0], "coordinate": [100, 50]},
        {"action": "key", "text": "ctrl+a"}]
    assert [b["tool_use_id"] for b in messages[2]["content"] if b["type"] == "tool_result"] == ["call_1", "call_2"]


# -- chat dialects -----------------------------------------------------------------------------------------------------


def reply(content: str | None, tool_calls: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if tool_calls:
        message["tool_calls"] = tool_calls
    return {"choices": [{"index": 0, "message": message}], "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


def qwen(args: dict[str, Any]) -> str:
    return f'<tool_call>\n{json.dumps({"name": "computer_use", "arguments": args})}\n</tool_call>'


@pytest.mark.parametrize(("args", "canonical"), [
    ({"action": "left_click", "coordinate": [500, 500]}, [a.Click(at=P(x=640, y=360))]),
    ({"action": "triple_click", "coordinate": [500, 500]}, [a.Click(at=P(x=640, y=360), count=3)]),
    ({"action": "mouse_move", "coordinate": [250, 250]}, [a.MoveMouse(at=P(x=320, y=180))]),
    ({"action": "key", "keys": ["ctrl", "shift", "t"]}, [a.PressKeys(keys=["Control", "Shift", "t"])]),
    ({"action": "scroll", "pixels": -5}, [a.Scroll(dy=500)]),  # positive is up; small values are notches
    ({"action": "scroll", "pixels": 300, "coordinate": [500, 500]}, [a.Scroll(at=P(x=640, y=360), dy=-300)]),
    ({"action": "hscroll", "pixels": 2}, [a.Scroll(dx=200)]),
    ({"action": "wait", "time": 1.5}, [a.Wait(ms=1500)]),
    ({"action": "left_click_drag", "start_coordinate": [0, 0], "coordinate": [500, 500]},
     [a.Drag(path=[P(x=0, y=0), P(x=640, y=360)])]),
])
def test_qwen3vl_calls_in_text_become_canonical_actions(args: dict[str, Any], canonical: list[a.Action]) -> None:
    adapter = chat.ChatAdapter("q", None, "qwen3vl")  # type: ignore[arg-type]
    decision = adapter.parse(reply("I will act.\n" + qwen(args)), conv())
    assert decision.actions == canonical and decision.text == "I will act." and not decision.done


def test_qwen_tool_calls_terminate_and_answer() -> None:
    adapter = chat.ChatAdapter("n", None, "northstar")  # type: ignore[arg-type]
    def fn(args: dict[str, Any]) -> dict[str, Any]:
        return {"name": "computer_use", "arguments": json.dumps(args)}

    calls = [{"id": "c1", "type": "function", "function": fn({"action": "answer", "text": "42"})},
             {"id": "c2", "type": "function", "function": fn({"action": "terminate", "status": "success"})}]
    decision = adapter.parse(reply(None, calls), conv())
    assert decision.done and decision.success and decision.result == "42" and [c.id for c in decision.calls] == \
        ["c1", "c2"]
    failure = adapter.parse(reply(qwen({"action": "terminate", "status": "failure"})), conv())
    assert failure.done and not failure.success


def test_chat_text_without_a_call_is_not_a_decision() -> None:
    for dialect, text in (("qwen3vl", "I think I am done."), ("uitars", "Thought: hmm"),
                          ("qwen3vl", '<tool_call>{"name": "computer_use", "arguments": {"action": </tool_call>')):
        with pytest.raises(ModelOutputError):
            chat.ChatAdapter("m", None, dialect).parse(reply(text), conv())  # type: ignore[arg-type]


@pytest.mark.parametrize(("action", "canonical"), [
    ("click(start_box='<|box_start|>(518,378)<|box_end|>')", [a.Click(at=P(x=W / 1288 * 518, y=H / 728 * 378))]),
    ("left_double(start_box='(518,378)')", [a.Click(at=P(x=W / 1288 * 518, y=H / 728 * 378), count=2)]),
    ("right_single(start_box='(0,0)')", [a.Click(at=P(x=0, y=0), button="right")]),
    ("drag(start_box='(0,0)', end_box='(644,364)')",
     [a.Drag(path=[P(x=0, y=0), P(x=W / 1288 * 644, y=H / 728 * 364)])]),
    ("hotkey(key='ctrl c')", [a.PressKeys(keys=["Control", "c"])]),
    ("type(content='hello\\n')", [a.TypeText(text="hello"), a.PressKeys(keys=["Enter"])]),
    ("scroll(start_box='(644,364)', direction='up')", [a.Scroll(at=P(x=W / 1288 * 644, y=H / 728 * 364), dy=-500)]),
    ("click(point='<point>518 378</point>')", [a.Click(at=P(x=W / 1288 * 518, y=H / 728 * 378))]),
])
def test_uitars_actions_in_smart_resized_pixels(action: str, canonical: list[a.Action]) -> None:
    assert chat.smart_resize(H, W) == (728, 1288)
    adapter = chat.ChatAdapter("u", None, "uitars")  # type: ignore[arg-type]
    decision = adapter.parse(reply(f"Thought: go\nAction: {action}"), conv())
    assert [rounded(x) for x in decision.actions] == [rounded(x) for x in canonical]


def rounded(action: a.Action) -> Any:
    """An action with its coordinates to 1/100 px (a grid's pixels are fractions of the screen's)."""
    def walk(v: Any) -> Any:
        if isinstance(v, float):
            return round(v, 2)
        if isinstance(v, dict):
            return {k: walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v
    return walk(action.model_dump())


def test_uitars_finished_and_call_user() -> None:
    adapter = chat.ChatAdapter("u", None, "uitars")  # type: ignore[arg-type]
    done = adapter.parse(reply("Thought: done\nAction: finished(content='it\\'s 42')"), conv())
    assert done.done and done.result == "it's 42"
    ask = adapter.parse(reply("Thought: I need a password\nAction: call_user()"), conv())
    assert ask.ask_user == "I need a password" and not ask.done


def test_chat_replays_other_providers_turns_in_its_own_words() -> None:
    decision = Decision((Call("x", (a.Click(at=P(x=640, y=360)),)),), text="clicking", dialect="anthropic")
    items = (ModelTurn(decision), Observation(shot(), (Outcome("x", True),)))
    qwen_msgs = chat.ChatAdapter("q", None, "qwen3vl").request(conv(*items))["messages"]  # type: ignore[arg-type]
    assert '"coordinate": [500, 500]' in qwen_msgs[2]["content"] and "<tool_call>" in qwen_msgs[2]["content"]
    ui_msgs = chat.ChatAdapter("u", None, "uitars").request(conv(*items))["messages"]  # type: ignore[arg-type]
    assert ui_msgs[2]["content"] == "Thought: clicking\nAction: click(start_box='<|box_start|>(644,364)<|box_end|>')"


# -- Responses-API folding and safety checks -----------------------------------------------------------------


def test_responses_turns_past_the_window_fold_into_lines_and_checks_are_acknowledged() -> None:
    adapter = ResponsesAdapter("computer-use-preview", None)  # type: ignore[arg-type]
    items: list[Any] = []
    for k in range(4):
        check = [{"id": f"sc{k}", "code": "irrelevant_domain"}] if k == 3 else []
        call = {"type": "computer_call", "id": f"cu_{k}", "call_id": f"c{k}", "status": "completed",
                "pending_safety_checks": check, "action": {"type": "click", "button": "left", "x": 1, "y": 1}}
        decision = Decision((Call(f"c{k}", (a.Click(at=P(x=1, y=1)),), call, "click"),), native=[call],
                            dialect="openai-responses")
        items += [ModelTurn(decision), Observation(shot(), (Outcome(f"c{k}", True),))]
    body = adapter.request(conv(*items, max_images=2))
    kinds = [i.get("type") or i.get("role") for i in body["input"]]
    assert kinds.count("computer_call") == 2 and kinds.count("computer_call_output") == 2
    assert json.dumps(body).count("data:image/jpeg") == 2
    outputs = [i for i in body["input"] if i.get("type") == "computer_call_output"]
    assert outputs[-1]["acknowledged_safety_checks"] == [{"id": "sc3", "code": "irrelevant_domain"}]
    assert body["tools"][0] == {"type": "computer_use_preview", "display_width": W, "display_height": H,
                                "environment": "browser"} and body["truncation"] == "auto"
    assert not any("_ours" in i for i in body["input"])


def test_lightcone_terminate_and_done_function_end_the_task() -> None:
    adapter = LightconeAdapter("tzafon.northstar-cua-fast", None)  # type: ignore[arg-type]
    out = {"output": [{"type": "computer_call", "id": "cu_1", "call_id": "c1", "status": "completed",
                       "pending_safety_checks": [],
                       "action": {"type": "terminate", "status": "success", "result": "done: 42"}}]}
    d = adapter.parse(out, conv())
    assert d.done and d.result == "done: 42" and not d.actions
    fn = {"output": [{"type": "function_call", "call_id": "c2", "name": "done",
                      "arguments": json.dumps({"message": "all good"})}]}
    assert adapter.parse(fn, conv()).result == "all good"
    click = {"output": [{"type": "computer_call", "id": "cu_2", "call_id": "c3", "status": "completed",
                         "pending_safety_checks": [],
                         "action": {"type": "click", "button": "left", "x": 500, "y": 500}}]}
    assert adapter.parse(click, conv()).actions == [a.Click(at=P(x=640, y=360))]
