"""schemathesis over the live ``/openapi.json`` of a real ``voucher-ledger serve`` process.

Every check schemathesis has (no 5xx, documented status codes, content types and headers,
responses valid against the documented schemas, schema-invalid requests refused with a 4xx,
schema-valid ones accepted, auth really enforced, ...), in every phase (examples, coverage,
fuzzing, stateful), once with an issuer token and once without. The few cases a schema cannot
express are listed, with their reason, in ``tests/e2e/schemathesis.toml``.

``VL_SCHEMATHESIS_EXAMPLES`` (default 8 per operation and phase) makes the run larger, with a
time limit to match: ``VL_SCHEMATHESIS_EXAMPLES=100 pytest tests/e2e/test_openapi_schemathesis.py``
(about 5 minutes; 1,703 cases without a token and 3,191 with one on the run that was recorded).
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from tests.e2e.api_helpers import ApiServer, running_server
from tests.e2e.checkout_helpers import stripe_env
from tests.fakes.stripe_server import FakeStripe

EXAMPLES = int(os.environ.get("VL_SCHEMATHESIS_EXAMPLES", "8"))
CONFIG = Path(__file__).with_name("schemathesis.toml")
REPO = Path(__file__).resolve().parents[2]
OPERATIONS = 42  # every documented (method, path); test_api pins the list
TIME_LIMIT = max(300, EXAMPLES * 6)  # seconds per run (100 examples: about 3.5 min here)


@pytest.fixture(scope="module")
async def server(
    tmp_path_factory: pytest.TempPathFactory, nats_url: str, pg_url: str
) -> AsyncIterator[ApiServer]:
    fake = FakeStripe()
    await fake.start()
    try:
        async with running_server(
            tmp_path_factory.mktemp("schemathesis"),
            nats_url,
            pg_url,
            "st",
            SETTINGS_KEY=Fernet.generate_key().decode(),  # PUT /billing/admin/settings stores
            HUB="true",  # the global voucher operations answer (elsewhere: 404 for all of them)
            **stripe_env(fake),
        ) as srv:
            yield srv
    finally:
        await fake.stop()


async def run_schemathesis(server: ApiServer, *extra: str) -> tuple[int, str]:
    st = Path(sys.executable).with_name("schemathesis")
    proc = await asyncio.create_subprocess_exec(
        str(st),
        "--config-file",
        str(CONFIG),
        "run",
        server.url("/openapi.json"),
        "--max-examples",
        str(EXAMPLES),
        "--no-color",
        *extra,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "SCHEMATHESIS_HOOKS": ""},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), TIME_LIMIT - 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def summary(output: str) -> tuple[int, int]:
    """(operations tested, test cases generated) from schemathesis' summary."""
    tested = re.search(r"Tested: (\d+)", output)
    generated = re.search(r"(\d+) generated", output)
    assert tested, output[-3000:]
    assert generated, output[-3000:]
    return int(tested.group(1)), int(generated.group(1))


# Without a token every issuer route must answer a documented 401: the fuzzing phase shows it
# (the coverage and stateful phases would only repeat the same 401s, at CI's expense).
RUNS = {
    "issuer": ["--phases", "examples,coverage,fuzzing,stateful"],
    "anonymous": ["--phases", "examples,fuzzing"],
}


@pytest.mark.timeout(TIME_LIMIT)
@pytest.mark.parametrize("who", sorted(RUNS))
async def test_schemathesis_finds_nothing_over_the_live_openapi_document(
    server: ApiServer, who: str
) -> None:
    auth = ["-H", f"Authorization: Bearer {server.token()}"] if who == "issuer" else []
    code, output = await run_schemathesis(server, *RUNS[who], *auth)
    tested, generated = summary(output)
    print(f"schemathesis ({who}): {tested} operations, {generated} generated test cases")
    assert code == 0, output[-12000:]
    assert tested == OPERATIONS, output[-3000:]
    # ten operations take no input at all (one case each); every other one got its examples
    assert generated >= (OPERATIONS - 10) * EXAMPLES, output[-3000:]
    log = server.process.output()
    assert "unhandled error" not in log
    assert "Traceback" not in log
