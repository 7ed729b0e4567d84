r"""Fake model providers for the agent-loop and gateway tests: OpenAI Responses, OpenAI Chat
Completions (vLLM-style computer-use dialects) and Anthropic Messages, each in its real wire
format (JSON and SSE, as the official SDKs parse them), in a separate process on 127.0.0.1.
Their policy decides every step from the screenshot the request carried (spec §d.3): a test
fails when the screenshot is missing, stale or mis-scaled.

Starting one
------------
In a test, the fixtures (tests/fake_models/fixtures.py, loaded by tests/conftest.py)::

    def test_x(fake_models, form_site, server): ...   # fake reset before each test, site cleared

By hand (also for bench/)::

    from fake_models import start_fake      # tests/ is on sys.path under pytest
    fake = start_fake(api_key=None, latency=0.0, mode="policy", fast_steps=3,
                      log_bodies=True, log_file=None)   # a key is made up when None
    ...
    fake.stop()                             # or: with start_fake() as fake: ...

It is ``python -m fake_models --port 0 --api-key K`` (PYTHONPATH=tests), which prints
``{"port": N}`` once listening; it starts in about half a second and dies with its parent.

Base URLs (what a user would set)::

    openai SDK      OPENAI_BASE_URL     = fake.base_url            http://127.0.0.1:N/v1
    anthropic SDK   ANTHROPIC_BASE_URL  = fake.anthropic_base_url  http://127.0.0.1:N   (the SDK adds /v1/messages)
    tzafon SDK      LIGHTCONE_BASE_URL  = fake.lightcone_base_url  http://127.0.0.1:N   (the SDK adds /v1/responses)
    chat in a fixed dialect, any model:   fake.dialect_base_url("uitars")  http://127.0.0.1:N/dialect/uitars/v1
    fake.openai_env() / fake.anthropic_env(): the {KEY, BASE_URL} pairs; fake.api_key: the key.

An opencone server pointed at it, as a user would configure one: ``fake.server_env()`` (the
vendors' variables, so ``openai/computer-use-preview``, ``openai/gpt-5.4``,
``anthropic/claude-sonnet-4-5`` and ``tzafon.northstar-cua-fast`` reach the fake, plus
``FAKE_MODELS_API_KEY``) and ``fake.models_toml()`` (write it to a file, set
``OPENCONE_MODELS_FILE``): ``fake-qwen3vl``, ``fake-northstar``, ``fake-uitars``,
``fake-opencua``, ``fake-json`` (openai-chat with that dialect), ``fake-cua-preview``,
``fake-cua-ga``, ``fake-claude``, ``fake-lightcone``.

Auth: ``Authorization: Bearer <key>`` (OpenAI), ``x-api-key: <key>`` or Bearer (Anthropic);
anything else is a 401 in the vendor's shape (OpenAI ``{"error": {message, type, param,
code: "invalid_api_key"}}``; Anthropic ``{"type": "error", "error": {"type":
"authentication_error", …}}``).

Endpoints
---------
``POST /v1/responses`` (JSON, or SSE with ``stream``): response.created, [response.queued],
response.in_progress, per item output_item.added … done (text: content_part.added,
output_text.delta*, output_text.done, content_part.done; reasoning: reasoning_summary_part /
reasoning_summary_text events; function calls: function_call_arguments.delta*/done),
response.completed; ``sequence_number`` on each, from 0. The flavour comes from the request:

* tool ``computer_use_preview``: one ``action`` per ``computer_call``, after a ``reasoning``
  item (summary text), coordinates in pixels of the tool's ``display_width`` x
  ``display_height``. Done: a ``message`` with the answer, no computer_call.
* tool ``computer`` (GA): batched ``actions``, the whole plan in one call (click the field,
  type, click submit), coordinates in pixels of the screenshot; after a ``reasoning`` item.
  Done: a ``message``.
* tool ``computer_use`` (Lightcone), or a ``tzafon.northstar*`` model with any computer tool:
  one ``action``, coordinates raw 0–999 of the screenshot (clients do ``int(v / 1000 * dim)``),
  no reasoning item. Done: a ``message`` with the answer, then a call of the ``done`` function
  (``{"message": <answer>}``) when the request declares one, else a computer_call whose action
  is ``{"type": "terminate", "status": "success", "result": <answer>}`` (no OpenAI type: read
  it with the tzafon types, or as a dict).
* no computer tool (or ``tool_choice: "none"``): a ``message``, ``echo: <newest user text>``.

Actions are ``{type: click, button: left, x, y}``, ``{type: type, text}``, ``{type: wait}``,
``{type: screenshot}`` (only on a first turn that brought no image); ``pending_safety_checks:
[]``; ids ``resp_``, ``rs_``, ``cu_``, ``call_``, ``msg_``, ``fc_``. The fake has its own store:
``previous_response_id`` chains (``instructions`` are not carried over), ``store: false``,
``background: true`` (``queued``, done after the latency; ``POST /v1/responses/{id}/cancel``),
``GET /v1/responses/{id}`` (``?stream=true&starting_after=N`` replays the events after N),
``DELETE /v1/responses/{id}``, ``GET /v1/responses/{id}/input_items`` (``order``, default desc).
Like the real API it answers 400 when a tool output names no call of the conversation, when a
call of the conversation has no output, when a resent ``computer_call`` comes without its
``reasoning`` item, when a pending safety check is not echoed in ``acknowledged_safety_checks``,
and for an unknown ``previous_response_id``.

``POST /v1/chat/completions`` (JSON, or SSE chunks: a role chunk, content and tool-call
deltas, a finish chunk, with ``stream_options.include_usage`` a ``choices: []`` usage chunk,
then ``data: [DONE]``). The dialect is the route's (``/dialect/<d>/v1/chat/completions``), else
the ``x-fake-dialect`` header's, else the model id's: ``ui-tars``/``uitars`` → uitars,
``northstar`` → northstar, ``opencua`` → opencua, ``qwen3-vl``/``qwen3vl`` → qwen3vl,
anything else → text (``json`` and ``json-pixels`` by route or header only).

* ``qwen3vl``: the ``computer_use`` function, ``{"action": "left_click", "coordinate": [x, y]}``
  or ``{"action": "type", "text": …}``, coordinates 0–1000 of the screenshot; as ``tool_calls``
  (``finish_reason: "tool_calls"``) when the request declares a function named
  ``computer_use``, else as ``<tool_call>{"name": "computer_use", "arguments": {…}}</tool_call>``
  blocks in the text. Done: two calls, ``{"action": "answer", "text": <answer>}`` then
  ``{"action": "terminate", "status": "success"}``.
* ``northstar``: the same, coordinates 0–999.
* ``uitars`` (UI-TARS 1.5): text ``Thought: …\nAction: click(start_box='(x,y)')`` or
  ``type(content='…')`` (``'``, ``\`` and newlines escaped), coordinates in pixels of the
  smart-resized screenshot (``policy.smart_resize``: factor 28, 100·28² to 16384·28² pixels).
  Done: ``Action: finished(content='<answer>')``. Saying it cannot act: a ``Thought:`` alone.
* ``opencua`` (OpenCUA-7B/32B): ``# Step N:`` / ``## Thought:`` / ``## Action:`` and a
  ```` ```python ```` block of pyautogui calls in pixels of the smart-resized screenshot: the
  idle field ``pyautogui.click(x=…, y=…)`` and ``pyautogui.write(message=…)`` in one block,
  the submit button ``pyautogui.click(x, y)``, a stale screen ``computer.wait()``; done
  ``computer.terminate(status='success', answer=…)``; a screenshot showing nothing it knows
  ``computer.terminate(status='failure', answer=…)``.
* ``json`` / ``json-pixels``: refuses (400) a request without a strict ``json_schema``
  ``response_format`` of ``{"thought", "actions": [{action…}]}``; answers that object (the
  whole plan in one turn; done ``{"action": "done", "text"}``, nothing known ``fail``), every
  field of the request's schema present, checked against it; coordinates 0–1000 (``json``)
  or screenshot pixels (``json-pixels``). See dialects.py.
* ``text``: ``echo: <newest user text> [images: 1280x720 jpeg]`` (images described, URLs named
  unreadable: what the gateway inlined, or not).

It answers 400 (as OpenAI does) to an assistant ``tool_calls`` message not followed by a
``tool`` message per call id, and to a ``tool`` message that answers no call.

``POST /v1/messages`` (JSON, or SSE: message_start, ping, content_block_start/delta/stop
with ``text_delta`` / ``input_json_delta``, message_delta with ``stop_reason``, message_stop),
with a tool of type ``computer_<date>`` (``computer_20250124``, ``computer_20251124``…):
a text block then one ``tool_use`` (``{"action": "left_click", "coordinate": [x, y]}``,
``{"action": "type", "text"}``, ``{"action": "screenshot"}`` on a first turn without an image),
``stop_reason: "tool_use"``; done = text only, ``end_turn``. Coordinates are in the declared
``display_width_px`` x ``display_height_px``. Images: ``image`` blocks with base64 sources in
the last user message, inside its ``tool_result`` blocks too. It answers 400 without
``max_tokens`` or the ``anthropic-version`` header, to a ``tool_use`` with no ``tool_result``
first in the next user message, and to a ``tool_result`` for an unknown id. No computer tool:
``echo: …`` text.

``GET /v1/models`` (OpenAI list shape; Anthropic's shape when the caller sends
``anthropic-version`` or ``x-api-key``), ``GET /v1/models/{id}``.

The policy (policy.py) and the page
-----------------------------------
tests/pages/agent_form.html (served by the ``site`` fixture, or by ``form_site``, which also
records ``GET /agent_form_submit?value=…``) paints a text field whose colour tells its state
(idle #2828ff, focused #ffb400, filled #00c8c8), a submit button (#e01e1e) and, once
submitted, a banner (#1eb41e); it writes ``AGENTFORM{"value", "submissions", "focused",
"clicks"}END`` into the page (``fixtures.agent_form_state(html)`` reads it). The value to type
is taken from the newest user text saying ``type '<value>'`` (or ``"<value>"``), so an
injected message can change it; system prompts and ``instructions`` are not read. From the
newest screenshot (the images of the latest turn only: after the last model turn):
banner → done, answer ``Submitted '<value>'.``; field idle → click it; focused → type the
value; filled → click submit. No image in the latest turn (or one by URL, or undecodable), or
nothing recognisable on it: text saying so, no action (but a first turn without any image gets
a ``screenshot`` action from the OpenAI and Anthropic computer tools, as the real models do).
A newest screenshot byte-identical to the one of the turn before (taken before the screen
repainted) gets one wait (OpenAI ``{type: wait}``, Anthropic ``{action: wait, duration: 1}``,
Qwen/Northstar ``{action: wait, time: 1}``, UI-TARS ``wait()``), then the plan again; a screen
that stays stale is never done. Filling the form takes 4 model calls from a first screenshot
(GA: 2), plus one per wait.
A screenshot whose size is not the tool's declared display (preview tool, Anthropic) is refused
in text, unless ``display_mismatch="scale"``.

Hooks
-----
``fake.requests(since=0, bodies=True, api=None)`` (``GET /_log``): every request, oldest
first: ``seq``, ``t``, ``method``, ``path``, ``api`` (``responses``, ``chat``, ``messages``,
``models``, ``responses.retrieve``…), ``model``, ``stream``, ``headers`` (auth, anthropic-beta,
retry count…), ``body``, ``status``, ``duration_ms``, ``fault``, ``error``, and for model
calls ``view`` (``user_texts``, ``latest_texts``, ``latest_images`` as {w, h, format, bytes,
sha1}, ``all_images``, ``model_turns``), ``decision`` (targets found, planned steps),
``reply``, ``dialect``/``flavour``. An entry is logged when the request arrives (a request in
flight is already there). ``fake.model_requests()``: only model calls. ``fake.last_seq()``:
the newest ``seq`` (e.g. ``n = fake.last_seq()``; pause; ``assert not
fake.model_requests(since=n)``). ``fake.clear()``,
``fake.reset()`` (start settings, no faults, empty log and store), ``log_file``: JSONL of
finished requests.

``fake.script(*faults, clear_faults=False, **settings)`` (``POST /_script``). Faults apply to
the next model calls in order, each ``count`` times (default 1), optionally only on a ``path``
(substring) or ``model``: ``{"status": 429|500|503|529, "retry_after": s}`` (vendor-shaped
error), ``{"garbage": "output"}`` (valid protocol, nonsense action: bad tool-call JSON, an
unknown action, OpenCUA code that is no Python, JSON cut short), ``{"garbage": "body"}``
(a body that is no JSON), ``{"truncate": True}`` (a stream dropped half way),
``{"delay": s}``, ``{"safety_check": True}`` (Responses). Settings: ``latency``
(s before each model answer), ``stream_interval`` (s between events), ``mode``
(``"policy"`` or ``"fast"``: no decoding, a click at the image centre until ``fast_steps``
model turns, then done, for benchmarks), ``log_bodies``, ``display_mismatch``, ``chunk``
(characters per delta), ``api_key``. ``fake.fail(status, count)`` is a shortcut.
"""

from .launcher import FakeModels, start_fake

__all__ = ["FakeModels", "start_fake"]
