from fundaments.bootstrap import SERVICE_KEYS


async def test_initialize_starts_every_service(fundaments):
    assert set(fundaments) == set(SERVICE_KEYS)
    assert all(fundaments.started().values())
