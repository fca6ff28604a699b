"""The ownership timeline as a pure picture: lanes, segments, reasons, and escaped text."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta

from workers.operations.timeline import (
    PALETTE,
    Timeline,
    colour_map,
    mark_kind,
    node_segments,
    service_segments,
)
from workers.operations.timeline_svg import render_svg

T0 = datetime(2026, 5, 4, 12, 0, tzinfo=UTC)
SVG = "{http://www.w3.org/2000/svg}"


def at(minutes: float) -> datetime:
    return T0 + timedelta(minutes=minutes)


def change(minutes, service, old, new, epoch, reason, actor=None, detail=None):
    return {
        "at": at(minutes), "service": service, "from": old, "to": new, "epoch": epoch,
        "reason": reason, "actor": actor, "detail": detail,
    }  # fmt: skip


def event(minutes, node, kind, region="r1"):
    return {"at": at(minutes), "node": node, "region": region, "event": kind, "detail": None}


def story(**extra) -> Timeline:
    """a starts before the window and owns folder_monitor; b takes over at 5; a manual move
    back at 8; a drain of a hands it to b at 12."""
    return Timeline(
        start=at(0),
        end=at(15),
        services=["folder_monitor"],
        nodes=[("a", "r1"), ("b", "r1")],
        changes=[
            change(-30, "folder_monitor", None, "a", 1, "startup"),
            change(5, "folder_monitor", "a", "b", 2, "takeover", "b", "lease expired 0.4 s ago"),
            change(8, "folder_monitor", "b", "a", 3, "manual", "ops@host", "manual move"),
            change(
                12, "folder_monitor", "a", "b", 4, "manual", "node a (draining)", "a is draining"
            ),
        ],
        node_events=[
            event(-40, "a", "started"),
            event(-20, "b", "started"),
            event(4.5, "a", "expired"),
            event(7, "a", "started"),
            event(11, "a", "draining"),
            event(14, "b", "stopped"),
        ],
        **extra,
    )


def test_a_service_lane_has_one_segment_per_owner_from_the_window_start():
    segments = service_segments(story(), "folder_monitor")
    assert [(s.begin, s.finish, s.state) for s in segments] == [
        (at(0), at(5), "a"),
        (at(5), at(8), "b"),
        (at(8), at(12), "a"),
        (at(12), at(15), "b"),
    ]
    assert "epoch 2" in segments[1].title


def test_a_node_lane_shows_live_dead_draining_and_stopped():
    assert [(s.begin, s.finish, s.state) for s in node_segments(story(), "a")] == [
        (at(0), at(4.5), "live"),
        (at(4.5), at(7), "dead"),
        (at(7), at(11), "live"),
        (at(11), at(15), "draining"),
    ]
    assert [s.state for s in node_segments(story(), "b")] == ["live", "stopped"]


def test_a_drain_is_told_apart_from_another_manual_move():
    kinds = [mark_kind(c) for c in story().changes]
    assert kinds == ["startup", "takeover", "manual", "drain"]
    svg = render_svg(story())
    assert svg.count('class="mark"') == 3
    assert 'data-reason="drain"' in svg and 'data-reason="manual"' in svg
    assert 'data-reason="takeover"' in svg


def test_the_svg_is_well_formed_and_its_marks_carry_the_detail():
    root = ET.fromstring(render_svg(story()))
    assert root.tag == f"{SVG}svg"
    marks = [g for g in root.iter(f"{SVG}g") if g.get("class") == "mark"]
    details = [g.get("data-detail") for g in marks]
    assert "lease expired 0.4 s ago (by b)" in details[0] and "a \u2192 b" in details[0]
    assert all(g.find(f"{SVG}title").text == g.get("data-detail") for g in marks)
    assert not list(root.iter(f"{SVG}script"))


def test_every_text_from_the_database_is_escaped():
    evil = '<script>alert("x")</script>'
    timeline = Timeline(
        start=at(0),
        end=at(15),
        services=[evil],
        nodes=[(evil, '"r1"&')],
        changes=[change(3, evil, None, evil, 1, "startup", evil, evil)],
        node_events=[event(1, evil, "started")],
    )
    svg = render_svg(timeline)
    assert "<script" not in svg
    assert "&lt;script&gt;" in svg
    root = ET.fromstring(svg)
    texts = "".join(root.itertext())
    assert evil in texts


def test_owners_get_distinct_colours_and_nobody_is_hatched():
    colours = colour_map(["c", "a", "b"])
    assert colours == {"a": PALETTE[0], "b": PALETTE[1], "c": PALETTE[2]}
    released = story(colours=colours)
    released.changes.append(change(14, "folder_monitor", "b", None, 5, "release"))
    svg = render_svg(released)
    assert f'fill="{PALETTE[0]}"' in svg and f'fill="{PALETTE[1]}"' in svg
    assert 'fill="url(#nobody)"' in svg


def test_before_its_first_event_a_lane_is_left_empty():
    timeline = Timeline(
        start=at(0), end=at(15), services=["app_script"], nodes=[("n", "r")],
        changes=[change(6, "app_script", None, "n", 1, "startup")],
        node_events=[event(6, "n", "started")],
    )  # fmt: skip
    assert [(s.begin, s.state) for s in service_segments(timeline, "app_script")] == [(at(6), "n")]
    assert [(s.begin, s.state) for s in node_segments(timeline, "n")] == [(at(6), "live")]
