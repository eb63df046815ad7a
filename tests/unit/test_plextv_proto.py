"""plex.tv documents without I/O: the shapes of docs/plextv.md parse, and bad ones give a clear error."""

from __future__ import annotations

import pytest

from companion.errors import ProtocolError
from companion.proto.plextv import connection_query, parse_devices, parse_pin, parse_resources, parse_user


def test_pin_user_devices_and_resources_parse_as_documented() -> None:
    pin = parse_pin(b'{"id": 12345, "code": "ABCD", "expiresIn": 899, "authToken": null, "trusted": false}')
    assert (pin.id, pin.code, pin.expires_in, pin.auth_token) == (12345, "ABCD", 899, None)
    claimed = parse_pin(b'{"id": "12345", "code": "ABCD", "authToken": "tok-x"}')
    assert claimed.auth_token == "tok-x" and "tok-x" not in repr(claimed)
    user = parse_user(b'{"id": 7, "uuid": "u", "username": "alice", "title": "Alice", "authToken": "tok-x"}')
    assert user.name == "Alice" and "tok-x" not in repr(user)
    devices = parse_devices(b'<MediaContainer size="2"><Device name="TV (bridge)" id="99" '
                            b'clientIdentifier="face-1" provides="client,player,pubsub-player" token="tok-d">'
                            b'<Connection uri="http://10.0.0.2:32500"/></Device><Device name="no id"/>'
                            b'</MediaContainer>')
    assert [(d.id, d.client_identifier, d.provides, d.connections) for d in devices] == [
        ("99", "face-1", ("client", "player", "pubsub-player"), ("http://10.0.0.2:32500",))]
    assert "tok-d" not in repr(devices)
    (resource,) = parse_resources(b'<resources size="1"><resource name="TV (bridge)" clientIdentifier="face-1" '
                                  b'provides="client,player" presence="1" accessToken="tok-d"><connections>'
                                  b'<connection uri="http://10.0.0.2:32500" local="1"/></connections></resource>'
                                  b'</resources>')
    assert (resource.presence, resource.connections) == (True, ("http://10.0.0.2:32500",))


def test_the_connection_put_query_encodes_brackets_and_the_uri() -> None:
    assert connection_query(["http://10.0.0.2:32500"]) == "Connection%5B%5D%5Buri%5D=http%3A%2F%2F10.0.0.2%3A32500"


@pytest.mark.parametrize(("parse", "body", "message"), [
    (parse_pin, b"<pin/>", "plex.tv PIN: not JSON"),
    (parse_pin, b'{"id": 1}', "plex.tv PIN: id or code missing"),
    (parse_pin, b'{"id": "x", "code": "A"}', "PIN id: expected a number"),
    (parse_user, b"[]", "plex.tv user: expected a JSON object"),
    (parse_devices, b"<MediaContainer>", "plex.tv devices: malformed XML"),
    (parse_devices, b'<!DOCTYPE x [<!ENTITY a "b">]><MediaContainer/>', "plex.tv devices: DOCTYPE and entity"),
    (parse_resources, b"x" * (4 * 1024 * 1024 + 1), "answer too large"),
])
def test_bad_documents_say_what_is_wrong(parse: object, body: bytes, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse(body)  # type: ignore[operator]
