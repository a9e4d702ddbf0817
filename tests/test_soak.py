from tests.soak import POLICY, soak


async def test_soak_1000_records_nothing_lost_nothing_twice():
    # POLICY has more attempts than the default: at ~18% faults per attempt,
    # five attempts would leave a real chance of an honest failure.
    figures = await soak(1000)
    assert figures["problems"] == []
    assert figures["results"] == figures["records"] == 1050  # 1000 stored + 50 missing
    assert figures["succeeded"] == 1000 - 50  # 50 set an unknown custom field
    assert figures["failed"] == 100
    assert figures["max_attempts"] <= POLICY.attempts
    injected = figures["injected"]
    assert all(injected[kind] > 0 for kind in ("500", "503", "429", "drop", "truncate")), injected
