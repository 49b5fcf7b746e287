"""The seed document's four-step smoke test, run as written (curl + jq in bash) against
``voucher-ledger serve`` on the embedded default, with a token from the real ``token`` command."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.helpers import ServiceProcess, clean_env, free_port, processes_using, wait_http

SMOKE_SCRIPT = """\
# 1. Schema check — list vouchers (will be empty on a fresh Sovereign).
curl -s -H "Authorization: Bearer $TOKEN" "$SOV/billing/vouchers/list" | jq .
# Expected: []
# 2. Endpoint shape check — issue a voucher, confirm round-trip.
curl -s -X POST -H "Authorization: Bearer $TOKEN" \\
-H "Content-Type: application/json" \\
-d '{"code":"SMOKE-TEST","credit_omr":10,"description":"smoke","active":true,"max_redemptions":1}' \\
"$SOV/billing/vouchers/issue" | jq .
# Expected: { "code": "SMOKE-TEST", "credit_omr": 10, ... }
# 3. Public preview — no auth required.
curl -s -X POST -H "Content-Type: application/json" \\
-d '{"code":"SMOKE-TEST"}' \\
"$SOV/billing/vouchers/redeem-preview" | jq .
# Expected: { "code":"SMOKE-TEST", "credit_omr":10, "active":true, "accepting_redemptions":true }
# 4. Cleanup — revoke (soft-delete).
curl -s -X DELETE -H "Authorization: Bearer $TOKEN" \\
"$SOV/billing/vouchers/revoke/SMOKE-TEST" | jq .
# Expected: { "ok": true }
"""  # noqa: E501 - the seed's script, as written


def smoke_steps(script: str) -> list[str]:
    """The script's four steps: each numbered comment starts one, up to its '# Expected' line."""
    steps: list[list[str]] = []
    for line in script.splitlines():
        if line.startswith("# ") and line[2:3].isdigit():
            steps.append([])
        elif line.startswith("# Expected"):
            continue
        elif steps:
            steps[-1].append(line)
    return ["\n".join(lines) for lines in steps]


def test_smoke_script_has_four_curl_steps() -> None:
    steps = smoke_steps(SMOKE_SCRIPT)
    assert len(steps) == 4
    assert all(step.lstrip().startswith("curl -s") and step.endswith("| jq .") for step in steps)


def run_step(step: str, env: dict[str, str]) -> object:
    done = subprocess.run(
        ["/bin/bash", "-o", "pipefail", "-c", step],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (step, done.stdout, done.stderr)
    return json.loads(done.stdout)


async def test_seed_four_step_smoke_test_runs_as_written_on_the_embedded_default(
    tmp_path: Path,
) -> None:
    for tool in ("curl", "jq", "bash"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed: the seed's smoke test needs curl, jq and bash")
    data_dir = tmp_path / "sovereign"
    port = free_port()
    env = clean_env()
    for name in ("JWT_SECRET", "SUBJECT_PREFIX", "DATA_DIR", "PORT"):
        env.pop(name, None)  # the newcomer's environment: nothing configured
    service = ServiceProcess(
        ["serve", "--port", str(port), "--data-dir", str(data_dir)], env, tmp_path / "serve.log"
    )
    service.start()
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", service, timeout=90)
        minted = await asyncio.to_thread(
            subprocess.run,
            [
                sys.executable,
                "-m",
                "voucher_ledger.cli",
                "token",
                "--sub",
                "admin",
                "--role",
                "superadmin",
                "--data-dir",
                str(data_dir),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        assert token.count(".") == 2, minted.stdout

        step_env = {**env, "SOV": f"http://127.0.0.1:{port}", "TOKEN": token}
        schema, issued, preview, cleanup = [
            await asyncio.to_thread(run_step, step, step_env) for step in smoke_steps(SMOKE_SCRIPT)
        ]
        assert schema == []
        assert isinstance(issued, dict)
        assert issued["code"] == "SMOKE-TEST"
        assert issued["credit_omr"] == 10
        assert issued["description"] == "smoke"
        assert issued["active"] is True
        assert issued["max_redemptions"] == 1
        assert isinstance(preview, dict)
        assert {
            k: preview[k] for k in ("code", "credit_omr", "active", "accepting_redemptions")
        } == {"code": "SMOKE-TEST", "credit_omr": 10, "active": True, "accepting_redemptions": True}
        assert cleanup == {"ok": True}

        service.signal(signal.SIGINT)
        assert await service.wait(60) == 0, service.output()[-4000:]
        assert "shutting down" in service.output()
        # uvloop is a dependency: a newcomer's serve runs on it, unless EVENT_LOOP=asyncio
        # (CI's run with the fast paths off takes asyncio's own loop).
        loop = "asyncio" if env.get("EVENT_LOOP") == "asyncio" else "uvloop"
        assert f"(event loop: {loop})" in service.output()
        assert processes_using(data_dir) == [], "nats-server or postgres left running"
    finally:
        service.kill()
        for proc in processes_using(data_dir):  # only the servers this test started, under its dir
            proc.kill()
    assert (data_dir / "jwt-secret").exists()
    assert os.stat(data_dir / "jwt-secret").st_mode & 0o077 == 0
