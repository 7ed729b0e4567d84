"""The ``opencua`` and ``json`` chat dialects: how the adapter reads and writes them (pure), the
models file's ``coordinates`` field, and end to end: an agent task per dialect through the
``tzafon`` SDK on a real browser showing tests/pages/agent_form.html, and the emulated
``/v1/responses`` computer tool over the same adapters, against the fake provider (tests/
fake_models, another process), which decides every step from the screenshot it is sent.

A task passes only if the model's coordinates became the right screen pixels (the clicks land
where the fake aimed on the image it got), the calls of a turn ran in order, and the form's
own server recorded the typed value.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import Server, start_server
from fake_models import FakeModels
from fake_models.site import FormSite
from PIL import Image

from opencone.agent.adapters import chat
from opencone.agent.adapters import chat_json as cj
from opencone.agent.adapters import chat_opencua as co
from opencone.agent.adapters.base import (
    Conversation,
    Decision,
    ModelOutputError,
    ModelTurn,
    Observation,
    Outcome,
    Screenshot,
    Text,
)
from opencone.core import actions as a
from opencone.gateway.registry import ModelsFileError, read_models_file

W, H = 1280, 720
VALUE = "blue-42"
INSTRUCTION = f"Type '{VALUE}' into the field and submit the form."


def shot(w: int = W, h: int = H) -> Screenshot:
    out = io.BytesIO()
    Image.new("RGB", (w, h), (250, 250, 250)).save(out, "JPEG")
    return Screenshot(out.getvalue(), w, h)


def conv(*items: Any, display: tuple[int, int] = (W, H)) -> Conversation:
    return Conversation("harness", (Text("do it"), Observation(shot(*display)), *items), display)


def reply(content: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5}}


def opencua(code: str, head: str = "## Thought:\nI act.\n\n## Action:\nAct.\n\n") -> dict[str, Any]:
    return reply(f"# Step 1:\n{head}## Code:\n```python\n{code}\n```")


OPENCUA = chat.ChatAdapter("xlangai/OpenCUA-7B", None, "opencua")  # type: ignore[arg-type]
SMART = (1288, 728)  # smart_resize of 1280x720 (factor 28): what OpenCUA's coordinates are pixels of


def px(x: float, y: float) -> a.Point:
    """A point of the smart-resized image in screen pixels."""
    return a.Point(x=x * W / SMART[0], y=y * H / SMART[1])


# -- opencua: reading code ----------------------------------------------------------------------------------------
def test_opencua_reads_several_calls_keyword_and_positional() -> None:
    d = OPENCUA.parse(opencua("import pyautogui\npyautogui.click(x=644, y=364)\npyautogui.write(message='hi there')\n"
                              "pyautogui.click(322, 182, button='right')\npyautogui.doubleClick(x=100, y=50)\n"
                              "pyautogui.click((644, 364), clicks=3)"), conv())
    assert [c.name for c in d.calls] == ["click", "write", "click", "doubleClick", "click"]
    assert d.actions == [a.Click(at=px(644, 364)), a.TypeText(text="hi there"),
                         a.Click(at=px(322, 182), button="right"), a.Click(at=px(100, 50), count=2),
                         a.Click(at=px(644, 364), count=3)]
    assert d.text == "I act." and not d.done and d.dialect == "chat:opencua"
    assert d.calls[0].native == "pyautogui.click(x=644, y=364)"  # each call's own line, for the events


def test_opencua_keys_hotkey_lists_and_presses() -> None:
    d = OPENCUA.parse(opencua("pyautogui.hotkey('ctrl', 'c')\npyautogui.hotkey(['ctrl', 'shift', 't'])\n"
                              "pyautogui.hotkey(keys=['alt', 'f4'])\npyautogui.press('enter')\n"
                              "pyautogui.press(['tab', 'tab'])\npyautogui.press('down', presses=2)\n"
                              "pyautogui.keyDown('shiftleft')\npyautogui.keyUp('shift')"), conv())
    assert d.actions == [a.PressKeys(keys=["Control", "c"]), a.PressKeys(keys=["Control", "Shift", "t"]),
                         a.PressKeys(keys=["Alt", "F4"]), a.PressKeys(keys=["Enter"]),
                         a.PressKeys(keys=["Tab"]), a.PressKeys(keys=["Tab"]),  # a list: one after the other
                         a.PressKeys(keys=["ArrowDown"]), a.PressKeys(keys=["ArrowDown"]),
                         a.KeyDown(key="Shift"), a.KeyUp(key="Shift")]
    bad = OPENCUA.parse(opencua("pyautogui.press('hyperdrive')"), conv())
    assert "unknown key 'hyperdrive'" in (bad.calls[0].error or "")


def test_opencua_scroll_sign_drag_move_wait_and_newlines() -> None:
    d = OPENCUA.parse(opencua("pyautogui.scroll(5)\npyautogui.scroll(-3, x=644, y=364)\npyautogui.hscroll(2)\n"
                              "pyautogui.moveTo(100, 100)\npyautogui.dragTo(x=200, y=100)\ncomputer.wait()\n"
                              "pyautogui.write(message='a\\nb')\ncomputer.triple_click(x=10, y=10)"), conv())
    assert d.actions == [
        a.Scroll(dy=-500),  # positive: up (pyautogui), so the page moves back (Lightcone dy < 0)
        a.Scroll(at=px(644, 364), dy=300), a.Scroll(dx=200),
        a.MoveMouse(at=px(100, 100)), a.Drag(path=[px(100, 100), px(200, 100)]),  # from where the pointer was
        a.Wait(ms=co.WAIT_MS),
        a.TypeText(text="a"), a.PressKeys(keys=["Enter"]), a.TypeText(text="b"),  # write() presses Enter for \n
        a.Click(at=px(10, 10), count=3)]


def test_opencua_fractions_are_of_the_screen() -> None:
    d = OPENCUA.parse(opencua("pyautogui.click(x=0.5, y=0.25)"), conv())
    assert d.actions == [a.Click(at=a.Point(x=W / 2, y=H / 4))]


def test_opencua_terminate_ends_the_task_with_its_status() -> None:
    ok = OPENCUA.parse(reply("## Action:\nDone.\n```code\ncomputer.terminate(status='success', answer='42')\n```"),
                       conv())
    assert ok.done and ok.success and ok.result == "42" and ok.actions == []
    failed = OPENCUA.parse(opencua("computer.terminate(status='failure')", "## Action:\nThere is no form here.\n\n"),
                           conv())
    assert failed.done and not failed.success and failed.result == "There is no form here."


@pytest.mark.parametrize(("code", "says"), [
    ("pyautogui.click(x=", "is not Python"),
    ("pyautogui.locateOnScreen('button.png')", "unknown call pyautogui.locateOnScreen()"),
    ("os.system('rm -rf /')", "unknown call os.system()"),
    ("pyautogui.click(x=__import__('os'), y=1)", "literal values"),
    ("x = 5", "only calls of pyautogui and computer"),
    ("pyautogui.click(1, 2, 3, 4, 5, 6, 7, 8)", "at most 7 positional"),
    ("pyautogui.click(x=1, y=2, speed=3)", "unexpected keyword argument 'speed'"),
    ("pyautogui.click(x=1, y=2, clicks=7)", "clicks must be 1, 2 or 3"),
    ("pyautogui.dragTo(10, 10)", "pyautogui.moveTo first"),
    ("pyautogui.write(message=3)", "message must be a string"),
    ("pyautogui.scroll()", "how far"),
    ("pyautogui.scroll(1000000000)", "scroll delta"),
    ("pyautogui.scroll(10 ** 10 ** 10)", "literal values"),  # never evaluated
    ("pyautogui.click(\x00)", "is not Python"),
    ("-" * 200_000 + "1", "is not Python"),  # nesting the parser cannot hold: an error, not a crash
    ("pyautogui.write(" + "[" * 5000 + "]" * 5000 + ")", "is not Python"),
], ids=lambda v: repr(v[:40]))
def test_opencua_garbage_is_an_action_error_fed_back(code: str, says: str) -> None:
    """A call that cannot run is not run; its error goes to the model with the next screenshot."""
    d = OPENCUA.parse(opencua(code), conv())
    assert len(d.calls) == 1 and d.calls[0].actions == () and says in (d.calls[0].error or ""), d.calls
    nxt = conv(ModelTurn(d), Observation(shot(), (Outcome(d.calls[0].id, False, d.calls[0].error, ran=False),)))
    last_user = OPENCUA.request(nxt)["messages"][-1]
    texts = [p["text"] for p in last_user["content"] if p["type"] == "text"]
    assert any(says in t and "did not all work" in t for t in texts), texts


def test_opencua_an_answer_without_code_is_no_decision() -> None:
    with pytest.raises(ModelOutputError, match="without code"):
        OPENCUA.parse(reply("## Thought:\nI am not sure what to do."), conv())
    # code lines outside a fenced block are read too (OpenCUA's agent does the same)
    d = OPENCUA.parse(reply("## Action:\nclick it\npyautogui.click(x=644, y=364)"), conv())
    assert d.actions == [a.Click(at=px(644, 364))]


def test_opencua_request_is_shaped_like_its_own_agent() -> None:
    """System prompt with the L2 format and the computer.* functions; past steps as "# Step N" with
    Thought and Action but no code; the newest screenshot, then the task, in the last message."""
    first = OPENCUA.parse(opencua("pyautogui.click(x=644, y=364)"), conv())
    body = OPENCUA.request(Conversation("harness text", (
        Text("fill the form"), Observation(shot()), ModelTurn(first), Observation(shot(), (Outcome("act_0", True),)),
        Text("and say thanks", kind="injected")), (W, H), max_images=3))
    messages = body["messages"]
    system = messages[0]["content"]
    assert messages[0]["role"] == "system" and "computer.terminate" in system and "## Code:" in system
    assert system.endswith("harness text") and "response_format" not in body
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    past = messages[2]["content"]
    assert past.startswith("# Step 1:\n## Thought:\nI act.") and "## Action:\nAct." in past and "pyautogui" not in past
    last = messages[3]["content"]
    assert [p["type"] for p in last] == ["image_url", "text"]
    assert last[1]["text"].startswith("# Task Instruction:\nfill the form\n\nand say thanks")


def test_opencua_writes_other_dialects_turns_as_code_it_reads_back() -> None:
    acts = (a.Click(at=px(644, 364)), a.Click(at=px(10, 20), button="right"), a.TypeText(text="it's"),
            a.PressKeys(keys=["Control", "a"]), a.PressKeys(keys=["Enter"]), a.Scroll(dy=300),
            a.Drag(path=[px(1, 2), px(30, 40)]), a.Click(at=px(5, 5), count=3))
    from opencone.agent.adapters.base import Call
    decision = Decision((Call("c", acts),), "thinking", dialect="anthropic")
    content, code = co.written(decision, OPENCUA.space((W, H)), 3)
    assert content.startswith("# Step 3:") and "```python" in content
    again = OPENCUA.parse(reply(content), conv())
    assert again.actions == list(acts[:6]) + [a.MoveMouse(at=px(1, 2)), a.Drag(path=[px(1, 2), px(30, 40)]),
                                              acts[7]]


# -- json ---------------------------------------------------------------------------------------------------------
JSON_GRID = chat.ChatAdapter("qwen", None, "json")  # type: ignore[arg-type]
JSON_PX = chat.ChatAdapter("qwen", None, "json", "pixels")  # type: ignore[arg-type]


def act(name: str, **fields: Any) -> dict[str, Any]:
    return {**dict.fromkeys(("x", "y", "end_x", "end_y", "text", "keys", "dx", "dy", "seconds")), "action": name,
            **fields}


def test_json_request_carries_a_strict_schema() -> None:
    body = JSON_GRID.request(conv())
    fmt = body["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["strict"] is True
    schema = fmt["json_schema"]["schema"]
    item = schema["properties"]["actions"]["items"]
    assert set(item["properties"]["action"]["enum"]) == set(cj.ACTIONS)
    assert schema["additionalProperties"] is False and set(item["required"]) == set(item["properties"])
    assert "0-1000 grid" in body["messages"][0]["content"]
    assert "pixels of the screenshot (1280x720" in JSON_PX.request(conv())["messages"][0]["content"]


def test_json_reads_actions_in_its_space() -> None:
    answer = json.dumps({"thought": "go", "actions": [
        act("click", x=500, y=500), act("type", text="hi", x=250, y=100), act("key", keys=["ctrl", "a"]),
        act("scroll", dy=3), act("drag", x=0, y=0, end_x=1000, end_y=1000), act("wait", seconds=2),
        act("double_click", x=100, y=100), act("right_click"), act("done", text="finished")]})
    d = JSON_GRID.parse(reply(answer), conv())
    assert d.actions == [a.Click(at=a.Point(x=640, y=360)), a.TypeText(text="hi", at=a.Point(x=320, y=72)),
                         a.PressKeys(keys=["Control", "a"]), a.Scroll(dy=300),
                         a.Drag(path=[a.Point(x=0, y=0), a.Point(x=W - 1, y=H - 1)]), a.Wait(ms=2000),
                         a.Click(at=a.Point(x=128, y=72), count=2),
                         a.Click(at=a.Point(x=128, y=72), button="right")]  # where the pointer is
    assert d.done and d.success and d.result == "finished" and d.text == "go"
    d = JSON_PX.parse(reply(json.dumps({"thought": "", "actions": [act("click", x=640, y=360)]})), conv())
    assert d.actions == [a.Click(at=a.Point(x=640, y=360))] and d.text is None


def test_json_fail_ends_the_task_as_failed() -> None:
    d = JSON_GRID.parse(reply(json.dumps({"thought": "no form", "actions": [act("fail", text="nothing here")]})),
                        conv())
    assert d.done and not d.success and d.result == "nothing here"


def test_json_bad_answers() -> None:
    for content, says in (('{"thought": "x", "actions": [{"action": "cl', "not JSON"),
                          ('{"thought": "x"}', "without an actions list"),
                          ('{"thought": "x", "actions": []}', "no action")):
        with pytest.raises(ModelOutputError, match=says):
            JSON_GRID.parse(reply(content), conv())
    d = JSON_GRID.parse(reply(json.dumps({"thought": "", "actions": [
        act("teleport"), act("click"), act("key", keys=["hyperdrive"]), act("type", text=None), "click"]})), conv())
    errors = [c.error for c in d.calls]
    assert "unknown action 'teleport'" in errors[0] and "x and y are required" in errors[1]
    assert "unknown key" in errors[2] and "text must be a string" in errors[3] and "must be an object" in errors[4]


def test_json_writes_other_dialects_turns_it_reads_back() -> None:
    from opencone.agent.adapters.base import Call
    acts = (a.Click(at=a.Point(x=640, y=360)), a.TypeText(text="x"), a.PressKeys(keys=["Enter"]), a.Scroll(dy=-200),
            a.Wait(ms=1500))
    decision = Decision((Call("c", acts),), "t", done=True, result="ok", dialect="anthropic")
    body = JSON_GRID.request(conv(ModelTurn(decision), Observation(shot())))
    turn = next(m for m in body["messages"] if m["role"] == "assistant")
    again = JSON_GRID.parse(reply(turn["content"]), conv())
    assert again.actions == list(acts) and again.done and again.result == "ok"


# -- the models file ------------------------------------------------------------------------------------------------
ENTRY = '[[models]]\nid = "m"\nprovider = "openai-chat"\nbase_url = "http://127.0.0.1:8000/v1"\n'


@pytest.mark.parametrize(("extra", "coordinates"), [
    ('dialect = "json"', None), ('dialect = "json"\ncoordinates = "pixels"', "pixels"),
    ('dialect = "json"\ncoordinates = "grid1000"', "grid1000"), ('dialect = "opencua"', None),
])
def test_models_file_takes_the_new_dialects(tmp_path: Path, extra: str, coordinates: str | None) -> None:
    (tmp_path / "m.toml").write_text(ENTRY + extra)
    [entry] = read_models_file(tmp_path / "m.toml", {})
    assert entry.coordinates == coordinates
    from opencone.agent.adapters import adapter_for
    adapter = adapter_for(entry, None)
    assert adapter.dialect == f"chat:{entry.dialect}"
    if entry.dialect == "json":
        assert adapter.space((W, H)).kind == ("pixels" if coordinates == "pixels" else "grid")  # type: ignore[attr-defined]


@pytest.mark.parametrize(("extra", "says"), [
    ('dialect = "json"\ncoordinates = "pixel"', "coordinates must be one of grid1000, pixels, not 'pixel'"),
    ('dialect = "json"\ncoordinates = 1000', "coordinates must be one of grid1000, pixels"),
    ('dialect = "qwen3vl"\ncoordinates = "pixels"', "coordinates is for the json dialect only"),
    ('dialect = "opencua"\ncoordinates = "grid1000"', "coordinates is for the json dialect only"),
])
def test_models_file_refuses_bad_coordinates(tmp_path: Path, extra: str, says: str) -> None:
    (tmp_path / "m.toml").write_text(ENTRY + extra)
    with pytest.raises(ModelsFileError) as err:
        read_models_file(tmp_path / "m.toml", {})
    assert says in str(err.value) and "model 1 ('m')" in str(err.value)


# -- end to end ---------------------------------------------------------------------------------------------------
def models_file(fake: FakeModels) -> str:
    out = []
    for model_id, route, dialect, coordinates in (("opencua-7b", "opencua", "opencua", None),
                                                  ("json-grid", "json", "json", None),
                                                  ("json-pixels", "json-pixels", "json", "pixels")):
        out.append(f'[[models]]\nid = "{model_id}"\nprovider = "openai-chat"\nbase_url = '
                   f'"{fake.dialect_base_url(route)}"\napi_key_env = "FAKE_VLLM_KEY"\n'
                   f'upstream_model = "served-{model_id}"\ndialect = "{dialect}"\n'
                   + (f'coordinates = "{coordinates}"\n' if coordinates else ""))
    return "\n".join(out)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, fake_models_server: FakeModels) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("chat-dialects")
    (tmp / "models.toml").write_text(models_file(fake_models_server))
    srv = start_server(tmp, env={"OPENCONE_MODELS_FILE": str(tmp / "models.toml"), "OPENCONE_AGENT_SETTLE_MS": "100",
                                 "FAKE_VLLM_KEY": fake_models_server.api_key, "OPENCONE_MODEL_MAX_RETRIES": "0"})
    yield srv
    srv.stop()


def stream_task(server: Server, **params: Any) -> list[dict[str, Any]]:
    params.setdefault("instruction", INSTRUCTION)
    return [dict(e) for e in server.client().agent.tasks.start_stream(**params)]


def assert_aimed(events: list[dict[str, Any]], requests: list[dict[str, Any]], viewport: tuple[int, int]) -> int:
    """Every click ran within 2 screen pixels of where the fake aimed on the image it was sent."""
    checked = 0
    for step, request in enumerate(requests, 1):
        decision = request.get("decision") or {}
        planned = [s for s in decision.get("steps") or [] if s["step"] == "click"]
        clicks = [e["action"] for e in events if e["type"] == "action" and e["step"] == step
                  and e["action"]["type"] == "click"]
        planned = planned[:len(clicks)]
        iw, ih = decision["screen"]["size"] if planned else (1, 1)
        for want, got in zip(planned, clicks, strict=True):
            assert abs(got["x"] - want["x"] * viewport[0] / iw) <= 2, (step, want, got)
            assert abs(got["y"] - want["y"] * viewport[1] / ih) <= 2, (step, want, got)
            checked += 1
    return checked


@pytest.mark.parametrize(("model", "viewport"), [
    pytest.param("opencua-7b", (1280, 720), id="opencua"),
    pytest.param("json-grid", (1280, 720), id="json-grid1000"),
    pytest.param("json-pixels", (1024, 768), id="json-pixels"),
])
def test_a_task_per_dialect_fills_in_the_form(server: Server, fake_models: FakeModels, form_site: FormSite,
                                              model: str, viewport: tuple[int, int]) -> None:
    events = stream_task(server, model=model, start_url=form_site.form_url, viewport_width=viewport[0],
                         viewport_height=viewport[1])
    types = [e["type"] for e in events]
    assert types[0] == "task_started" and types[-1] == "completed", events[-1]
    assert all(e["ok"] for e in events if e["type"] == "action_result")
    assert events[-1]["exit_code"] == 0 and VALUE in events[-1]["result"]
    status = server.client().agent.tasks.retrieve_status(events[0]["task_id"])
    assert status.status == "completed" and status.exit_code == 0
    assert form_site.wait_for_submission() == [VALUE]  # what the browser sent, recorded outside opencone
    requests = fake_models.model_requests()
    assert len(requests) == events[-1]["steps"] >= 2
    assert assert_aimed(events, requests, viewport) == 2  # the field and the submit button
    first = [e for e in events if e["type"] == "action" and e["step"] == 1]
    assert [e["action"]["type"] for e in first] == ["click", "type"] if model == "opencua-7b" else \
        ["click", "type", "click"]  # several calls in one turn, in order
    body = requests[-1]["body"]
    if model == "opencua-7b":
        assert "computer.terminate" in body["messages"][0]["content"]
        assert body["messages"][-1]["content"][-1]["text"].startswith(f"# Task Instruction:\n{INSTRUCTION}")
        assert first[0]["raw"].startswith("pyautogui.click(x=")
    else:
        assert body["response_format"]["json_schema"]["strict"] is True


def test_opencua_terminate_failure_fails_the_task(server: Server, fake_models: FakeModels, form_site: FormSite) -> None:
    events = stream_task(server, model="opencua-7b", start_url=f"{form_site.url}/article.html")
    end = events[-1]
    assert end["type"] == "failed" and end["exit_code"] != 0 and "nothing I recognise" in end["result"], end
    status = server.client().agent.tasks.retrieve_status(events[0]["task_id"])
    assert status.status == "failed" and status.exit_code != 0
    assert len(fake_models.model_requests()) == 1


@pytest.mark.parametrize("model", ["opencua-7b", "json-grid"])
def test_garbage_is_fed_back_and_the_task_recovers(server: Server, fake_models: FakeModels, form_site: FormSite,
                                                   model: str) -> None:
    fake_models.script({"garbage": "output", "count": 1})
    events = stream_task(server, model=model, start_url=form_site.form_url, viewport_width=W, viewport_height=H)
    assert events[-1]["type"] == "completed" and form_site.wait_for_submission() == [VALUE]
    errors = [e for e in events if e["type"] == "error"]
    assert errors and errors[0]["step"] == 1
    said = "is not Python" if model == "opencua-7b" else "not JSON"
    assert said in errors[0]["message"]
    second = json.dumps(fake_models.model_requests()[1]["body"]["messages"])
    assert said in second  # the next request told the model what was wrong


def test_the_json_fake_refuses_a_request_without_the_schema(fake_models: FakeModels) -> None:
    sdk = openai.OpenAI(api_key=fake_models.api_key, base_url=fake_models.dialect_base_url("json"), max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert "response_format" in err.value.message
    loose = {"type": "json_schema", "json_schema": {"name": "x", "strict": False, "schema": cj.schema()}}
    with pytest.raises(openai.BadRequestError):
        sdk.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                    response_format=loose)  # type: ignore[arg-type]


@pytest.mark.parametrize("model", ["opencua-7b", "json-grid"])
def test_the_gateway_computer_tool_speaks_the_dialects(server: Server, fake_models: FakeModels, form_site: FormSite,
                                                       model: str) -> None:
    """The client's own loop over ``/v1/responses`` (Lightcone's examples): an emulated response per
    turn, its computer_calls in the tool's display pixels, run by the client on a computer."""
    client = server.client()
    cid = client.computers.create(kind="browser").id
    try:
        client.computers.navigate(cid, url=form_site.form_url)
        dw, dh = 1024, 768  # the server's default display
        tool = {"type": "computer_use_preview", "display_width": dw, "display_height": dh, "environment": "browser"}
        url = client.computers.screenshot(cid).result["screenshot_url"]
        response = client.responses.create(model=model, tools=[tool], input=[{"role": "user", "content": [
            {"type": "input_text", "text": INSTRUCTION}, {"type": "input_image", "image_url": url}]}])
        for _ in range(6):
            calls = [i for i in response.output if getattr(i, "type", None) == "computer_call"]
            if not calls:
                break
            outputs = []
            for call in calls:
                act = call.action
                if act.type == "click":
                    assert 0 <= act.x < dw and 0 <= act.y < dh and act.button == "left"
                    client.computers.click(cid, x=act.x, y=act.y)
                elif act.type == "type":
                    client.computers.type(cid, text=act.text)
                url = client.computers.screenshot(cid).result["screenshot_url"]
                outputs.append({"type": "computer_call_output", "call_id": call.call_id,
                                "output": {"type": "input_image", "image_url": url}})
            response = client.responses.create(model=model, tools=[tool], previous_response_id=response.id,
                                               input=outputs)
        text = " ".join(c.text for item in response.output if item.type == "message" for c in item.content)
        assert VALUE in text and form_site.wait_for_submission() == [VALUE]
        chats = fake_models.requests(api="chat")
        assert chats and all(r["status"] == 200 for r in chats)
    finally:
        client.computers.delete(cid)
