"""The run store: atomic writes that leave no debris, done markers, and --fresh clearing once."""

from __future__ import annotations

import json
import os

import pytest

from mesascope import store as store_mod
from mesascope.store import RunStore, atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_atomic_writes_leave_only_the_file(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "sub" / "b.txt", "héllo ☂️")
    atomic_write_json(tmp_path / "c.json", {"trigger": "配備", "n": [1, 2]})
    atomic_write_text(tmp_path / "sub" / "b.txt", "overwritten")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "sub" / "b.txt").read_text(encoding="utf-8") == "overwritten"
    assert json.loads((tmp_path / "c.json").read_text(encoding="utf-8")) == {"trigger": "配備", "n": [1, 2]}
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a.bin", "b.txt", "c.json", "sub"]


def test_failed_atomic_write_keeps_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "state.json"
    atomic_write_json(target, {"step": 1})

    def crash(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"step": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_atomic_dir_replaces_whole_directory(tmp_path):
    final = tmp_path / "organism"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with atomic_dir(final) as tmp:
        assert tmp.parent == final.parent and tmp != final
        assert (final / "old.txt").exists()  # untouched while the new one is written
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["organism"]


def test_failure_inside_atomic_dir_keeps_old_directory(tmp_path):
    final = tmp_path / "organism"
    final.mkdir()
    (final / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_dir(final) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert [p.name for p in final.iterdir()] == ["old.txt"]
    assert (final / "old.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["organism"]  # the temp dir is gone too
    # a fresh directory that fails is never created
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "never") as tmp:
            raise KeyboardInterrupt
    assert [p.name for p in tmp_path.iterdir()] == ["organism"]


def test_done_markers(tmp_path):
    store = RunStore(tmp_path)
    d = store.stage_dir("organism", "abc123")
    assert d.parent == tmp_path / "runs" and d.name.startswith("organism-") and d.is_dir()
    assert not store.is_done(d)
    store.mark_done(d, resumed_from_step=20)
    assert store.is_done(d)
    info = store.read_json(d / "done.json")
    assert info["resumed_from_step"] == 20 and info["finished"].endswith("Z")
    assert store.stage_dir("organism", "abc123") == d and store.is_done(d)  # reopening keeps it
    assert not store.is_done(store.stage_dir("organism", "other"))
    assert RunStore(tmp_path).is_done(d)  # a later process sees it too


def test_stage_names_change_with_the_code_version(tmp_path, monkeypatch):
    import mesascope

    before = RunStore(tmp_path).stage_dir("organism", "abc123")
    monkeypatch.setattr(mesascope, "__version__", "99.0")
    after = RunStore(tmp_path).stage_dir("organism", "abc123")
    assert before != after  # a new release never reuses an older release's results


def test_fresh_clears_each_stage_once_per_store(tmp_path):
    old = RunStore(tmp_path)
    d = old.stage_dir("stress", "k1")
    (d / "stale.txt").write_text("from an earlier run")
    old.mark_done(d)
    keep = old.stage_dir("organism", "k2")
    old.mark_done(keep)

    store = RunStore(tmp_path, fresh=True)
    d1 = store.stage_dir("stress", "k1")
    assert d1 == d and d1.is_dir() and not any(d1.iterdir())  # cleared, recreated empty
    assert not store.is_done(d1)
    (d1 / "new.txt").write_text("this run")
    store.mark_done(d1)
    d1_again = store.stage_dir("stress", "k1")  # a later stage reads it within the same run
    assert (d1_again / "new.txt").exists() and store.is_done(d1_again)
    assert RunStore(tmp_path).is_done(keep)  # stages it never opened are untouched
    assert os.path.exists(keep / "done.json")

    # the next --fresh invocation recomputes again
    again = RunStore(tmp_path, fresh=True)
    assert not again.is_done(again.stage_dir("stress", "k1"))
    # and a plain store reuses
    assert not (RunStore(tmp_path).stage_dir("stress", "k1") / "new.txt").exists()


def test_atomic_dir_is_readable_by_others_like_any_directory(tmp_path):
    from mesascope.store import atomic_dir

    with atomic_dir(tmp_path / "organism") as tmp:
        (tmp / "x.json").write_text("{}")
    mode = (tmp_path / "organism").stat().st_mode & 0o777
    assert mode == 0o755 & ~_current_umask()


def _current_umask() -> int:
    import os

    m = os.umask(0)
    os.umask(m)
    return m
