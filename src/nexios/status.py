"""WebSocket close codes (RFC 6455 section 7.4.1 and the IANA registry) and HTTP statuses."""

from __future__ import annotations

from enum import IntEnum
from http import HTTPStatus

__all__ = ["HTTPStatus", "WSCloseCode"]


class WSCloseCode(IntEnum):
    NORMAL_CLOSURE = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    # 1005 and 1006 are never sent on the wire: they report what was (not) received.
    NO_STATUS_RECEIVED = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_FRAME_PAYLOAD_DATA = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015
