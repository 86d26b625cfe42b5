"""The smallest nexios app: a WebSocket echo and a page to try it.

Run it with ``python examples/echo.py`` and open http://127.0.0.1:8000/.
"""

from __future__ import annotations

import os

from nexios import NexiosApp, WebSocket

app = NexiosApp()

PAGE = """<!doctype html>
<meta charset="utf-8"><title>nexios echo</title>
<h1>nexios echo</h1>
<form id="f"><input id="t" autocomplete="off" placeholder="say something">
<button>Send</button></form>
<ul id="log"></ul>
<script>
const ws = new WebSocket(`ws://${location.host}/ws`);
const log = (text) => { const li = document.createElement("li"); li.textContent = text;
  document.getElementById("log").append(li); };
ws.onmessage = (e) => log(e.data);
ws.onclose = (e) => log(`closed (${e.code})`);
document.getElementById("f").onsubmit = (e) => { e.preventDefault();
  const t = document.getElementById("t"); ws.send(t.value); t.value = ""; };
</script>
"""


@app.get("/")
async def index(request, response):
    return response.html(PAGE)


@app.ws_route("/ws")
async def echo(ws: WebSocket) -> None:
    await ws.accept()
    async for text in ws.iter_text():
        await ws.send_text(f"echo: {text}")


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8000"))
    print(f"nexios echo on http://127.0.0.1:{port}/ (Ctrl+C stops it)", flush=True)
    app.run(port=port)
