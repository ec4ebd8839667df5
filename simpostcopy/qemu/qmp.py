"""A minimal QMP client over a Unix socket: commands, replies and timestamped events.

Every wait is bounded; a QEMU that closes the socket (it died) or answers with an error
raises ``QmpError`` with QEMU's own message.
"""

from __future__ import annotations

import json
import socket
import time
from typing import Any

from simpostcopy.qemu.errors import QemuError


class QmpError(QemuError):
    """A QMP command failed, or the monitor went away."""


class Qmp:
    """One QMP connection; ``events`` collects every event QEMU sends (with QEMU's own
    timestamp) while commands run or ``wait_event`` waits."""

    def __init__(self, path: str, *, name: str = "qemu", timeout_s: float = 30.0) -> None:
        self.name = name
        self.events: list[dict[str, Any]] = []
        self._buf = b""
        self._next_id = 0
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._sock.connect(path)
                break
            except OSError as exc:
                self._sock.close()
                if time.monotonic() > deadline:
                    raise QmpError(f"{name}: cannot connect to QMP at {path}: {exc}") from None
                time.sleep(0.05)
        greeting = self._read(deadline)
        if "QMP" not in greeting:
            raise QmpError(f"{name}: not a QMP greeting: {greeting}")
        self.version = greeting["QMP"].get("version", {}).get("qemu", {})
        self.execute("qmp_capabilities")

    def close(self) -> None:
        self._sock.close()

    def _read(self, deadline: float) -> dict[str, Any]:
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QmpError(f"{self.name}: no answer from QMP in time")
            self._sock.settimeout(left)
            try:
                chunk = self._sock.recv(65536)
            except TimeoutError:
                continue
            except OSError as exc:
                raise QmpError(f"{self.name}: QMP connection failed: {exc}") from None
            if not chunk:
                raise QmpError(f"{self.name}: QEMU closed its QMP socket (it exited)")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            raise QmpError(f"{self.name}: bad QMP message {line[:200]!r}") from None

    def execute(self, command: str, timeout_s: float = 30.0, **arguments: Any) -> Any:
        """Run ``command``; its ``return`` value, or ``QmpError`` with QEMU's error."""
        self._next_id += 1
        msg: dict[str, Any] = {"execute": command, "id": self._next_id}
        if arguments:
            msg["arguments"] = arguments
        try:
            self._sock.sendall(json.dumps(msg).encode() + b"\n")
        except OSError as exc:
            raise QmpError(f"{self.name}: cannot send {command}: {exc}") from None
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._read(deadline)
            if "event" in reply:
                self.events.append(reply)
                continue
            if reply.get("id") != self._next_id:
                continue
            if "error" in reply:
                err = reply["error"]
                raise QmpError(f"{self.name}: {command} failed: {err.get('desc', err)}")
            return reply.get("return")

    def wait_event(self, name: str, timeout_s: float, **data: Any) -> dict[str, Any]:
        """The next (or an already received) event ``name`` whose data match ``data``."""
        for event in self.events:
            if event["event"] == name and _matches(event, data):
                return event
        deadline = time.monotonic() + timeout_s
        while True:
            event = self._read(deadline)
            if "event" in event:
                self.events.append(event)
                if event["event"] == name and _matches(event, data):
                    return event


def _matches(event: dict[str, Any], data: dict[str, Any]) -> bool:
    got = event.get("data", {})
    return all(got.get(k) == v for k, v in data.items())


def event_time_s(event: dict[str, Any]) -> float:
    """QEMU's timestamp of an event, in seconds (host wall clock)."""
    ts = event["timestamp"]
    return ts["seconds"] + ts["microseconds"] * 1e-6
