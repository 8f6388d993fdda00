"""Property tests: validate_session never raises for any token, and only ValueError for bad request data."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.models import RequestContext, User

CLIENT = RequestContext("203.0.113.7", "Mozilla/5.0 test")
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Harness:
    """Services on their own event loop, so Hypothesis can drive them from a plain function."""

    def __init__(self, make_settings: Callable[..., Settings], **overrides: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.f: Fundaments = self.run(
            initialize_fundaments(make_settings(**overrides), clock=self.clock, configure_logs=False)
        )
        user_id = self.run(
            self.f["db"].fetchval(
                "INSERT INTO fundaments_users (username, password_hash, created_at, updated_at, "
                "password_changed_at) VALUES ($1, $2, $3, $3, $3) RETURNING id",
                "prop@example.com",
                "x",
                self.clock.now(),
            )
        )
        self.user = User(id=int(user_id), username="prop@example.com")

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def login(self) -> str:
        async def create() -> str:
            async with self.f["db"].transaction() as tx:
                session = await self.f["sessions"].create(tx, self.user, CLIENT)
            return str(session.token)

        return str(self.run(create()))

    def close(self) -> None:
        self.run(self.f.close())
        self.loop.close()


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    h = Harness(make_settings, session_binding="strict")
    try:
        yield h
    finally:
        h.close()


tokens = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(codec="ascii"), min_size=40, max_size=46),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.text(min_size=1, max_size=5).map(lambda s: s * 2_500),
)


@PROPERTY_SETTINGS
@given(token=tokens)
@example(token="")
@example(token="A" * 10_240)
@example(token="\x00" * 43)
@example(token="' OR 1=1; --")
@example(token="\udcff" * 43)
def test_validate_never_raises_for_any_token(harness: Harness, token: str) -> None:
    sessions = harness.f["sessions"]
    assert harness.run(sessions.validate(token, CLIENT)) is None
    assert harness.run(sessions.revoke(token)) is False


def test_a_real_token_still_validates_after_fuzzing(harness: Harness) -> None:
    token = harness.login()
    assert harness.run(harness.f["sessions"].validate(token, CLIENT)) is not None


field_values = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=80),
    st.just("203.0.113.7"),
    st.just(CLIENT.user_agent),
    st.just("203.0.113.7" + "\x00"),
    st.text(min_size=600, max_size=700),
)


def _context_or_refusal(ip: Any, agent: Any) -> Any:
    """A RequestContext of these fields, or — when RequestContext refuses them at construction (it
    is checked when made) — the same fields as the seed's dict, which validate must refuse."""
    try:
        return RequestContext(ip, agent)
    except ValueError:
        return {"ip_address": ip, "user_agent": agent}


request_datas = st.one_of(
    st.dictionaries(
        st.sampled_from(["ip_address", "user_agent", "device_token", "other"]), field_values, max_size=4
    ),
    st.builds(_context_or_refusal, field_values, field_values),
    st.none(),
    st.integers(),
    st.lists(st.text(), max_size=2),
)


@PROPERTY_SETTINGS
@given(request_data=request_datas, use_real=st.booleans())
def test_request_data_is_coerced_or_refused_with_value_error(
    harness: Harness, request_data: Any, use_real: bool
) -> None:
    token = harness.login() if use_real else "not-a-session"
    sessions = harness.f["sessions"]
    try:
        expected = RequestContext.coerce(request_data)
    except ValueError:
        with pytest.raises(ValueError):
            harness.run(sessions.validate(token, request_data))
        return
    result = harness.run(sessions.validate(token, request_data))
    if not use_real:
        assert result is None
        return
    same_client = expected.ip_address == CLIENT.ip_address and expected.user_agent == CLIENT.user_agent
    assert (result is not None) is same_client
    if not same_client:  # strict binding: the mismatch killed the session for everyone
        assert harness.run(sessions.validate(token, CLIENT)) is None


@PROPERTY_SETTINGS
@given(ip=field_values, agent=field_values, device=field_values)
def test_a_request_context_is_valid_once_made(ip: Any, agent: Any, device: Any) -> None:
    """RequestContext checks its fields when made (so coerce() hands one on unchecked): either a
    ValueError naming the field, or a context whose fields a database can store."""
    try:
        ctx = RequestContext(ip, agent, device)
    except ValueError as exc:
        assert "request_data[" in str(exc)
        return
    assert isinstance(ctx.ip_address, str) and ctx.ip_address.strip() and len(ctx.ip_address) <= 45
    assert isinstance(ctx.user_agent, str) and "\x00" not in ctx.user_agent and len(ctx.user_agent) <= 512
    assert RequestContext.coerce(ctx) is ctx


client_text = st.text(max_size=60) | st.sampled_from(["\x00", "a\x00b", "\udcff", "é\ud800"])


@PROPERTY_SETTINGS
@given(ip=client_text.filter(lambda s: s.strip()), agent=client_text)
def test_any_client_can_log_in_and_is_recognised(harness: Harness, ip: str, agent: str) -> None:
    """Client strings the driver or PostgreSQL would refuse (NUL, lone surrogates) are stored cleaned,
    and the same client still matches its session."""
    client = RequestContext(ip[:45], agent)

    async def scenario() -> None:
        async with harness.f["db"].transaction() as tx:
            session = await harness.f["sessions"].create(tx, harness.user, client)
        assert await harness.f["sessions"].validate(session.token, client) is not None
        assert await harness.f["sessions"].revoke(session.token) is True

    harness.run(scenario())
