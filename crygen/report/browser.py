"""A page opened in a real headless Chromium, as a reader's browser opens it: for the report's
test and its load-time benchmark.

Chromium is driven over its DevTools protocol through the pipe it offers
(``--remote-debugging-pipe``: JSON messages ending in NUL on file descriptors 3 and 4), so no
websocket client or browser-automation package is needed, only Debian's ``chromium``. The
network is cut three ways: the DevTools offline switch, a proxy that does not exist and a
host resolver that resolves nothing; every request that is not ``file:`` or ``data:`` is
recorded all the same, so a page that tries to fetch anything is seen.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from crygen.fileio import CrygenError

CHROMIUM_FLAGS = (
    "--headless=new", "--remote-debugging-pipe", "--no-first-run", "--no-default-browser-check",
    "--disable-gpu", "--disable-extensions", "--disable-background-networking", "--disable-sync",
    "--disable-component-update", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
    "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
    # lets the page's own script read the CIFs it links to, as a reader's click would
    "--allow-file-access-from-files",
    "--window-size=1280,900",
)


def chromium_path() -> str:
    """Debian's chromium (``CRYGEN_CHROMIUM`` names another)."""
    found = os.environ.get("CRYGEN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        raise CrygenError(None, "no chromium to open the page with: apt-get install chromium "
                                "(or set CRYGEN_CHROMIUM to a Chromium binary)")
    return found


class HeadlessChromium:
    """One headless Chromium with one tab; a context manager. ``errors``: what the page's
    console and uncaught exceptions reported; ``requests``: URLs it asked the network for."""

    def __init__(self, timeout_s: float = 60.0) -> None:
        self.timeout_s = timeout_s
        self.errors: list[str] = []
        self.requests: list[str] = []
        self._events: list[dict[str, Any]] = []
        self._next_id = 0
        self._buffer = b""

    def __enter__(self) -> "HeadlessChromium":
        self._profile = tempfile.TemporaryDirectory(prefix="crygen-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # high copies, so that placing them on 3 and 4 in the child cannot overwrite each other
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_r, from_browser_w)]

        def onto_3_and_4() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        args = [chromium_path(), *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}"]
        if os.geteuid() == 0:
            args.append("--no-sandbox")  # Chromium's sandbox refuses root
        self._process = subprocess.Popen(args, pass_fds=(3, 4), preexec_fn=onto_3_and_4,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for fd in (to_browser_r, from_browser_w, *high):
            os.close(fd)
        target = self._call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self._call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")
        self.call("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1,
                  uploadThroughput=-1)
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self._call("Browser.close")
        except Exception:  # closing anyway
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        self._profile.cleanup()

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """A DevTools command to the tab; its result."""
        return self._call(method, session=True, **params)

    def open(self, page: Path) -> float:
        """Navigate to ``page`` (a file) and wait for its load event: the seconds it took."""
        self._events.clear()
        start = time.perf_counter()
        reply = self.call("Page.navigate", url=page.resolve().as_uri())
        if reply.get("errorText"):
            raise CrygenError(page, f"chromium could not open it: {reply['errorText']}")
        self.wait_for("Page.loadEventFired")
        return time.perf_counter() - start

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page (awaited when a promise)."""
        reply = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in reply:
            raise RuntimeError(f"in the page: {reply['exceptionDetails'].get('exception', {}).get('description')}")
        return reply["result"].get("value")

    def click(self, x: float, y: float) -> None:
        """A real mouse click at viewport coordinates (press and release)."""
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> Path:
        """The whole page, not only the window, as a PNG."""
        data = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def wait_for(self, method: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.timeout_s
        while True:
            for event in self._events:
                if event.get("method") == method:
                    self._events.remove(event)
                    return event
            self._read_message(deadline)

    # the protocol

    def _call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout_s
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"chromium: {method}: {reply['error'].get('message')}")
                return reply.get("result", {})

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            if time.monotonic() > deadline:
                raise TimeoutError(f"chromium did not answer within {self.timeout_s:.0f} s")
            ready, _, _ = select.select([self._from_browser], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                continue
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                raise RuntimeError(f"chromium closed its pipe (exit status {self._process.poll()})")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self._note(message)
        return message

    def _note(self, event: dict[str, Any]) -> None:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            self.errors.append(details.get("exception", {}).get("description") or details.get("text", ""))
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", [])))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(f"{params['entry'].get('source')}: {params['entry'].get('text')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file:", "data:", "about:")):
                self.requests.append(url)
        self._events.append(event)
