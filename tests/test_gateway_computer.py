"""Computer tools over ``/v1/responses`` for chat-only upstreams: the client runs the loop.

This is the loop of Lightcone's own examples, through the ``tzafon`` SDK: take a screenshot
of a computer (its capability URL), ``responses.create`` with a computer tool, run each
``computer_call`` on the computer, send its screenshot back as ``computer_call_output``
(chained with ``previous_response_id``, or by resending every item), until the model
answers with a message. The upstreams are the fake providers (tests/fake_models, another
process), which decide from the screenshot they receive; the gateway answers through the
agent loop's adapters. A loop passes only if every output item validated strictly against
the SDK's models (int coordinates, ``button``, ``pending_safety_checks``), the coordinates
were in the space promised (0–999, or the declared display's pixels), the screenshots
reached the model, and the form's own server recorded the typed value.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from conftest import Server, start_server
from fake_models import FakeModels
from fake_models.site import FormSite
from tzafon.types import ResponseComputerToolCall, ResponseOutputMessage

VALUE = "blue-42"
INSTRUCTION = f"Type '{VALUE}' into the field and submit the form."
W, H = 1024, 768  # the server's default display


def _models(fake: FakeModels) -> str:
    out = []
    for model_id, dialect, upstream in (("qwen3-vl", "qwen3vl", "Qwen/Qwen3-VL-8B-Instruct"),
                                        ("tzafon.northstar-local", "northstar", "Tzafon/Northstar-CUA-Fast"),
                                        ("ui-tars", "uitars", "ByteDance-Seed/UI-TARS-1.5-7B")):
        out.append(f'[[models]]\nid = "{model_id}"\nprovider = "openai-chat"\n'
                   f'base_url = "{fake.dialect_base_url(dialect)}"\napi_key_env = "FAKE_MODELS_KEY"\n'
                   f'upstream_model = "{upstream}"\ndialect = "{dialect}"\n')
    return "\n".join(out)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory, fake_models_server: FakeModels) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("gateway-computer")
    (tmp / "models.toml").write_text(_models(fake_models_server))
    env = {**fake_models_server.anthropic_env(), "OPENCONE_MODELS_FILE": str(tmp / "models.toml"),
           "FAKE_MODELS_KEY": fake_models_server.api_key, "OPENCONE_MODEL_MAX_RETRIES": "0"}
    srv = start_server(tmp, env=env)
    yield srv
    srv.stop()


@pytest.fixture
def computer(gw: Server, form_site: FormSite) -> Iterator[str]:
    client = gw.client()
    cid = client.computers.create(kind="browser").id
    client.computers.navigate(cid, url=form_site.form_url)
    yield cid
    client.computers.delete(cid)


def _pixels(action: Any, grid: bool) -> tuple[int, int]:
    """Where to click, as Lightcone's examples denormalise 0–999 (``v / 1000 * size``)."""
    if grid:
        return int(action.x / 1000 * W), int(action.y / 1000 * H)
    return action.x, action.y


def assert_aimed(fake: FakeModels, api: str, actions: list[Any], grid: bool) -> None:
    """Every click the client got is where the fake aimed on the image it was sent (its log says
    where, in that image's pixels), in the promised space: 0–999, or the display's pixels."""
    planned = []
    for request in fake.requests(api=api):
        steps = (request.get("decision") or {}).get("steps") or []
        if steps and steps[0]["step"] == "click":
            planned.append((steps[0]["x"], steps[0]["y"], *request["decision"]["screen"]["size"]))
    clicks = [a for a in actions if a.type == "click"]
    assert len(clicks) == len(planned) >= 2, (clicks, planned)
    for act, (x, y, iw, ih) in zip(clicks, planned, strict=True):
        px, py = x * W / iw, y * H / ih
        want = (px / W * 1000, py / H * 1000) if grid else (px, py)
        assert abs(act.x - want[0]) <= 2 and abs(act.y - want[1]) <= 2, (act, want)


def run(gw: Server, cid: str, model: str, tool: dict[str, Any], *, grid: bool, chain: bool = True,
        turns: int = 8) -> tuple[list[Any], str]:
    """The client's loop; (every computer action the model sent, its final text)."""
    client = gw.client()
    shot = client.computers.screenshot(cid).result["screenshot_url"]  # what get_screenshot_url() returns
    items: list[Any] = [{"role": "user", "content": [{"type": "input_text", "text": INSTRUCTION},
                                                     {"type": "input_image", "image_url": shot}]}]
    response = client.responses.create(model=model, tools=[tool], input=items)
    actions: list[Any] = []
    for _ in range(turns):
        assert response.status == "completed" and isinstance(response.created_at, int)
        calls = [item for item in response.output if getattr(item, "type", None) == "computer_call"]
        assert all(isinstance(item, ResponseComputerToolCall | ResponseOutputMessage) for item in response.output), \
            response.output  # strict: never a plain dict
        if not calls:
            text = " ".join(c.text for item in response.output for c in item.content)
            return actions, text
        outputs = []
        for call in calls:
            assert call.pending_safety_checks == [] and call.status == "completed"
            act = call.action
            actions.append(act)
            if act.type == "click":
                assert isinstance(act.x, int) and act.button == "left"
                x, y = _pixels(act, grid)
                client.computers.click(cid, x=x, y=y)
            elif act.type == "type":
                client.computers.type(cid, text=act.text)
            url = client.computers.screenshot(cid).result["screenshot_url"]
            outputs.append({"type": "computer_call_output", "call_id": call.call_id,
                            "output": {"type": "input_image", "image_url": url}})
        if chain:
            response = client.responses.create(model=model, tools=[tool], previous_response_id=response.id,
                                               input=outputs)
        else:  # the other way the examples go: every item again, no server-side chain
            items += [item.model_dump(exclude_none=True) for item in response.output] + outputs
            response = client.responses.create(model=model, tools=[tool], input=items)
    raise AssertionError(f"no answer after {turns} turns: {actions}")


def test_anthropic_with_lightcone_computer_use_without_a_size_answers_0_to_999(
        gw: Server, computer: str, fake_models: FakeModels, form_site: FormSite) -> None:
    tool = {"type": "computer_use", "environment": "browser"}  # the newer examples give no size
    actions, text = run(gw, computer, "anthropic/claude-sonnet-4-5", tool, grid=True)
    assert form_site.wait_for_submission() == [VALUE] and VALUE in text
    assert [a.type for a in actions] == ["click", "type", "click"]
    assert_aimed(fake_models, "messages", actions, grid=True)
    requests = fake_models.requests(api="messages")
    assert len(requests) == 4 and requests[0]["body"]["tools"][0]["type"].startswith("computer_")
    # each turn the gateway made is replayed as the model said it, byte for byte (its own payload,
    # kept with the response), and answered by a tool_result carrying the new screenshot
    for before, after in zip(requests, requests[1:], strict=False):
        assistant = [m for m in after["body"]["messages"] if m["role"] == "assistant"][-1]
        assert assistant["content"] == before["reply"]
        result = after["body"]["messages"][-1]["content"][0]
        assert result["type"] == "tool_result" and result["content"][-1]["type"] == "image"


def test_anthropic_with_a_declared_display_answers_its_pixels(gw: Server, computer: str, fake_models: FakeModels,
                                                              form_site: FormSite) -> None:
    tool = {"type": "computer_use_preview", "display_width": W, "display_height": H, "environment": "browser"}
    actions, _ = run(gw, computer, "anthropic/claude-sonnet-4-5", tool, grid=False)
    assert form_site.wait_for_submission() == [VALUE]
    assert_aimed(fake_models, "messages", actions, grid=False)


def test_qwen3vl_chat_vlm_resending_every_item(gw: Server, computer: str, fake_models: FakeModels,
                                               form_site: FormSite) -> None:
    tool = {"type": "computer_use_preview", "display_width": W, "display_height": H, "environment": "browser"}
    actions, _ = run(gw, computer, "qwen3-vl", tool, grid=False, chain=False)
    assert form_site.wait_for_submission() == [VALUE]
    assert_aimed(fake_models, "chat", actions, grid=False)
    chats = fake_models.requests(api="chat")
    assert chats[-1]["path"] == "/dialect/qwen3vl/v1/chat/completions"
    assert "computer_use" in chats[-1]["body"]["messages"][0]["content"]  # the adapter's own system prompt
    # the items the client sent back were read as the model's turns: each one is in the history
    turns = [m for m in chats[-1]["body"]["messages"] if m["role"] == "assistant"]
    assert len(turns) == len(actions) == len(chats) - 1
    for turn, act in zip(turns, actions, strict=True):
        said = json.dumps(turn)
        assert "computer_use" in said and ("left_click" if act.type == "click" else act.type) in said


def test_a_northstar_model_answers_0_to_999_even_with_a_display(gw: Server, computer: str, fake_models: FakeModels,
                                                                form_site: FormSite) -> None:
    tool = {"type": "computer_use", "display_width": W, "display_height": H, "environment": "browser"}
    actions, text = run(gw, computer, "tzafon.northstar-local", tool, grid=True)
    assert form_site.wait_for_submission() == [VALUE] and VALUE in text
    assert_aimed(fake_models, "chat", actions, grid=True)


def test_ga_computer_batches_a_calls_actions(gw: Server, computer: str, form_site: FormSite,
                                             fake_models: FakeModels) -> None:
    client = gw.client()
    url = client.computers.screenshot(computer).result["screenshot_url"]
    tool = {"type": "computer", "display_width": W, "display_height": H}
    first = client.responses.create(model="ui-tars", tools=[tool], input=[{"role": "user", "content": [
        {"type": "input_text", "text": INSTRUCTION}, {"type": "input_image", "image_url": url}]}])
    body = client.responses.retrieve(first.id)  # (untyped: the JSON as it is)
    calls = [i for i in body["output"] if i["type"] == "computer_call"]
    assert calls and all("actions" in c and "action" not in c for c in calls), body["output"]
    click = calls[0]["actions"][0]
    assert click["type"] == "click" and isinstance(click["x"], int) and click["button"] == "left"
    assert fake_models.requests(api="chat")[-1]["path"] == "/dialect/uitars/v1/chat/completions"


def test_streamed_computer_turns_keep_the_sdks_order(gw: Server, computer: str) -> None:
    import openai

    client = gw.client()
    url = client.computers.screenshot(computer).result["screenshot_url"]
    sdk = openai.OpenAI(api_key=gw.api_key, base_url=f"{gw.base_url}/v1", max_retries=0)
    with sdk.responses.stream(model="anthropic/claude-sonnet-4-5", tools=[  # type: ignore[list-item]
            {"type": "computer_use_preview", "display_width": W, "display_height": H, "environment": "browser"}],
            input=[{"role": "user", "content": [{"type": "input_text", "text": INSTRUCTION},
                                                {"type": "input_image", "image_url": url}]}]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    call = next(i for i in final.output if i.type == "computer_call")
    assert call.action.type == "click" and call.pending_safety_checks == []


def test_what_cannot_go_is_a_400(gw: Server) -> None:
    import openai

    sdk = openai.OpenAI(api_key=gw.api_key, base_url=f"{gw.base_url}/v1", max_retries=0)
    tool = {"type": "computer_use_preview", "display_width": W, "display_height": H, "environment": "browser"}
    with pytest.raises(openai.BadRequestError) as err:
        sdk.responses.create(model="anthropic/claude-sonnet-4-5", tools=[tool], input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "https://elsewhere.example/screen.png"}]}])
    assert err.value.body["param"] == "input[0].content[0].image_url" and "data: URL" in err.value.message
