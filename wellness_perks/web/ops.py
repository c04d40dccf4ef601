"""Operations endpoints: ``GET /healthz`` and ``GET /metrics``.

``/healthz`` answers 200 when the node can take claims (``ok`` or ``degraded``) and 503 when
its database does not answer (``error``): the one case a load balancer should take it out.
Anybody learns only that: ``ok`` or ``error``, from the database alone. An operator gets the
whole check (``degraded`` included) with every figure. An operator is a request with
``Authorization: Bearer <OPS_TOKEN>``, or one from this machine (a loopback address) that came
through no proxy (no ``X-Forwarded-For``, ``Forwarded`` or ``X-Real-IP`` header): a reverse
proxy on the same machine forwards the public's requests from a loopback address too, and says
so in those headers.

``/metrics`` (Prometheus' text format) is for operators only; anybody else gets 401.
"""

from __future__ import annotations

import hmac
import ipaddress

from flask import Blueprint, Response, current_app, jsonify, request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..db import get_session
from ..services import health

bp = Blueprint("ops", __name__)

PROXY_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def is_operator() -> bool:
    """The bearer token (compared in constant time), or a local request not proxied."""
    token = current_app.config["OPS_TOKEN"]
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if token and scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), token.encode()):
        return True
    if any(name in request.headers for name in PROXY_HEADERS):
        return False
    try:
        address = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@bp.route("/healthz")
def healthz():
    operator = is_operator()
    # Anybody else is told whether the node can take claims (its database answers), with no
    # broadcast to the workers: nothing to learn about the inside, nothing to amplify.
    report = health.check(get_session()) if operator else health.check_database(get_session())
    code = 503 if report.status == health.Status.error else 200
    body = report.as_dict() if operator else {"status": report.status.value}
    response = jsonify(body)
    response.headers["Cache-Control"] = "no-store"
    return response, code


@bp.route("/metrics")
def metrics():
    if not is_operator():
        return Response("operators only\n", 401, {"WWW-Authenticate": "Bearer",
                                                 "Content-Type": "text/plain"})
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(health.measure(get_session())))
    return Response(generate_latest(registry), 200, {"Content-Type": CONTENT_TYPE_LATEST,
                                                     "Cache-Control": "no-store"})


class _Collector:
    """The figures of one scrape, as Prometheus metric families."""

    def __init__(self, m: health.Measurements) -> None:
        self.m = m

    def collect(self):
        m = self.m
        claims = GaugeMetricFamily("wellness_perks_claims", "Claims by program and state",
                                   labels=["program", "state"])
        allocated = GaugeMetricFamily("wellness_perks_allocations",
                                      "Codes allocated (the program's counter)",
                                      labels=["program"])
        quota = GaugeMetricFamily("wellness_perks_quota", "The program's quota",
                                  labels=["program"])
        stock = GaugeMetricFamily("wellness_perks_codes_in_stock", "Codes in stock",
                                  labels=["program"])
        for p in m.programs:
            for state, count in p["claims"].items():
                claims.add_metric([p["program"], state], count)
            allocated.add_metric([p["program"]], p["claims"]["allocated"])
            quota.add_metric([p["program"]], p["quota"])
            stock.add_metric([p["program"]], p["in_stock"])
        yield from (claims, allocated, quota, stock)

        mails = GaugeMetricFamily("wellness_perks_mails",
                                  "Mails by state (sent ones are not counted)", labels=["state"])
        for state, count in m.mails.items():
            mails.add_metric([state], count)
        yield mails
        possibly_sent = GaugeMetricFamily(
            "wellness_perks_mails_possibly_sent",
            "Code mails an attempt of which was cut off mid-send (maybe received twice)",
            labels=["program"])
        for p in m.programs:
            possibly_sent.add_metric([p["program"]], m.possibly_sent.get(p["program"], 0))
        yield possibly_sent
        yield GaugeMetricFamily("wellness_perks_oldest_pending_claim_seconds",
                                "Age of the oldest pending claim (0: none)",
                                value=m.oldest_pending_seconds)
        yield GaugeMetricFamily("wellness_perks_oldest_due_mail_seconds",
                                "How long the longest-waiting mail has been due (0: none)",
                                value=m.oldest_due_mail_seconds)

        depth = GaugeMetricFamily("wellness_perks_queue_depth",
                                  "Messages waiting in each Celery queue", labels=["queue"])
        for queue, count in m.queue_depths.items():
            depth.add_metric([queue], count)
        workers = GaugeMetricFamily("wellness_perks_queue_workers",
                                    "Live workers consuming each Celery queue", labels=["queue"])
        for queue, count in m.queue_workers.items():
            workers.add_metric([queue], count)
        yield from (depth, workers)

        failures = CounterMetricFamily("wellness_perks_task_failures",
                                       "Tasks that failed for good", labels=["task"])
        for task, count in sorted(m.task_failures.items()):
            failures.add_metric([task], count)
        yield failures

        status = GaugeMetricFamily("wellness_perks_health", "1 for the current health status",
                                   labels=["status"])
        for value in (health.Status.ok, health.Status.degraded, health.Status.error):
            status.add_metric([value.value], 1 if m.status == value else 0)
        yield status
