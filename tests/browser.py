"""A real headless Chromium, driven over the DevTools protocol (aiohttp's websocket client)."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import free_port, stop_server, wait_for_port


def find_chromium() -> str | None:
    """Debian's chromium (installed by .ci/run), or another Chrome on PATH."""
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    return None


async def _evaluate(
    ws_url: str, url: str, expressions: list[str], screenshot: Path | None, until: str | None
) -> list[Any]:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, max_msg_size=0) as ws:
        ids = iter(range(1, 1_000_000))

        async def call(method: str, **params: Any) -> dict[str, Any]:
            msg_id = next(ids)
            await ws.send_str(json.dumps({"id": msg_id, "method": method, "params": params}))
            while True:
                reply = json.loads((await ws.receive()).data)
                if reply.get("id") == msg_id:
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return dict(reply["result"])

        # The tab starts on about:blank, which is itself a 'complete' page: navigate it here and
        # wait for the page at `url` (not just any page) and every image in it to finish loading.
        await call("Page.enable")
        navigated = await call("Page.navigate", url=url)
        if navigated.get("errorText"):
            raise RuntimeError(f"Chromium could not open {url}: {navigated['errorText']}")
        ready = (
            f"decodeURI(location.href) === decodeURI({json.dumps(url)}) && "
            "document.readyState === 'complete' && "
            "Array.from(document.images).every(i => i.complete)"
        )
        if until is not None:  # a page that renders itself (an app): its own condition
            ready = f"document.readyState === 'complete' && !!({until})"
        deadline = time.monotonic() + 120
        while True:
            state = await call("Runtime.evaluate", expression=ready, returnByValue=True)
            if state["result"].get("value"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading in Chromium within 120 s")
            await asyncio.sleep(0.1)
        values = []
        for expression in expressions:
            out = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            values.append(out["result"].get("value"))
        if screenshot is not None:
            shot = await call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
            screenshot.parent.mkdir(parents=True, exist_ok=True)
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        return values


def evaluate_page(page: Path, expressions: list[str], screenshot: Path | None = None) -> list[Any]:
    """Open a local HTML file in headless Chromium; the values of JS expressions evaluated
    once it and its images have loaded; optionally a full-page screenshot."""
    return evaluate_url(page.resolve().as_uri(), expressions, screenshot)


def evaluate_url(
    url: str, expressions: list[str], screenshot: Path | None = None, until: str | None = None
) -> list[Any]:
    """Open a URL in headless Chromium and evaluate JS expressions once it has loaded: for an
    application that renders after loading (the MLflow UI), once the expression `until` is
    true (polled, up to 120 s); optionally a full-page screenshot."""
    chromium = find_chromium()
    assert chromium is not None, "no chromium on PATH"
    port = free_port()
    profile = tempfile.mkdtemp(prefix="chromium-")
    proc = subprocess.Popen(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            # No background connections: this machine's closed network refuses them.
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-address=127.0.0.1",
            f"--remote-debugging-port={port}",
            "--window-size=1280,2000",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, 60, proc)
        deadline = time.monotonic() + 30
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert pages, "chromium opened no page"
        return asyncio.run(
            _evaluate(pages[0]["webSocketDebuggerUrl"], url, expressions, screenshot, until)
        )
    finally:
        stop_server(proc)
        shutil.rmtree(profile, ignore_errors=True)
