"""How the processes log: LOG_FORMAT=text (a line a person reads) or json (one JSON object per
line, for log aggregators: time, level, logger, message, and an access line's fields)."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line. ``role`` names the process (``processors`` for
    serve's processor child); an exception's traceback, if a record carries one, is a field."""

    def __init__(self, role: str = "") -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.role:
            doc["process"] = self.role
        fields = getattr(record, "access_fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


def formatter(log_format: str, role: str = "") -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter(role)
    prefix = f"[{role}] " if role else ""
    return logging.Formatter(f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
