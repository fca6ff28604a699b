"""The ownership timeline drawn: one lane per service coloured by owner, one lane per node by
state, as an SVG document.

`render_svg` is a pure function of a `Timeline` (ownership changes, node events and a
window) to an SVG document, so the status page and `failover history --svg FILE` draw the
same picture, and a test can check it without a server. Every piece of text read from the
database (node, service, reason, detail) is escaped: a node named `<script>` is text.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape
from pathlib import Path
from typing import Any

from workers.errors import ConfigError
from workers.operations.timeline import (
    NODE_STATES,
    REASON_MARKS,
    WINDOWS,
    Segment,
    Timeline,
    clock_label,
    mark_kind,
    node_segments,
    owner_colour,
    read_timeline,
    service_segments,
)
from workers.settings import Settings
from workers.stores.database import transaction

WIDTH = 1100
LABEL = 170
RIGHT = 20
LANE = 26
GAP = 6
TOP = 58


def _x(timeline: Timeline, moment: datetime) -> float:
    span = (timeline.end - timeline.start).total_seconds() or 1.0
    offset = (moment - timeline.start).total_seconds() / span
    return LABEL + max(0.0, min(1.0, offset)) * (WIDTH - LABEL - RIGHT)


def _attr(value: object) -> str:
    return escape(str(value), quote=True)


def _rect(timeline: Timeline, y: float, segment: Segment, fill: str, css: str) -> str:
    x0, x1 = _x(timeline, segment.begin), _x(timeline, segment.finish)
    return (
        f'<rect class="{css}" x="{x0:.1f}" y="{y:.1f}" width="{max(x1 - x0, 1.0):.1f}" '
        f'height="{LANE}" fill="{fill}"><title>{escape(segment.title)}</title></rect>'
    )


def _service_lane(timeline: Timeline, service: str, y: float) -> list[str]:
    parts = [_label(service, y, "service")]
    for segment in service_segments(timeline, service):
        fill = owner_colour(segment.state, timeline.colours) if segment.state else "url(#nobody)"
        parts.append(_rect(timeline, y, segment, fill, "owner"))
        width = _x(timeline, segment.finish) - _x(timeline, segment.begin)
        name = segment.state or "no owner"
        if width > 9 * len(name) + 8:
            parts.append(
                f'<text class="in" x="{_x(timeline, segment.begin) + 5:.1f}" '
                f'y="{y + LANE / 2 + 4:.1f}">{escape(name)}</text>'
            )
    parts += [_mark(timeline, change, y) for change in _visible(timeline, service)]
    return parts


def _visible(timeline: Timeline, service: str) -> list[dict[str, Any]]:
    return [
        c
        for c in timeline.changes
        if c["service"] == service and timeline.start <= c["at"] <= timeline.end
    ]


def _mark(timeline: Timeline, change: dict[str, Any], y: float) -> str:
    """A change of owner: a line across the lane and a lettered badge, its detail on hover."""
    kind = mark_kind(change)
    letter, colour = REASON_MARKS.get(kind, ("?", "#000000"))
    x = _x(timeline, change["at"])
    span = timeline.end - timeline.start
    moved = f"{change.get('from') or 'nobody'} \u2192 {change.get('to') or 'nobody'}"
    detail = (
        f"{clock_label(change['at'], span)} {change['service']}: {kind}, {moved}, "
        f"epoch {change['epoch']}"
    )
    if change.get("detail"):
        detail += f": {change['detail']}"
    if change.get("actor"):
        detail += f" (by {change['actor']})"
    return (
        f'<g class="mark" data-reason="{_attr(kind)}" data-detail="{_attr(detail)}" '
        f'tabindex="0"><title>{escape(detail)}</title>'
        f'<line x1="{x:.1f}" x2="{x:.1f}" y1="{y - 2:.1f}" y2="{y + LANE + 2:.1f}" '
        f'stroke="{colour}" stroke-width="2"/>'
        f'<circle cx="{x:.1f}" cy="{y - 1:.1f}" r="7" fill="{colour}" stroke="#fff"/>'
        f'<text class="badge" x="{x:.1f}" y="{y + 2.5:.1f}">{letter}</text></g>'
    )


def _node_lane(timeline: Timeline, node: str, region: str, y: float) -> list[str]:
    parts = [
        f'<rect x="8" y="{y + 8:.1f}" width="10" height="10" '
        f'fill="{owner_colour(node, timeline.colours)}"/>',
        _label(f"{node} ({region})", y, "node", x=24),
    ]
    for segment in node_segments(timeline, node):
        fill = NODE_STATES.get(str(segment.state), "#cccccc")
        parts.append(_rect(timeline, y + 5, segment, fill, f"node-state {segment.state}"))
    return parts


def _label(name: str, y: float, css: str, x: int = 8) -> str:
    shown = name if len(name) <= 24 else name[:23] + "\u2026"
    return (
        f'<text class="{css}" x="{x}" y="{y + LANE / 2 + 4:.1f}">{escape(shown)}'
        f"<title>{escape(name)}</title></text>"
    )


def _ticks(timeline: Timeline, bottom: float) -> list[str]:
    """Time labels along the top, and faint vertical lines down the lanes."""
    span = timeline.end - timeline.start
    step = _tick_step(span)
    moment = datetime.fromtimestamp(
        (timeline.start.timestamp() // step.total_seconds() + 1) * step.total_seconds(),
        tz=timeline.start.tzinfo,
    )
    shown = "%a %d %H:%M" if span > timedelta(hours=24) else "%H:%M"
    parts = []
    while moment < timeline.end:
        x = _x(timeline, moment)
        parts.append(
            f'<line class="tick" x1="{x:.1f}" x2="{x:.1f}" y1="{TOP - 8}" y2="{bottom:.1f}"/>'
            f'<text class="axis" x="{x:.1f}" y="{TOP - 12}">{moment.strftime(shown)}</text>'
        )
        moment += step
    return parts


def _tick_step(span: timedelta) -> timedelta:
    for minutes in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360, 720, 1440):
        if span / timedelta(minutes=minutes) <= 10:
            return timedelta(minutes=minutes)
    return timedelta(days=1)


def _legend(y: float, owners: list[str], colours: dict[str, str]) -> list[str]:
    parts = []
    x = float(LABEL)
    for kind, (letter, colour) in REASON_MARKS.items():
        parts.append(
            f'<circle cx="{x + 7:.1f}" cy="{y:.1f}" r="7" fill="{colour}"/>'
            f'<text class="badge" x="{x + 7:.1f}" y="{y + 3.5:.1f}">{letter}</text>'
            f'<text class="legend" x="{x + 18:.1f}" y="{y + 4:.1f}">{kind}</text>'
        )
        x += 30 + 7 * len(kind)
    x += 10
    for state, colour in NODE_STATES.items():
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 6:.1f}" width="12" height="12" fill="{colour}"/>'
            f'<text class="legend" x="{x + 16:.1f}" y="{y + 4:.1f}">{state}</text>'
        )
        x += 26 + 7 * len(state)
    y += 22
    x = float(LABEL)
    for owner in owners:
        parts.append(
            f'<rect x="{x:.1f}" y="{y - 6:.1f}" width="12" height="12" '
            f'fill="{owner_colour(owner, colours)}"/>'
            f'<text class="legend" x="{x + 16:.1f}" y="{y + 4:.1f}">{escape(owner)}</text>'
        )
        x += 30 + 7 * min(len(owner), 24)
    return parts


STYLE = (
    "text{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:12px;fill:#222}"
    ".title{font-size:14px;font-weight:600}.section{font-size:11px;fill:#666;"
    "text-transform:uppercase;letter-spacing:.05em}.axis{font-size:11px;fill:#555;"
    "text-anchor:middle}.tick{stroke:#e4e4e4}.in{fill:#fff;font-weight:600;"
    "paint-order:stroke;stroke:rgba(0,0,0,.35);stroke-width:2px}"
    ".badge{fill:#fff;font-size:9px;font-weight:700;text-anchor:middle}"
    ".mark{cursor:pointer}.legend{font-size:11px;fill:#444}.service{font-weight:600}"
)


def render_svg(timeline: Timeline, title: str | None = None) -> str:
    """The timeline as one self-contained SVG document (no script, no external reference)."""
    heading = title or (
        f"Ownership timeline, {clock_label(timeline.start, timedelta(days=2))} to "
        f"{clock_label(timeline.end, timedelta(days=2))} {timeline.end.tzname() or ''}".rstrip()
    )
    y = float(TOP)
    body: list[str] = [f'<text class="section" x="8" y="{y - 24:.1f}">services</text>']
    for service in timeline.services:
        body += _service_lane(timeline, service, y + 6)
        y += LANE + GAP + 8
    y += 14
    body.append(f'<text class="section" x="8" y="{y:.1f}">nodes</text>')
    y += 6
    for node, region in timeline.nodes:
        body += _node_lane(timeline, node, region, y)
        y += LANE + GAP
    owners = sorted({str(c["to"]) for c in timeline.changes if c.get("to")})
    legend_y = y + 18
    height = legend_y + 34
    return "".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" '
            f'height="{height:.0f}" viewBox="0 0 {WIDTH} {height:.0f}" role="img">',
            f"<style>{STYLE}</style>",
            '<defs><pattern id="nobody" width="8" height="8" patternUnits="userSpaceOnUse" '
            'patternTransform="rotate(45)"><rect width="8" height="8" fill="#fbe3e3"/>'
            '<line x1="0" y1="0" x2="0" y2="8" stroke="#d62728" stroke-width="3"/>'
            "</pattern></defs>",
            f'<rect width="{WIDTH}" height="{height:.0f}" fill="#ffffff"/>',
            f'<text class="title" x="8" y="18">{escape(heading)}</text>',
            *_ticks(timeline, y),
            *body,
            *_legend(legend_y, owners, timeline.colours),
            "</svg>",
        ]
    )


def write_svg(settings: Settings, path: str, window: str) -> None:
    """`failover history --svg FILE`: the page's timeline of the last `window`, as a file."""
    if window not in WINDOWS:
        raise ConfigError(f"--window {window!r}: one of {', '.join(WINDOWS)}")
    with transaction(settings) as connection:
        picture = render_svg(read_timeline(connection, WINDOWS[window]))
    Path(path).write_text(picture, encoding="utf-8")
