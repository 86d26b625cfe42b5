"""The chat example end to end, in headless Chromium driven by Playwright.

Each test starts the chat as real ``nexios run examples.chat.app:app`` processes (one on
the memory broker, or two sharing Redis) and opens pages in Debian's Chromium
(``/usr/bin/chromium``; never a browser that Playwright downloads), each page in a
context of its own, as a different person would. Every wait is Playwright's ``expect``,
bounded; that a message did *not* reach a page is shown by a later marker reaching it
first. The first test takes the screenshot of the chat that docs/chat.md shows; with
``NEXIOS_SCREENSHOT=1`` it saves it as docs/chat.png (the messages' times change, so a
plain test run leaves the committed picture alone).

No Playwright or no Chromium: skipped, except in CI (``CI=true``) where it fails.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from _servers import ROOT, AppServer, in_ci

try:
    from playwright.async_api import async_playwright, expect
except ImportError:  # pragma: no cover - playwright is in the dev extra
    async_playwright = None

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

APP = "examples.chat.app:app"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "docs" / "chat.png"
RECONNECTED = 15_000  # ms: the server restarts and the page's backoff finds it again


def _browser_missing() -> str | None:
    if async_playwright is None:
        return 'Playwright is not installed: pip install -e ".[dev]"'
    if not os.access(CHROMIUM, os.X_OK):
        return f"Chromium is not at {CHROMIUM}: apt-get install -y chromium"
    return None


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    reason = _browser_missing()
    if reason is not None:
        if in_ci():
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=5) as client:
        yield client


@contextlib.asynccontextmanager
async def servers(
    directory: Path, http: httpx.AsyncClient, broker_url: str, *names: str
) -> AsyncIterator[list[AppServer]]:
    """The chat served by one process per name; their logs are printed on the way out
    (pytest shows them when the test failed)."""
    env = {"NEXIOS_BROKER_URL": broker_url}
    started = [AppServer(name, APP, directory, env) for name in names]
    try:
        for server in started:
            await server.start(http)
        yield started
    finally:
        for server in started:
            await server.stop()
            print(f"----- server {server.name} -----\n{server.log()}")


@pytest.fixture
async def server(tmp_path: Path, http: httpx.AsyncClient) -> AsyncIterator[AppServer]:
    """The chat in one process, on the memory broker."""
    async with servers(tmp_path, http, "memory://", "chat") as [server]:
        yield server


class Person:
    """A person at a browser tab with the chat open."""

    def __init__(self, page: Page, server: AppServer) -> None:
        self.page = page
        self.server = server

    @classmethod
    async def open(cls, browser: Browser, server: AppServer) -> Person:
        context = await browser.new_context(
            viewport={"width": 1000, "height": 600},
            locale="en-US",
            timezone_id="UTC",
            color_scheme="light",
        )
        page = await context.new_page()
        await page.goto(server.http + "/")
        return cls(page, server)

    async def join(self, name: str, room: str) -> None:
        await self.page.fill("#name", name)
        await self.page.fill("#room", room)
        await self.page.click("#join-form button")
        await self.expect_online()

    async def expect_online(self, timeout: float = 5000) -> None:
        await expect(self.page.locator("#status")).to_have_attribute(
            "data-state", "online", timeout=timeout
        )

    async def say(self, text: str) -> None:
        await self.page.fill("#text", text)
        await self.page.press("#text", "Enter")

    @property
    def texts(self) -> Locator:
        """The messages and announcements on screen."""
        return self.page.locator("#messages .text")

    @property
    def members(self) -> Locator:
        return self.page.locator("#members .name")

    @property
    def notices(self) -> Locator:
        return self.page.locator("#messages .notice")


async def announce(http: httpx.AsyncClient, server: AppServer, room: str, text: str) -> Any:
    response = await http.post(f"{server.http}/rooms/{room}/announce", json={"text": text})
    assert response.status_code == 200, response.text
    return response.json()


# ---------------------------------------------------------------------- one process


async def test_two_pages_share_a_room_and_a_third_room_stays_apart(
    browser: Browser, server: AppServer, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    alice, bob, carol = [await Person.open(browser, server) for _ in range(3)]
    await alice.join("alice", "lobby")
    await bob.join("bob", "lobby")
    await carol.join("carol", "garden")
    for person in (alice, bob):
        await expect(person.members).to_have_text(["alice", "bob"])
    await expect(alice.notices).to_have_text(["You joined #lobby as alice.", "bob joined."])

    await announce(http, server, "lobby", "Welcome to #lobby: be kind, stay curious.")
    await bob.say("Hi alice! Is the new release out?")
    await expect(alice.texts).to_have_text(
        ["Welcome to #lobby: be kind, stay curious.", "Hi alice! Is the new release out?"]
    )
    await alice.say("It is: rooms, history and presence, all on nexios.")
    await expect(bob.texts.last).to_have_text("It is: rooms, history and presence, all on nexios.")
    await bob.page.locator("#text").press_sequentially("Trying it now")
    await expect(alice.page.locator("#typing")).to_have_text("bob is typing…")

    # carol, in another room, got none of it: a marker sent after reaches her alone.
    await announce(http, server, "garden", "marker")
    await expect(carol.texts).to_have_text(["marker"])
    await expect(carol.members).to_have_text(["carol"])
    await expect(alice.texts).to_have_count(3)

    shot = SCREENSHOT if os.environ.get("NEXIOS_SCREENSHOT") == "1" else tmp_path / "chat.png"
    await alice.page.screenshot(path=shot)
    assert shot.read_bytes().startswith(b"\x89PNG")


async def test_a_page_that_reloads_gets_the_history(browser: Browser, server: AppServer) -> None:
    alice, bob = [await Person.open(browser, server) for _ in range(2)]
    await alice.join("alice", "lobby")
    await bob.join("bob", "lobby")
    await alice.say("one")
    await expect(bob.texts).to_have_text(["one"])  # two pages: say in turn, or in any order
    await bob.say("two")
    await expect(bob.texts).to_have_text(["one", "two"])

    await bob.page.reload()  # the tab remembers its name and room, and rejoins
    await bob.expect_online()
    await expect(bob.texts).to_have_text(["one", "two"])
    await expect(bob.members).to_have_text(["alice", "bob"])
    await bob.say("three")
    await expect(alice.texts).to_have_text(["one", "two", "three"])
    await expect(alice.members).to_have_text(["alice", "bob"])


async def test_the_page_reconnects_when_the_server_restarts(
    browser: Browser, server: AppServer, http: httpx.AsyncClient
) -> None:
    alice = await Person.open(browser, server)
    await alice.join("alice", "lobby")
    await alice.say("before")
    await expect(alice.texts).to_have_text(["before"])

    port = server.port
    await server.stop()  # the page is told 1012 (service restart), and retries
    await expect(alice.page.locator("#status")).to_have_attribute("data-state", "offline")
    await server.start(http, port=port)
    await alice.expect_online(timeout=RECONNECTED)
    await expect(alice.notices.last).to_have_text("Reconnected.")
    await alice.say("after")
    await expect(alice.texts).to_have_text(["before", "after"])


async def test_a_taken_name_is_refused_with_its_reason(browser: Browser, server: AppServer) -> None:
    alice, other = [await Person.open(browser, server) for _ in range(2)]
    await alice.join("alice", "lobby")
    await other.page.fill("#name", "alice")
    await other.page.click("#join-form button")
    await expect(other.page.locator("#join-error")).to_have_text("That name is taken in this room.")
    await expect(other.page.locator("#join-form")).to_be_visible()


# ---------------------------------------------------------------------- two processes


@pytest.mark.redis
async def test_two_processes_on_redis_share_rooms_history_and_presence(
    browser: Browser, tmp_path: Path, http: httpx.AsyncClient, redis_url: str
) -> None:
    room, other = f"room-{uuid.uuid4().hex[:8]}", f"other-{uuid.uuid4().hex[:8]}"
    try:
        async with servers(tmp_path, http, redis_url, "A", "B") as [a, b]:
            alice, bob, carol = (
                await Person.open(browser, a),
                await Person.open(browser, b),
                await Person.open(browser, b),
            )
            await alice.join("alice", room)
            await bob.join("bob", room)
            await carol.join("carol", other)
            # Presence spans both processes.
            for person in (alice, bob):
                await expect(person.members).to_have_text(["alice", "bob"])

            await bob.say("hello from B")
            await expect(alice.texts).to_have_text(["hello from B"])
            await alice.say("hello from A")
            # B has it before it announces: every page shows them in this order.
            await expect(bob.texts).to_have_text(["hello from B", "hello from A"])
            await announce(http, b, room, "announced on B")
            await expect(alice.texts).to_have_text(
                ["hello from B", "hello from A", "announced on B"]
            )
            await expect(bob.texts).to_have_text(["hello from B", "hello from A", "announced on B"])

            # carol (on B, another room) got none of it: a marker from A reaches her alone.
            await announce(http, a, other, "marker")
            await expect(carol.texts).to_have_text(["marker"])

            # The history is shared: bob reloads on B and sees what alice said on A. (In
            # the order the messages reached the Redis stream: A saves its message just
            # after publishing it, so in theory B's announcement could have got there first.)
            await bob.page.reload()
            await bob.expect_online()
            await expect(bob.texts).to_have_count(3)
            assert sorted(await bob.texts.all_text_contents()) == [
                "announced on B",
                "hello from A",
                "hello from B",
            ]
            await expect(bob.members).to_have_text(["alice", "bob"])

            # alice leaves on A: bob's list on B follows.
            await alice.page.click("#leave")
            await expect(bob.members).to_have_text(["bob"])
            await expect(bob.notices.last).to_have_text("alice left.")
    finally:
        await _forget_rooms(redis_url, room, other)


async def _forget_rooms(redis_url: str, *rooms: str) -> None:
    """Delete what the test left in the shared Redis (the rooms' histories)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url)
    try:
        for room in rooms:
            async for key in client.scan_iter(match=f"*{room}*"):
                await client.delete(key)
    finally:
        await client.aclose()
