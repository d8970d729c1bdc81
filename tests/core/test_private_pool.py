"""A private pool's files and proofs: the roster only its authority can sign, invites good once and for a
day, proofs bound to both ends of the connection, and pool files that do not add up refused with a way out."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from inferhub_desktop.core import ConfigError, MalformedRecord, PrivatePool, Unauthorized
from inferhub_desktop.core.identity import load_identity
from inferhub_desktop.core.pool import (
    AUTHORITY_KEY_FILE,
    INVITE_S,
    INVITES_FILE,
    MAX_ROSTER_BYTES,
    POOL_FILE,
    Member,
    Roster,
    accept_admission,
    create_pool,
    join_request,
    leave_pool,
)
from tests.support import private_pool

NOW = 1_800_000_000.0


def machines(tmp_path: Path, count: int) -> list[Path]:
    dirs = [tmp_path / f"m{n}" for n in range(count)]
    for config_dir in dirs:
        load_identity(config_dir)
    return dirs


def loaded(config_dir: Path) -> PrivatePool:
    pool = PrivatePool.load(config_dir, load_identity(config_dir))
    assert pool is not None
    return pool


def test_a_pool_is_made_with_its_maker_as_authority_and_only_member(tmp_path: Path) -> None:
    (box,) = machines(tmp_path, 1)
    pool = create_pool(box, load_identity(box), "box")
    again = loaded(box)
    assert (again.pool_id, again.authority is not None, again.roster.version) == (pool.pool_id, True, 1)
    assert [(m.node_id, m.name) for m in again.roster.members] == [(load_identity(box).node_id, "box")]
    assert again.roster.authority == load_identity(box).node_id
    # Every pool file is its owner's only: the authority's key above all.
    for name in (POOL_FILE, AUTHORITY_KEY_FILE):
        assert stat.S_IMODE(os.stat(box / name).st_mode) == 0o600
    # Another pool made anywhere has another id.
    (other,) = machines(tmp_path / "x", 1)
    assert create_pool(other, load_identity(other), "x").pool_id != pool.pool_id


def test_an_invite_admits_one_machine_once(tmp_path: Path) -> None:
    box, desk, laptop = machines(tmp_path, 3)
    pool = create_pool(box, load_identity(box), "box")
    code = pool.invite(NOW)
    desk_id = load_identity(desk)
    admission, proof = pool.admit(
        join_request(desk_id, "desk", code, pool.fingerprint), pool.fingerprint, NOW
    )
    accept_admission(desk, desk_id, code, pool.fingerprint, admission.to_json(), proof.hex())
    assert loaded(desk).roster.member(desk_id.node_id) is not None
    assert pool.roster.version == 2
    # The same code again, from another machine: used.
    laptop_id = load_identity(laptop)
    with pytest.raises(Unauthorized, match="no invite"):
        pool.admit(join_request(laptop_id, "laptop", code, pool.fingerprint), pool.fingerprint, NOW)
    # A fresh code a day and a second later: expired.
    late = pool.invite(NOW)
    with pytest.raises(Unauthorized, match="no invite"):
        pool.admit(
            join_request(laptop_id, "laptop", late, pool.fingerprint), pool.fingerprint, NOW + INVITE_S + 1
        )
    # Expired invites are dropped from the file when the next is made.
    pool.invite(NOW + INVITE_S + 1)
    assert len(json.loads((box / INVITES_FILE).read_text())["invites"]) == 1


def test_a_proof_is_bound_to_the_certificates_of_its_connection(tmp_path: Path) -> None:
    box, desk, relay = machines(tmp_path, 3)
    pool = create_pool(box, load_identity(box), "box")
    code = pool.invite(NOW)
    desk_id = load_identity(desk)
    # A machine in the middle shows its own certificate to the joiner: the proof the joiner makes for it
    # is worth nothing at the authority, and the invite stays unused.
    in_the_middle = load_identity(relay).fingerprint
    with pytest.raises(Unauthorized):
        pool.admit(join_request(desk_id, "desk", code, in_the_middle), pool.fingerprint, NOW)
    # Nor can the request be given another machine's key than the proof names.
    request = join_request(desk_id, "desk", code, pool.fingerprint)
    request["certificate"] = load_identity(relay).cert_pem.decode()
    with pytest.raises(Unauthorized):
        pool.admit(request, pool.fingerprint, NOW)
    # The authority's answer proves it holds the invite too: one from a machine without it is refused.
    admission, proof = pool.admit(
        join_request(desk_id, "desk", code, pool.fingerprint), pool.fingerprint, NOW
    )
    with pytest.raises(Unauthorized, match="does not hold this invite"):
        accept_admission(desk, desk_id, code, pool.fingerprint, admission.to_json(), "00" * 32)
    with pytest.raises(Unauthorized, match="does not hold this invite"):
        accept_admission(desk, desk_id, code, in_the_middle, admission.to_json(), proof.hex())
    assert PrivatePool.load(desk, desk_id) is None


def test_only_the_authority_signs_a_roster_and_versions_only_go_forward(tmp_path: Path) -> None:
    box, desk, laptop = machines(tmp_path, 3)
    pool = private_pool(box, desk, laptop)
    member = loaded(desk)
    # A member adds itself a machine and signs with its own key: refused.
    forged = dataclasses.replace(member.roster, version=member.roster.version + 1, removed=())
    with pytest.raises(Unauthorized, match="not signed"):
        member.adopt(forged)
    # Changed after signing: refused.
    tampered = dataclasses.replace(pool.roster, version=pool.roster.version + 5)
    with pytest.raises(Unauthorized, match="not signed"):
        member.adopt(tampered)
    # Another pool's authority, whatever it signs: refused.
    (other_box,) = machines(tmp_path / "other", 1)
    other = create_pool(other_box, load_identity(other_box), "other")
    assert other.authority is not None
    foreign = dataclasses.replace(pool.roster, version=99).signed(other.authority)
    with pytest.raises(Unauthorized):
        member.adopt(foreign)
    # The authority's newer roster is taken; an older one, though signed, is not.
    old = pool.roster
    removed = pool.remove(load_identity(laptop).node_id)
    assert member.adopt(removed) is True
    assert member.roster.member(load_identity(laptop).node_id) is None
    assert member.adopt(old) is False
    assert member.roster == removed


def test_a_removed_machine_cannot_join_again_and_only_the_authority_removes(tmp_path: Path) -> None:
    box, desk = machines(tmp_path, 2)
    pool = private_pool(box, desk)
    desk_id = load_identity(desk)
    with pytest.raises(ConfigError, match="only the machine that made the pool"):
        loaded(desk).remove(load_identity(box).node_id)
    with pytest.raises(ConfigError, match="only the machine that made the pool"):
        loaded(desk).invite()
    with pytest.raises(ConfigError, match="cannot remove itself"):
        pool.remove(load_identity(box).node_id)
    pool.remove(pool.roster.resolve("m1"))
    with pytest.raises(ConfigError, match="names no member"):
        pool.roster.resolve("m1")
    code = pool.invite(NOW)
    with pytest.raises(Unauthorized, match="was removed"):
        pool.admit(join_request(desk_id, "desk", code, pool.fingerprint), pool.fingerprint, NOW)


def test_pool_files_that_do_not_add_up_are_refused_with_the_way_out(tmp_path: Path) -> None:
    box, desk = machines(tmp_path, 2)
    private_pool(box, desk)
    (desk / POOL_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="pool leave"):
        PrivatePool.load(desk, load_identity(desk))
    # One machine's pool files copied to another: they certify another key.
    (desk / POOL_FILE).write_bytes((box / POOL_FILE).read_bytes())
    with pytest.raises(ConfigError, match="another machine's key"):
        PrivatePool.load(desk, load_identity(desk))
    # A roster edited by hand: its signature no longer holds.
    table = json.loads((box / POOL_FILE).read_text())
    table["roster"]["removed"] = [load_identity(desk).node_id]
    (box / POOL_FILE).write_text(json.dumps(table))
    with pytest.raises(ConfigError, match="not signed"):
        PrivatePool.load(box, load_identity(box))
    leave_pool(box)
    assert PrivatePool.load(box, load_identity(box)) is None
    assert sorted(p.name for p in box.iterdir() if "pool" in p.name or "invite" in p.name) == []


def test_a_roster_is_read_within_bounds(tmp_path: Path) -> None:
    with pytest.raises(MalformedRecord, match="over"):
        Roster.from_bytes(b" " * (MAX_ROSTER_BYTES + 1))
    with pytest.raises(MalformedRecord):
        Roster.from_bytes(b"[" * 100_000)
    (box,) = machines(tmp_path, 1)
    pool = create_pool(box, load_identity(box), "box")
    many = dataclasses.replace(pool.roster, members=(pool.roster.members[0],) * 1025)
    with pytest.raises(MalformedRecord, match="more than 1024"):
        Roster.from_json(many.to_json())
    assert Roster.from_bytes(json.dumps(pool.roster.to_json()).encode()) == pool.roster
    assert isinstance(pool.roster.members[0], Member)
