"""Cross-process download claims: one holder at a time; dead or stale holders are taken over."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ocifs.cache import claims as claims_module
from ocifs.cache.claims import STALE_CLAIM_AGE, UNWRITABLE, Claims, owner_is_dead, owner_record
from ocifs.digest import Digest

DIGEST = Digest.of_bytes(b"claimed")


def test_a_claim_is_exclusive_until_released(tmp_path: Path) -> None:
    claims = Claims(tmp_path / "claims")
    claim = claims.try_claim(DIGEST)
    assert claim == tmp_path / "claims" / DIGEST.hex
    assert claim.read_bytes() == owner_record()
    assert claims.try_claim(DIGEST) is None  # held by a live process (this one)
    Claims.release(claim)
    assert not claim.exists()
    assert claims.try_claim(DIGEST) == claim


def test_a_stale_claim_is_taken_over_whoever_holds_it(tmp_path: Path) -> None:
    claims = Claims(tmp_path / "claims")
    claim = claims.try_claim(DIGEST)
    assert claim is not None
    old = time.time() - STALE_CLAIM_AGE - 10
    os.utime(claim, (old, old))
    assert claims.try_claim(DIGEST) == claim


def test_an_unwritable_claims_directory_grants_a_claim_with_nothing_to_release(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    claims = Claims(tmp_path / "file" / "claims")  # its parent is a regular file
    claim = claims.try_claim(DIGEST)
    assert claim is not None and claim.name == UNWRITABLE
    Claims.release(claim)  # harmless


def test_only_an_owner_of_this_boot_and_pid_namespace_is_judged_by_its_pid() -> None:
    assert not owner_is_dead(owner_record())  # this process
    namespace_and_boot = claims_module.owner_record().split()[1:]
    gone = b" ".join([b"999999999", *namespace_and_boot])  # above any pid_max
    assert owner_is_dead(gone)
    assert not owner_is_dead(b"999999999 4026531836 00000000-0000-0000-0000-000000000000")
    assert not owner_is_dead(b"garbage")
    assert not owner_is_dead(b" ".join([b"0", *namespace_and_boot]))
