"""One settings object; plain environment names, as the seed service used them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# A subject token, the same rule as ``jetstream.layout.PREFIX_PATTERN`` (settings depend on nothing
# else of the package; tests/unit/test_settings.py checks that the two accept the same prefixes).
PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
# A JetStream domain (a Sovereign's name): one subject token, as $JS.<domain>.API names it.
DOMAIN_PATTERN = PREFIX_PATTERN
HUB_DOMAIN = "hub"

# Set by `serve` in its processor child's environment: the child goes when its parent goes, and
# its log lines say they are the processors'.
PARENT_ENV = "VL_WORKER_PARENT"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore")

    # External servers. Both unset = embedded: the service starts its own nats-server and
    # PostgreSQL under DATA_DIR.
    nats_url: str | None = Field(default=None, alias="NATS_URL")
    database_url: str | None = Field(default=None, alias="DATABASE_URL")
    # How long to keep trying a NATS that does not answer at startup before giving up.
    nats_connect_timeout: float = Field(default=20.0, alias="NATS_CONNECT_TIMEOUT", gt=0)
    # How this process authenticates to an external NATS (README "Configuration"): a creds file
    # (user JWT + nkey seed), an nkey seed file, a user and password, or a token; and TLS (the
    # CA that signed the server's certificate, a client certificate and its key). The embedded
    # default ignores them: it generates an identity per role under DATA_DIR/nats/auth.
    nats_creds: Path | None = Field(default=None, alias="NATS_CREDS")
    nats_nkey_seed: Path | None = Field(default=None, alias="NATS_NKEY_SEED")
    nats_user: str | None = Field(default=None, alias="NATS_USER")
    nats_password: SecretStr | None = Field(default=None, alias="NATS_PASSWORD")
    nats_token: SecretStr | None = Field(default=None, alias="NATS_TOKEN")
    nats_tls_ca: Path | None = Field(default=None, alias="NATS_TLS_CA")
    nats_tls_cert: Path | None = Field(default=None, alias="NATS_TLS_CERT")
    nats_tls_key: Path | None = Field(default=None, alias="NATS_TLS_KEY")

    data_dir: Path = Field(default=Path(".voucher-ledger"), alias="DATA_DIR")
    host: str = Field(default="127.0.0.1", alias="HOST")
    port: int = Field(default=8080, alias="PORT", ge=0, le=65535)

    subject_prefix: str = Field(default="ledger", alias="SUBJECT_PREFIX")
    streams_file: Path | None = Field(default=None, alias="STREAMS_FILE")
    event_replicas: int | None = Field(default=None, alias="EVENT_REPLICAS", ge=1, le=5)
    command_replicas: int | None = Field(default=None, alias="COMMAND_REPLICAS", ge=1, le=5)

    run_processors: bool = Field(default=True, alias="RUN_PROCESSORS")
    run_projectors: bool = Field(default=True, alias="RUN_PROJECTORS")
    serve_http: bool = Field(default=True, alias="SERVE_HTTP")
    processor_instance_id: str | None = Field(default=None, alias="PROCESSOR_INSTANCE_ID")
    # `serve` runs its command processors in a child process (a core of their own: see
    # voucher_ledger/worker.py); false keeps them in the serve process.
    processor_process: bool = Field(default=True, alias="PROCESSOR_PROCESS")
    command_timeout: float = Field(default=10.0, alias="COMMAND_TIMEOUT", gt=0)
    max_credit_baisa: int = Field(default=10_000_000, alias="MAX_CREDIT_BAISA", gt=0)

    # Auth. HS256 with JWT_SECRET (>= 32 bytes; the embedded default generates one and keeps it
    # in DATA_DIR/jwt-secret). Optional RS256 via a JWKS endpoint (Keycloak).
    jwt_secret: str | None = Field(default=None, alias="JWT_SECRET", repr=False)
    jwks_url: str | None = Field(default=None, alias="JWKS_URL")
    jwt_issuer: str | None = Field(default=None, alias="JWT_ISSUER")
    jwt_audience: str | None = Field(default=None, alias="JWT_AUDIENCE")
    # The token claim listing the caller's Organizations (tenant ids); a Keycloak group mapper
    # may use another name. Without the claim in a token, an account belongs to its first user.
    orgs_claim: str = Field(default="orgs", alias="ORGS_CLAIM", min_length=1)

    # HTTP
    preview_rate_per_minute: int = Field(default=30, alias="PREVIEW_RATE_PER_MINUTE", ge=1)
    preview_burst: int = Field(default=10, alias="PREVIEW_BURST", ge=1)
    trust_forwarded_for: bool = Field(default=False, alias="TRUST_FORWARDED_FOR")
    read_your_writes_timeout: float = Field(default=5.0, alias="READ_YOUR_WRITES_TIMEOUT", gt=0)
    body_limit: int = Field(default=64 * 1024, alias="BODY_LIMIT", ge=1024)
    # Where /redeem's "use this code" button goes after storing the code for checkout (the
    # seed's marketplace went to /plans). Empty: the page stays and says the code is saved.
    redeem_continue_url: str = Field(default="", alias="REDEEM_CONTINUE_URL", max_length=2000)

    # Checkout. The catalog comes from CATALOG_URL (the seed's /catalog/plans and
    # /catalog/addons) or a YAML file (CATALOG_FILE, or `serve --catalog FILE`); neither set
    # means the sample catalog shipped in the package.
    catalog_file: Path | None = Field(default=None, alias="CATALOG_FILE")
    catalog_url: str | None = Field(default=None, alias="CATALOG_URL")
    catalog_timeout: float = Field(default=3.0, alias="CATALOG_TIMEOUT", gt=0)
    # Stripe: unset secret key = no card payments (a checkout that needs one answers 503).
    stripe_secret_key: str | None = Field(default=None, alias="STRIPE_SECRET_KEY", repr=False)
    stripe_webhook_secret: str | None = Field(
        default=None, alias="STRIPE_WEBHOOK_SECRET", repr=False
    )
    stripe_public_key: str | None = Field(default=None, alias="STRIPE_PUBLIC_KEY")
    # The key the Stripe secrets set from the admin settings are encrypted with (Fernet: 32
    # url-safe base64 bytes); unset, the embedded default generates DATA_DIR/settings.key, and
    # with an external DATABASE_URL secrets cannot be stored (the STRIPE_* variables still work).
    settings_key: SecretStr | None = Field(default=None, alias="SETTINGS_KEY", repr=False)
    # How long an instance keeps the stored Stripe keys before reading them again (another
    # instance's PUT /billing/admin/settings reaches it within this time).
    settings_refresh: float = Field(default=5.0, alias="SETTINGS_REFRESH_SECONDS", gt=0)
    stripe_api_base: str | None = Field(default=None, alias="STRIPE_API_BASE")
    stripe_currency: str = Field(default="omr", alias="STRIPE_CURRENCY", pattern=r"^[a-z]{3}$")
    stripe_timeout: float = Field(default=20.0, alias="STRIPE_TIMEOUT", gt=0)
    success_url: str = Field(default="http://localhost:8080/checkout/success", alias="SUCCESS_URL")
    cancel_url: str = Field(default="http://localhost:8080/checkout/cancel", alias="CANCEL_URL")
    sovereign_fqdn: str = Field(default="", alias="SOVEREIGN_FQDN", max_length=253)
    webhook_body_limit: int = Field(default=1024 * 1024, alias="WEBHOOK_BODY_LIMIT", ge=512 * 1024)
    # A checkout still half-way after this many seconds is finished or compensated by the
    # recovery loop (unset: three command timeouts plus grace). RUN_RECOVERY=false disables it.
    checkout_recovery_after: float | None = Field(
        default=None, alias="CHECKOUT_RECOVERY_AFTER", gt=0
    )
    checkout_recovery_interval: float = Field(default=5.0, alias="CHECKOUT_RECOVERY_INTERVAL", gt=0)
    run_recovery: bool = Field(default=True, alias="RUN_RECOVERY")
    # How often expired credit is looked for (and leaves its account: wallet.credit_expired);
    # with the projection's lag, within a few seconds of its expiry. Runs with RUN_RECOVERY.
    credit_expiry_interval: float = Field(default=2.0, alias="CREDIT_EXPIRY_INTERVAL", gt=0)

    # Hub and Sovereigns (README "Hub and Sovereigns", service/federation.py). HUB=true: this
    # serve is OpenOva's hub; its embedded nats-server is the JetStream domain "hub" and opens
    # a leafnode port (LEAF_LISTEN, the password LEAF_PASSWORD or DATA_DIR/nats/leaf-password);
    # SOVEREIGNS lists the Sovereigns whose event streams the hub's trail stream sources.
    # SOVEREIGN_NAME (a JetStream domain name) with HUB_LEAF_URL: this serve is a Sovereign;
    # its embedded nats-server connects to the hub's as a leaf node with its own domain.
    hub: bool = Field(default=False, alias="HUB")
    sovereigns: str = Field(default="", alias="SOVEREIGNS", max_length=2000)
    leaf_listen: str = Field(
        default="127.0.0.1:7422", alias="LEAF_LISTEN", pattern=r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$"
    )
    leaf_password: SecretStr | None = Field(default=None, alias="LEAF_PASSWORD", repr=False)
    # At a hub: a directory of each Sovereign's public signing key, <name>.pub (what
    # `voucher-ledger signing-key` prints on that Sovereign); the hub's allocator then checks
    # every Sovereign event it reads from the trail, and stops counting a Sovereign whose
    # trail fails. Unset: the trail's proofs are carried, not checked.
    sovereign_keys_dir: Path | None = Field(default=None, alias="SOVEREIGN_KEYS_DIR")
    sovereign_name: str | None = Field(default=None, alias="SOVEREIGN_NAME")
    hub_leaf_url: SecretStr | None = Field(default=None, alias="HUB_LEAF_URL", repr=False)

    nats_server_bin: str | None = Field(default=None, alias="NATS_SERVER_BIN")
    log_level: str = Field(default="INFO", alias="LOG_LEVEL")
    # The fast paths into nats.py's and aiohttp's private internals (README "Fast paths");
    # false: every one of them takes the libraries' public path.
    fast_paths: bool = Field(default=True, alias="FAST_PATHS")
    # The event loop every command runs on (README "Event loop"): uvloop, libuv's loop with its
    # transports in C (a checkout's CPU in serve and its processor process fell by about a
    # fifth, bench/README.md), or asyncio's own. auto: uvloop where it is installed (it is a
    # dependency on Linux and macOS), else asyncio's.
    event_loop: Literal["auto", "uvloop", "asyncio"] = Field(default="auto", alias="EVENT_LOOP")
    # Guessed promo codes at checkout (unknown, revoked, malformed), per client address
    # and per customer, across every serve instance (like PREVIEW_RATE_PER_MINUTE/PREVIEW_BURST:
    # a token bucket; past it, a checkout with a promo code answers 429 with Retry-After).
    promo_refusal_rate_per_minute: int = Field(
        default=2, alias="PROMO_REFUSAL_RATE_PER_MINUTE", ge=1
    )
    promo_refusal_burst: int = Field(default=10, alias="PROMO_REFUSAL_BURST", ge=1)

    # The ledger's Ed25519 signing key (README "Subjects and events"): the processors sign every
    # append (a hash chain per aggregate, one signature per append on each aggregate's last
    # event) with SIGNING_KEY_FILE (unset: DATA_DIR/ledger-signing.key, generated at the first
    # start, mode 0600); the projectors, the HTTP side and the tools check events with
    # SIGNING_PUBLIC_KEY_FILE (unset: the public half of the signing key). On by default; once
    # a stream is signed, keep it on: events written after the cut-over without a proof are
    # refused by every reader that checks.
    ledger_signing: bool = Field(default=True, alias="LEDGER_SIGNING")
    signing_key_file: Path | None = Field(default=None, alias="SIGNING_KEY_FILE")
    signing_public_key_file: Path | None = Field(default=None, alias="SIGNING_PUBLIC_KEY_FILE")

    # text: a line a person reads; json: one JSON object per line (time, level, logger, message,
    # and an access line's fields) for log aggregators. serve and its processor child.
    log_format: Literal["text", "json"] = Field(default="text", alias="LOG_FORMAT")

    @field_validator("subject_prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not PREFIX_PATTERN.fullmatch(value):
            raise ValueError("SUBJECT_PREFIX must match [a-z][a-z0-9_]{0,31}")
        return value

    @field_validator("sovereign_name")
    @classmethod
    def _sovereign_name(cls, value: str | None) -> str | None:
        if value is not None and (not DOMAIN_PATTERN.fullmatch(value) or value == HUB_DOMAIN):
            raise ValueError(
                f"SOVEREIGN_NAME must match [a-z][a-z0-9_]{{0,31}} and not be {HUB_DOMAIN!r}"
            )
        return value

    @field_validator("sovereigns")
    @classmethod
    def _sovereigns(cls, value: str) -> str:
        for name in (part.strip() for part in value.split(",") if part.strip()):
            if not DOMAIN_PATTERN.fullmatch(name) or name == HUB_DOMAIN:
                raise ValueError(f"SOVEREIGNS: {name!r} is not a Sovereign name")
        return value

    @model_validator(mode="after")
    def _federation(self) -> Settings:
        if self.hub and (self.sovereign_name or self.hub_leaf_url):
            raise ValueError("HUB=true and SOVEREIGN_NAME/HUB_LEAF_URL: a serve is one or other")
        if self.hub_leaf_url is not None and not self.sovereign_name:
            raise ValueError("HUB_LEAF_URL needs SOVEREIGN_NAME (the Sovereign's domain)")
        if self.hub_leaf_url is not None:
            url = urlsplit(self.hub_leaf_url.get_secret_value())
            if url.scheme not in ("nats-leaf", "nats", "tls") or not url.hostname:
                raise ValueError("HUB_LEAF_URL must be a nats-leaf://[user:password@]host:port URL")
        if self.sovereigns and not self.hub:
            raise ValueError("SOVEREIGNS is the hub's list: set HUB=true with it")
        if self.sovereign_keys_dir is not None and not self.hub:
            raise ValueError("SOVEREIGN_KEYS_DIR is the hub's: set HUB=true with it")
        return self

    @property
    def sovereign_names(self) -> list[str]:
        return sorted({p.strip() for p in self.sovereigns.split(",") if p.strip()})

    @property
    def jetstream_domain(self) -> str | None:
        """The JetStream domain of this serve's NATS: "hub", the Sovereign's name, or none."""
        if self.hub:
            return HUB_DOMAIN
        return self.sovereign_name

    @field_validator("redeem_continue_url")
    @classmethod
    def _continue_url(cls, value: str) -> str:
        value = value.strip()
        local = value.startswith("/") and not value.startswith("//")
        if value and not (local or re.match(r"^https?://[^\s/]+", value)):
            raise ValueError("REDEEM_CONTINUE_URL must be a path (/plans) or an http(s) URL")
        if any(ord(ch) < 33 for ch in value):
            raise ValueError("REDEEM_CONTINUE_URL must not contain spaces or control characters")
        return value

    @property
    def recovery_after(self) -> float:
        if self.checkout_recovery_after is not None:
            return self.checkout_recovery_after
        return 3 * self.command_timeout + 10.0

    @property
    def embedded_nats(self) -> bool:
        return not self.nats_url

    @property
    def embedded_postgres(self) -> bool:
        return not self.database_url


def nats_servers(url: str) -> list[str]:
    """``NATS_URL`` as nats.py's server list: one URL, or several separated by commas (the
    nodes of a cluster, tried in turn and on every reconnect)."""
    servers = [part.strip() for part in url.split(",") if part.strip()]
    if not servers:
        raise ValueError("NATS_URL names no server")
    return servers


def redact_url(url: str) -> str:
    """A URL fit for a log line: the password is replaced by ``***`` (in every URL of a
    comma-separated list)."""
    if "," in url:
        return ",".join(redact_url(part.strip()) for part in url.split(","))
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))
