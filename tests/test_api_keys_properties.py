"""Property tests of validate_api_key's untrusted inputs: any token text, any request data. It
answers None or the key, and raises only InvalidArgument for request data it needs and cannot read."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fundaments import initialize_fundaments
from fundaments.api_keys import ALPHABET, _checksum
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import InvalidArgument

CLIENT = {"ip_address": "198.51.100.23", "user_agent": "prop/1.0"}
PROPERTY_SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


class Harness:
    """Services on their own event loop, so Hypothesis can drive them from a plain function."""

    def __init__(self, make_settings: Callable[..., Settings]) -> None:
        self.loop = asyncio.new_event_loop()
        self.clock = ManualClock()
        self.f: Fundaments = self.run(
            initialize_fundaments(make_settings(), clock=self.clock, configure_logs=False)
        )
        security = self.f["security"]
        self.run(security.create_role("invoker", ["models:invoke"]))
        user = self.run(security.register_user("prop-owner", "Prop-Passphrase-2026-xyz", roles=["invoker"]))
        created = self.run(
            security.create_api_key(
                user.id, name="p", scopes=["models:invoke"], allowed_ips=["198.51.100.0/24"]
            )
        )
        self.token: str = created.token
        self.key_id: str = created.key.id

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def validate(self, token: object, request_data: Any = CLIENT) -> Any:
        return self.run(self.f["security"].validate_api_key(token, request_data))

    def close(self) -> None:
        self.run(self.f.close())
        self.loop.close()


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    h = Harness(make_settings)
    try:
        yield h
    finally:
        h.close()


def well_formed(random_part: str) -> str:
    return "fk_" + random_part + _checksum("fk_" + random_part)


tokens = st.one_of(
    st.text(max_size=100),
    st.text(alphabet=st.characters(codec="ascii"), min_size=41, max_size=41),
    st.text(alphabet=ALPHABET, min_size=32, max_size=32).map(well_formed),  # passes the checksum
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
    st.text(min_size=1, max_size=5).map(lambda s: s * 2_000),
)


@PROPERTY_SETTINGS
@given(token=tokens)
@example(token="fk_" + "é" * 38)
@example(token="\x00" * 41)
def test_property_any_token_text_is_none_or_the_key_never_an_error(harness: Harness, token: str) -> None:
    found = harness.validate(token)
    assert found is None or (token == harness.token and found.id == harness.key_id)


request_datas = st.one_of(
    st.dictionaries(st.sampled_from(["ip_address", "user_agent", "device_token"]), st.text(max_size=60)),
    st.dictionaries(st.text(max_size=5), st.one_of(st.none(), st.integers(), st.text(max_size=5))),
    st.none(),
    st.integers(),
    st.text(max_size=10),
)


@PROPERTY_SETTINGS
@given(request_data=request_datas, real=st.booleans())
@example(request_data={"ip_address": "198.51.100.1", "user_agent": "x"}, real=True)
def test_property_any_request_data_is_an_answer_or_invalid_argument(
    harness: Harness, request_data: Any, real: bool
) -> None:
    token = harness.token if real else well_formed("Q" * 32)
    try:
        found = harness.validate(token, request_data)
    except InvalidArgument:
        return
    assert found is None or found.id == harness.key_id
