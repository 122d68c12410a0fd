"""The overload warning (on a fake clock) and spool.on_overload: shed_page_views."""

from __future__ import annotations

from pathlib import Path

import pytest
import structlog

from tests.support.clock import FakeClock
from tests.support.shipper import site
from tirreno_shipper import metrics, overload
from tirreno_shipper.config import SiteConfig
from tirreno_shipper.ingest import SiteIngest, SpoolFull
from tirreno_shipper.overload import OverloadWatch
from tirreno_shipper.pipeline import Counts
from tirreno_shipper.records import Event
from tirreno_shipper.spool import Spool


def feed(
    watch: OverloadWatch,
    clock: FakeClock,
    seconds: int,
    arrive: int,
    accept: int,
    start: tuple[int, int] = (0, 0),
) -> tuple[int, int, bool]:
    arrived, accepted = start
    warned = False
    for _ in range(seconds):
        clock.advance(1)
        arrived += arrive
        accepted += accept
        warned |= watch.observe(arrived, accepted, arrived - accepted, 9.0)
    return arrived, accepted, warned


def test_warns_once_after_minutes_of_more_in_than_out_with_the_numbers() -> None:
    clock = FakeClock()
    watch = OverloadWatch("shop", clock=clock)
    with structlog.testing.capture_logs() as logs:
        totals = feed(watch, clock, int(overload.AFTER) - 5, 27, 9)
        assert not totals[2], "not before the few minutes are up"
        totals = feed(watch, clock, 600, 27, 9, totals[:2])
        assert totals[2]
    [said] = [e for e in logs if e["event"] == "site_overloaded"]
    assert said["log_level"] == "warning"
    assert said["arrival_rate"] == 27 and said["accept_rate"] == 9
    assert said["backlog"] > 0 and said["drain_seconds"] == round(said["backlog"] / 9)
    for knob in (
        "LEAKY_BUCKET_RPS",
        "LEAKY_BUCKET_WINDOW",
        "sensor.rate_limit",
        "sensor.concurrency",
        "exclude more paths",
        "shed_page_views",
    ):
        assert knob in said["hint"]


def test_no_warning_for_a_burst_or_a_keeping_up_site() -> None:
    clock = FakeClock()
    watch = OverloadWatch("shop", clock=clock)
    totals = feed(watch, clock, 60, 30, 9)  # a one-minute burst at 3x
    assert not feed(watch, clock, 600, 5, 9, totals[:2])[2]  # then the backlog drains
    assert not feed(watch, clock, 600, 9, 9)[2]


def test_says_it_again_after_recovering_and_not_while_it_lasts() -> None:
    clock = FakeClock()
    watch = OverloadWatch("shop", clock=clock)
    a, b, warned = feed(watch, clock, 200, 20, 9)  # warned at 180 s
    assert warned
    a, b, again = feed(watch, clock, int(overload.REPEAT) - 100, 20, 9, (a, b))
    assert not again  # still going on: not said again within REPEAT
    a, b, _ = feed(watch, clock, 300, 5, 9, (a, b))  # over
    assert feed(watch, clock, 200, 20, 9, (a, b))[2]  # news again


def events(n: int, tag: str, event_type: str) -> list[Event]:
    return [
        Event(f"{tag}-{i}", {"ipAddress": "192.0.2.1", "url": f"/{i}", "eventType": event_type})
        for i in range(n)
    ]


def test_shedding_drops_the_oldest_page_views_only(tmp_path: Path) -> None:
    with Spool.open(tmp_path) as spool:
        spool.commit_chunk("s", events(3, "login", "account_login_fail"), None)
        spool.commit_chunk("s", events(4, "pv", "page_view"), None)
        spool.commit_chunk("s", events(2, "dl", "page_search"), None)
        assert spool.make_room("s", 6, 10**9, page_views_only=True) == 3
        assert spool.make_room("s", 0, 10**9, page_views_only=True) == 1
        left = sorted(e.request_id for e in spool.lease("s", 100, 60))
    assert left == ["dl-0", "dl-1", "login-0", "login-1", "login-2"]


def test_a_full_spool_sheds_page_views_instead_of_pausing(tmp_path: Path) -> None:
    """on_overload: shed_page_views: room is made from the oldest page views (counted);
    with none left, the tail pauses (SpoolFull) rather than drop a login."""
    conf = SiteConfig(
        **site(
            "s",
            "http://127.0.0.1:1/",
            tmp_path / "a.log",
            spool={"max_events": 5, "on_overload": "shed_page_views"},
        )
    )
    with Spool.open(tmp_path / "state") as spool:
        ingest = SiteIngest(conf, spool)
        before = metrics.EVENTS_SHED.labels(site="s")._value.get()
        ingest.store(events(2, "pv", "page_view"), Counts(), None, may_drop=False)
        ingest.store(events(3, "login", "account_login"), Counts(), None, may_drop=False)
        ingest.store(events(2, "new", "account_login_fail"), Counts(), None, may_drop=False)
        assert metrics.EVENTS_SHED.labels(site="s")._value.get() - before == 2
        with pytest.raises(SpoolFull):
            ingest.store(events(1, "more", "account_login"), Counts(), None, may_drop=False)
        assert spool.stats("s").depth == 5
        ingest.close()
