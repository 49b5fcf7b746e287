"""Fixtures shared by the end-to-end tests."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.fakes.stripe_server import FakeStripe


@pytest.fixture(scope="module")
async def fake_stripe() -> AsyncIterator[FakeStripe]:
    """The local fake Stripe API (real SDK, real signatures), one per test module."""
    fake = FakeStripe()
    await fake.start()
    yield fake
    await fake.stop()
