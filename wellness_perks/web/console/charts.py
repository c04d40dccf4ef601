"""Charts as server-rendered SVG: no script, nothing fetched from elsewhere.

Each chart is an ``<svg role="img">`` named by its ``<title>`` and described by its ``<desc>``
(``aria-labelledby``), and every bar or point carries its own ``<title>`` (its label and value),
so a screen reader and a mouse pointer both get the numbers. Pages show the same numbers in a
table next to the chart. Colours come from the stylesheet (``.chart`` classes), so a chart
follows the page's contrast.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

WIDTH, HEIGHT = 720, 200
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 8, 12, 28


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 times a power of ten that is at least ``value`` (1 for 0): the
    top of a chart's scale."""
    if value <= 1:
        return 1
    step = 1
    while True:
        for factor in (1, 2, 5):
            if step * factor >= value:
                return step * factor
        step *= 10


def _number(value: float) -> str:
    return f"{value:,.0f}"


def _frame(chart_id: str, title: str, desc: str, top: int, body: list[str],
           x_labels: list[tuple[float, str]]) -> Markup:
    plot_bottom = HEIGHT - MARGIN_BOTTOM
    parts = [
        f'<svg class="chart" id="{escape(chart_id)}" role="img" '
        f'aria-labelledby="{escape(chart_id)}-title {escape(chart_id)}-desc" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" width="100%" preserveAspectRatio="xMidYMid meet" '
        'xmlns="http://www.w3.org/2000/svg">',
        f'<title id="{escape(chart_id)}-title">{escape(title)}</title>',
        f'<desc id="{escape(chart_id)}-desc">{escape(desc)}</desc>',
        f'<g class="axis" aria-hidden="true">'
        f'<line x1="{MARGIN_LEFT}" y1="{plot_bottom}" x2="{WIDTH - MARGIN_RIGHT}" '
        f'y2="{plot_bottom}"/>'
        f'<line class="grid" x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{WIDTH - MARGIN_RIGHT}" '
        f'y2="{MARGIN_TOP}"/>'
        f'<text x="{MARGIN_LEFT - 6}" y="{MARGIN_TOP + 4}" text-anchor="end">'
        f'{_number(top)}</text>'
        f'<text x="{MARGIN_LEFT - 6}" y="{plot_bottom}" text-anchor="end">0</text>',
        *(f'<text x="{x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">{escape(label)}</text>'
          for x, label in x_labels),
        '</g>',
        *body,
        '</svg>',
    ]
    return Markup("".join(parts))


def _y(value: float, top: int) -> float:
    plot_height = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    return HEIGHT - MARGIN_BOTTOM - plot_height * value / top


def bar_chart(points: Sequence[tuple[str, int]], *, chart_id: str, title: str, desc: str,
              label_every: int = 1) -> Markup:
    """One bar per (label, value), left to right; every ``label_every``-th label is written
    under its bar (all of them are in the bars' titles)."""
    top = nice_ceiling(max((value for _label, value in points), default=0))
    plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    slot = plot_width / max(len(points), 1)
    gap = min(2.0, slot / 4)
    bars, x_labels = [], []
    for index, (label, value) in enumerate(points):
        x = MARGIN_LEFT + index * slot
        y = _y(value, top)
        bars.append(f'<rect class="bar" x="{x + gap / 2:.1f}" y="{y:.1f}" '
                    f'width="{slot - gap:.1f}" height="{HEIGHT - MARGIN_BOTTOM - y:.1f}">'
                    f'<title>{escape(label)}: {_number(value)}</title></rect>')
        if index % label_every == 0:
            x_labels.append((x + slot / 2, label))
    return _frame(chart_id, title, desc, top, bars, x_labels)


def line_chart(points: Sequence[tuple[float, int, str]], *, chart_id: str, title: str,
               desc: str) -> Markup:
    """A line through (x, value, label) points, x on any numeric scale (a timestamp), the first
    and last labels written under the line. No points: the empty frame."""
    top = nice_ceiling(max((value for _x, value, _label in points), default=0))
    if not points:
        return _frame(chart_id, title, desc, top, [], [])
    low, high = points[0][0], points[-1][0]
    span = (high - low) or 1
    plot_width = WIDTH - MARGIN_LEFT - MARGIN_RIGHT

    def x_of(x: float) -> float:
        return MARGIN_LEFT + plot_width * ((x - low) / span if high != low else 0.5)

    coordinates = [(x_of(x), _y(value, top), value, label) for x, value, label in points]
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y, _v, _l in coordinates)
    body = [f'<polyline class="line" fill="none" points="{path}"/>']
    body += [f'<circle class="point" cx="{x:.1f}" cy="{y:.1f}" r="3">'
             f'<title>{escape(label)}: {_number(value)}</title></circle>'
             for x, y, value, label in coordinates]
    x_labels = [(coordinates[0][0], coordinates[0][3])]
    if len(coordinates) > 1:
        x_labels.append((coordinates[-1][0], coordinates[-1][3]))
    return _frame(chart_id, title, desc, top, body, x_labels)
