"""The SVG charts: well-formed, named and described for screen readers, every value in a
title, bars and points where their values put them, text escaped."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from wellness_perks.web.console import charts

SVG = "{http://www.w3.org/2000/svg}"


def _parse(markup) -> ET.Element:
    return ET.fromstring(str(markup))


@pytest.mark.parametrize(("value", "top"), [
    (0, 1), (1, 1), (2, 2), (3, 5), (7, 10), (10, 10), (11, 20), (1999, 2000), (2001, 5000),
    (0.5, 1)])
def test_the_scale_tops_at_one_two_or_five_times_a_power_of_ten(value, top):
    assert charts.nice_ceiling(value) == top


def test_a_bar_chart_is_an_image_named_and_described_with_a_bar_per_value():
    svg = _parse(charts.bar_chart([("09:00", 5), ("10:00", 10), ("11:00", 0)],
                                  chart_id="c", title="Claims per hour", desc="15 claims"))
    assert svg.get("role") == "img"
    assert svg.get("aria-labelledby") == "c-title c-desc"
    assert svg.find(f"{SVG}title").text == "Claims per hour"
    assert svg.find(f"{SVG}title").get("id") == "c-title"
    assert svg.find(f"{SVG}desc").text == "15 claims"
    bars = svg.findall(f"{SVG}rect")
    assert [bar.find(f"{SVG}title").text for bar in bars] == [
        "09:00: 5", "10:00: 10", "11:00: 0"]
    heights = [float(bar.get("height")) for bar in bars]
    assert heights[1] == charts.HEIGHT - charts.MARGIN_TOP - charts.MARGIN_BOTTOM  # the top
    assert heights[0] == pytest.approx(heights[1] / 2, abs=0.1)
    assert heights[2] == 0
    xs = [float(bar.get("x")) for bar in bars]
    assert xs == sorted(xs) and xs[0] >= charts.MARGIN_LEFT
    assert "10" in [t.text for t in svg.iter(f"{SVG}text")]  # the scale's top


def test_only_every_nth_label_is_written_under_the_bars():
    points = [(f"h{i}", i) for i in range(48)]
    svg = _parse(charts.bar_chart(points, chart_id="c", title="t", desc="d", label_every=12))
    labels = [t.text for t in svg.iter(f"{SVG}text") if t.text.startswith("h")]
    assert labels == ["h0", "h12", "h24", "h36"]
    assert len(svg.findall(f"{SVG}rect")) == 48


def test_text_is_escaped():
    svg = charts.bar_chart([("<b>&", 1)], chart_id='x"y', title="<script>", desc="a & b")
    assert "<script>" not in str(svg) and "<b>" not in str(svg)
    parsed = _parse(svg)
    assert parsed.find(f"{SVG}title").text == "<script>"
    assert parsed.find(f"{SVG}rect").find(f"{SVG}title").text == "<b>&: 1"


def test_an_empty_or_all_zero_chart_still_draws_its_frame():
    for points in ([], [("a", 0), ("b", 0)]):
        svg = _parse(charts.bar_chart(points, chart_id="c", title="t", desc="d"))
        assert svg.find(f"{SVG}title").text == "t"
        assert all(float(bar.get("height")) == 0 for bar in svg.findall(f"{SVG}rect"))
    assert _parse(charts.line_chart([], chart_id="l", title="t", desc="d")).find(
        f"{SVG}polyline") is None


def test_a_line_chart_places_points_by_their_x_and_value():
    svg = _parse(charts.line_chart([(0, 100, "start"), (30, 50, "middle"), (40, 0, "now")],
                                   chart_id="s", title="Stock", desc="d"))
    points = [tuple(map(float, p.split(","))) for p in
              svg.find(f"{SVG}polyline").get("points").split()]
    left, right = charts.MARGIN_LEFT, charts.WIDTH - charts.MARGIN_RIGHT
    assert [x for x, _y in points] == pytest.approx(
        [left, left + (right - left) * 0.75, right], abs=0.1)
    bottom, top = charts.HEIGHT - charts.MARGIN_BOTTOM, charts.MARGIN_TOP
    assert [y for _x, y in points] == pytest.approx([top, (top + bottom) / 2, bottom], abs=0.1)
    assert [c.find(f"{SVG}title").text for c in svg.findall(f"{SVG}circle")] == [
        "start: 100", "middle: 50", "now: 0"]
    labels = [t.text for t in svg.iter(f"{SVG}text")]
    assert "start" in labels and "now" in labels and "middle" not in labels


def test_a_single_point_sits_in_the_middle():
    svg = _parse(charts.line_chart([(5, 3, "now")], chart_id="s", title="t", desc="d"))
    [circle] = svg.findall(f"{SVG}circle")
    assert float(circle.get("cx")) == pytest.approx(
        (charts.MARGIN_LEFT + charts.WIDTH - charts.MARGIN_RIGHT) / 2, abs=0.1)
