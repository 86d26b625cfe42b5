"""Ready-made WebSocket middleware: token authentication and connection logging.

Both are factories returning ``async def middleware(ws, call_next)``; add them with
``app.add_ws_middleware(...)``, ``router.add_ws_middleware(...)`` or a route's
``middleware=[...]``.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nexios.exceptions import WebSocketDisconnect
from nexios.websockets.base import WebSocket, WebSocketState

__all__ = ["log_connections", "token_auth"]

CallNext = Callable[..., Awaitable[Any]]
WSMiddleware = Callable[[WebSocket, CallNext], Awaitable[Any]]


def token_auth(
    verify: Callable[[str], Any],
    *,
    query_param: str | None = "token",
    header: str | None = "authorization",
    scheme: str = "Bearer",
    user_id: Callable[[Any], str] | None = None,
    close_code: int = 1008,
) -> WSMiddleware:
    """Authenticate each connection before the handler runs.

    The token is read from the query string (``?token=...``) or from the
    ``Authorization: Bearer ...`` header. ``verify(token)`` (sync or async) returns the
    user, or None (or raises) when the token is not valid. The user is stored in
    ``ws.state.user``, and ``ws.id`` is set to ``user_id(user)`` when given. Without a
    valid token the handshake is refused (HTTP 403, from close code 1008) and the
    handler never runs.
    """
    prefix = scheme.lower() + " "

    def find_token(ws: WebSocket) -> str | None:
        if query_param is not None:
            token = ws.query_params.get(query_param)
            if token:
                return token
        if header is not None:
            value = ws.headers.get(header, "")
            if scheme and value.lower().startswith(prefix):
                value = value[len(prefix) :]
            elif scheme:
                value = ""
            if value.strip():
                return value.strip()
        return None

    async def authenticate(ws: WebSocket, call_next: CallNext) -> Any:
        token = find_token(ws)
        if token is None:
            await ws.close(close_code, "Authentication required")
            return None
        try:
            user = verify(token)
            if inspect.isawaitable(user):
                user = await user
        except Exception:
            logging.getLogger("nexios.websockets").info(
                "Token verification raised for %s", ws.scope.get("path"), exc_info=True
            )
            user = None
        if user is None:
            await ws.close(close_code, "Invalid token")
            return None
        ws.state.user = user
        if user_id is not None:
            ws.id = user_id(user)
        return await call_next()

    return authenticate


def log_connections(
    logger: logging.Logger | None = None, level: int = logging.INFO
) -> WSMiddleware:
    """Log each connection's start, and its end with the duration and close code."""
    log = logger or logging.getLogger("nexios.access")

    async def log_connection(ws: WebSocket, call_next: CallNext) -> Any:
        client = ws.client
        peer = f"{client.host}:{client.port}" if client else "-"
        path = ws.scope.get("path", "")
        started = time.perf_counter()
        log.log(level, "%s - WebSocket %s connecting (id %s)", peer, path, ws.id)
        outcome = "ended"
        try:
            result = await call_next()
        except WebSocketDisconnect as exc:
            outcome = f"closed with {exc.code}"
            raise
        except BaseException as exc:
            outcome = f"ended by {type(exc).__name__}"
            raise
        else:
            if ws.application_state is WebSocketState.RESPONSE:
                outcome = f"refused ({ws.close_code})"
            elif ws.close_code is not None:
                outcome = f"closed with {ws.close_code}"
            elif ws.application_state is WebSocketState.CONNECTING:
                outcome = "refused (never accepted)"
            else:
                outcome = "closed with 1000"  # the handler returned; nexios closes normally
            return result
        finally:
            log.log(
                level,
                "%s - WebSocket %s %s after %.3fs (id %s)",
                peer,
                path,
                outcome,
                time.perf_counter() - started,
                ws.id,
            )

    return log_connection
