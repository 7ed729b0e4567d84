"""Element snapshots, refs and markdown, with the tzafon SDK (its generic post for our extensions).

    TZAFON_API_KEY=... LIGHTCONE_BASE_URL=http://127.0.0.1:8765 .venv/bin/python examples/perception.py
"""

from tzafon import Lightcone

client = Lightcone()  # reads TZAFON_API_KEY and LIGHTCONE_BASE_URL

PAGE = ("data:text/html,<title>Shop</title><h1>Shop</h1><input aria-label=Search>"
        "<button onclick=\"document.querySelector('h1').textContent='Bought'\">Buy</button>")

with client.computer.create(kind="browser") as computer:
    computer.navigate(PAGE)

    def post(action: str, **body: object) -> dict:
        answer = client.post(f"/computers/{computer.id}/{action}", cast_to=object, body=body)
        assert answer["status"] == "success", answer["error_message"]
        return answer["result"]

    snap = post("snapshot")  # Playwright's own [ref=eN] text
    print(snap["snapshot"])

    found = post("snapshot", format="json", interactive_only=True)  # the same, as JSON, with boxes
    by_name = {e["name"]: e for e in found["elements"]}
    post("fill", ref=by_name["Search"]["ref"], text="tomatoes")  # replace the field's value
    post("click", ref=by_name["Buy"]["ref"], snapshot_id=found["snapshot_id"])  # a ref instead of x, y
    print("box of Buy, in screenshot pixels:", by_name["Buy"]["box"])

    print(post("markdown")["markdown"])  # the page as markdown: "# Bought"
