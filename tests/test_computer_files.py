"""A computer's files (``/computers/{id}/files``): downloads kept and fetched, uploads, the
``upload_file`` action, ``file_downloaded`` events, hostile paths, the size cap, and no file
left once the computer is gone. Real server, real Chromium, Playwright over the CDP endpoint.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import PAGES, Server, start_server, wait_until
from playwright.sync_api import sync_playwright

CAP = 12 * 1024 * 1024  # this module's OPENCONE_MAX_UPLOAD_BYTES: above the 8 MiB JSON body cap
PAYLOAD = (PAGES / "files_payload.bin").read_bytes()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("files"),
                          env={"OPENCONE_POOL_SIZE": "2", "OPENCONE_MAX_UPLOAD_BYTES": str(CAP)})
    yield server
    server.stop()


@pytest.fixture()
def http(srv: Server) -> Iterator[httpx.Client]:
    with srv.http() as client:
        yield client


@pytest.fixture()
def comp(srv: Server, http: httpx.Client) -> Iterator[str]:
    cid = http.post("/computers", json={"kind": "browser"}).json()["id"]
    yield cid
    http.delete(f"/computers/{cid}")


def listed(http: httpx.Client, cid: str, dir: str | None = None) -> dict[str, dict[str, Any]]:
    r = http.get(f"/computers/{cid}/files", params={"dir": dir} if dir else None)
    assert r.status_code == 200, r.text
    return {f["path"]: f for f in r.json()["files"]}


class Events:
    """The computer's /events stream, read on a thread from the start."""

    def __init__(self, srv: Server, cid: str) -> None:
        self.seen: list[dict[str, Any]] = []
        self._stop = False
        url = f"{srv.base_url}/computers/{cid}/events?token={srv.api_key}&from=0"
        self._thread = threading.Thread(target=self._read, args=(url,), daemon=True)
        self._thread.start()

    def _read(self, url: str) -> None:
        with httpx.stream("GET", url, timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    self.seen.append(json.loads(line[5:]))
                if self._stop:
                    return

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.seen if e.get("type") == kind]


def test_a_playwright_download_over_cdp_is_kept_listed_fetched_and_announced(srv: Server, http: httpx.Client,
                                                                             comp: str, site: str,
                                                                             tmp_path: Path) -> None:
    events = Events(srv, comp)
    elsewhere = tmp_path / "client-downloads"
    elsewhere.mkdir()
    with sync_playwright() as pw:
        browser = pw.chromium.connect_over_cdp(f"{srv.base_url}/computers/{comp}/cdp?token={srv.api_key}")
        # a client that names its own directory on the server's disk does not get it
        session = browser.new_browser_cdp_session()
        session.send("Browser.setDownloadBehavior", {"behavior": "allowAndName", "downloadPath": str(elsewhere),
                                                     "eventsEnabled": True})
        page = browser.contexts[0].pages[0]
        page.goto(f"{site}/files.html")
        with page.expect_download() as info:
            page.click("#dl")
        download = info.value
        assert download.suggested_filename == "report.bin"
        assert download.failure() is None
        browser.close()
    assert list(elsewhere.iterdir()) == []
    assert wait_until(lambda: "report.bin" in listed(http, comp), 10), listed(http, comp)
    entry = listed(http, comp)["report.bin"]  # (downloads: a browser's default dir)
    assert entry["type"] == "file" and entry["size"] == len(PAYLOAD) and entry["modified"].endswith("Z")
    got = http.get(f"/computers/{comp}/files/report.bin", params={"dir": "downloads"})
    assert got.status_code == 200 and got.content == PAYLOAD
    assert got.headers["content-disposition"].startswith('attachment; filename="report.bin"')
    assert got.headers["content-type"] == "application/octet-stream"
    assert wait_until(lambda: events.of("file_downloaded"), 5), events.seen
    ev = events.of("file_downloaded")[0]
    assert (ev["name"], ev["path"], ev["size"], ev["url"]) == ("report.bin", "report.bin", len(PAYLOAD),
                                                               f"{site}/files_payload.bin")


def test_our_own_click_downloads_and_a_second_copy_gets_its_own_name(srv: Server, http: httpx.Client,
                                                                     comp: str, site: str) -> None:
    client = srv.client()
    assert client.computers.navigate(comp, url=f"{site}/files.html").status == "success"
    for _ in range(2):
        assert client.computers.click(comp, x=100, y=50).status == "success"
    assert wait_until(lambda: {"report.bin", "report (1).bin"} <= set(listed(http, comp)), 10), listed(http, comp)
    for name in ("report.bin", "report (1).bin"):
        assert http.get(f"/computers/{comp}/files/{name}").content == PAYLOAD


def page_out(srv: Server, cid: str) -> dict[str, Any]:
    html = srv.client().computers.html(cid).result["html_content"]
    text = html.split('<pre id="out"', 1)[1].split(">", 1)[1].split("</pre>", 1)[0]
    return json.loads(text.replace("&quot;", '"')) if text != "none" else {}


def test_a_put_file_goes_into_a_file_input_by_point_and_by_ref(srv: Server, http: httpx.Client, comp: str,
                                                              site: str) -> None:
    put = http.put(f"/computers/{comp}/files/notes/hello.txt", content=b"hello from the API")
    assert put.status_code == 201, put.text
    assert put.json() == {"computer_id": comp, "dir": "downloads", "path": "notes/hello.txt", "name": "hello.txt",
                          "size": 18}
    assert listed(http, comp)["notes"]["type"] == "directory"
    client = srv.client()
    assert client.computers.navigate(comp, url=f"{site}/files.html").status == "success"
    # by point, through /execute (a ComputerAction)
    r = http.post(f"/computers/{comp}/execute", json={"action": {"type": "upload_file", "x": 150, "y": 170,
                                                                 "path": "notes/hello.txt"}}).json()
    assert r["status"] == "success", r
    assert r["result"] == {"name": "hello.txt", "path": "notes/hello.txt", "size": 18}
    assert page_out(srv, comp) == {"name": "hello.txt", "size": 18, "text": "hello from the API"}
    # by ref, from the workspace, through the endpoint
    assert http.put(f"/computers/{comp}/files/data.csv", params={"dir": "workspace"}, content=b"a,b\n1,2\n"
                    ).status_code == 201
    assert client.computers.exec.sync(comp, command="cat /workspace/data.csv").stdout == "a,b\n1,2\n"
    snap = http.post(f"/computers/{comp}/snapshot", json={"format": "json"}).json()["result"]
    ref = next(e["ref"] for e in snap["elements"] if e["role"] == "button" and "Attach" in (e.get("name") or ""))
    r = http.post(f"/computers/{comp}/upload-file", json={"ref": ref, "path": "data.csv", "dir": "workspace"}).json()
    assert r["status"] == "success", r
    assert page_out(srv, comp) == {"name": "data.csv", "size": 8, "text": "a,b\n1,2\n"}
    # in a batch, a missing file is the action's error, and nothing runs after it
    r = http.post(f"/computers/{comp}/batch", json={"actions": [
        {"type": "upload_file", "ref": ref, "path": "missing.txt"}, {"type": "screenshot"}]}).json()
    assert r["status"] == "error" and r["completed"] == 0 and "missing.txt does not exist" in r["error_message"]
    # a point with no file input under it says so
    r = http.post(f"/computers/{comp}/upload-file", json={"x": 600, "y": 600, "path": "notes/hello.txt"}).json()
    assert r["status"] == "error" and "upload_file" in r["error_message"], r


def test_hostile_paths_are_refused_with_a_clear_4xx(srv: Server, http: httpx.Client, comp: str) -> None:
    base = f"/computers/{comp}/files"
    shadow = hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest()
    assert http.put(f"{base}/real.txt", params={"dir": "workspace"}, content=b"real").status_code == 201
    planted = srv.client().computers.exec.sync(comp, command=(
        "cd /workspace && ln -s /etc/shadow shadow && ln -s /etc etc && ln -s real.txt inner && mkfifo fifo "
        "&& mkdir sub && echo ok"))
    assert planted.stdout.strip() == "ok", planted
    ws = {"dir": "workspace"}
    entries = listed(http, comp, "workspace")
    assert {k: entries[k]["type"] for k in ("shadow", "etc", "inner", "fifo", "sub", "real.txt")} == {
        "shadow": "symlink", "etc": "symlink", "inner": "symlink", "fifo": "other", "sub": "directory",
        "real.txt": "file"}
    cases = {
        "shadow": 403, "etc/passwd": 403, "inner": 403,  # links are never followed, even inside
        "fifo": 400, "sub": 400,  # not a regular file (and a FIFO never blocks the server)
        "%2e%2e/%2e%2e/etc/passwd": 422, "sub/..%2f..%2fetc": 422, "/etc/passwd": 422, "a%00b": 422,
        "a" * 300: 422, "nope.txt": 404,
    }
    for path, status in cases.items():
        r = http.get(f"{base}/{path}", params=ws)
        assert r.status_code == status, (path, r.status_code, r.text)
        body = r.json()
        assert body["status"] == status and body["detail"], body
    assert "symbolic link" in http.get(f"{base}/shadow", params=ws).json()["detail"]
    assert "absolute paths are not allowed" in http.get(f"{base}//etc/passwd", params=ws).json()["detail"]
    # writing through a planted link is refused; over one replaces the link, never its target
    assert http.put(f"{base}/etc/cron.d/x", params=ws, content=b"* * * * * root id").status_code == 403
    assert not Path("/etc/cron.d/x").exists()
    assert http.put(f"{base}/shadow", params=ws, content=b"mine").status_code == 201
    assert http.get(f"{base}/shadow", params=ws).content == b"mine"
    assert http.delete(f"{base}/inner", params=ws).json()["type"] == "symlink"  # the link, not real.txt
    assert http.get(f"{base}/real.txt", params=ws).content == b"real"
    assert hashlib.sha256(Path("/etc/shadow").read_bytes()).hexdigest() == shadow
    # bad dir names, and a lone surrogate in upload_file's path (a 422 before anything runs)
    r = http.get(base, params={"dir": "../etc"})
    assert r.status_code == 422 and "dir" in r.text
    r = http.post(f"/computers/{comp}/upload-file", content=b'{"x": 1, "y": 1, "path": "\\ud800.txt"}',
                  headers={"content-type": "application/json"})
    assert r.status_code == 422 and "surrogate" in r.text
    r = http.post(f"/computers/{comp}/upload-file", json={"x": 1, "y": 1, "path": "../../etc/passwd"})
    assert r.status_code == 422 and "'..'" in r.text
    # another organisation's computer is no computer of theirs
    other = subprocess.run([sys.executable, "-m", "opencone", "keys", "create", "--new-org", "files-other",
                            "--name", "t", "--data-dir", str(srv.data_dir)],
                           capture_output=True, text=True, timeout=60, check=True).stdout.strip()
    with srv.http(other) as stranger:
        for method in ("GET", "PUT", "DELETE"):
            r = stranger.request(method, f"{base}/real.txt", params=ws, content=b"x" if method == "PUT" else None)
            assert r.status_code == 404, (method, r.text)
        assert stranger.get(base).status_code == 404


def test_uploads_past_the_json_cap_are_taken_and_past_their_own_cap_refused(http: httpx.Client, comp: str) -> None:
    big = bytes(range(256)) * (9 * 1024 * 1024 // 256)  # 9 MiB: more than a JSON body may be
    r = http.put(f"/computers/{comp}/files/big.bin", content=big)
    assert r.status_code == 201 and r.json()["size"] == len(big), r.text
    got = http.get(f"/computers/{comp}/files/big.bin")
    assert got.headers["content-length"] == str(len(big)) and got.content == big
    too_big = b"x" * (CAP + 1)
    r = http.put(f"/computers/{comp}/files/too-big.bin", content=too_big)  # said by its length
    assert r.status_code == 413 and "OPENCONE_MAX_UPLOAD_BYTES" in r.json()["detail"], r.text

    def chunks() -> Iterator[bytes]:  # no length: counted as it comes
        for _ in range(CAP // (1 << 20) + 1):
            yield b"y" * (1 << 20)

    r = http.put(f"/computers/{comp}/files/too-big.bin", content=chunks())
    assert r.status_code == 413 and "OPENCONE_MAX_UPLOAD_BYTES" in r.json()["detail"], r.text
    assert "too-big.bin" not in listed(http, comp)  # nothing half-written is left, under any name
    assert [p for p in listed(http, comp) if p.startswith(".opencone")] == []


def test_a_file_is_served_in_ranges(http: httpx.Client, comp: str) -> None:
    body = bytes(range(256)) * 1024  # 256 KiB: more than one read chunk
    assert http.put(f"/computers/{comp}/files/ranged.bin", content=body).status_code == 201
    url = f"/computers/{comp}/files/ranged.bin"
    whole = http.get(url)
    assert whole.status_code == 200 and whole.headers["accept-ranges"] == "bytes" and whole.content == body
    part = http.get(url, headers={"range": "bytes=70000-200000"})
    assert part.status_code == 206, part.text
    assert part.headers["content-range"] == f"bytes 70000-200000/{len(body)}"
    assert part.content == body[70000:200001]
    tail = http.get(url, headers={"range": "bytes=-5"})
    assert tail.status_code == 206 and tail.content == body[-5:]
    both = http.get(url, headers={"range": "bytes=0-1, 300-301"})
    assert both.status_code == 206 and both.headers["content-type"].startswith("multipart/byteranges")
    assert body[0:2] in both.content and body[300:302] in both.content
    stale = http.get(url, headers={"range": "bytes=0-1", "if-range": '"not-its-etag"'})
    assert stale.status_code == 200 and stale.content == body  # changed since: the whole file
    past = http.get(url, headers={"range": f"bytes={len(body)}-"})
    assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{len(body)}", past.text
    assert str(len(body)) in past.json()["detail"]
    bad = http.get(url, headers={"range": "pages=1-2"})
    assert bad.status_code == 400 and "bytes=START-END" in bad.json()["detail"], bad.text


def test_a_computers_files_go_with_it(srv: Server, http: httpx.Client, site: str) -> None:
    from opencone.drivers.sandbox import Workspaces

    cid = http.post("/computers", json={"kind": "browser"}).json()["id"]
    marker = f"mark-{cid}.txt"
    assert http.put(f"/computers/{cid}/files/{marker}", content=b"d").status_code == 201
    assert http.put(f"/computers/{cid}/files/{marker}", params={"dir": "workspace"}, content=b"w").status_code == 201
    root = Workspaces(Path(srv.run_dir)).root
    on_disk = list(root.glob(f"*/Downloads/{marker}")) + list(root.glob(f"*/{marker}"))
    assert len(on_disk) == 2, on_disk  # the profile's downloads, and the workspace
    assert http.delete(f"/computers/{cid}/files/{marker}").json()["deleted"] is True
    assert marker not in listed(http, cid)
    assert http.put(f"/computers/{cid}/files/{marker}", content=b"d").status_code == 201
    assert http.delete(f"/computers/{cid}").status_code in (200, 204)
    assert wait_until(lambda: not any(p.exists() for p in on_disk), 10), on_disk
    r = http.get(f"/computers/{cid}/files")
    assert r.status_code == 409 and "terminated" in r.json()["detail"]


def test_a_browser_without_a_workspace_lists_none(http: httpx.Client, comp: str) -> None:
    r = http.get(f"/computers/{comp}/files", params={"dir": "workspace"})
    assert r.status_code == 200 and r.json()["files"] == [] and r.json()["dir"] == "workspace"
    assert http.get(f"/computers/{comp}/files/x.txt", params={"dir": "workspace"}).status_code == 404


def test_the_cdp_policy_keeps_a_desktops_downloads_in_its_home(tmp_path: Path) -> None:
    """A desktop's browser sees its home at /home/user; the policy checks paths on the server's side."""
    from opencone.core.cdp_policy import CdpPolicy

    host = tmp_path / "home" / "Downloads"
    host.mkdir(parents=True)
    (host / "ok.txt").write_text("x")
    (host / "out").symlink_to("/etc/passwd")
    policy = CdpPolicy("/home/user/Downloads", str(host))
    for behavior in ("default", "allowAndName"):
        v = policy.check(json.dumps({"id": 1, "method": "Browser.setDownloadBehavior",
                                     "params": {"behavior": behavior, "downloadPath": "/tmp/elsewhere"}}))
        params = json.loads(v.forward)["params"]
        assert params["downloadPath"] == "/home/user/Downloads" and params["behavior"] != "default"
    assert policy.check(json.dumps({"id": 2, "method": "DOM.setFileInputFiles",
                                    "params": {"files": ["/home/user/Downloads/ok.txt"]}})).reply is None
    for path in ("/home/user/Downloads/out", str(host / "ok.txt"), "/home/user/Downloads/../.bashrc"):
        bad = policy.check(json.dumps({"id": 3, "method": "DOM.setFileInputFiles", "params": {"files": [path]}}))
        assert bad.reply is not None, path


def test_a_desktop_keeps_its_downloads_in_its_home_and_its_uploads_in_its_workspace(srv: Server, http: httpx.Client,
                                                                                     site: str) -> None:
    cid = http.post("/computers", json={"kind": "desktop"}).json()["id"]
    try:
        client = srv.client()
        put = http.put(f"/computers/{cid}/files/in/hello.txt", content=b"desk")  # (a desktop's default: workspace)
        assert put.status_code == 201 and put.json()["dir"] == "workspace", put.text
        assert client.computers.exec.sync(cid, command="cat /workspace/in/hello.txt").stdout == "desk"
        assert client.computers.navigate(cid, url=f"{site}/files.html").status == "success"
        snap = http.post(f"/computers/{cid}/snapshot", json={"format": "json"}).json()["result"]
        link = next(e["ref"] for e in snap["elements"] if e["role"] == "link" and "DOWNLOAD" in (e.get("name") or ""))
        attach = next(e["ref"] for e in snap["elements"] if e["role"] == "button" and "Attach" in (e.get("name") or ""))
        assert http.post(f"/computers/{cid}/click", json={"ref": link}).json()["status"] == "success"
        assert wait_until(lambda: "report.bin" in listed(http, cid, "downloads"), 10), listed(http, cid, "downloads")
        assert http.get(f"/computers/{cid}/files/report.bin", params={"dir": "downloads"}).content == PAYLOAD
        seen = client.computers.exec.sync(cid, command="cat /home/user/Downloads/report.bin").stdout
        assert seen.startswith("opencone download payload")  # what its commands see is the same file
        r = http.post(f"/computers/{cid}/upload-file", json={"ref": attach, "path": "in/hello.txt"}).json()
        assert r["status"] == "success", r
        assert page_out(srv, cid) == {"name": "hello.txt", "size": 4, "text": "desk"}
        # by point: the input's box is in screenshot pixels, the browser window's place on the screen included
        box = next(e["box"] for e in snap["elements"] if e.get("ref") == attach)
        assert http.put(f"/computers/{cid}/files/two.txt", content=b"second").status_code == 201
        r = http.post(f"/computers/{cid}/upload-file", json={"x": box[0] + box[2] / 2, "y": box[1] + box[3] / 2,
                                                             "path": "two.txt"}).json()
        assert r["status"] == "success", r
        assert page_out(srv, cid) == {"name": "two.txt", "size": 6, "text": "second"}
    finally:
        http.delete(f"/computers/{cid}")
