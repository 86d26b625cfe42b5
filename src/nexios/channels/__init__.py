"""Channels: groups of connections, their logs, broadcast, and the brokers that carry
them across processes. See docs/channels.md for the delivery promise."""

from __future__ import annotations

from nexios.channels.brokers.base import Broker, BrokerUnavailable, HistoryEntry
from nexios.channels.brokers.memory import MemoryBroker
from nexios.channels.layer import ChannelLayer, ChannelStats, Joined, Published, broker_from_url
from nexios.channels.log import Bounds, Position
from nexios.channels.registry import Member, SlowConsumerPolicy

__all__ = [
    "Bounds",
    "Broker",
    "BrokerUnavailable",
    "ChannelLayer",
    "ChannelStats",
    "HistoryEntry",
    "Joined",
    "Member",
    "MemoryBroker",
    "Position",
    "Published",
    "SlowConsumerPolicy",
    "broker_from_url",
]
