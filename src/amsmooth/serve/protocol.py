"""Connection limits uvicorn does not have: a deadline for a request's head and one for its body, and a cap on
open connections (issue 28: partial headers, a slow body or hundreds of idle sockets held the server).

uvicorn's ``timeout_keep_alive`` closes a connection that stays idle *after* a response, but nothing bounds a
connection that never sends a complete request: not a silent socket, not headers sent a byte at a time, not a
body that never ends. ``GuardedH11Protocol`` is uvicorn's own h11 protocol with two clocks read from h11's state
of the client: while a request head is incomplete, ``head_timeout`` seconds from the connection (or from the
first byte after a response); while its body is incomplete, ``body_timeout`` seconds from the head. The clocks
are not restarted by more bytes, so dripping data does not extend them. On expiry the client gets 408 (when
nothing was answered yet) and the connection is closed. Past ``max_connections`` open connections a new one gets
503 and is closed at once. Every such answer is the API's one error shape, ``{"error": "<one line>"}``, and so
is uvicorn's answer to a malformed request (its own is plain text).
"""
from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

MAX_HEAD_BYTES = 16 * 1024      # a request head larger than this is malformed (h11 answers 400)


@dataclass(frozen=True)
class ConnectionLimits:
    """Seconds a client may take, and how many connections may be open at once."""

    head_timeout: float = 5.0       # from connection (or first byte after a response) to the end of the head
    body_timeout: float = 10.0      # from the end of the head to the end of the body
    keep_alive: float = 5.0         # idle after a response before the connection is closed (uvicorn's own)
    max_connections: int = 32       # open connections; one more is answered 503 and closed

    def problems(self) -> list[str]:
        """What is wrong with these limits, as ``--flag must …`` lines (empty when they are usable)."""
        out = [f"--{name.replace('_', '-')} must be a positive number of seconds, got {value}"
               for name, value in (("head_timeout", self.head_timeout), ("body_timeout", self.body_timeout),
                                   ("keep_alive", self.keep_alive)) if not 0 < value <= 3600]
        if self.max_connections < 1:
            out.append(f"--max-connections must be >= 1, got {self.max_connections}")
        return out


def error_response(status: int, message: str) -> bytes:
    """A complete HTTP/1.1 response carrying ``{"error": message}`` that closes the connection."""
    body = json.dumps({"error": message}).encode()
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n")
    return head.encode("ascii") + body


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with head and body deadlines and a connection cap (``limits``)."""

    limits = ConnectionLimits()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.clock: asyncio.TimerHandle | None = None
        self.clock_phase: Any = None
        if len(self.connections) > self.limits.max_connections:
            self.refuse(503, f"too many open connections (the limit is {self.limits.max_connections}); retry "
                             "in a few seconds")
            return
        self.watch()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self.stop_clock()
        super().connection_lost(exc)

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to a malformed request, in the API's error shape."""
        self.refuse(400, f"malformed HTTP request: {msg.rstrip('.')}")

    def watch(self) -> None:
        """Run the clock h11's state of the client calls for: head, body, or none (request complete)."""
        phase = self.conn.their_state
        if phase not in (h11.IDLE, h11.SEND_BODY) or self.transport.is_closing():
            self.stop_clock()
        elif phase is not self.clock_phase:
            self.stop_clock()
            if phase is h11.IDLE and self.timeout_keep_alive_task is not None:
                return                                      # idle after a response: uvicorn's keep-alive clock
            seconds = self.limits.head_timeout if phase is h11.IDLE else self.limits.body_timeout
            self.clock, self.clock_phase = self.loop.call_later(seconds, self.expire, phase), phase

    def stop_clock(self) -> None:
        if self.clock is not None:
            self.clock.cancel()
        self.clock, self.clock_phase = None, None

    def expire(self, phase: Any) -> None:
        """The client did not finish its request head (or body) in time: 408, then close."""
        self.clock, self.clock_phase = None, None
        if self.conn.their_state is not phase or self.transport.is_closing():
            return
        part, seconds = (("head", self.limits.head_timeout) if phase is h11.IDLE
                         else ("body", self.limits.body_timeout))
        if phase is h11.IDLE and not self.conn.trailing_data[0]:
            self.transport.close()                          # never sent a byte: nothing to answer
            return
        self.refuse(408, f"request {part} not received within {seconds:g} s; send the whole request at once")

    def refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with the error shape (unless the app already started its answer) and close."""
        if not (self.cycle is not None and self.cycle.response_started):
            self.transport.write(error_response(status, message))
        self.transport.close()


def protocol_class(limits: ConnectionLimits) -> type[GuardedH11Protocol]:
    """``GuardedH11Protocol`` with these limits, for uvicorn's ``http=`` option."""
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"limits": limits})


def uvicorn_options(limits: ConnectionLimits) -> dict[str, Any]:
    """The keyword arguments of ``uvicorn.run`` / ``uvicorn.Config`` that apply ``limits``."""
    return {"http": protocol_class(limits), "timeout_keep_alive": limits.keep_alive,
            "h11_max_incomplete_event_size": MAX_HEAD_BYTES}
