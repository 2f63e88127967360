"""Annotations kept in SQLite: tags, label fixes, the removal flag, undo, the audit
trail, several writers at once, and a writer killed mid-burst."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading

import pytest
from conftest import ROOT, one_line

from lib.runtime.errors import GapscopeError
from lib.store.annotations import REMOVE, Annotations, ImageKey

A = ImageKey("h" * 64, "cats/a.png", "synthetic")
B = ImageKey("g" * 64, "cats/b.png", "synthetic")
A_COPY = ImageKey("h" * 64, "dogs/a.png", "synthetic")  # the same file under another name


def test_tags_persist_across_connections_and_name_the_image_by_hash_and_path(tmp_path):
    notes = Annotations(tmp_path / "annotations.sqlite")
    assert notes.tags() == {} and not notes.path.exists()  # reading makes no file
    assert notes.tag([A, B], "odd lighting", who="ana") == 2
    assert notes.tag([A], "odd lighting", who="ana") == 0  # already tagged
    notes.tag([A], REMOVE, who="ana")
    again = Annotations(tmp_path / "annotations.sqlite")
    assert again.tags() == {A: {"odd lighting", REMOVE}, B: {"odd lighting"}}
    assert A_COPY not in again.tags()  # a copy elsewhere is another image
    assert again.tagged(REMOVE) == {(A.hash, A.relpath)}
    assert again.untag([A, A_COPY], "odd lighting", who="bo") == 1
    assert again.tags()[A] == {REMOVE}


def test_a_label_fix_is_kept_with_the_original_and_setting_it_back_removes_it(tmp_path):
    notes = Annotations(tmp_path / "a.sqlite")
    assert notes.set_label(A, original="cat", label="dog", who="ana")
    assert notes.labels() == {A: ("cat", "dog")}
    assert not notes.set_label(A, original="cat", label="dog")  # no change
    assert notes.set_label(A, original="cat", label="cat")
    assert notes.labels() == {}


def test_undo_reverts_the_users_last_action_whole_and_is_audited(tmp_path):
    notes = Annotations(tmp_path / "a.sqlite")
    notes.tag([A, B], "keep", who="ana")
    notes.set_label(B, "cat", "fox", who="bo")
    notes.tag([A, B], REMOVE, who="ana")
    assert notes.undo(who="ana") == "undid 2 changes"  # both images of the last action
    assert notes.tags() == {A: {"keep"}, B: {"keep"}}
    assert notes.labels() == {B: ("cat", "fox")}  # bo's edit is bo's to undo
    assert notes.undo(who="ana") == "undid 2 changes"
    assert notes.tags() == {}
    assert notes.undo(who="ana") == "nothing to undo"
    assert notes.undo(who="bo") == "undid 1 change" and notes.labels() == {}
    trail = notes.audit()
    assert [(r["who"], r["field"], r["old"], r["new"]) for r in trail[:3]] == [
        ("ana", "tag:keep", None, "keep"),
        ("ana", "tag:keep", None, "keep"),
        ("bo", "label", None, "fox"),
    ]
    assert sum(r["undoes"] is not None for r in trail) == 5  # undos are audited, not erased
    assert notes.last_seq() == trail[-1]["seq"]


@pytest.mark.parametrize("bad", ["", "   ", "two\nlines", "x" * 201])
def test_bad_names_are_one_line_errors_and_change_nothing(tmp_path, bad):
    notes = Annotations(tmp_path / "a.sqlite")
    with pytest.raises(GapscopeError) as exc:
        notes.tag([A], bad)
    assert "1 to 200 characters" in one_line(exc)
    assert notes.tags() == {}


def test_a_file_that_is_not_a_database_is_a_one_line_error(tmp_path):
    path = tmp_path / "a.sqlite"
    path.write_text("not sqlite at all " * 100)
    with pytest.raises(GapscopeError) as exc:
        Annotations(path).tag([A], "x")
    assert "not a usable annotations database" in one_line(exc)


def test_two_writers_at_once_both_keep_every_edit(tmp_path):
    path = tmp_path / "a.sqlite"
    keys = [ImageKey(f"{i:064x}", f"{i}.png", "real") for i in range(60)]

    def writer(tag: str) -> None:
        notes = Annotations(path)  # each writer its own connection, as each browser
        for key in keys:
            notes.tag([key], tag, who=tag)

    threads = [threading.Thread(target=writer, args=(t,)) for t in ("ana", "bo")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tags = Annotations(path).tags()
    assert all(tags[k] == {"ana", "bo"} for k in keys)
    assert len(Annotations(path).audit()) == 120


def test_a_writer_killed_mid_burst_loses_no_committed_edit(tmp_path):
    path = tmp_path / "a.sqlite"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(ROOT)!r})
        from lib.store.annotations import Annotations, ImageKey
        notes = Annotations({str(path)!r})
        for i in range(100_000):
            notes.tag([ImageKey(f"{{i:064x}}", f"{{i}}.png", "real")], "burst")
            print(i, flush=True)  # committed
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    committed = -1
    for line in child.stdout:
        committed = int(line)
        if committed >= 150:
            break
    child.send_signal(signal.SIGKILL)
    child.wait()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    kept = Annotations(path).tagged("burst")
    assert {(f"{i:064x}", f"{i}.png") for i in range(committed + 1)} <= kept


def test_who_may_write_from_the_demo():
    import gradio as gr

    from demo.__main__ import LOCAL_HOSTS
    from demo.curation import Editing

    assert Editing.decide("127.0.0.1", None, LOCAL_HOSTS) == Editing(True, None)
    public = Editing.decide("0.0.0.0", None, LOCAL_HOSTS)
    assert not public.enabled
    with pytest.raises(gr.Error, match="read-only"):
        public.check(None)
    guarded = Editing.decide("0.0.0.0", "s3cret", LOCAL_HOSTS)
    guarded.check("s3cret")
    for wrong in (None, "", "s3cre", "s3cret "):
        with pytest.raises(gr.Error, match="Wrong write token"):
            guarded.check(wrong)


def test_one_images_notes_and_reads_while_a_writer_holds_the_lock(tmp_path):
    notes = Annotations(tmp_path / "a.sqlite")
    notes.tag([A], "keep")
    notes.set_label(A, "cat", "dog")
    assert notes.about(A) == ({"keep"}, ("cat", "dog")) and notes.about(B) == (set(), None)
    writer = sqlite3.connect(notes.path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # another process in the middle of a change
    writer.execute("INSERT INTO tags VALUES (?, ?, ?, ?)", (B.hash, B.relpath, B.domain, "x"))
    assert notes.tags() == {A: {"keep"}}  # the last committed state, without waiting
    writer.execute("COMMIT")
    writer.close()
    assert notes.tags()[B] == {"x"}
