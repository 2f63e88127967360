"""What users decide about images: tags (a "remove" tag is the removal flag) and corrected
labels, kept in SQLite beside the runs (`results/annotations.sqlite`).

An image is named by its content hash *and* its path inside its input folder (`relpath`):
the hash lets an edit follow the image into every later run of the same files, the path
tells apart two copies of one file that a user may tag differently.

Two tables of current state (`tags`, `labels`) and one append-only `audit` table: who
(the name a user gives, else "anonymous"), when, what, the old and the new value. Every
change is one transaction that writes both; `undo` reverts a user's last change (one
action may touch many images) and is itself audited. WAL mode with `synchronous=FULL`:
readers never block the writer, and a committed edit survives the process being killed.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lib.runtime.errors import GapscopeError
from lib.store.names import shown

FILENAME = "annotations.sqlite"
REMOVE = "remove"  # the tag that flags an image for removal (`batch run --exclude-tag`)
ANONYMOUS = "anonymous"
TAG_SEPARATOR = ";"  # between an image's tags in the CSV export: no tag may hold it
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tags (
    hash TEXT NOT NULL, relpath TEXT NOT NULL, domain TEXT NOT NULL, tag TEXT NOT NULL,
    PRIMARY KEY (hash, relpath, tag)
);
CREATE INDEX IF NOT EXISTS tags_by_tag ON tags (tag);
CREATE TABLE IF NOT EXISTS labels (
    hash TEXT NOT NULL, relpath TEXT NOT NULL, domain TEXT NOT NULL,
    original TEXT NOT NULL, label TEXT NOT NULL,
    PRIMARY KEY (hash, relpath)
);
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    action INTEGER NOT NULL,          -- rows written by one user action share it
    at TEXT NOT NULL, who TEXT NOT NULL,
    hash TEXT NOT NULL, relpath TEXT NOT NULL, domain TEXT NOT NULL,
    field TEXT NOT NULL,              -- 'tag:<name>' or 'label'
    old TEXT, new TEXT,               -- NULL: absent (a tag not set, a label not changed)
    original TEXT,                    -- a label's value in its input
    undoes INTEGER                    -- the action an undo reverted
);
CREATE INDEX IF NOT EXISTS audit_by_who ON audit (who, action);
CREATE TABLE IF NOT EXISTS hotspots (  -- names users give a run's clusters in the atlas
    run TEXT NOT NULL, level TEXT NOT NULL, cluster INTEGER NOT NULL, name TEXT NOT NULL,
    PRIMARY KEY (run, level, cluster)
);
"""


@dataclass(frozen=True)
class ImageKey:
    """An image as annotations name it (see the module docstring)."""

    hash: str
    relpath: str
    domain: str


def keys_of(images, rows: Iterable[int]) -> list[ImageKey]:
    """The keys of a run's images-table `rows`."""
    rows = list(rows)
    if len(rows) <= 1000:  # a gallery's: a selection of arrow strings costs ~25 ms at 2M rows
        return [
            ImageKey(images.at[r, "hash"], images.at[r, "relpath"], images.at[r, "domain"])
            for r in rows
        ]
    part = {c: images[c].iloc[rows].tolist() for c in ("hash", "relpath", "domain")}
    return [ImageKey(*k) for k in zip(part["hash"], part["relpath"], part["domain"], strict=True)]


class Annotations:
    """The annotations database of a results folder; opened (and created) on first use."""

    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def of(cls, results: Path) -> Annotations:
        return cls(Path(results) / FILENAME)

    @contextmanager
    def _db(self, write: bool = True) -> Iterator[sqlite3.Connection]:
        """A connection for one unit of work: committed when the block succeeds, rolled
        back when it fails. A writer sets up the file and takes the write lock (one at a
        time); a reader reads one snapshot without it, so readers never wait for a
        writer nor hold one up. Connections are not shared between threads (Gradio runs
        events on worker threads)."""
        try:
            if write:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            db = self._connect(write)
        except sqlite3.Error as exc:
            raise GapscopeError(f"cannot open {self.path}: {exc}") from None
        try:
            if write:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute("PRAGMA synchronous=FULL")
                db.executescript(_SCHEMA)
                db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            db.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            if "disk is full" in str(exc) or ("I/O" in str(exc) and _nearly_full(self.path.parent)):
                raise GapscopeError(
                    "the disk holding the annotations is full: nothing was saved; free some "
                    "space and try again"
                ) from None
            raise GapscopeError(
                f"{self.path} is not a usable annotations database: {exc}"
            ) from None
        finally:
            db.close()

    def _connect(self, write: bool) -> sqlite3.Connection:
        """A connection; on a full disk, a reader's that needs no new file. SQLite in WAL
        mode makes a shared-memory file (-shm) for the first connection after the last
        closed: on a full disk that fails ("disk I/O error") or, on tmpfs, kills the
        process (SIGBUS). With no -shm there is no WAL either, so the database file alone
        is the whole truth, and nobody can commit to a full disk meanwhile: read it as
        immutable. A writer is told the disk is full before SQLite is touched."""
        if _nearly_full(self.path.parent):
            if write:
                raise GapscopeError(
                    "the disk holding the annotations is full: nothing was saved (reading "
                    "still works); free some space and try again"
                )
            if self.path.exists() and not Path(f"{self.path}-shm").exists():
                uri = f"{self.path.resolve().as_uri()}?immutable=1"
                return sqlite3.connect(uri, uri=True, isolation_level=None)
        return sqlite3.connect(self.path, timeout=30, isolation_level=None)

    # ---- changes -----------------------------------------------------------------------

    def tag(self, keys: Iterable[ImageKey], tag: str, who: str = ANONYMOUS) -> int:
        """Tag images (those already tagged are left as they are); returns how many
        gained the tag."""
        return self._change_tag(keys, tag, who, add=True)

    def untag(self, keys: Iterable[ImageKey], tag: str, who: str = ANONYMOUS) -> int:
        """Take a tag off images; returns how many had it."""
        return self._change_tag(keys, tag, who, add=False)

    def _change_tag(self, keys: Iterable[ImageKey], tag: str, who: str, add: bool) -> int:
        tag = _name(tag, "tag")
        if add and TAG_SEPARATOR in tag:  # the CSV joins an image's tags with it
            raise GapscopeError(f"a tag cannot hold {TAG_SEPARATOR!r}, got {shown(tag)}")
        with self._db() as db:
            action = _next_action(db)
            changed = 0
            for key in keys:
                if add:
                    cur = db.execute(
                        "INSERT OR IGNORE INTO tags VALUES (?, ?, ?, ?)",
                        (key.hash, key.relpath, key.domain, tag),
                    )
                else:
                    cur = db.execute(
                        "DELETE FROM tags WHERE hash=? AND relpath=? AND tag=?",
                        (key.hash, key.relpath, tag),
                    )
                if cur.rowcount:
                    old, new = (None, tag) if add else (tag, None)
                    _audit(db, action, who, key, f"tag:{tag}", old, new)
                    changed += 1
            return changed

    def set_label(self, key: ImageKey, original: str, label: str, who: str = ANONYMOUS) -> bool:
        """Correct an image's label (`original`: the label its input gives). Setting it
        back to the original removes the correction. Returns whether anything changed."""
        label = _name(label, "label")
        with self._db() as db:
            row = db.execute(
                "SELECT label FROM labels WHERE hash=? AND relpath=?", (key.hash, key.relpath)
            ).fetchone()
            old = row[0] if row else None
            new = None if label == original else label
            if old == new:
                return False
            _write_label(db, key, original, new)
            _audit(db, _next_action(db), who, key, "label", old, new, original=original)
            return True

    def name_hotspot(
        self, run: str, level: str, cluster: int, name: str, who: str = ANONYMOUS
    ) -> None:
        """Name one of a run's clusters (an empty name takes the name off). Audited as
        field "hotspot" of the pseudo-image ("", "<run>/<level>/<cluster>", "")."""
        name = (name or "").strip() and _name(name, "hotspot name")
        with self._db() as db:
            row = db.execute(
                "SELECT name FROM hotspots WHERE run=? AND level=? AND cluster=?",
                (run, level, cluster),
            ).fetchone()
            old = row[0] if row else None
            if old == (name or None):
                return
            key = ImageKey("", f"{run}/{level}/{cluster}", "")
            _write_hotspot(db, key, name or None)
            _audit(db, _next_action(db), who, key, "hotspot", old, name or None)

    def undo(self, who: str = ANONYMOUS) -> str:
        """Revert `who`'s last change that is not yet undone; says what was undone."""
        with self._db() as db:
            undone = {
                r[0]
                for r in db.execute(
                    "SELECT undoes FROM audit WHERE who=? AND undoes IS NOT NULL", (who,)
                )
            }
            last = db.execute(
                "SELECT MAX(action) FROM audit WHERE who=? AND undoes IS NULL"
                + (f" AND action NOT IN ({','.join('?' * len(undone))})" if undone else ""),
                (who, *undone),
            ).fetchone()[0]
            if last is None:
                return "nothing to undo"
            rows = db.execute(
                "SELECT hash, relpath, domain, field, old, new, original FROM audit "
                "WHERE action=? ORDER BY seq DESC",
                (last,),
            ).fetchall()
            action = _next_action(db)
            for h, relpath, domain, field, old, new, original in rows:
                key = ImageKey(h, relpath, domain)
                if field == "label":
                    _write_label(db, key, original, old)
                elif field == "hotspot":
                    _write_hotspot(db, key, old)
                elif old is None:  # the tag was added: take it off
                    db.execute(
                        "DELETE FROM tags WHERE hash=? AND relpath=? AND tag=?", (h, relpath, new)
                    )
                else:
                    db.execute(
                        "INSERT OR IGNORE INTO tags VALUES (?, ?, ?, ?)", (h, relpath, domain, old)
                    )
                _audit(db, action, who, key, field, new, old, original=original, undoes=last)
            return f"undid {len(rows)} change{'s' if len(rows) != 1 else ''}"

    # ---- reading -----------------------------------------------------------------------

    def tags(self) -> dict[ImageKey, set[str]]:
        """Every tagged image and its tags."""
        out: dict[ImageKey, set[str]] = {}
        for h, relpath, domain, tag in self._read("SELECT hash, relpath, domain, tag FROM tags"):
            out.setdefault(ImageKey(h, relpath, domain), set()).add(tag)
        return out

    def about_many(self, keys: list[ImageKey]) -> list[tuple[set[str], str | None]]:
        """The tags and corrected label (None: not corrected) of a few images (a
        gallery's), in one read."""
        if not keys:
            return []
        pairs = ", ".join("(?, ?)" for _ in keys)
        where = f"(hash, relpath) IN (VALUES {pairs})"
        args = tuple(v for k in keys for v in (k.hash, k.relpath))
        with_tags = f"SELECT hash, relpath, tag FROM tags WHERE {where}"
        tags: dict[tuple[str, str], set[str]] = {}
        labels: dict[tuple[str, str], str] = {}
        if not self.path.exists():
            return [(set(), None) for _ in keys]
        with self._db(write=False) as db:
            for h, relpath, tag in db.execute(with_tags, args):
                tags.setdefault((h, relpath), set()).add(tag)
            for h, relpath, label in db.execute(
                f"SELECT hash, relpath, label FROM labels WHERE {where}", args
            ):
                labels[(h, relpath)] = label
        return [
            (tags.get((k.hash, k.relpath), set()), labels.get((k.hash, k.relpath))) for k in keys
        ]

    def tagged(self, tag: str) -> set[tuple[str, str]]:
        """(hash, relpath) of every image with `tag`."""
        return {(h, p) for h, p in self._read("SELECT hash, relpath FROM tags WHERE tag=?", (tag,))}

    def about(self, key: ImageKey) -> tuple[set[str], tuple[str, str] | None]:
        """One image's tags and (original, corrected) label, if corrected: what the demo
        shows for a selection, without reading every annotation."""
        where = (key.hash, key.relpath)
        tags = self._read("SELECT tag FROM tags WHERE hash=? AND relpath=?", where)
        label = self._read("SELECT original, label FROM labels WHERE hash=? AND relpath=?", where)
        return {t for (t,) in tags}, (label[0] if label else None)

    def hotspot_names(self, run: str, level: str) -> dict[int, str]:
        """The names users gave a run's clusters at one level."""
        rows = self._read(
            "SELECT cluster, name FROM hotspots WHERE run=? AND level=?", (run, level)
        )
        return dict(rows)

    def labels(self) -> dict[ImageKey, tuple[str, str]]:
        """Every corrected image: (original label, corrected label)."""
        rows = self._read("SELECT hash, relpath, domain, original, label FROM labels")
        return {ImageKey(h, p, d): (o, n) for h, p, d, o, n in rows}

    def audit(self) -> list[dict]:
        """The audit table, oldest first."""
        cols = (
            "seq",
            "action",
            "at",
            "who",
            "hash",
            "relpath",
            "domain",
            "field",
            "old",
            "new",
            "original",
            "undoes",
        )
        rows = self._read(f"SELECT {', '.join(cols)} FROM audit ORDER BY seq")
        return [dict(zip(cols, r, strict=True)) for r in rows]

    def last_seq(self) -> int:
        """The newest audit entry: what a run that applied the annotations saw."""
        rows = self._read("SELECT MAX(seq) FROM audit")
        return (rows[0][0] or 0) if rows else 0

    def _read(self, sql: str, args: tuple = ()) -> list[tuple]:
        if not self.path.exists():  # nothing annotated yet: no file is made by reading
            return []
        with self._db(write=False) as db:
            return db.execute(sql, args).fetchall()


FULL_BELOW = 1 << 20  # bytes free: SQLite needs room for its journal and shared memory


def _nearly_full(folder: Path, below: int = FULL_BELOW) -> bool:
    try:
        return shutil.disk_usage(folder).free < below
    except OSError:  # no folder yet: nothing to read, and a writer makes it
        return False


def _name(text: str, what: str) -> str:
    text = (text or "").strip()
    if not text or len(text) > 200 or any(c in text for c in "\n\r\t"):
        raise GapscopeError(f"a {what} must be 1 to 200 characters on one line, got {shown(text)}")
    return text


def _next_action(db: sqlite3.Connection) -> int:
    return db.execute("SELECT COALESCE(MAX(action), 0) + 1 FROM audit").fetchone()[0]


def _write_label(db, key: ImageKey, original: str, label: str | None) -> None:
    if label is None:
        db.execute("DELETE FROM labels WHERE hash=? AND relpath=?", (key.hash, key.relpath))
    else:
        db.execute(
            "INSERT OR REPLACE INTO labels VALUES (?, ?, ?, ?, ?)",
            (key.hash, key.relpath, key.domain, original, label),
        )


def _write_hotspot(db, key: ImageKey, name: str | None) -> None:
    run, level, cluster = key.relpath.rsplit("/", 2)
    if name is None:
        db.execute(
            "DELETE FROM hotspots WHERE run=? AND level=? AND cluster=?", (run, level, int(cluster))
        )
    else:
        db.execute(
            "INSERT OR REPLACE INTO hotspots VALUES (?, ?, ?, ?)", (run, level, int(cluster), name)
        )


def _audit(db, action, who, key: ImageKey, field, old, new, original=None, undoes=None):
    db.execute(
        "INSERT INTO audit (action, at, who, hash, relpath, domain, field, old, new, original, "
        "undoes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            action,
            time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            _name(who or ANONYMOUS, "name"),
            key.hash,
            key.relpath,
            key.domain,
            field,
            old,
            new,
            original,
            undoes,
        ),
    )
