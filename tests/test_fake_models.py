"""Keep the fake model providers honest (tests/fake_models).

Every answer goes through the vendors' own SDKs and is validated with their types; every
stream is consumed with their stream helpers (which refuse events out of order), and each raw
event is validated on its own. The policies are checked on synthetic screenshots at two
sizes (the right spot in each dialect's coordinate space, "nothing found" on a blank one),
and in closed loops against a simulated form: they finish the form from what they see, and
do not when the screenshot is missing, stale or mis-scaled. One test runs the loop on the
real agent form in a real browser through opencone.
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from collections.abc import Callable
from typing import Any

import anthropic
import httpx
import numpy
import openai
import pytest
import simplejpeg
from anthropic.types import Message, RawMessageStreamEvent
from anthropic.types.beta import BetaMessage
from fake_models import FakeModels, start_fake
from fake_models.fixtures import agent_form_state
from fake_models.policy import smart_resize
from fake_models.screen import PALETTE, find_targets
from fake_models.site import FormSite
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import TypeAdapter

VALUE = "blue-42"
INSTRUCTION = f"Type '{VALUE}' into the field and submit the form."
PREVIEW = {"type": "computer_use_preview", "display_width": 1280, "display_height": 720, "environment": "browser"}
QWEN_TOOL = {"type": "function", "function": {"name": "computer_use", "description": "Use the computer.",
                                              "parameters": {"type": "object", "properties": {}}}}
SIZES = [(1280, 720), (1000, 700)]
STREAM_EVENT = TypeAdapter(ResponseStreamEvent)
ANTHROPIC_EVENT = TypeAdapter(RawMessageStreamEvent)


# -- a simulated agent form: the page's layout at any size, and what clicks and typing do ----------------------
class SimForm:
    """tests/pages/agent_form.html as pixels: the same colours, the same places (scaled from the
    1280x720 layout to ``w`` x ``h``), the same reactions to a click and to typing."""

    FIELD = (120, 160, 480, 208)
    SUBMIT = (560, 260, 760, 316)
    BANNER = (120, 380, 760, 440)

    def __init__(self, w: int = 1280, h: int = 720) -> None:
        self.w, self.h = w, h
        self.focused = False
        self.value = ""
        self.submissions: list[str] = []

    def box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        sx, sy = self.w / 1280, self.h / 720
        return round(box[0] * sx), round(box[1] * sy), round(box[2] * sx), round(box[3] * sy)

    def center(self, box: tuple[int, int, int, int]) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box(box)
        return (x0 + x1 - 1) / 2, (y0 + y1 - 1) / 2

    def pixels(self) -> numpy.ndarray:
        img = numpy.full((self.h, self.w, 3), 255, numpy.uint8)
        state = "field_filled" if self.value else "field_focused" if self.focused else "field_idle"
        for box, colour in ((self.FIELD, state), (self.SUBMIT, "submit")) + \
                (((self.BANNER, "submitted"),) if self.submissions else ()):
            x0, y0, x1, y1 = self.box(box)
            img[y0:y1, x0:x1] = PALETTE[colour]
        x0, y0, x1, y1 = self.box(self.FIELD)
        if self.value:  # white "text" in the field, as the page draws it
            img[y0 + 16:y1 - 16, x0 + 12:x0 + 12 + 9 * len(self.value)] = 255
        return img

    def jpeg(self) -> bytes:
        return simplejpeg.encode_jpeg(self.pixels(), quality=70, colorspace="RGB")

    def data_url(self, fmt: str = "jpeg") -> str:
        if fmt == "png":
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(self.pixels()).save(buf, "PNG")
            return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
        return "data:image/jpeg;base64," + base64.b64encode(self.jpeg()).decode()

    def b64(self) -> str:
        return base64.b64encode(self.jpeg()).decode()

    def inside(self, box: tuple[int, int, int, int], x: float, y: float) -> bool:
        x0, y0, x1, y1 = self.box(box)
        return x0 <= x < x1 and y0 <= y < y1

    def click(self, x: float, y: float) -> None:
        self.focused = self.inside(self.FIELD, x, y)
        if self.inside(self.SUBMIT, x, y) and self.value:
            self.submissions.append(self.value)

    def type(self, text: str) -> None:
        if self.focused:
            self.value += text


def blank_data_url(w: int = 1280, h: int = 720) -> str:
    img = numpy.full((h, w, 3), 240, numpy.uint8)
    img[100:200, 100:300] = (90, 90, 90)  # something, but nothing the policy knows
    return "data:image/jpeg;base64," + base64.b64encode(simplejpeg.encode_jpeg(img, colorspace="RGB")).decode()


def openai_client(fake: FakeModels, **kw: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=fake.base_url, api_key=fake.api_key, max_retries=0, **kw)


def anthropic_client(fake: FakeModels, **kw: Any) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=fake.anthropic_base_url, api_key=fake.api_key, max_retries=0, **kw)


def near(got: tuple[float, float] | list[float], want: tuple[float, float], tol: float = 2.0) -> bool:
    return abs(got[0] - want[0]) <= tol and abs(got[1] - want[1]) <= tol


def user_with_image(data_url: str, text: str = INSTRUCTION) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "input_text", "text": text},
                                        {"type": "input_image", "image_url": data_url, "detail": "auto"}]}


def computer_calls(response: Any) -> list[Any]:
    return [item for item in response.output if item.type == "computer_call"]


# -- the fake itself ------------------------------------------------------------------------------------------------
def test_starts_fast_and_stops() -> None:
    t0 = time.monotonic()
    fake = start_fake()
    started = time.monotonic() - t0
    try:
        assert started < 1.5, f"start took {started:.2f}s"
        assert httpx.get(f"{fake.url}/_health").json()["ok"]
    finally:
        fake.stop()
    assert fake.process.returncode is not None


def test_models_list_and_retrieve(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    ids = [m.id for m in client.models.list()]
    assert {"computer-use-preview", "tzafon.northstar-cua-fast", "ByteDance-Seed/UI-TARS-1.5-7B"} <= set(ids)
    assert client.models.retrieve("fake-qwen3vl").owned_by == "fake"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")
    assert [m.id for m in anthropic_client(fake_models).models.list()][0].startswith("claude")


def test_models_toml_is_a_models_file_opencone_reads(fake_models: FakeModels, tmp_path: Any) -> None:
    from opencone.gateway.registry import read_models_file

    path = tmp_path / "models.toml"
    path.write_text(fake_models.models_toml())
    entries = {e.id: e for e in read_models_file(path, fake_models.server_env())}
    assert entries["fake-uitars"].dialect == "uitars" and entries["fake-uitars"].base_url == fake_models.base_url
    assert entries["fake-claude"].base_url == fake_models.anthropic_base_url
    assert {e.api_key for e in entries.values()} == {fake_models.api_key}


def test_wrong_key_is_a_401_in_each_vendors_shape(fake_models: FakeModels) -> None:
    with pytest.raises(openai.AuthenticationError) as oa:
        openai.OpenAI(base_url=fake_models.base_url, api_key="wrong", max_retries=0).responses.create(
            model="gpt-5.4", input="hi")
    assert oa.value.body["code"] == "invalid_api_key"  # type: ignore[index]
    r = httpx.post(f"{fake_models.url}/v1/chat/completions", json={"model": "x", "messages": []})
    assert r.status_code == 401 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    with pytest.raises(anthropic.AuthenticationError) as an:
        anthropic.Anthropic(base_url=fake_models.anthropic_base_url, api_key="wrong", max_retries=0
                            ).messages.create(model="claude-sonnet-4-5", max_tokens=10,
                                              messages=[{"role": "user", "content": "hi"}])
    assert an.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert fake_models.requests()[-1]["error"] == "unauthorized"


def test_targets_are_found_beside_stray_pixels_of_their_colour() -> None:
    form = SimForm()
    px = form.pixels()
    px[20:22, 100:900] = (26, 115, 232)    # a focus ring in Chromium's blue, across the toolbar
    px[60:62, 100:900] = PALETTE["field_idle"]  # a thin line of the field's own colour
    px[600:640, 1100:1140] = PALETTE["field_idle"]  # and a small square of it
    screen = find_targets(simplejpeg.decode_jpeg(simplejpeg.encode_jpeg(px, quality=50, colorspace="RGB")))
    assert screen.field_state == "idle"
    assert screen.blobs["field_idle"].box == (120, 160, 479, 207)
    assert near((screen.blobs["submit"].cx, screen.blobs["submit"].cy), form.center(SimForm.SUBMIT))


# -- OpenAI Responses ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", SIZES)
def test_responses_preview_clicks_the_field_in_display_pixels(fake_models: FakeModels, size: tuple[int, int]
                                                               ) -> None:
    form = SimForm(*size)
    tool = {**PREVIEW, "display_width": size[0], "display_height": size[1]}
    raw = openai_client(fake_models).responses.with_raw_response.create(
        model="computer-use-preview", tools=[tool], truncation="auto", input=[user_with_image(form.data_url())])
    response = Response.model_validate(json.loads(raw.http_response.text))
    (cu,) = computer_calls(response)
    assert cu.action.type == "click" and cu.actions is None and cu.pending_safety_checks == []
    assert near((cu.action.x, cu.action.y), form.center(SimForm.FIELD))
    assert response.output[0].type == "reasoning"
    assert cu.call_id.startswith("call_") and response.id.startswith("resp_")


@pytest.mark.parametrize("size", SIZES)
def test_responses_ga_batches_click_type_click_in_image_pixels(fake_models: FakeModels, size: tuple[int, int]
                                                                ) -> None:
    form = SimForm(*size)
    raw = openai_client(fake_models).responses.with_raw_response.create(
        model="gpt-5.4", tools=[{"type": "computer"}], input=[user_with_image(form.data_url("png"))])
    response = Response.model_validate(json.loads(raw.http_response.text))
    (cu,) = computer_calls(response)
    assert cu.action is None
    kinds = [a.type for a in cu.actions]
    assert kinds == ["click", "type", "click"]
    assert near((cu.actions[0].x, cu.actions[0].y), form.center(SimForm.FIELD))
    assert cu.actions[1].text == VALUE
    assert near((cu.actions[2].x, cu.actions[2].y), form.center(SimForm.SUBMIT))


@pytest.mark.parametrize("size", SIZES)
def test_responses_northstar_is_raw_0_999_through_the_tzafon_sdk(fake_models: FakeModels, size: tuple[int, int]
                                                                  ) -> None:
    from tzafon import Lightcone
    from tzafon.types.response_create_response import ResponseCreateResponse

    form = SimForm(*size)
    client = Lightcone(api_key=fake_models.api_key, base_url=fake_models.lightcone_base_url, max_retries=0)
    response = client.responses.create(
        model="tzafon.northstar-cua-fast", input=[user_with_image(form.data_url())],
        tools=[{"type": "computer_use", "display_width": size[0], "display_height": size[1],
                "environment": "browser"}])
    assert isinstance(response, ResponseCreateResponse) and response.status == "completed"
    (cu,) = [o for o in response.output if getattr(o, "type", None) == "computer_call"]
    cx, cy = form.center(SimForm.FIELD)
    assert near((cu.action.x, cu.action.y), (cx / size[0] * 1000, cy / size[1] * 1000))
    assert max(cu.action.x, cu.action.y) <= 999
    # what the official examples do with it: int(v / 1000 * dim) lands in the field
    assert form.inside(SimForm.FIELD, int(cu.action.x / 1000 * size[0]), int(cu.action.y / 1000 * size[1]))


def test_responses_blank_and_missing_screenshots_get_text_not_actions(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    for tools in ([PREVIEW], [{"type": "computer"}]):
        blank = client.responses.create(model="computer-use-preview", tools=tools,
                                        input=[user_with_image(blank_data_url())])
        assert not computer_calls(blank) and "nothing I recognise" in blank.output_text
        by_url = client.responses.create(model="computer-use-preview", tools=tools,
                                         input=[user_with_image("http://127.0.0.1:1/shot.jpg")])
        assert not computer_calls(by_url) and "not a data URL" in by_url.output_text
    # a first turn without a screenshot asks for one; a later one says it has none
    first = client.responses.create(model="computer-use-preview", tools=[PREVIEW], input=INSTRUCTION)
    (cu,) = computer_calls(first)
    assert cu.action.type == "screenshot"
    later = client.responses.create(model="computer-use-preview", tools=[PREVIEW], previous_response_id=first.id,
                                    input=[{"type": "computer_call_output", "call_id": cu.call_id,
                                            "output": {"type": "computer_screenshot", "image_url": ""}}])
    assert not computer_calls(later) and "could not see" in later.output_text


def test_responses_preview_refuses_a_screenshot_not_of_the_declared_display(fake_models: FakeModels) -> None:
    form = SimForm(1280, 720)
    tool = {**PREVIEW, "display_width": 1024, "display_height": 576}
    client = openai_client(fake_models)
    refused = client.responses.create(model="computer-use-preview", tools=[tool],
                                      input=[user_with_image(form.data_url())])
    assert not computer_calls(refused) and "1280x720" in refused.output_text and "1024x576" in refused.output_text
    fake_models.script(display_mismatch="scale")
    scaled = client.responses.create(model="computer-use-preview", tools=[tool],
                                     input=[user_with_image(form.data_url())])
    (cu,) = computer_calls(scaled)
    cx, cy = form.center(SimForm.FIELD)
    assert near((cu.action.x, cu.action.y), (cx * 0.8, cy * 0.8))


def test_responses_plain_text_echoes(fake_models: FakeModels) -> None:
    raw = openai_client(fake_models).responses.with_raw_response.create(model="gpt-5.4", input="ping",
                                                                         instructions="be brief")
    response = Response.model_validate(json.loads(raw.http_response.text))
    assert response.output_text == "echo: ping" and response.instructions == "be brief"
    assert response.usage is not None and response.usage.total_tokens > 0


def _raw_stream_events(fake: FakeModels, path: str, body: dict[str, Any], headers: dict[str, str]
                       ) -> list[tuple[str | None, dict[str, Any] | str]]:
    events = []
    with httpx.stream("POST", f"{fake.url}{path}", json=body, headers=headers, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in r.iter_lines():
            if line.startswith("event: "):
                name = line[7:]
            elif line.startswith("data: "):
                data = line[6:]
                events.append((name, data if data == "[DONE]" else json.loads(data)))
                name = None
    return events


@pytest.mark.parametrize("flavour", ["preview", "ga", "text", "done", pytest.param("northstar", marks=(
    pytest.mark.filterwarnings("ignore:Pydantic serializer warnings")))])  # Lightcone's tool is no OpenAI type
def test_responses_streams_pass_the_sdk_stream_helper(fake_models: FakeModels, flavour: str) -> None:
    form = SimForm()
    if flavour == "done":
        form.value, form.submissions = VALUE, [VALUE]
    tools, model = {"preview": ([PREVIEW], "computer-use-preview"), "ga": ([{"type": "computer"}], "gpt-5.4"),
                    "northstar": ([{"type": "computer_use"}], "tzafon.northstar-cua-fast"),
                    "text": ([], "gpt-5.4"), "done": ([PREVIEW], "computer-use-preview")}[flavour]
    body = {"model": model, "tools": tools, "input": [user_with_image(form.data_url())]}
    client = openai_client(fake_models)
    plain = client.responses.create(**body)  # type: ignore[arg-type]
    with client.responses.stream(**body) as stream:  # type: ignore[arg-type]
        seen = [event.type for event in stream]
        final = stream.get_final_response()
    assert seen[:2] == ["response.created", "response.in_progress"] and seen[-1] == "response.completed"
    assert [o.type for o in final.output] == [o.type for o in plain.output]
    if flavour == "text":
        assert "response.output_text.delta" in seen and final.output_text.startswith("echo:")
    if flavour == "done":
        assert final.output_text == f"Submitted '{VALUE}'." and "response.output_text.delta" in seen
    # and each raw event, on its own, is one of the SDK's event types, numbered in order
    raw = _raw_stream_events(fake_models, "/v1/responses", {**body, "stream": True},
                             {"authorization": f"Bearer {fake_models.api_key}"})
    assert [e["sequence_number"] for _, e in raw] == list(range(len(raw)))  # type: ignore[index]
    for name, event in raw:
        assert isinstance(event, dict) and name == event["type"]
        if flavour != "northstar":  # Lightcone's terminate/answer actions are no OpenAI type
            STREAM_EVENT.validate_python(event)
    if flavour != "northstar":
        Response.model_validate(raw[-1][1]["response"])  # type: ignore[index]


def test_responses_northstar_done_is_terminate_or_the_done_function(fake_models: FakeModels) -> None:
    from tzafon import Lightcone

    form = SimForm()
    form.value, form.submissions = VALUE, [VALUE]
    client = Lightcone(api_key=fake_models.api_key, base_url=fake_models.lightcone_base_url, max_retries=0)
    tool = {"type": "computer_use", "display_width": 1280, "display_height": 720, "environment": "browser"}
    plain = client.responses.create(model="tzafon.northstar-cua-fast", tools=[tool],
                                    input=[user_with_image(form.data_url())])
    kinds = [o.type if hasattr(o, "type") else o["type"] for o in plain.output]  # type: ignore[index]
    assert kinds == ["message", "computer_call"]
    terminate = plain.output[1]
    action = terminate["action"] if isinstance(terminate, dict) else terminate.action  # type: ignore[union-attr]
    assert action == {"type": "terminate", "status": "success", "result": f"Submitted '{VALUE}'."}
    done_tool = {"type": "function", "name": "done", "parameters": {"type": "object", "properties": {
        "message": {"type": "string"}}}}
    with_done = client.responses.create(model="tzafon.northstar-cua-fast", tools=[tool, done_tool],
                                        input=[user_with_image(form.data_url())])
    call = with_done.output[1]
    assert call.type == "function_call" and call.name == "done"  # type: ignore[union-attr]
    assert json.loads(call.arguments) == {"message": f"Submitted '{VALUE}'."}  # type: ignore[union-attr]


def test_responses_chain_store_and_what_the_real_api_refuses(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    form = SimForm()
    first = client.responses.create(model="computer-use-preview", tools=[PREVIEW],
                                    input=[user_with_image(form.data_url())])
    (cu,) = computer_calls(first)
    form.click(cu.action.x, cu.action.y)
    output = {"type": "computer_call_output", "call_id": cu.call_id,
              "output": {"type": "computer_screenshot", "image_url": form.data_url()}}
    # chained: the instruction is found in the stored first turn, the field is now focused
    second = client.responses.create(model="computer-use-preview", tools=[PREVIEW], previous_response_id=first.id,
                                     input=[output])
    (cu2,) = computer_calls(second)
    assert cu2.action.type == "type" and cu2.action.text == VALUE
    entry = fake_models.model_requests()[-1]
    assert entry["view"]["user_texts"] == [INSTRUCTION] and entry["view"]["model_turns"] == 1
    # resent history instead of a chain: fine with the reasoning item, refused without it
    history = [user_with_image(SimForm().data_url()), *[o.model_dump(exclude_none=True) for o in first.output],
               output]
    assert computer_calls(client.responses.create(model="computer-use-preview", tools=[PREVIEW], input=history))
    with pytest.raises(openai.BadRequestError, match="without its required 'reasoning' item"):
        client.responses.create(model="computer-use-preview", tools=[PREVIEW], input=history[:1] + history[2:])
    # a continuation that does not answer the call, a call output for no call, an unknown chain
    with pytest.raises(openai.BadRequestError, match="No tool output found for computer call"):
        client.responses.create(model="computer-use-preview", tools=[PREVIEW], previous_response_id=second.id,
                                input="and now?")
    with pytest.raises(openai.BadRequestError, match="No tool call found"):
        client.responses.create(model="computer-use-preview", tools=[PREVIEW],
                                input=[{**output, "call_id": "call_nope"}])
    with pytest.raises(openai.BadRequestError, match="not found"):
        client.responses.create(model="computer-use-preview", input="x", previous_response_id="resp_nope")
    # retrieve, input items, delete
    assert client.responses.retrieve(second.id).output[1].id == cu2.id
    items = client.responses.input_items.list(second.id)
    assert [i.type for i in items.data] == ["computer_call_output"]
    client.responses.delete(second.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(second.id)
    # store=false: answered, never kept
    unstored = client.responses.create(model="gpt-5.4", input="x", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)


def test_responses_background_completes_or_is_cancelled(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    fake_models.script(latency=0.3)
    done = client.responses.create(model="gpt-5.4", input="slow", background=True)
    assert done.status in ("queued", "in_progress") and done.output == []
    deadline = time.monotonic() + 5
    while client.responses.retrieve(done.id).status != "completed" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.responses.retrieve(done.id).output_text == "echo: slow"
    fake_models.script(latency=30)
    slow = client.responses.create(model="gpt-5.4", input="never", background=True)
    assert client.responses.cancel(slow.id).status == "cancelled"
    assert client.responses.cancel(slow.id).status == "cancelled"  # idempotent
    assert client.responses.retrieve(slow.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="Only background"):
        fake_models.script(latency=0)
        client.responses.cancel(client.responses.create(model="gpt-5.4", input="x").id)
    # a background stream, read again from a sequence number
    fake_models.script(latency=0.2)
    with client.responses.stream(model="gpt-5.4", input="bg", background=True) as stream:
        final = stream.get_final_response()
    assert final.output_text == "echo: bg"
    with httpx.stream("GET", f"{fake_models.url}/v1/responses/{final.id}",
                      params={"stream": "true", "starting_after": 3},
                      headers={"authorization": f"Bearer {fake_models.api_key}"}) as r:
        numbers = [json.loads(line[6:])["sequence_number"] for line in r.iter_lines() if line.startswith("data: ")]
    assert numbers and numbers[0] == 4 and numbers == list(range(4, 4 + len(numbers)))


def test_responses_safety_check_must_be_acknowledged(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    form = SimForm()
    fake_models.script({"safety_check": True})
    first = client.responses.create(model="computer-use-preview", tools=[PREVIEW],
                                    input=[user_with_image(form.data_url())])
    (cu,) = computer_calls(first)
    (check,) = cu.pending_safety_checks
    output = {"type": "computer_call_output", "call_id": cu.call_id,
              "output": {"type": "computer_screenshot", "image_url": form.data_url()}}
    with pytest.raises(openai.BadRequestError, match="pending safety checks"):
        client.responses.create(model="computer-use-preview", tools=[PREVIEW], previous_response_id=first.id,
                                input=[output])
    ok = client.responses.create(model="computer-use-preview", tools=[PREVIEW], previous_response_id=first.id,
                                 input=[{**output, "acknowledged_safety_checks": [check.model_dump()]}])
    assert computer_calls(ok)


# -- Chat Completions ----------------------------------------------------------------------------------------------
def chat_messages(data_url: str | None, text: str = INSTRUCTION) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if data_url:
        content.append({"type": "image_url", "image_url": {"url": data_url}})
    return [{"role": "system", "content": "You are a GUI agent. Example: type 'not-this'."},
            {"role": "user", "content": content}]


def qwen_args(message: Any) -> list[dict[str, Any]]:
    """The computer_use calls of a Qwen-family answer, in either form."""
    if message.tool_calls:
        return [json.loads(c.function.arguments) for c in message.tool_calls]
    return [json.loads(m)["arguments"] for m in re.findall(r"<tool_call>\s*(\{.*?\})\s*</tool_call>",
                                                           message.content or "", re.S)]


UITARS_ACTION = re.compile(r"Action: (\w+)\((.*)\)\s*$", re.S)


def uitars_action(content: str) -> tuple[str, str] | None:
    match = UITARS_ACTION.search(content)
    return (match.group(1), match.group(2)) if match else None


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("dialect", ["qwen3vl", "qwen3vl-text", "northstar", "uitars"])
def test_chat_dialects_click_the_field_in_their_space(fake_models: FakeModels, dialect: str,
                                                      size: tuple[int, int]) -> None:
    form = SimForm(*size)
    model = {"qwen3vl": "Qwen/Qwen3-VL-8B-Instruct", "qwen3vl-text": "Qwen/Qwen3-VL-8B-Instruct",
             "northstar": "Tzafon/Northstar-CUA-Fast", "uitars": "ByteDance-Seed/UI-TARS-1.5-7B"}[dialect]
    tools = [QWEN_TOOL] if dialect in ("qwen3vl", "northstar") else []
    raw = openai_client(fake_models).chat.completions.with_raw_response.create(
        model=model, messages=chat_messages(form.data_url()), tools=tools or openai.omit)  # type: ignore[arg-type]
    completion = ChatCompletion.model_validate(json.loads(raw.http_response.text))
    message = completion.choices[0].message
    cx, cy = form.center(SimForm.FIELD)
    w, h = size
    if dialect == "uitars":
        rh, rw = smart_resize(h, w)
        action = uitars_action(message.content or "")
        assert action and action[0] == "click" and message.content.startswith("Thought: ")  # type: ignore[union-attr]
        x, y = map(int, re.fullmatch(r"start_box='\((\d+),(\d+)\)'", action[1]).groups())  # type: ignore[union-attr]
        assert near((x, y), (cx * rw / w, cy * rh / h))
        assert form.inside(SimForm.FIELD, x * w / rw, y * h / rh)
        return
    (args,) = qwen_args(message)
    assert (completion.choices[0].finish_reason == "tool_calls") == (dialect != "qwen3vl-text")
    grid = 999 if dialect == "northstar" else 1000
    assert args["action"] == "left_click"
    assert near(args["coordinate"], (cx / w * 1000, cy / h * 1000)) and max(args["coordinate"]) <= grid
    assert form.inside(SimForm.FIELD, args["coordinate"][0] / 1000 * w, args["coordinate"][1] / 1000 * h)


@pytest.mark.parametrize("dialect", ["Qwen/Qwen3-VL-8B-Instruct", "fake-northstar", "fake-uitars"])
def test_chat_dialects_say_so_without_acting(fake_models: FakeModels, dialect: str) -> None:
    client = openai_client(fake_models)
    for shot, words in ((blank_data_url(), "nothing I recognise"), (None, "no screenshot"),
                        ("http://127.0.0.1:1/x.jpg", "not a data URL")):
        completion = client.chat.completions.create(model=dialect, messages=chat_messages(shot), tools=[QWEN_TOOL])
        message = completion.choices[0].message
        assert not message.tool_calls and completion.choices[0].finish_reason == "stop"
        assert words in (message.content or "") and "<tool_call>" not in (message.content or "")
        assert "Action:" not in (message.content or "")


def test_chat_dialect_by_route_and_header(fake_models: FakeModels) -> None:
    form = SimForm()
    routed = openai.OpenAI(base_url=fake_models.dialect_base_url("uitars"), api_key=fake_models.api_key)
    content = routed.chat.completions.create(model="my-local-model",
                                             messages=chat_messages(form.data_url())).choices[0].message.content
    assert uitars_action(content or "") is not None
    headed = openai_client(fake_models, default_headers={"x-fake-dialect": "qwen3vl"})
    message = headed.chat.completions.create(model="my-local-model", messages=chat_messages(form.data_url())
                                             ).choices[0].message
    assert qwen_args(message)[0]["action"] == "left_click"


def test_chat_text_echoes_and_describes_images(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    completion = client.chat.completions.create(model="fake-chat", messages=chat_messages(SimForm(640, 360)
                                                                                          .data_url(), "hello"))
    assert completion.choices[0].message.content == "echo: hello [images: 640x360 jpeg]"
    assert completion.usage is not None and completion.usage.total_tokens > 0


@pytest.mark.parametrize("model", ["fake-chat", "Qwen/Qwen3-VL-8B-Instruct", "fake-uitars", "fake-northstar"])
def test_chat_streams_with_usage_and_done(fake_models: FakeModels, model: str) -> None:
    client = openai_client(fake_models)
    body = {"model": model, "messages": chat_messages(SimForm().data_url()), "tools": [QWEN_TOOL]}
    plain = client.chat.completions.create(**body)  # type: ignore[arg-type]
    chunks = list(client.chat.completions.create(**body, stream=True,  # type: ignore[call-overload]
                                                 stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == (plain.choices[0].message.content or "")
    with client.chat.completions.stream(**body) as stream:  # type: ignore[arg-type]
        for _ in stream:
            pass
        final = stream.get_final_completion()
    got, want = final.choices[0].message, plain.choices[0].message
    assert (got.content or "") == (want.content or "")
    assert [json.loads(c.function.arguments) for c in got.tool_calls or []] == \
        [json.loads(c.function.arguments) for c in want.tool_calls or []]
    raw = _raw_stream_events(fake_models, "/v1/chat/completions", {**body, "stream": True},
                             {"authorization": f"Bearer {fake_models.api_key}"})
    assert raw[-1] == (None, "[DONE]")
    for _, chunk in raw[:-1]:
        ChatCompletionChunk.model_validate(chunk)


def test_chat_refuses_tool_calls_without_tool_messages(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    first = client.chat.completions.create(model="Qwen/Qwen3-VL-8B-Instruct", tools=[QWEN_TOOL],
                                           messages=chat_messages(SimForm().data_url()))
    assistant = first.choices[0].message.model_dump(exclude_none=True)
    with pytest.raises(openai.BadRequestError, match="did not have response messages"):
        client.chat.completions.create(model="Qwen/Qwen3-VL-8B-Instruct", tools=[QWEN_TOOL],
                                       messages=[*chat_messages(None), assistant, {"role": "user", "content": "?"}])
    tool_message = {"role": "tool", "tool_call_id": first.choices[0].message.tool_calls[0].id,  # type: ignore[index]
                    "content": "done"}
    ok = client.chat.completions.create(model="Qwen/Qwen3-VL-8B-Instruct", tools=[QWEN_TOOL], messages=[
        *chat_messages(None), assistant, tool_message,
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": SimForm().data_url()}}]}])
    assert qwen_args(ok.choices[0].message)
    with pytest.raises(openai.BadRequestError, match="role 'tool'"):
        client.chat.completions.create(model="fake-chat", messages=[{"role": "tool", "tool_call_id": "x",
                                                                     "content": "?"}])


# -- Anthropic Messages -------------------------------------------------------------------------------------------
def anthropic_tool(w: int, h: int, kind: str = "computer_20250124") -> dict[str, Any]:
    return {"type": kind, "name": "computer", "display_width_px": w, "display_height_px": h}


def anthropic_user(b64: str | None, text: str = INSTRUCTION) -> dict[str, Any]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}]
    if b64 is not None:
        content.append({"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": b64}})
    return {"role": "user", "content": content}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["computer_20250124", "computer_20251124"])
def test_anthropic_clicks_in_the_declared_display(fake_models: FakeModels, kind: str, size: tuple[int, int]) -> None:
    form = SimForm(*size)
    beta = {"computer_20250124": "computer-use-2025-01-24", "computer_20251124": "computer-use-2025-11-24"}[kind]
    client = anthropic_client(fake_models)
    raw = client.beta.messages.with_raw_response.create(
        model="claude-sonnet-4-5", max_tokens=1024, tools=[anthropic_tool(*size, kind)],  # type: ignore[list-item]
        messages=[anthropic_user(form.b64())], betas=[beta])  # type: ignore[list-item]
    message = BetaMessage.model_validate(json.loads(raw.http_response.text))
    Message.model_validate(json.loads(raw.http_response.text))
    assert message.stop_reason == "tool_use"
    text, tool_use = message.content
    assert text.type == "text" and tool_use.type == "tool_use" and tool_use.name == "computer"
    assert tool_use.input["action"] == "left_click"  # type: ignore[index]
    assert near(tool_use.input["coordinate"], form.center(SimForm.FIELD))  # type: ignore[index]
    assert fake_models.model_requests()[-1]["headers"]["anthropic-beta"] == beta


def test_anthropic_refuses_a_screenshot_not_of_the_declared_display(fake_models: FakeModels) -> None:
    client = anthropic_client(fake_models)
    message = client.messages.create(model="claude-sonnet-4-5", max_tokens=100,
                                     tools=[anthropic_tool(1024, 768)],  # type: ignore[list-item]
                                     messages=[anthropic_user(SimForm(1280, 720).b64())])  # type: ignore[list-item]
    assert message.stop_reason == "end_turn" and [b.type for b in message.content] == ["text"]
    assert "1280x720" in message.content[0].text  # type: ignore[union-attr]


def test_anthropic_loop_tool_results_and_what_the_real_api_refuses(fake_models: FakeModels) -> None:
    client = anthropic_client(fake_models)
    tools = [anthropic_tool(1280, 720)]
    first = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, tools=tools,  # type: ignore[arg-type]
                                   messages=[anthropic_user(None)])
    assert first.content[-1].input == {"action": "screenshot"}  # type: ignore[union-attr]
    assistant = {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]}
    tool_use_id = first.content[-1].id  # type: ignore[union-attr]
    result = {"type": "tool_result", "tool_use_id": tool_use_id, "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": SimForm().b64()}}]}
    second = client.messages.create(model="claude-sonnet-4-5", max_tokens=100, tools=tools,  # type: ignore[arg-type]
                                    messages=[anthropic_user(None), assistant, {"role": "user", "content": [result]}])
    assert second.content[-1].input["action"] == "left_click"  # type: ignore[union-attr]
    for bad, words in (([anthropic_user(None), assistant, anthropic_user(SimForm().b64())], "without `tool_result`"),
                       ([anthropic_user(None), assistant,
                         {"role": "user", "content": [{"type": "text", "text": "hi"}, result]}], "must come first"),
                       ([anthropic_user(None), {"role": "user", "content": [result]}], "unexpected `tool_use_id`")):
        with pytest.raises(anthropic.BadRequestError, match=words):
            client.messages.create(model="claude-sonnet-4-5", max_tokens=100, tools=tools,  # type: ignore[arg-type]
                                   messages=bad)  # type: ignore[arg-type]
    r = httpx.post(f"{fake_models.url}/v1/messages", headers={"x-api-key": fake_models.api_key},
                   json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("state", ["idle", "focused", "blank", "text"])
def test_anthropic_stream_passes_the_sdk_stream_helper(fake_models: FakeModels, state: str) -> None:
    form = SimForm()
    form.focused = state == "focused"
    b64 = form.b64() if state != "blank" else blank_data_url().partition(",")[2]
    body: dict[str, Any] = {"model": "claude-sonnet-4-5", "max_tokens": 100, "messages": [anthropic_user(b64)],
                            "tools": [] if state == "text" else [anthropic_tool(1280, 720)]}
    client = anthropic_client(fake_models)
    plain = client.messages.create(**body)
    with client.messages.stream(**body) as stream:
        for _ in stream:
            pass
        final = stream.get_final_message()
    assert final.stop_reason == plain.stop_reason
    assert [b.model_dump(exclude={"id"}) for b in final.content] == \
        [b.model_dump(exclude={"id"}) for b in plain.content]
    if state == "focused":
        assert final.content[-1].input == {"action": "type", "text": VALUE}  # type: ignore[union-attr]
    raw = _raw_stream_events(fake_models, "/v1/messages", {**body, "stream": True},
                             {"x-api-key": fake_models.api_key, "anthropic-version": "2023-06-01"})
    assert [n for n, _ in raw][0] == "message_start" and raw[-1][0] == "message_stop"
    for name, event in raw:
        assert isinstance(event, dict) and event["type"] == name
        if name != "ping":  # sent by the real API too; the SDK skips it and has no type for it
            ANTHROPIC_EVENT.validate_python(event)


# -- closed loops: the policy finishes the form from what it sees, and only then ---------------------------------
Shot = Callable[[SimForm], str]


def run_responses(fake: FakeModels, form: SimForm, kind: str, shot: Shot | None = None, steps: int = 8
                  ) -> tuple[str | None, int]:
    """A minimal agent loop over the Responses API (previous_response_id); the final text and
    the number of model calls."""
    client = openai_client(fake)
    shot = shot or (lambda f: f.data_url())
    tools: list[dict[str, Any]] = {"preview": [{**PREVIEW, "display_width": form.w, "display_height": form.h}],
                                   "ga": [{"type": "computer"}],
                                   "northstar": [{"type": "computer_use"}]}[kind]
    model = "tzafon.northstar-cua-fast" if kind == "northstar" else "computer-use-preview"
    response = client.responses.create(model=model, tools=tools, input=[user_with_image(shot(form))])  # type: ignore
    for n in range(1, steps + 1):
        calls = computer_calls(response)
        if not calls or calls[0].action is not None and calls[0].action.type not in ("click", "type", "wait"):
            return response.output_text, n
        actions = calls[0].actions or [calls[0].action]
        for a in actions:
            if a.type == "click":
                x, y = (a.x / 1000 * form.w, a.y / 1000 * form.h) if kind == "northstar" else (a.x, a.y)
                form.click(x, y)
            elif a.type == "type":
                form.type(a.text)
        response = client.responses.create(model=model, tools=tools, previous_response_id=response.id,  # type: ignore
                                           input=[{"type": "computer_call_output", "call_id": calls[0].call_id,
                                                   "output": {"type": "computer_screenshot",
                                                              "image_url": shot(form)}}])
    return None, steps


def run_chat(fake: FakeModels, form: SimForm, model: str, unscale: Callable[[float, float], tuple[float, float]],
             shot: Shot | None = None, steps: int = 8) -> tuple[str | None, int]:
    client = openai_client(fake)
    shot = shot or (lambda f: f.data_url())
    messages = chat_messages(shot(form))
    uitars = "tars" in model.lower()
    for n in range(1, steps + 1):
        message = client.chat.completions.create(model=model, messages=messages,  # type: ignore[arg-type]
                                                 tools=openai.omit if uitars else [QWEN_TOOL]).choices[0].message
        messages.append(message.model_dump(exclude_none=True))
        if uitars:
            action = uitars_action(message.content or "")
            if action is None or action[0] == "finished":
                return message.content, n
            if action[0] == "click":
                x, y = map(int, re.findall(r"\d+", action[1]))
                form.click(*unscale(x, y))
            elif action[0] == "type":
                form.type(re.fullmatch(r"content='(.*)'", action[1]).group(1))  # type: ignore[union-attr]
        else:
            calls = qwen_args(message)
            if not calls or calls[0]["action"] in ("answer", "terminate"):
                return (calls[0].get("text") if calls else message.content), n
            if calls[0]["action"] == "left_click":
                form.click(*unscale(*calls[0]["coordinate"]))
            elif calls[0]["action"] == "type":
                form.type(calls[0]["text"])
            messages += [{"role": "tool", "tool_call_id": c.id, "content": "ok"} for c in message.tool_calls or []]
        messages.append({"role": "user", "content": [{"type": "image_url", "image_url": {"url": shot(form)}}]})
    return None, steps


def run_anthropic(fake: FakeModels, form: SimForm, shot: Callable[[SimForm], str] | None = None, steps: int = 8,
                  display: tuple[int, int] | None = None) -> tuple[str | None, int]:
    client = anthropic_client(fake)
    shot = shot or (lambda f: f.b64())
    dw, dh = display or (form.w, form.h)
    tools = [anthropic_tool(dw, dh, "computer_20251124")]
    messages: list[dict[str, Any]] = [anthropic_user(shot(form))]
    for n in range(1, steps + 1):
        message = client.beta.messages.create(model="claude-sonnet-4-5", max_tokens=200, tools=tools,  # type: ignore
                                              messages=messages, betas=["computer-use-2025-11-24"])  # type: ignore
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]})
        if message.stop_reason == "end_turn":
            return message.content[-1].text, n  # type: ignore[union-attr]
        use = message.content[-1]
        if use.input["action"] == "left_click":  # type: ignore[union-attr]
            x, y = use.input["coordinate"]  # type: ignore[union-attr]
            form.click(x * form.w / dw, y * form.h / dh)
        elif use.input["action"] == "type":  # type: ignore[union-attr]
            form.type(use.input["text"])  # type: ignore[union-attr]
        messages.append({"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": [  # type: ignore
            {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": shot(form)}}]}]})
    return None, steps


def grid(form: SimForm, n: int = 1000) -> Callable[[float, float], tuple[float, float]]:
    return lambda x, y: (x / n * form.w, y / n * form.h)


def smart(form: SimForm) -> Callable[[float, float], tuple[float, float]]:
    rh, rw = smart_resize(form.h, form.w)
    return lambda x, y: (x * form.w / rw, y * form.h / rh)


LOOPS: dict[str, Callable[[FakeModels, SimForm], tuple[str | None, int]]] = {
    "responses-preview": lambda fake, form: run_responses(fake, form, "preview"),
    "responses-ga": lambda fake, form: run_responses(fake, form, "ga"),
    "responses-northstar": lambda fake, form: run_responses(fake, form, "northstar"),
    "chat-qwen3vl": lambda fake, form: run_chat(fake, form, "Qwen/Qwen3-VL-8B-Instruct", grid(form)),
    "chat-northstar": lambda fake, form: run_chat(fake, form, "Tzafon/Northstar-CUA-Fast", grid(form)),
    "chat-uitars": lambda fake, form: run_chat(fake, form, "ByteDance-Seed/UI-TARS-1.5-7B", smart(form)),
    "anthropic": lambda fake, form: run_anthropic(fake, form),
}


@pytest.mark.parametrize("loop", sorted(LOOPS))
@pytest.mark.parametrize("size", SIZES)
def test_each_dialect_fills_the_form_from_what_it_sees(fake_models: FakeModels, loop: str, size: tuple[int, int]
                                                       ) -> None:
    form = SimForm(*size)
    answer, calls = LOOPS[loop](fake_models, form)
    assert form.submissions == [VALUE]
    assert answer is not None and VALUE in answer
    assert calls == (2 if loop == "responses-ga" else 4)  # GA: one batch, then done


@pytest.mark.parametrize("loop", ["responses-preview", "chat-qwen3vl", "chat-uitars", "anthropic"])
def test_a_stale_screenshot_never_finishes(fake_models: FakeModels, loop: str) -> None:
    form, first = SimForm(), SimForm()
    stale_url, stale_b64 = first.data_url(), first.b64()
    shot: Any = (lambda f: stale_b64) if loop == "anthropic" else (lambda f: stale_url)
    answer, _ = {"responses-preview": lambda: run_responses(fake_models, form, "preview", shot, steps=5),
                 "chat-qwen3vl": lambda: run_chat(fake_models, form, "fake-qwen3vl", grid(form), shot, steps=5),
                 "chat-uitars": lambda: run_chat(fake_models, form, "fake-uitars", smart(form), shot, steps=5),
                 "anthropic": lambda: run_anthropic(fake_models, form, shot, steps=5)}[loop]()
    assert answer is None and form.submissions == []


def test_mis_scaled_coordinates_never_finish(fake_models: FakeModels) -> None:
    # a client that reads the 0-1000 grid as pixels (or the pixels of a 1024-wide display as 1280)
    form = SimForm()
    answer, _ = run_chat(fake_models, form, "fake-qwen3vl", lambda x, y: (x, y), steps=5)
    assert answer is None and form.submissions == []
    form = SimForm()
    answer, _ = run_anthropic(fake_models, form, shot=lambda f: base64.b64encode(simplejpeg.encode_jpeg(
        f.pixels()[::1, ::1], colorspace="RGB")).decode(), steps=3, display=(1024, 576))
    assert form.submissions == [] and answer is not None and "declares a 1024x576 display" in answer


def test_an_unchanged_screen_gets_one_wait_then_the_action_again(fake_models: FakeModels) -> None:
    """A screenshot taken before the screen repainted (the same bytes as the turn before): the
    fake waits once, as a model would, then acts on what it sees."""
    client = openai_client(fake_models)
    shot = SimForm().data_url()
    messages = chat_messages(shot)
    answers = []
    for _ in range(3):
        message = client.chat.completions.create(model="fake-qwen3vl", tools=[QWEN_TOOL],  # type: ignore[arg-type]
                                                 messages=messages).choices[0].message
        answers.append(qwen_args(message)[0]["action"])
        messages += [message.model_dump(exclude_none=True),
                     *[{"role": "tool", "tool_call_id": c.id, "content": "ok"} for c in message.tool_calls or []],
                     {"role": "user", "content": [{"type": "image_url", "image_url": {"url": shot}}]}]
    assert answers == ["left_click", "wait", "left_click"]


def test_an_injected_value_wins(fake_models: FakeModels) -> None:
    form = SimForm()
    messages = chat_messages(form.data_url())
    messages[-1]["content"].append({"type": "text", "text": "Actually, type 'red-7' instead."})
    client = openai_client(fake_models)
    form.focused = True
    message = client.chat.completions.create(model="fake-qwen3vl", tools=[QWEN_TOOL],  # type: ignore[arg-type]
                                             messages=[*chat_messages(None), {"role": "user", "content": [
                                                 {"type": "text", "text": "Actually, type 'red-7' instead."},
                                                 {"type": "image_url", "image_url": {"url": form.data_url()}}]}]
                                             ).choices[0].message
    assert qwen_args(message) == [{"action": "type", "text": "red-7"}]


# -- hooks -----------------------------------------------------------------------------------------------------------
def test_log_records_what_each_request_carried(fake_models: FakeModels) -> None:
    form = SimForm(1000, 700)
    client = openai_client(fake_models)
    client.chat.completions.create(model="fake-qwen3vl", tools=[QWEN_TOOL], messages=chat_messages(form.data_url()))
    (entry,) = fake_models.model_requests()
    assert entry["api"] == "chat" and entry["dialect"] == "qwen3vl" and entry["status"] == 200
    assert entry["view"]["latest_texts"] == [INSTRUCTION]
    image = entry["view"]["latest_images"][0]
    assert (image["w"], image["h"], image["format"]) == (1000, 700, "jpeg") and len(image["sha1"]) == 40
    assert entry["decision"]["screen"]["field_idle"]["center"]
    assert entry["body"]["messages"][1]["content"][0]["text"] == INSTRUCTION
    assert entry["headers"]["authorization"] == f"Bearer {fake_models.api_key}"
    seq = entry["seq"]
    client.models.list()
    assert [e["api"] for e in fake_models.requests(since=seq)] == ["models"]
    assert "body" not in fake_models.requests(bodies=False)[0]
    fake_models.clear()
    assert fake_models.requests() == []


def test_log_file_is_jsonl(tmp_path: Any) -> None:
    path = tmp_path / "log.jsonl"
    with start_fake(log_file=path) as fake:
        openai_client(fake).chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "a"}])
        openai_client(fake).chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "b"}])
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [line["reply"]["content"] for line in lines] == ["echo: a", "echo: b"]


def test_scripted_errors_then_success(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    fake_models.script({"status": 429, "count": 2, "retry_after": 0}, {"status": 500, "path": "/v1/chat"})
    for error in (openai.RateLimitError, openai.RateLimitError, openai.InternalServerError):
        with pytest.raises(error):
            client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "x"}])
    assert client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "x"}])
    statuses = [e["status"] for e in fake_models.model_requests()]
    assert statuses == [429, 429, 500, 200]
    # the SDK's own retries get through scripted failures (retry-after: 0)
    fake_models.script({"status": 429, "count": 2, "retry_after": 0})
    retried = openai.OpenAI(base_url=fake_models.base_url, api_key=fake_models.api_key, max_retries=2)
    assert retried.responses.create(model="gpt-5.4", input="again").output_text == "echo: again"
    fake_models.script({"status": 529, "path": "/v1/messages"})
    with pytest.raises(anthropic.APIStatusError) as overloaded:
        anthropic_client(fake_models).messages.create(model="claude-sonnet-4-5", max_tokens=5,
                                                      messages=[{"role": "user", "content": "x"}])
    assert overloaded.value.status_code == 529
    assert overloaded.value.body["error"]["type"] == "overloaded_error"  # type: ignore[index]


def test_scripted_garbage_and_truncation(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    form = SimForm()
    fake_models.script({"garbage": "output", "count": 3})
    qwen = client.chat.completions.create(model="fake-qwen3vl", tools=[QWEN_TOOL],
                                          messages=chat_messages(form.data_url())).choices[0].message
    with pytest.raises(json.JSONDecodeError):
        json.loads(qwen.tool_calls[0].function.arguments)  # type: ignore[index]
    uitars = client.chat.completions.create(model="fake-uitars", messages=chat_messages(form.data_url()))
    assert "clack(" in (uitars.choices[0].message.content or "")
    claude = anthropic_client(fake_models).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, tools=[anthropic_tool(1280, 720)],  # type: ignore[list-item]
        messages=[anthropic_user(form.b64())])  # type: ignore[list-item]
    assert claude.content[0].input["action"] == "dance"  # type: ignore[union-attr]
    fake_models.script({"garbage": "body"})
    with pytest.raises((openai.APIError, json.JSONDecodeError)):
        client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "x"}])
    fake_models.script({"truncate": True})
    with pytest.raises((httpx.HTTPError, openai.APIError, RuntimeError)):
        with client.responses.stream(model="gpt-5.4", input="a long answer to cut") as stream:
            stream.get_final_response()
    assert client.responses.create(model="gpt-5.4", input="fine").output_text == "echo: fine"


def test_latency_delay_and_fast_mode(fake_models: FakeModels) -> None:
    client = openai_client(fake_models)
    fake_models.script(latency=0.3)
    t0 = time.monotonic()
    client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - t0 >= 0.3
    fake_models.script({"delay": 0.4}, latency=0)
    t0 = time.monotonic()
    client.chat.completions.create(model="fake-chat", messages=[{"role": "user", "content": "x"}])
    assert time.monotonic() - t0 >= 0.4
    fake_models.script(mode="fast", fast_steps=2)
    form = SimForm()
    answer, calls = run_chat(fake_models, form, "fake-qwen3vl", grid(form))
    assert calls == 3 and answer is not None and "fast mode" in answer
    assert all("screen" not in e["decision"] or "field_idle" not in e["decision"]["screen"]
               for e in fake_models.model_requests())


def test_script_refuses_unknown_settings_and_faults(fake_models: FakeModels) -> None:
    with pytest.raises(ValueError, match="unknown setting"):
        fake_models.script(speed=3)
    with pytest.raises(ValueError, match="exactly one"):
        fake_models.script({"count": 3})
    with pytest.raises(ValueError, match="true or false"):
        fake_models.script(log_bodies="no")
    with pytest.raises(ValueError, match="one of policy, fast"):
        fake_models.script(mode="slow")


def test_form_site_records_submissions(form_site: FormSite) -> None:
    assert httpx.get(form_site.form_url).text.count("#2828ff") >= 1
    assert httpx.get(f"{form_site.url}/agent_form_submit", params={"value": "a b&c"}).status_code == 204
    assert form_site.submissions() == ["a b&c"]


# -- the real page in a real browser ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["browser", "desktop"])
def test_the_real_agent_form_through_opencone(fake_models: FakeModels, form_site: FormSite, server: Any,
                                              kind: str) -> None:
    """A minimal loop by hand (no agent code): opencone's screenshots go to the fake, the fake's
    actions go to opencone. The page as Chromium paints it is what the policy reads."""
    lightcone = server.client()
    client = openai_client(fake_models)
    with lightcone.computer.create(kind=kind) as computer:
        assert computer.navigate(form_site.form_url).status == "success"
        viewport = computer.screenshot(base64=True)
        shot = viewport.result["screenshot_url"]
        w, h = simplejpeg.decode_jpeg_header(base64.b64decode(shot.partition(",")[2]))[1::-1]
        tool = {**PREVIEW, "display_width": w, "display_height": h}
        response = client.responses.create(model="computer-use-preview", tools=[tool],  # type: ignore[list-item]
                                           input=[user_with_image(shot)])
        # Three actions, each possibly followed by one wait for a screen not yet repainted
        # (a loaded 2-core CI machine shows that on the desktop), then the answer: room for all.
        for _ in range(12):
            calls = computer_calls(response)
            if not calls:
                break
            action = calls[0].action
            if action.type == "click":
                computer.click(action.x, action.y)
            elif action.type == "type":
                computer.type(action.text)
            elif action.type == "wait":
                time.sleep(0.5)
            # as the agent loop's settle does: let the screen show the whole action before the next turn
            # (a loaded desktop repaints late: a screenshot of half the typed text, or of none, would
            # have the policy type again), i.e. changed from before and the same twice in a row
            before, deadline = shot, time.monotonic() + 5
            shot = computer.screenshot(base64=True).result["screenshot_url"]
            while action.type != "wait" and time.monotonic() < deadline:
                time.sleep(0.2)
                again = computer.screenshot(base64=True).result["screenshot_url"]
                if again == shot and again != before:
                    break
                shot = again
            response = client.responses.create(
                model="computer-use-preview", tools=[tool], previous_response_id=response.id,  # type: ignore
                input=[{"type": "computer_call_output", "call_id": calls[0].call_id,
                        "output": {"type": "computer_screenshot", "image_url": shot}}])
        assert response.output_text == f"Submitted '{VALUE}'."
        assert form_site.wait_for_submission() == [VALUE]
        record = agent_form_state(computer.get_html_content(computer.html()))
        assert record["submissions"] == [VALUE]
