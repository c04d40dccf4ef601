"""Property-based (stateful) test of the allocation engine, on SQLite and PostgreSQL.

Hypothesis drives random sequences of claims (on and off the list), code batch uploads, quota
and country-quota changes, voids (of codes in stock and of codes held, which reissues),
restores, lost allocation tasks, sweeps and worker re-runs. After every step the invariants
I1-I3 must hold, as the real ``verify`` sees them, nobody may wait who could be served, and
whoever waits, waits for the reason that holds, and a creator off the list is turned away
with nothing recorded. The run must have allocated and waitlisted claims and turned strangers
away, or it proved nothing.
"""

from __future__ import annotations

import io
from collections import Counter

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlmodel import select

from tests.conftest import _empty_tables
from tests.helpers import code_values
from wellness_perks.db import get_session
from wellness_perks.models import (
    Claim,
    ClaimReason,
    ClaimState,
    Code,
    CountryQuota,
    Creator,
    Program,
)
from wellness_perks.services import allocation, claims, codes, imports, programs, sweeper
from wellness_perks.services.errors import DomainError, NotOnList
from wellness_perks.services.verify import verify_program

COUNTRIES = ("PK", "IN", "BR")
CREATORS = 14  # on the program's list
STRANGERS = 2  # known from another program's list only


def machine_for(app, exercised: Counter):
    """The state machine; ``exercised`` counts the claim states the steps led to (and the
    strangers turned away)."""
    class AllocationMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            _empty_tables(app.extensions["db_engine"])
            self.ctx = app.app_context()
            self.ctx.push()
            self.s = get_session()
            self.program = programs.create_program(self.s, slug="prop-6m", name="Prop",
                                                   quota=5, actor="test")
            rows = "handle,email,country\n" + "".join(
                f"@c{i},c{i}@example.com,{COUNTRIES[i % len(COUNTRIES)]}\n"
                for i in range(CREATORS))
            imports.import_creators(self.s, program=self.program, actor="test",
                                    stream=io.BytesIO(rows.encode()))
            self.creator_ids = self.s.exec(select(Creator.id).order_by(Creator.id)).all()
            other = programs.create_program(self.s, slug="other-6m", name="Other", quota=1,
                                            actor="test")
            rows = "handle,email,country\n" + "".join(
                f"@s{i},s{i}@example.com,PK\n" for i in range(STRANGERS))
            imports.import_creators(self.s, program=other, actor="test",
                                    stream=io.BytesIO(rows.encode()))
            self.stranger_ids = self.s.exec(select(Creator.id).where(
                Creator.id.not_in(self.creator_ids)).order_by(Creator.id)).all()
            self.next_code = 0
            self.lost: set[int] = set()  # claims whose allocation task was (deliberately) lost

        def teardown(self):
            self.s.rollback()
            self.ctx.pop()

        # ------------------------------------------------------------------ rules

        @initialize(count=st.integers(3, 12), country=st.sampled_from(COUNTRIES),
                    country_quota=st.integers(1, 2))
        def before_the_launch(self, count, country, country_quota):
            """Codes uploaded and a country capped before the first claim: most often more
            codes than the quota of 5, so that a rush meets the quota (or the country's) with
            codes left in stock, where only the quota checks stop it (with fewer, the stock
            would)."""
            self.upload_batch(count)
            self.change_country_quota(country, country_quota)

        @rule(who=st.integers(0, CREATORS - 1))
        def claim(self, who):
            claims.request_claim(self.s, program=self.program, creator_id=self.creator_ids[who])

        @rule(first=st.integers(0, CREATORS - 1), count=st.integers(2, 8))
        def rush_while_the_worker_is_away(self, first, count):
            """Several claims at once, served by one allocation run (as on launch day)."""
            for who in range(first, min(first + count, CREATORS)):
                self.claim_whose_task_is_lost(who)
            allocation.allocate_program(self.s, program_id=self.program.id)
            self.lost.clear()

        @rule(country=st.sampled_from(COUNTRIES), count=st.integers(2, 5))
        def rush_from_one_country(self, country, count):
            """Creators of one country at once, served by one allocation run: a capped
            country fills within the batch, and its next creator must wait."""
            of_country = [who for who in range(CREATORS)
                          if COUNTRIES[who % len(COUNTRIES)] == country]
            for who in of_country[:count]:
                self.claim_whose_task_is_lost(who)
            allocation.allocate_program(self.s, program_id=self.program.id)
            self.lost.clear()

        @rule(who=st.integers(0, STRANGERS - 1))
        def claim_off_the_list(self, who):
            with pytest.raises(NotOnList):
                claims.request_claim(self.s, program=self.program,
                                     creator_id=self.stranger_ids[who])
            self.s.rollback()
            exercised["turned_away"] += 1

        @rule(who=st.integers(0, CREATORS - 1))
        def claim_whose_task_is_lost(self, who):
            creator = self.s.get(Creator, self.creator_ids[who])
            if claims.get_claim(self.s, program_id=self.program.id, creator_id=creator.id):
                return
            claim = Claim(program_id=self.program.id, creator_id=creator.id,
                          country=creator.country)
            self.s.add(claim)
            self.s.commit()
            self.lost.add(claim.id)

        @rule(count=st.integers(0, 8))  # up to more than the quota's room: the quota decides
        def upload_batch(self, count):
            values = [f"PROP-{self.next_code + i:05d}" for i in range(count)]
            self.next_code += count
            self._tolerating_refusal(imports.import_codes, program=self.program, actor="test",
                                     stream=io.BytesIO("\n".join(values).encode()),
                                     expires_on=None)

        @rule(delta=st.integers(-3, 4))
        def change_quota(self, delta):
            quota = self.s.get(Program, self.program.id, populate_existing=True).quota
            self._tolerating_refusal(programs.set_quota, program_id=self.program.id,
                                     quota=max(quota + delta, 0), actor="test")

        @rule(country=st.sampled_from(COUNTRIES), quota=st.none() | st.integers(0, 4))
        def change_country_quota(self, country, quota):
            self._tolerating_refusal(programs.set_quota, program_id=self.program.id,
                                     country_quotas={country: quota}, actor="test")

        @rule(pick=st.integers(0, 50), held=st.booleans())
        def void(self, pick, held):
            status = "assigned" if held else "available"
            values = code_values(self.s, select(Code.value_encrypted)
                                 .where(Code.status == status).order_by(Code.id))
            self.s.commit()
            if values:
                self._tolerating_refusal(codes.void_code, program_id=self.program.id,
                                         value=values[pick % len(values)], reason="prop",
                                         actor="test")

        @rule(pick=st.integers(0, 50))
        def restore(self, pick):
            values = code_values(self.s, select(Code.value_encrypted)
                                 .where(Code.status == "void").order_by(Code.id))
            self.s.commit()
            if values:
                self._tolerating_refusal(codes.restore_code, program_id=self.program.id,
                                         value=values[pick % len(values)], actor="test")

        @rule()
        def worker_reruns_a_task(self):
            allocation.allocate_program(self.s, program_id=self.program.id)

        @rule()
        def sweep_everything_lost(self):
            app.config["SWEEP_PENDING_AFTER_SECONDS"] = -1
            try:
                sweeper.sweep(self.s)
            finally:
                app.config["SWEEP_PENDING_AFTER_SECONDS"] = 60

        def _tolerating_refusal(self, operation, **kwargs):
            try:
                operation(self.s, **kwargs)
            except DomainError:
                self.s.rollback()  # refused (e.g. quota below allocations): changes nothing

        # ------------------------------------------------------------------ invariants

        @invariant()
        def count_what_was_exercised(self):
            for state, n in self.s.exec(select(Claim.state, sa.func.count()).where(
                    Claim.program_id == self.program.id).group_by(Claim.state)):
                exercised[state] = max(exercised[state], n)
            self.s.commit()

        @invariant()
        def i1_to_i3_hold(self):
            found = [v for v in verify_program(self.s, program_id=self.program.id)
                     if v.invariant in {"I1", "I2", "I3"}]
            assert found == [], [str(v) for v in found]

        @invariant()
        def every_claim_is_decided_unless_its_task_was_lost(self):
            pending = set(self.s.exec(select(Claim.id).where(Claim.state == ClaimState.pending)))
            self.s.commit()
            assert pending <= self.lost, f"claims {sorted(pending - self.lost)} left pending"

        @invariant()
        def nobody_waits_who_could_be_served(self):
            s = self.s
            program = s.get(Program, self.program.id, populate_existing=True)
            if s.exec(select(Claim.id).where(Claim.state == ClaimState.pending)).first():
                s.commit()
                return  # a lost task: the sweeper's business
            in_stock = s.exec(select(sa.func.count()).select_from(Code)
                              .where(Code.status == "available")).one()
            full = {cq.country for cq in s.exec(select(CountryQuota)
                                                .execution_options(populate_existing=True))
                    if cq.allocated_count >= cq.quota}
            waiting = s.exec(select(Claim.country).where(Claim.state == ClaimState.waitlisted)
                             ).all()
            s.commit()
            servable = [c for c in waiting if c not in full]
            assert not (servable and in_stock and program.allocated_count < program.quota), (
                f"{len(servable)} servable claims wait with {in_stock} codes in stock and "
                f"{program.quota - program.allocated_count} quota left")

        @invariant()
        def whoever_waits_waits_for_the_reason_that_holds(self):
            """Once allocation has run (no claim pending): a full program makes everyone wait
            for the quota (or, in a full country, for the country's quota: both hold); else a
            full country its creators; else only the stock can be the reason, and then there is
            none in stock."""
            s = self.s
            if s.exec(select(Claim.id).where(Claim.state == ClaimState.pending)).first():
                s.commit()
                return
            program = s.get(Program, self.program.id, populate_existing=True)
            full = {cq.country for cq in s.exec(select(CountryQuota)
                                                .execution_options(populate_existing=True))
                    if cq.allocated_count >= cq.quota}
            in_stock = s.exec(select(sa.func.count()).select_from(Code)
                              .where(Code.status == "available")).one()
            waiting = s.exec(select(Claim.id, Claim.country, Claim.reason)
                             .where(Claim.state == ClaimState.waitlisted)).all()
            refused = s.exec(select(Claim.reason).where(Claim.state == ClaimState.refused)
                             ).all()
            s.commit()
            for claim_id, country, reason in waiting:
                if program.allocated_count >= program.quota:
                    expected = {ClaimReason.quota_reached}
                    if country in full:
                        expected.add(ClaimReason.country_quota_reached)
                elif country in full:
                    expected = {ClaimReason.country_quota_reached}
                else:
                    expected = {ClaimReason.out_of_stock}
                    assert in_stock == 0, f"claim {claim_id} waits with {in_stock} in stock"
                assert reason in expected, (
                    f"claim {claim_id} ({country}) waits for {reason}, not {expected}: "
                    f"{program.allocated_count} of {program.quota} allocated, full {full}, "
                    f"{in_stock} in stock")
            assert refused == [], refused  # the window stays open; strangers record nothing

        @invariant()
        def strangers_record_nothing(self):
            theirs = self.s.exec(select(sa.func.count()).select_from(Claim).where(
                Claim.creator_id.in_(self.stranger_ids))).one()
            self.s.commit()
            assert theirs == 0

    return AllocationMachine


@pytest.fixture
def outbox_app(app_config):
    from wellness_perks import create_app

    app_config["SMTP_HOST"] = ""  # mail to files: fast, and mails are not what is tested here
    app = create_app(app_config)
    yield app
    app.extensions["db_engine"].dispose()


def test_allocation_invariants_hold_under_random_operations(outbox_app):
    exercised: Counter = Counter()
    run_state_machine_as_test(
        machine_for(outbox_app, exercised),
        # No shrinking: on a broken rule it would replay database-heavy steps for minutes;
        # the failing steps are printed as found.
        settings=settings(max_examples=25, stateful_step_count=30, deadline=None,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate],
                          suppress_health_check=[HealthCheck.too_slow]),
    )
    # The run reached every outcome a claim can have.
    assert {what: exercised[what] > 0 for what in ("allocated", "waitlisted", "turned_away")} == {
        "allocated": True, "waitlisted": True, "turned_away": True}, exercised
