"""Open a page in headless Chromium over the DevTools protocol and report what a user would see:
how many plotly figures there are, how many rendered (have plotly's `.main-svg`), and every
script error or console error. Talks to Chromium through websocket-client on loopback only."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    figures: int
    rendered: int
    errors: list[str] = field(default_factory=list)


_COUNT_JS = """JSON.stringify({
  figures: document.querySelectorAll('div.plotly-graph-div').length,
  rendered: [...document.querySelectorAll('div.plotly-graph-div')]
      .filter(d => d.classList.contains('js-plotly-plot') && d.querySelector('.main-svg')).length})"""


def open_page(chromium: str, page: Path, *, timeout_s: float = 60) -> PageResult:
    import websocket  # websocket-client

    profile = tempfile.mkdtemp(prefix="apcsim-chromium-")
    proc = subprocess.Popen(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout_s
        port_file = Path(profile) / "DevToolsActivePort"
        while not port_file.is_file() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{chromium} exited or did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        targets = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10))
        ws_url = next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
        ws = websocket.create_connection(ws_url, timeout=timeout_s, suppress_origin=True)
        errors: list[str] = []
        ids = iter(range(1, 10**6))

        def send(method: str, **params) -> int:
            i = next(ids)
            ws.send(json.dumps({"id": i, "method": method, "params": params}))
            return i

        def pump(until_id: int | None = None, until_event: str | None = None) -> dict:
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{page}: no answer from chromium in {timeout_s}s")
                msg = json.loads(ws.recv())
                m = msg.get("method")
                p = msg.get("params", {})
                if m == "Runtime.exceptionThrown":
                    d = p["exceptionDetails"]
                    errors.append(d.get("exception", {}).get("description") or d.get("text", "exception"))
                elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    errors.append("console: " + " ".join(str(a.get("value", a.get("description", ""))) for a in p["args"]))
                elif m == "Log.entryAdded" and p["entry"]["level"] == "error":
                    errors.append("log: " + p["entry"]["text"])
                if until_id is not None and msg.get("id") == until_id:
                    return msg
                if until_event is not None and m == until_event:
                    return msg

        for method in ("Runtime.enable", "Log.enable", "Page.enable"):
            pump(until_id=send(method))
        send("Page.navigate", url=page.resolve().as_uri())
        pump(until_event="Page.loadEventFired")
        # plotly draws in promises after load: wait until the counts stop changing.
        last, stable = None, 0
        while stable < 3:
            res = pump(until_id=send("Runtime.evaluate", expression=_COUNT_JS, returnByValue=True))
            counts = json.loads(res["result"]["result"]["value"])
            stable = stable + 1 if counts == last else 0
            last = counts
            time.sleep(0.2)
        ws.close()
        return PageResult(figures=last["figures"], rendered=last["rendered"], errors=errors)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(chromium: str, page: Path, png: Path, *, width: int = 1400, height: int = 1200) -> None:
    """A PNG of the page as headless Chromium draws it (used for docs/figures)."""
    profile = tempfile.mkdtemp(prefix="apcsim-chromium-")
    try:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--virtual-time-budget=10000", f"--screenshot={png}", page.resolve().as_uri()],
                       check=True, capture_output=True, timeout=120)
    finally:
        shutil.rmtree(profile, ignore_errors=True)
