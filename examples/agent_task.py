"""Let a computer-use model do a task on its own, through the official tzafon SDK.

Run with TZAFON_API_KEY and LIGHTCONE_BASE_URL set and a model configured on the server
(see the README's "Agent tasks"); TASK, START_URL and MODEL change what it does.
"""

import os

from tzafon import Lightcone

client = Lightcone()  # reads TZAFON_API_KEY and LIGHTCONE_BASE_URL

events = client.agent.tasks.start_stream(
    instruction=os.environ.get("TASK", "Type 'hello' into the search field and submit it."),
    start_url=os.environ.get("START_URL", "https://duckduckgo.com"),
    model=os.environ.get("MODEL", "openai/computer-use-preview"),  # any id of GET /v1/models
    max_steps=20,
)
for event in events:  # the loop runs in the server: this is only a view of it
    if event["type"] == "message":
        print("model:", event["text"])
    elif event["type"] == "action":
        print("action:", event["action"])
    elif event["type"] in ("completed", "failed", "cancelled", "max_steps"):
        print(f"{event['type']} after {event['steps']} steps:", event.get("result") or event.get("error"))
        task_id = event["task_id"]

status = client.agent.tasks.retrieve_status(task_id)
print("status:", status.status, "exit code:", status.exit_code)
