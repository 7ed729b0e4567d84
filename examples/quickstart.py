"""Drive an opencone browser with the official tzafon SDK.

Run with TZAFON_API_KEY and LIGHTCONE_BASE_URL set (see the README).
"""

import urllib.request

from tzafon import Lightcone

client = Lightcone()  # reads TZAFON_API_KEY and LIGHTCONE_BASE_URL

with client.computer.create(kind="browser") as computer:
    computer.navigate("data:text/html,<h1>Hello from opencone</h1><input id=q autofocus>")
    computer.click(100, 80)
    computer.type("typed by an agent")

    shot = computer.screenshot()
    url = computer.get_screenshot_url(shot)  # a capability URL: no auth header needed
    with urllib.request.urlopen(url) as response:
        jpeg = response.read()
    print(f"screenshot: {len(jpeg)} bytes of JPEG at {url}")

    html = computer.get_html_content(computer.html())
    print("page says:", html[html.index("<h1>") + 4:html.index("</h1>")])

    tabs = client.computers.tabs.list(computer.id)
    print("tabs:", [t["url"][:40] for t in tabs.result["tabs"]])
# leaving the block deletes the computer and its Chromium
