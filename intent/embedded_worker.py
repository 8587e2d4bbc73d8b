"""A child process serving embedded-model decisions over stdin/stdout (see :mod:`intent.embedded_wire`).

Started by :class:`intent.embedded_process.ProcessEmbeddedBackend` as
``python -m intent.embedded_worker [--model PATH]``; it loads the model, sends a ready frame, then
answers requests (in batches: see :func:`serve`) until stdin closes. Ctrl-C is left to the parent (which closes stdin);
nothing else is read or written on stdout.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import BinaryIO

from intent.backend import BackendError
from intent.embedded import EmbeddedBackend
from intent.embedded_wire import (
    HEADER,
    MAX_FRAME,
    READY_ID,
    WireDecision,
    WireReply,
    WireRequest,
    frame,
    request_decoder,
)
from intent.errors import InvalidDecision

#: Bytes asked of the pipe per read (a read returns what is there, up to this).
_READ_SIZE = 1 << 20


def serve(backend: EmbeddedBackend, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer every request frame on ``stdin`` until it closes.

    Reads whatever the parent has written (one ``read`` can carry many frames: the parent writes the
    requests of one event-loop iteration together), answers every complete frame, then writes all the
    replies at once: one read and one write system call per batch instead of per decision.
    """
    stdout.write(frame(WireReply(READY_ID)))
    stdout.flush()
    fd = stdin.fileno()
    pending = b""
    while True:
        chunk = os.read(fd, _READ_SIZE)
        if not chunk:
            return  # the parent closed the pipe: shut down
        pending += chunk
        replies, pending = _answer_complete(backend, pending)
        if replies:
            stdout.write(b"".join(replies))
            stdout.flush()


def _answer_complete(backend: EmbeddedBackend, data: bytes) -> tuple[list[bytes], bytes]:
    """Replies to every complete frame at the start of ``data``, and the incomplete rest."""
    replies: list[bytes] = []
    view = memoryview(data)
    at = 0
    while len(data) - at >= HEADER.size:
        (size,) = HEADER.unpack_from(view, at)
        if size > MAX_FRAME:
            raise SystemExit(f"embedded worker: frame of {size} bytes refused")
        end = at + HEADER.size + size
        if end > len(data):
            break
        replies.append(frame(_answer(backend, request_decoder.decode(view[at + HEADER.size : end]))))
        at = end
    return replies, data[at:]


def _answer(backend: EmbeddedBackend, message: WireRequest) -> WireReply:
    try:
        return WireReply(message.id, WireDecision.of(backend.decide_sync(message.request)))
    except InvalidDecision as exc:
        return WireReply(message.id, error=str(exc), kind="invalid")
    except BackendError as exc:
        return WireReply(message.id, error=str(exc))
    except Exception as exc:  # a model bug must not kill the worker: the parent gets the error
        return WireReply(message.id, error=f"{type(exc).__name__}: {exc}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m intent.embedded_worker", description=__doc__)
    parser.add_argument("--model", default=None, help="model artefact (default: the shipped one)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    backend = EmbeddedBackend.load(args.model or None)
    serve(backend, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
