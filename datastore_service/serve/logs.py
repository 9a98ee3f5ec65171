"""How `crest serve` logs: a level, and a format: text lines or one JSON object per line.

JSON lines carry `time` (UTC, ISO 8601), `level`, `logger` and `message`, plus the fields a call
site passes as `extra=fields(...)` (the periodic summary passes its counts, a refused call its
peer), so a log shipper can index them without parsing the message.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import datetime, timezone
from typing import Any, TextIO

LEVELS = ("debug", "info", "warning", "error")
FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def fields(**values: Any) -> dict[str, Any]:
    """`extra=` for a log call: values the JSON format writes as their own keys."""
    return {"crest_fields": values}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, "crest_fields", {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(level: str = "info", format: str = "text", stream: TextIO | None = None) -> None:
    """Send every logger's records (ours and grpc's) to `stream` (stderr) at `level` and above."""
    if level not in LEVELS or format not in FORMATS:
        raise ValueError(f"log level must be one of {LEVELS} and format one of {FORMATS}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
