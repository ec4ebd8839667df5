"""Real migrations' numbers in simpostcopy's summary schema.

Reads the harness's run record, a ``{"source": ..., "destination": ...}`` pair of
``query-migrate`` replies, or a plain ``query-migrate`` reply from any QEMU (source side
only).  The mapping (QEMU's units to seconds and bytes; which side each comes from):

| summary key | QEMU field (side) |
|---|---|
| total_time_s, downtime_s, setup_time_s | total-time, downtime, setup-time (source, ms) |
| postcopy_requests | ram.postcopy-requests (source) |
| precopy_bytes, downtime_bytes | ram.precopy-bytes, downtime-bytes (source) |
| postcopy_bytes | ram.postcopy-bytes (source) |
| total_bytes | ram.transferred (source) |
| precopy_rounds | ram.dirty-sync-count - 1 (source; the last sync is the stop's) |
| blocktime_s, vcpu_blocktime_s | postcopy-blocktime, postcopy-vcpu-blocktime (destination, ms) |
| latency_mean_s | postcopy-latency (destination, ns; QEMU >= 9.2) |
| switchover_time_s | MIGRATION event postcopy-active minus setup (source, QEMU's clock) |
| guest_longest_stall_s, guest_touch_rate_per_s | the test guest's serial console (harness) |

Fields a QEMU does not report are NaN.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from simpostcopy.qemu.errors import QemuError
from simpostcopy.qemu.qmp import event_time_s

NAN = math.nan


def load(path: str | Path) -> dict[str, Any]:
    """The JSON at ``path`` as a run record (a plain reply becomes its source side)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise QemuError(f"cannot read migration record {str(path)!r}: {exc}") from None
    if not isinstance(data, dict):
        raise QemuError(f"{path}: expected a JSON object (a query-migrate reply or a run record)")
    if "return" in data and isinstance(data["return"], dict):  # a raw QMP reply
        data = data["return"]
    if "source" not in data:
        if "status" not in data:
            raise QemuError(f"{path}: neither a query-migrate reply nor a run record")
        data = {"source": data, "destination": {}}
    return data


def _ms(value: Any) -> float:
    return value / 1e3 if isinstance(value, int | float) else NAN


def summary(record: dict[str, Any]) -> dict[str, Any]:
    """The summary of a real migration, keyed as ``Result.summary``."""
    src, dst = record.get("source") or {}, record.get("destination") or {}
    if src.get("status") != "completed":
        raise QemuError(f"the migration did not complete (source status {src.get('status')!r})")
    ram = src.get("ram", {})
    syncs = ram.get("dirty-sync-count")
    latency_ns = dst.get("postcopy-latency")
    out: dict[str, Any] = {
        "total_time_s": _ms(src.get("total-time")),
        "setup_time_s": _ms(src.get("setup-time")),
        "downtime_s": _ms(src.get("downtime")),
        "switchover_time_s": _switchover(record),
        "postcopy_requests": ram.get("postcopy-requests", NAN),
        "precopy_rounds": syncs - 1 if isinstance(syncs, int) else NAN,
        "precopy_bytes": ram.get("precopy-bytes", NAN),
        "downtime_bytes": ram.get("downtime-bytes", NAN),
        "postcopy_bytes": ram.get("postcopy-bytes", NAN),
        "total_bytes": ram.get("transferred", NAN),
        "blocktime_s": _ms(dst.get("postcopy-blocktime")),
        "vcpu_blocktime_s": [_ms(x) for x in dst.get("postcopy-vcpu-blocktime", [])],
        "latency_mean_s": latency_ns * 1e-9 if isinstance(latency_ns, int | float) else NAN,
        "mbps": ram.get("mbps", NAN),
    }
    guest = record.get("guest") or {}
    out["guest_longest_stall_s"] = guest.get("longest_stall_s", NAN)
    out["guest_touch_rate_per_s"] = guest.get("touch_rate_per_s", NAN)
    return out


def _switchover(record: dict[str, Any]) -> float:
    """Setup → postcopy-active on the source, by QEMU's own event timestamps."""
    times = {}
    for event in record.get("events", []):
        if event.get("side") == "source" and event.get("event") == "MIGRATION":
            status = event.get("data", {}).get("status")
            times.setdefault(status, event_time_s(event))
    if "setup" in times and "postcopy-active" in times:
        return times["postcopy-active"] - times["setup"]
    return NAN
