"""HTTP for real-time apps: the request, the responses and the response builder."""

from nexios.http.request import Request
from nexios.http.response import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    MutableHeaders,
    NexiosResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    http_exception_response,
)

__all__ = [
    "FileResponse",
    "HTMLResponse",
    "JSONResponse",
    "MutableHeaders",
    "NexiosResponse",
    "PlainTextResponse",
    "RedirectResponse",
    "Request",
    "Response",
    "http_exception_response",
]
