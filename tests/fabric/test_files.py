"""Atomic replacement under concurrent writers (study workers all export the same presets)."""

from __future__ import annotations

import os
import stat
import threading

import pytest

from fabric.files import copy_atomic, replacing, write_text_atomic


def test_concurrent_writers_of_one_file_all_succeed_and_leave_one_whole_version(tmp_path):
    # With a shared "name.tmp" one writer renamed another's half-written file away and the
    # other's rename then failed (a CI run lost a study worker to this).
    target = tmp_path / "presets" / "study.json"
    texts = [f"writer {i}\n" * (200 + i) for i in range(8)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(texts))

    def write(text: str) -> None:
        start.wait()
        try:
            for _ in range(40):
                write_text_atomic(target, text)
        except BaseException as exc:  # noqa: BLE001 -- collected for the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(t,)) for t in texts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() in texts
    assert sorted(p.name for p in target.parent.iterdir()) == ["study.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = write_text_atomic(tmp_path / "plot.png", "old")
    with pytest.raises(RuntimeError, match="renderer"), replacing(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("renderer failed")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plot.png"]


def test_copies_and_permissions_follow_the_umask(tmp_path):
    source = tmp_path / "ref.png"
    source.write_bytes(b"\x89PNG fake")
    old = os.umask(0o022)
    try:
        copied = copy_atomic(source, tmp_path / "out" / "ref.png")
    finally:
        os.umask(old)
    assert copied.read_bytes() == source.read_bytes()
    assert stat.S_IMODE(copied.stat().st_mode) == 0o644  # readable by a team, unlike mkstemp's 0600
