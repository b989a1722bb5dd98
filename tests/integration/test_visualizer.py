"""The visualizer in a real browser: Debian's headless chromium, driven by selenium
through chromium-driver, against a real daemon (its own `--visualizer-addr` port and
its API's TCP host), changed with the real docker CLI.

- the node's column and the service's cards; a `docker service scale` shows on the
  page as it stays loaded (no reload); a screenshot that decodes, has the page's size
  and shows the cards in their service's colour;
- the stream itself: a snapshot first with only the views' fields, a page that left
  frees its place (more pages than the feed admits at once, one after the other);
- a node outside any swarm serves the page, and its stream answers Docker's error.
"""

from __future__ import annotations

import http.client
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from selenium.webdriver.remote.webdriver import WebDriver

from shoal.manager.visualizer import MAX_SUBSCRIBERS

from .browser import chromium
from .harness import (
    PROGRESS_TIMEOUT_S,
    Daemon,
    DaemonFactory,
    free_tcp_port,
    init_swarm,
    port_taken,
    wait_until,
)

pytestmark = pytest.mark.integration

PAGE_TIMEOUT_S = 30.0
TASK_KEYS = {"id", "version", "service_id", "service", "slot", "node_id", "state"}
TASK_KEYS |= {"desired_state"}
NODE_KEYS = {"id", "version", "hostname", "role", "state", "availability", "leader"}
SERVICE_KEYS = {"id", "version", "name", "mode", "replicas"}


@pytest.fixture(scope="module")
def viz(daemon_factory: DaemonFactory) -> Daemon:
    """A swarm's manager with a TCP host and the visualizer on a port of its own (a
    port found free and taken before the daemon bound it: another one)."""
    for attempt in range(3):
        port = free_tcp_port()
        daemon = daemon_factory(
            node_name="viz-node",
            tcp=True,
            start=False,
            args=["--visualizer-addr", f"127.0.0.1:{port}"],
        )
        daemon.viz_port = port  # type: ignore[attr-defined]
        try:
            daemon.start()
        except AssertionError as exc:
            if attempt == 2 or not port_taken(str(exc)):
                raise
            continue
        init_swarm(daemon)
        return daemon
    raise AssertionError("unreachable")


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    with chromium(tmp_path) as driver:
        yield driver


def viz_url(daemon: Daemon) -> str:
    return f"http://127.0.0.1:{daemon.viz_port}/"  # type: ignore[attr-defined]


def node_id(daemon: Daemon) -> str:
    return str(daemon.docker("info", "--format", "{{.Swarm.NodeID}}").stdout.strip())


def cards(driver: WebDriver, node: str, service: str) -> list[dict[str, object]]:
    """The cards of `service` in `node`'s column, as the browser lays them out."""
    return driver.execute_script(  # type: ignore[no-any-return]
        """
        const col = document.querySelector(`section.node[data-node-id="${arguments[0]}"]`);
        if (!col) return [];
        return [...col.querySelectorAll(`.card[data-service="${arguments[1]}"]`)].map(c => {
          const r = c.getBoundingClientRect();
          return {id: c.dataset.taskId, state: c.dataset.state, text: c.innerText,
                  x: r.x, y: r.y, width: r.width, height: r.height,
                  colour: getComputedStyle(c).backgroundColor,
                  visible: r.width > 0 && r.height > 0 && getComputedStyle(c).visibility === "visible"};
        });
        """,
        node,
        service,
    )


def running_cards(driver: WebDriver, node: str, service: str, n: int) -> list[dict[str, object]]:
    got = cards(driver, node, service)
    if len(got) == n and all(c["state"] == "running" and c["visible"] for c in got):
        return got
    return []


def legend(driver: WebDriver, service: str) -> str:
    return str(
        driver.execute_script(
            "const e = document.querySelector(`#legend [data-service='${arguments[0]}']`);"
            "return e ? e.innerText : '';",
            service,
        )
    )


def node_head(driver: WebDriver, node: str) -> str:
    return str(
        driver.execute_script(
            "const e = document.querySelector(`section.node[data-node-id='${arguments[0]}'] "
            ".node-head`); return e ? e.innerText : '';",
            node,
        )
    )


def rgb(css: str) -> tuple[int, int, int]:
    """`rgb(r, g, b)` as the browser computes a colour."""
    assert css.startswith("rgb("), css
    r, g, b = (int(x) for x in css[4:-1].split(",")[:3])
    return r, g, b


def test_the_page_shows_the_node_and_cards_and_follows_a_scale_up_without_reload(
    viz: Daemon, browser: WebDriver
) -> None:
    node = node_id(viz)
    viz.create_service("web", "--replicas", "2", "busybox", "sleep", "1000", detach=False)
    browser.get(viz_url(viz))
    wait_until(
        lambda: browser.execute_script("return document.body.dataset.status") == "live",
        timeout=PAGE_TIMEOUT_S,
        what="the page to follow the stream",
    )
    two = wait_until(
        lambda: running_cards(browser, node, "web", 2),
        timeout=PAGE_TIMEOUT_S,
        what="2 running cards of web in the node's column",
    )
    assert sorted(str(c["text"]).split("\n")[0] for c in two) == ["web.1", "web.2"]
    head = node_head(browser, node)
    for word in ("viz-node", "manager (leader)", "ready", "active"):
        assert word in head, head
    # a mark on this document: it is gone if the page is ever loaded again
    browser.execute_script("window.shoalMark = 'same document'")

    viz.docker("service", "scale", "web=4", timeout=PROGRESS_TIMEOUT_S)
    four = wait_until(
        lambda: running_cards(browser, node, "web", 4),
        timeout=PAGE_TIMEOUT_S,
        what="4 running cards of web without a reload",
    )
    assert browser.execute_script("return window.shoalMark") == "same document"
    wait_until(
        lambda: legend(browser, "web") == "web 4/4",
        timeout=PAGE_TIMEOUT_S,
        what="the legend to count 4 of 4 running",
    )
    assert {c["id"] for c in two} < {c["id"] for c in four}
    assert len({c["colour"] for c in four}) == 1  # one colour per service

    # the screenshot: a PNG of the page's size, the cards painted in their colour
    png = browser.get_screenshot_as_png()
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG"
    width, height, ratio = browser.execute_script(
        "return [window.innerWidth, window.innerHeight, window.devicePixelRatio]"
    )
    assert image.size == (round(width * ratio), round(height * ratio))
    pixels = image.convert("RGB")
    colour = rgb(str(four[0]["colour"]))
    counts = {c: n for n, c in pixels.getcolors(maxcolors=image.width * image.height) or []}
    painted = counts.get(colour, 0)  # the cards, less their text
    area = sum(float(c["width"]) * float(c["height"]) for c in four) * ratio * ratio  # type: ignore[arg-type]
    assert painted >= 0.5 * area, (painted, area, colour)
    assert painted <= 1.2 * area  # nothing else on the page is in the service's colour
    assert len(counts) > 2  # not blank: the page's background, the cards, their text...


def test_a_drained_node_shows_so_and_its_tasks_wait_unassigned_until_it_is_active(
    viz: Daemon, browser: WebDriver
) -> None:
    node = node_id(viz)
    viz.create_service("drainme", "--replicas", "2", "busybox", "sleep", "1000", detach=False)
    browser.get(viz_url(viz))
    wait_until(lambda: running_cards(browser, node, "drainme", 2), what="2 cards on the node")
    try:
        viz.docker("node", "update", "--availability", "drain", node)
        wait_until(lambda: "drain" in node_head(browser, node), what="the node shown drained")
        # the only node drained: the replacements wait without a node
        wait_until(
            lambda: not cards(browser, node, "drainme") and len(cards(browser, "", "drainme")) == 2,
            timeout=PAGE_TIMEOUT_S,
            what="the tasks to leave the node's column for the unassigned one",
        )
    finally:
        viz.docker("node", "update", "--availability", "active", node)
    wait_until(
        lambda: running_cards(browser, node, "drainme", 2),
        timeout=PAGE_TIMEOUT_S,
        what="the tasks back on the active node",
    )
    assert "active" in node_head(browser, node)


def test_the_page_is_served_on_the_api_tcp_host(viz: Daemon, browser: WebDriver) -> None:
    node = node_id(viz)
    viz.create_service("api-page", "--replicas", "1", "busybox", "sleep", "1000", detach=False)
    conn = http.client.HTTPConnection("127.0.0.1", viz.tcp_port, timeout=10)
    try:
        conn.request("GET", "/visualizer")
        resp = conn.getresponse()
        body = resp.read()
    finally:
        conn.close()
    assert resp.status == 200 and resp.getheader("Content-Type") == "text/html; charset=utf-8"
    assert b"<title>shoal visualizer</title>" in body
    csp = resp.getheader("Content-Security-Policy") or ""
    assert "default-src 'none'" in csp and "script-src 'sha256-" in csp
    browser.get(f"http://127.0.0.1:{viz.tcp_port}/visualizer")
    wait_until(
        lambda: running_cards(browser, node, "api-page", 1),
        timeout=PAGE_TIMEOUT_S,
        what="the card of api-page on the page at the API's TCP host",
    )


def _open_stream(port: int) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.request("GET", "/visualizer/events")
    return conn, conn.getresponse()


def _first_event(resp: http.client.HTTPResponse) -> tuple[str, dict[str, object]]:
    fields: dict[str, str] = {}
    while True:
        line = resp.readline().decode().rstrip("\n")
        if not line:
            if "event" in fields:
                return fields["event"], json.loads(fields["data"])
            continue
        key, _, value = line.partition(": ")
        fields[key] = value


def test_the_stream_starts_with_a_snapshot_of_views_only_and_a_page_that_left_frees_its_place(
    viz: Daemon,
) -> None:
    viz.create_service(
        "stream", "--replicas", "1", "--env", "TOKEN=s3cr3t-value", "busybox", "sleep", "1000"
    )
    port = viz.viz_port  # type: ignore[attr-defined]
    conn, resp = _open_stream(port)
    try:
        assert resp.status == 200
        assert resp.getheader("Content-Type") == "text/event-stream"
        event, snap = _first_event(resp)
    finally:
        resp.close()
        conn.close()
    assert event == "snapshot"
    assert snap["nodes"] and snap["services"]
    assert all(set(n) == NODE_KEYS for n in snap["nodes"])  # type: ignore[attr-defined]
    assert all(set(s) == SERVICE_KEYS for s in snap["services"])  # type: ignore[attr-defined]
    assert all(set(t) == TASK_KEYS for t in snap["tasks"])  # type: ignore[attr-defined]
    assert "s3cr3t-value" not in json.dumps(snap)  # the spec stays off the page's wire
    # More pages than the feed admits at once, one after another, each leaving after
    # its snapshot: each one that left gives its place back (a page kept out for good
    # would be a leak; one let in a moment later is the server noticing it left).
    for _ in range(MAX_SUBSCRIBERS + 8):
        got = wait_until(lambda: _snapshot_and_leave(port), what="the feed to admit a page")
        assert got == "snapshot"


def _snapshot_and_leave(port: int) -> str | None:
    """Open the stream, read its first event and leave; None if refused."""
    conn, resp = _open_stream(port)
    try:
        if resp.status != 200:
            return None
        return _first_event(resp)[0]
    finally:
        resp.close()
        conn.close()


def test_outside_a_swarm_the_stream_answers_dockers_error_and_the_page_waits_for_one(
    daemon_factory: DaemonFactory, browser: WebDriver
) -> None:
    daemon = daemon_factory(node_name="viz-alone", tcp=True)
    page = daemon.http("GET", "/visualizer")
    assert page.status == 200 and b"shoal visualizer" in page.body
    stream = daemon.http("GET", "/visualizer/events")
    assert stream.status == 503
    assert stream.json() == {
        "message": 'This node is not a swarm manager. Use "docker swarm init" or '
        '"docker swarm join" to connect this node to swarm and try again.'
    }
    # the swarm's page does not take the place of any Docker route
    assert daemon.http("GET", "/v1.41/visualizer").status == 404
    # a page opened before the swarm exists comes alive once it does, by itself
    browser.get(f"http://127.0.0.1:{daemon.tcp_port}/visualizer")
    wait_until(
        lambda: browser.execute_script("return document.body.dataset.status") == "down",
        what="the page to say its stream is down",
    )
    init_swarm(daemon)
    node = node_id(daemon)
    wait_until(
        lambda: "viz-alone" in node_head(browser, node),
        timeout=PAGE_TIMEOUT_S,
        what="the page to show the new swarm's node",
    )


def test_the_page_reconnects_after_its_manager_restarts(
    daemon_factory: DaemonFactory, browser: WebDriver
) -> None:
    daemon = daemon_factory(node_name="viz-restart", tcp=True)
    init_swarm(daemon)
    node = node_id(daemon)
    daemon.create_service("again", "--replicas", "1", "busybox", "sleep", "1000", detach=False)
    browser.get(f"http://127.0.0.1:{daemon.tcp_port}/visualizer")
    before = wait_until(lambda: running_cards(browser, node, "again", 1), what="the card")
    browser.execute_script("window.shoalMark = 'same document'")
    daemon.stop()
    wait_until(
        lambda: browser.execute_script("return document.body.dataset.status") == "down",
        what="the page to notice its stream ended",
    )
    daemon.start()
    # the task was stopped with the daemon; its replacement shows in the same document
    after = wait_until(
        lambda: [c for c in running_cards(browser, node, "again", 1) if c["id"] != before[0]["id"]],
        timeout=PAGE_TIMEOUT_S,
        what="the page to reconnect and show the replacement task",
    )
    assert after and browser.execute_script("return window.shoalMark") == "same document"
