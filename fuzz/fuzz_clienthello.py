"""Fuzz the capture lab's ClientHello reader: record splitting, then tlslite-ng's parser behind ours."""

from __future__ import annotations

import _harness

from companion.lab.hello import RecordReader, hello_message, parse_client_hello


def body(data: bytes) -> None:
    # As a stream of records (what a client sends), then as one handshake message.
    message = hello_message(RecordReader().feed(data))
    for candidate in (message, data):
        if candidate is not None:
            facts = parse_client_hello(candidate)
            assert all(isinstance(v, str) for v in facts.versions)
            facts.to_json()


if __name__ == "__main__":
    _harness.main(body)
