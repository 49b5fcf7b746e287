"""``GET /billing/vouchers/{code}?at=TIMESTAMP``: the voucher as it was, folded from the stream.

Unlike the other reads (Postgres read models), this one reads the code's events from JetStream
(``timetravel.voucher_as_of``): the read models only keep the present.
"""

from __future__ import annotations

from voucher_ledger.commands.eventstore import EventStoreUnavailable
from voucher_ledger.http.errors import ApiError
from voucher_ledger.http.models import VoucherDetail
from voucher_ledger.projections.timetravel import BadTimestamp, parse_timestamp, voucher_as_of
from voucher_ledger.service.stack import StreamReader


def parse_at(values: list[str]) -> str:
    if len(values) != 1:
        raise ApiError(400, "at must be given once")
    return values[0]


async def voucher_detail_at(reader: StreamReader, code: str, raw_at: str) -> VoucherDetail:
    """The detail body of ``code`` as of ``raw_at``; 400 for a bad time, 404 before the
    voucher existed, 503 when the event stream does not answer."""
    try:
        at = parse_timestamp(raw_at)
    except BadTimestamp as exc:
        raise ApiError(400, str(exc)) from exc
    try:
        # The service's one reader: a store per request would leave its direct-get inbox
        # subscription behind, one per request.
        state = await voucher_as_of(reader.store, reader.layout, code, at=at)
    except EventStoreUnavailable as exc:
        raise ApiError(503, "the ledger is unavailable; retry later", {"Retry-After": "2"}) from exc
    if state is None:
        raise ApiError(404, "voucher not found at that time")
    return VoucherDetail.model_validate(state.detail())
