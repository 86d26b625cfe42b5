"""``python -m examples.chat``: serve the chat on $HOST:$PORT (127.0.0.1:8000) and say where."""

from __future__ import annotations

import os

from .app import BROKER_URL, app

if __name__ == "__main__":
    host = os.environ.get("HOST", "127.0.0.1")
    port = int(os.environ.get("PORT", "8000"))
    broker = BROKER_URL.partition("://")[0]  # never the URL: it may hold a password
    print(f"nexios chat on http://{host}:{port}/ ({broker} broker; Ctrl+C stops it)", flush=True)
    app.run(host=host, port=port)
