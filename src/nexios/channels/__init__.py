"""Channels: groups of connections, broadcast, and the brokers that carry them across
processes. See docs/channels.md for the delivery promise."""

from __future__ import annotations

from nexios.channels.brokers.base import Broker, BrokerUnavailable, HistoryEntry
from nexios.channels.brokers.memory import MemoryBroker
from nexios.channels.layer import ChannelLayer, ChannelStats, broker_from_url
from nexios.channels.outbox import Outbox, SlowConsumerPolicy

__all__ = [
    "Broker",
    "BrokerUnavailable",
    "ChannelLayer",
    "ChannelStats",
    "HistoryEntry",
    "MemoryBroker",
    "Outbox",
    "SlowConsumerPolicy",
    "broker_from_url",
]
