"""Random DNS-SD TXT records, fed to the parser and, inside real mDNS responses, to a running discovery.

Whatever a record holds (keys and values of any bytes and length, fields missing or repeated, invalid
UTF-8, numbers in any script), it must come out as a PeerAnnouncement within the bounds peers.py
documents, or as MalformedRecord: never another exception, and a discovery that was fed it must go on
finding valid nodes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

# The DNS record and message classes, from where they are defined (zeroconf keeps them importable from
# its top level without listing them in __all__).
from zeroconf._dns import DNSAddress, DNSPointer, DNSService, DNSText
from zeroconf._protocol.incoming import DNSIncoming
from zeroconf._protocol.outgoing import DNSOutgoing

from inferhub_desktop.core.discovery import Discovery
from inferhub_desktop.core.peers import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    MalformedRecord,
    PeerAnnouncement,
    decode_txt,
    encode_txt,
)
from tests.support import eventually

PARSER_EXAMPLES = 1000
BROWSED_EXAMPLES = 300
FUZZ = settings(
    max_examples=PARSER_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# What peers.py documents a record may hold.
MAX_RECORD_BYTES = 1300
MAX_STRING_BYTES = 255
FIELD_CHARS = {"name": 63, "gpu": 60, "mh": 16, "pool": 32, "tls": 128}
MAX_VRAM_MIB = 64 * 1024 * 1024
MAX_SLOTS = 4096

# DNS wire constants (RFC 1035, RFC 6762).
TYPE_A, TYPE_PTR, TYPE_TXT, TYPE_SRV = 1, 12, 16, 33
CLASS_IN, CACHE_FLUSH = 1, 0x8000
FLAGS_RESPONSE, FLAGS_AUTHORITATIVE = 0x8000, 0x0400


def check_announcement(announcement: PeerAnnouncement, address: str, port: int) -> None:
    """Assert that a decoded record is within the documented bounds, and that it reads back the same."""
    assert announcement.version == PROTOCOL_VERSION
    assert str(uuid.UUID(announcement.node_id)) == announcement.node_id.lower()
    assert (announcement.address, announcement.port) == (address, port)
    assert 1 <= port <= 65535
    for key, value in [
        ("name", announcement.name),
        ("gpu", announcement.gpu),
        ("mh", announcement.models_hash),
        ("pool", announcement.pool),
        ("tls", announcement.tls),
    ]:
        assert isinstance(value, str)
        assert len(value) <= FIELD_CHARS[key], key
        assert value.isprintable(), key
    assert announcement.name.strip()
    assert set(announcement.models_hash) <= set("0123456789abcdef")
    assert isinstance(announcement.share, bool)
    for number in (announcement.vram_free_mib, announcement.vram_total_mib, announcement.active):
        assert type(number) is int
    assert 0 <= announcement.vram_free_mib <= announcement.vram_total_mib <= MAX_VRAM_MIB
    assert 0 <= announcement.active <= MAX_SLOTS
    assert 1 <= announcement.slots <= MAX_SLOTS
    again = {k.encode(): v.encode() for k, v in encode_txt(announcement).items()}
    assert decode_txt(again, address, port) == announcement


def decode_or_refuse(properties: Mapping[bytes, bytes | None], address: str, port: int) -> str:
    """Decode a record; return "valid" or "malformed", and let any other exception through."""
    try:
        announcement = decode_txt(properties, address, port)
    except MalformedRecord:
        return "malformed"
    check_announcement(announcement, address, port)
    return "valid"


# -- records ---------------------------------------------------------------------------------------------

PRINTABLE = st.characters(exclude_categories=("C", "Zl", "Zp", "Zs"), include_characters=" ")
KEYS = [b"v", b"id", b"name", b"share", b"gpu", b"vram", b"load", b"mh", b"pool", b"tls"]
# Values that look nearly right: numbers in other scripts and forms, signs, blanks, overflows.
NASTY = [
    *(b"", b" ", b"\x00", b"\xff", b"\xed\xa0\x80", b"\xc3", "²".encode(), "١".encode(), "٣/٤".encode()),
    *("𝟏".encode(), "½".encode(), b"-1", b"+1", b" 1", b"1 ", b"0x1", b"1e3", b"1.0", b"01", b"9" * 30),
    *(b"1/", b"/1", b"1/2/3", b"-1/1", b"1/-1", b"0/0", b"5/4", b"1/0", b"67108864/67108864"),
    *(b"67108865/67108865", b"4096/4096", b"4097/4097", b"0/4097", b"99999999999/1", b"1//1"),
    *("🙂".encode(), b"\x7f", b"a\nb", b"\t", b"ABCDEF", b"abcdefg", b"0123456789abcdef0"),
    *(str(uuid.UUID(int=0)).encode(), str(uuid.UUID(int=0)).upper().encode(), b"{" + b"0" * 32 + b"}"),
    *(b"0" * 32, b"urn:uuid:" + str(uuid.UUID(int=1)).encode(), b"2", b"0", b"1"),
]


@st.composite
def valid_records(draw: st.DrawFn) -> dict[bytes, bytes | None]:
    """A record a node would send: every field present and within bounds."""
    free, total = sorted(draw(st.lists(st.integers(0, MAX_VRAM_MIB), min_size=2, max_size=2)))
    slots = draw(st.integers(1, MAX_SLOTS))
    name = draw(st.text(PRINTABLE, min_size=1, max_size=20).filter(str.strip))
    return {
        b"v": str(PROTOCOL_VERSION).encode(),
        b"id": str(draw(st.uuids())).encode(),
        b"name": name.encode(),
        b"share": draw(st.sampled_from([b"0", b"1"])),
        b"gpu": draw(st.text(PRINTABLE, max_size=20)).encode(),
        b"vram": f"{free}/{total}".encode(),
        b"load": f"{draw(st.integers(0, slots))}/{slots}".encode(),
        b"mh": draw(st.text("0123456789abcdef", max_size=16)).encode(),
        b"pool": draw(st.text(PRINTABLE, max_size=10)).encode(),
        # Empty, or the SHA-256 fingerprint of the node's certificate.
        b"tls": draw(st.sampled_from(["", "0" * 64, "0123456789abcdef" * 4])).encode(),
    }


# Numbers written with any digits Unicode has (superscripts and fractions too), and slashes.
NUMBERISH = st.text(
    st.one_of(
        st.sampled_from("0123456789/"),
        st.sampled_from("²³¹⁰⁹①⑴⒈٣۴߃०𝟏０"),
        st.characters(categories=("Nd", "No")),
    ),
    min_size=1,
    max_size=12,
).map(str.encode)
NUMERIC_KEYS = [b"v", b"share", b"vram", b"load"]
VALUES = st.one_of(
    NUMBERISH,
    st.none(),
    st.sampled_from(NASTY),
    st.binary(max_size=40),
    st.text(max_size=20).map(str.encode),
    st.integers(1, 2000).map(lambda n: b"a" * n),
)


@st.composite
def mutated_records(draw: st.DrawFn) -> dict[bytes, bytes | None]:
    """A valid record with a few fields dropped, replaced or added."""
    record = draw(valid_records())
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["drop", "set", "set", "set", "add"]))
        if action == "drop":
            record.pop(draw(st.sampled_from(KEYS)), None)
        elif action == "set":
            key = draw(st.sampled_from(KEYS))
            record[key] = draw(st.one_of(NUMBERISH, NUMBERISH, VALUES) if key in NUMERIC_KEYS else VALUES)
        else:
            key = draw(st.one_of(st.binary(max_size=300), st.sampled_from([k.upper() for k in KEYS])))
            record[key] = draw(VALUES)
    return record


RANDOM_RECORDS = st.dictionaries(
    st.one_of(st.sampled_from(KEYS), st.binary(max_size=24)), VALUES, max_size=14
)
ADDRESSES = st.one_of(st.just("192.168.1.20"), st.ip_addresses(v=4).map(str), st.text(max_size=20))
PORTS = st.one_of(st.integers(1, 65535), st.integers(-5, 70000))


Args = TypeVar("Args", bound=tuple[Any, ...])


def fuzz(label: str, strategy: st.SearchStrategy[Args], check: Callable[..., object], examples: int) -> None:
    """Call `check` with `examples` argument tuples drawn by Hypothesis, which shrinks any failure to its
    simplest case; print how many cases were tried."""
    tried = 0

    @settings(FUZZ, max_examples=examples)
    @given(strategy)
    def run(args: Args) -> None:
        nonlocal tried
        tried += 1
        check(*args)

    run()
    print(f"{label}: {tried} cases tried")


def test_random_txt_records_decode_or_are_malformed() -> None:
    fuzz("random TXT records", st.tuples(RANDOM_RECORDS, ADDRESSES, PORTS), decode_or_refuse, PARSER_EXAMPLES)


def test_nearly_valid_txt_records_decode_or_are_malformed() -> None:
    cases = st.tuples(mutated_records(), ADDRESSES, PORTS)
    fuzz("nearly valid TXT records", cases, decode_or_refuse, PARSER_EXAMPLES)


def test_numbers_in_any_script_decode_or_are_malformed() -> None:
    def check(record: dict[bytes, bytes | None], key: bytes, value: bytes) -> None:
        decode_or_refuse({**record, key: value}, "192.168.1.20", 11436)

    cases = st.tuples(valid_records(), st.sampled_from(NUMERIC_KEYS), NUMBERISH)
    fuzz("TXT records with numbers in any script", cases, check, PARSER_EXAMPLES)


def test_valid_txt_records_decode() -> None:
    def check(record: dict[bytes, bytes | None], port: int) -> None:
        assert decode_or_refuse(record, "192.168.1.20", port) == "valid"

    fuzz("valid TXT records", st.tuples(valid_records(), st.integers(1, 65535)), check, 300)


# -- the same records, browsed ---------------------------------------------------------------------------


def txt_wire(entries: list[bytes], tail: bytes) -> bytes:
    """Encode TXT strings as DNS does, each behind its length (cut to 255), plus raw trailing bytes."""
    return b"".join(bytes([min(len(e), 255)]) + e[:255] for e in entries) + tail


@st.composite
def txt_rdata(draw: st.DrawFn) -> bytes:
    """A TXT record's data as it comes off the wire: from a record, with repeats, bare keys and junk."""
    record = draw(st.one_of(valid_records(), mutated_records(), RANDOM_RECORDS))
    entries = [k if v is None else k + b"=" + v for k, v in record.items()]
    for _ in range(draw(st.integers(0, 3))):
        entries.insert(
            draw(st.integers(0, len(entries))),
            draw(
                st.one_of(
                    st.sampled_from(entries or [b""]),  # a key repeated (the first one counts)
                    st.sampled_from([b"", b"=", b"v", b"v=", b"==", b"id"]),
                    st.binary(max_size=80),
                )
            ),
        )
    # A last length byte that promises more than there is, sometimes.
    tail = draw(st.one_of(st.just(b""), st.just(b""), st.binary(min_size=1, max_size=3)))
    return txt_wire(entries, tail)[:2000]


def response_packet(instance: str, port: int, address: bytes, rdata: bytes) -> list[bytes]:
    """An mDNS response announcing a node: its PTR, SRV, TXT and A records."""
    server = instance.split(".", 1)[0] + ".local."
    out = DNSOutgoing(FLAGS_RESPONSE | FLAGS_AUTHORITATIVE)
    out.add_answer_at_time(DNSPointer(SERVICE_TYPE, TYPE_PTR, CLASS_IN, 4500, instance), 0)
    out.add_answer_at_time(DNSService(instance, TYPE_SRV, CLASS_IN | CACHE_FLUSH, 120, 0, 0, port, server), 0)
    out.add_answer_at_time(DNSText(instance, TYPE_TXT, CLASS_IN | CACHE_FLUSH, 4500, rdata), 0)
    out.add_answer_at_time(DNSAddress(server, TYPE_A, CLASS_IN | CACHE_FLUSH, 120, address), 0)
    return out.packets()


class Watcher:
    def __init__(self) -> None:
        self.seen: list[PeerAnnouncement] = []

    def on_seen(self, announcement: PeerAnnouncement) -> None:
        self.seen.append(announcement)

    def on_gone(self, endpoint: tuple[str, int]) -> None:
        pass


def own_announcement() -> PeerAnnouncement:
    return PeerAnnouncement(
        node_id=str(uuid.uuid4()),
        name="fuzz-watcher",
        address="127.0.0.1",
        port=1,
        share=False,
        gpu="",
        vram_free_mib=0,
        vram_total_mib=0,
        active=0,
        slots=1,
        models_hash="",
    )


def draw_browsed(examples: int) -> list[tuple[bytes, int, bytes]]:
    """Draw (TXT data, port, IPv4 address) triples before zeroconf runs: Hypothesis checks that drawing
    leaves the `random` module alone, and zeroconf's tasks use it."""
    drawn: list[tuple[bytes, int, bytes]] = []

    @settings(FUZZ, max_examples=examples, phases=(Phase.explicit, Phase.generate))
    @given(txt_rdata(), st.integers(1, 65535), st.sampled_from([b"\x7f\x00\x00\x01", b"\xc0\xa8\x01\x14"]))
    def draw(rdata: bytes, port: int, address: bytes) -> None:
        drawn.append((rdata, port, address))

    draw()
    return drawn


async def test_browsed_records_are_taken_or_dropped_and_discovery_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Feed mDNS responses to the zeroconf a Discovery browses with, as its socket would, and let its
    browser resolve them: every record must be taken or dropped, without an exception in the task."""
    drawn = draw_browsed(BROWSED_EXAMPLES)
    caplog.set_level(logging.INFO, "inferhub_desktop.core.discovery")
    watcher = Watcher()
    own = own_announcement()
    discovery = Discovery(own.node_id, ("127.0.0.1",), watcher.on_seen, watcher.on_gone)
    await discovery.start(own)
    outcomes: dict[str, int] = {}
    failures: list[str] = []
    try:
        zc = discovery._zc  # the instance the browser listens on: its socket would hand it these packets
        assert zc is not None
        for index, (rdata, port, address) in enumerate(drawn):
            instance = f"fuzz-{uuid.uuid4().hex[:12]}-{index}.{SERVICE_TYPE}"
            before = len(watcher.seen)
            for packet in response_packet(instance, port, address, rdata):
                zc.zeroconf.record_manager.async_updates_from_response(DNSIncoming(packet))
            resolving = [t for t in asyncio.all_tasks() if t.get_name() == f"resolve {instance}"]
            if len(resolving) != 1:
                failures.append(f"{instance}: {len(resolving)} resolve tasks for TXT {rdata!r}")
                continue
            for result in await asyncio.gather(*resolving, return_exceptions=True):
                if isinstance(result, BaseException):
                    failures.append(f"{type(result).__name__}: {result} for TXT {rdata!r} port {port}")
            taken = watcher.seen[before:]
            for announcement in taken:
                try:
                    check_announcement(announcement, socket.inet_ntoa(address), port)
                except AssertionError as exc:
                    failures.append(f"out of bounds ({exc}): {announcement} from TXT {rdata!r}")
            outcome = "taken" if taken else "dropped"
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
        # Still browsing: a valid node appears.
        good = own_announcement()
        rdata = txt_wire([k.encode() + b"=" + v.encode() for k, v in encode_txt(good).items()], b"")
        for packet in response_packet(f"good-fuzz.{SERVICE_TYPE}", 4242, b"\x7f\x00\x00\x01", rdata):
            zc.zeroconf.record_manager.async_updates_from_response(DNSIncoming(packet))
        await eventually(lambda: any(a.node_id == good.node_id for a in watcher.seen))
    finally:
        await discovery.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    print(f"discovery: {len(drawn)} browsed records, {outcomes}")
    assert not failures, "\n".join(failures[:20])
    assert not errors, "\n".join(errors[:20])
