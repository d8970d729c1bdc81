"""The TXT record nodes agree on, and the pure table of live peers."""

from __future__ import annotations

import uuid

import pytest

from inferhub_desktop.core.peers import PeerAnnouncement, PeerTable, decode_txt, encode_txt
from inferhub_desktop.core.wire.errors import MalformedRecord

NODE_ID = str(uuid.uuid4())
ANN = PeerAnnouncement(
    node_id=NODE_ID,
    name="desk-7",
    address="198.18.0.11",
    port=11436,
    share=True,
    gpu="2x RTX 4090",
    vram_free_mib=40000,
    vram_total_mib=49128,
    active=1,
    slots=4,
    models_hash="0a1b2c3d4e5f",
)


def as_properties(txt: dict[str, str]) -> dict[bytes, bytes | None]:
    return {k.encode(): v.encode() for k, v in txt.items()}


def test_a_record_survives_encoding() -> None:
    txt = encode_txt(ANN)
    assert txt["vram"] == "40000/49128"
    assert txt["load"] == "1/4"
    assert decode_txt(as_properties(txt), "198.18.0.11", 11436) == ANN
    assert sum(len(k) + len(v) + 2 for k, v in txt.items()) < 400


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"v": "2"}, "protocol version 2"),
        ({"v": "x"}, "not a number"),
        ({"id": "1234"}, "not a UUID"),
        ({"name": ""}, "invalid value"),
        ({"name": "n" * 64}, "invalid value"),
        ({"share": "2"}, "not 0 or 1"),
        ({"vram": "50000/49128"}, "more than its total"),
        ({"vram": "-1/100"}, "two numbers"),
        ({"vram": "1/99999999999"}, "two numbers"),
        ({"load": "0/0"}, "no slots"),
        ({"mh": "XYZ"}, "not lowercase hex"),
        ({"gpu": "g\x00pu"}, "invalid value"),
        ({"pool": "p" * 300}, "over 255 bytes"),
    ],
)
def test_malformed_or_lying_records_are_refused(changes: dict[str, str], reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        decode_txt(as_properties({**encode_txt(ANN), **changes}), "198.18.0.11", 11436)


def test_records_missing_keys_oversized_or_not_utf8_are_refused() -> None:
    txt = encode_txt(ANN)
    del txt["mh"]
    with pytest.raises(MalformedRecord, match="'mh' is missing"):
        decode_txt(as_properties(txt), "198.18.0.11", 11436)
    huge = {f"k{i}".encode(): b"x" * 200 for i in range(8)}
    with pytest.raises(MalformedRecord, match="over 1300"):
        decode_txt(huge, "198.18.0.11", 11436)
    with pytest.raises(MalformedRecord, match="not UTF-8"):
        decode_txt({b"name": b"\xff\xfe"}, "198.18.0.11", 11436)
    with pytest.raises(MalformedRecord, match="port 0"):
        decode_txt(as_properties(encode_txt(ANN)), "198.18.0.11", 0)


def test_the_table_tracks_peers_expires_silent_ones_and_never_lists_itself() -> None:
    table = PeerTable(own_id="own", ttl_s=3.0)
    assert not table.seen(PeerAnnouncement(**{**ANN.__dict__, "node_id": "own"}), {}, now=0.0)
    assert len(table) == 0
    assert table.seen(ANN, {"name": "desk-7"}, now=10.0)
    assert not table.seen(ANN, {"name": "desk-7"}, now=12.0)
    other = PeerAnnouncement(**{**ANN.__dict__, "node_id": str(uuid.uuid4()), "name": "alpha"})
    table.seen(other, {}, now=12.5)
    assert [p.announcement.name for p in table] == ["alpha", "desk-7"]
    assert table.expire(now=15.0) == []
    assert [p.node_id for p in table.expire(now=15.1)] == [NODE_ID]
    assert table.get(NODE_ID) is None
    removed = table.remove(other.node_id)
    assert removed is not None
    assert removed.announcement == other
    assert len(table) == 0


def test_a_peer_may_stay_silent_as_long_as_it_was_told_and_a_heartbeat_restarts_the_wait() -> None:
    table = PeerTable(own_id="own", ttl_s=3.0)
    streamed = PeerAnnouncement(**{**ANN.__dict__, "node_id": str(uuid.uuid4()), "name": "streamed"})
    table.seen(ANN, {}, now=0.0)
    table.seen(streamed, {}, now=0.0, quiet_s=21.0)
    assert [p.node_id for p in table.expire(now=3.1)] == [NODE_ID]
    assert table.heard(streamed.node_id, now=20.0)
    assert table.expire(now=40.9) == []
    # Polled again (no quiet_s): the TTL holds once more.
    table.seen(streamed, {}, now=41.0)
    assert [p.node_id for p in table.expire(now=44.1)] == [streamed.node_id]
