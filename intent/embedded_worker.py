"""A child process serving embedded-model decisions over stdin/stdout (see :mod:`intent.embedded_wire`).

Started by :class:`intent.embedded_process.ProcessEmbeddedBackend` as
``python -m intent.embedded_worker [--model PATH]``; it loads the model, sends a ready frame, then
answers requests one by one until stdin closes. Ctrl-C is left to the parent (which closes stdin);
nothing else is read or written on stdout.
"""

from __future__ import annotations

import argparse
import signal
import sys
from typing import BinaryIO

from intent.backend import BackendError
from intent.embedded import EmbeddedBackend
from intent.embedded_wire import HEADER, MAX_FRAME, READY_ID, WireDecision, WireReply, frame, request_decoder
from intent.errors import InvalidDecision


def serve(backend: EmbeddedBackend, stdin: BinaryIO, stdout: BinaryIO) -> None:
    """Answer every request frame on ``stdin`` until it closes."""
    stdout.write(frame(WireReply(READY_ID)))
    stdout.flush()
    while True:
        head = stdin.read(HEADER.size)
        if len(head) < HEADER.size:
            return  # the parent closed the pipe: shut down
        (size,) = HEADER.unpack(head)
        if size > MAX_FRAME:
            raise SystemExit(f"embedded worker: frame of {size} bytes refused")
        message = request_decoder.decode(stdin.read(size))
        try:
            reply = WireReply(message.id, WireDecision.of(backend.decide_sync(message.request)))
        except InvalidDecision as exc:
            reply = WireReply(message.id, error=str(exc), kind="invalid")
        except BackendError as exc:
            reply = WireReply(message.id, error=str(exc))
        except Exception as exc:  # a model bug must not kill the worker: the parent gets the error
            reply = WireReply(message.id, error=f"{type(exc).__name__}: {exc}")
        stdout.write(frame(reply))
        stdout.flush()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m intent.embedded_worker", description=__doc__)
    parser.add_argument("--model", default=None, help="model artefact (default: the shipped one)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    backend = EmbeddedBackend.load(args.model or None)
    serve(backend, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
