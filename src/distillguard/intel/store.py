"""Partners' imported indicators: one SQLite file under ``DISTILLGUARD_HOME/intel/``.

Import streams a bundle (``stix.read_bundle``) into the file inside one transaction, so a
bundle that turns out broken half-way leaves the store as it was, and a bundle larger than
memory is never held whole. Re-importing a bundle replaces its objects (same ids); every
indicator is kept, the ones distillguard cannot evaluate with the reason, so none is dropped
silently. The store can rebuild a partner's ``IntelSet`` (re-export without loss).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from distillguard.errors import InputError, NotFound
from distillguard.intel.fingerprints import KIND_REQUEST_PARAMS, CommunityKey
from distillguard.intel.indicators import CampaignIntel, IndicatorIntel, IntelSet
from distillguard.intel.matching import SharedIndicator
from distillguard.intel.stix_read import ReadStats, read_bundle

SCHEMA = """
CREATE TABLE IF NOT EXISTS producers (id TEXT PRIMARY KEY, name TEXT NOT NULL,
    tlp TEXT NOT NULL, key_id TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS campaigns (id TEXT PRIMARY KEY, name TEXT NOT NULL,
    accounts INTEGER NOT NULL, requests INTEGER NOT NULL, first_seen REAL NOT NULL,
    last_seen REAL NOT NULL, confidence INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS indicators (id TEXT PRIMARY KEY, producer TEXT, pattern TEXT NOT NULL,
    kind TEXT, value TEXT, template_shingles INTEGER, confidence INTEGER, created REAL NOT NULL,
    first_seen REAL NOT NULL, key_id TEXT, unevaluable TEXT);
CREATE TABLE IF NOT EXISTS indicates (indicator TEXT PRIMARY KEY, campaign TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sightings (indicator TEXT PRIMARY KEY, count INTEGER NOT NULL,
    accounts INTEGER NOT NULL, first_seen REAL, last_seen REAL);
"""


@dataclass(frozen=True)
class ImportReport:
    producers: tuple[str, ...]
    campaigns: int
    indicators: int
    unevaluable: int
    stats: ReadStats


class IntelStore:
    """The indicators partners shared with us, in ``home/intel/indicators.db``."""

    def __init__(self, home: Path) -> None:
        self.path = Path(home) / "intel" / "indicators.db"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path)
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> IntelStore:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def import_bundle(self, fh: IO[bytes], key: CommunityKey) -> ImportReport:
        """Stream one bundle in; all or nothing. Raises ``InputError`` for a bundle that is
        not STIX 2.1 JSON or whose hashes were made under another community key."""
        stats = ReadStats()
        names: dict[str, str] = {}
        tlp = "amber"
        producers: dict[str, float] = {}
        n_campaigns = n_indicators = 0
        db = self._db
        try:
            with db:
                for tag, item in read_bundle(fh, stats):
                    if tag == "identity":
                        names[item[0]] = item[1]
                    elif tag == "marking":
                        tlp = item[1]
                    elif tag == "campaign":
                        n_campaigns += 1
                        db.execute(
                            "INSERT OR REPLACE INTO campaigns VALUES (?,?,?,?,?,?,?)",
                            (
                                item.id,
                                item.name,
                                item.accounts,
                                item.requests,
                                item.first_seen,
                                item.last_seen,
                                item.confidence,
                            ),
                        )
                    elif tag == "indicator":
                        n_indicators += 1
                        if (
                            item.key_id
                            and item.key_id != key.key_id
                            and item.kind not in (None, KIND_REQUEST_PARAMS)
                        ):
                            raise InputError(
                                f"indicator {item.id} was hashed under community key "
                                f"{item.key_id}, but DISTILLGUARD_INTEL_KEY is key "
                                f"{key.key_id}: nothing of this bundle can match; ask the "
                                "partner which community key it used"
                            )
                        if item.created_by:
                            producers.setdefault(item.created_by, item.created)
                        db.execute(
                            "INSERT OR REPLACE INTO indicators VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                            (
                                item.id,
                                item.created_by,
                                item.pattern,
                                item.kind,
                                item.value,
                                item.template_shingles,
                                item.confidence,
                                item.created,
                                item.first_seen,
                                item.key_id,
                                item.unevaluable,
                            ),
                        )
                    elif tag == "indicates":
                        db.execute("INSERT OR REPLACE INTO indicates VALUES (?,?)", item)
                    elif tag == "sighting":
                        db.execute(
                            "INSERT OR REPLACE INTO sightings VALUES (?,?,?,?,?)",
                            (item.of, item.count, item.accounts, item.first_seen, item.last_seen),
                        )
                if n_indicators == 0 and n_campaigns == 0:
                    raise InputError(
                        f"the bundle holds no campaign and no indicator ({stats.objects} "
                        "objects): nothing to import"
                    )
                for pid, created in producers.items():
                    name = names.get(pid, pid)
                    db.execute(
                        "INSERT OR REPLACE INTO producers VALUES (?,?,?,?,?)",
                        (pid, name, tlp, key.key_id, created),
                    )
        except sqlite3.Error as exc:
            raise InputError(f"could not store the bundle in {self.path}: {exc}") from exc
        return ImportReport(
            tuple(names.get(p, p) for p in producers),
            n_campaigns,
            n_indicators,
            stats.unevaluable,
            stats,
        )

    def sources(self) -> list[tuple[str, str, int, int]]:
        """(producer id, name, indicators, unevaluable) for every partner in the store."""
        return self._db.execute(
            "SELECT p.id, p.name, COUNT(i.id), COUNT(i.unevaluable) FROM producers p "
            "LEFT JOIN indicators i ON i.producer = p.id GROUP BY p.id ORDER BY p.name"
        ).fetchall()

    def shared_indicators(self) -> tuple[list[SharedIndicator], list[tuple[str, str]]]:
        """Every evaluable indicator with its source, and (id, reason) of the others."""
        rows = self._db.execute(
            "SELECT i.id, COALESCE(p.name, i.producer, 'unknown'), i.kind, i.value, "
            "i.template_shingles, COALESCE(i.confidence, 50), i.first_seen, i.unevaluable, "
            "COALESCE(r.campaign, ''), COALESCE(c.name, ''), s.count, s.accounts, s.last_seen "
            "FROM indicators i LEFT JOIN producers p ON p.id = i.producer "
            "LEFT JOIN indicates r ON r.indicator = i.id LEFT JOIN campaigns c ON c.id = "
            "r.campaign LEFT JOIN sightings s ON s.indicator = i.id ORDER BY i.id"
        ).fetchall()
        shared, skipped = [], []
        for iid, src, kind, value, size, conf, first, bad, cid, cname, cnt, accts, last in rows:
            if bad:
                skipped.append((iid, bad))
                continue
            ind = IndicatorIntel(
                iid,
                cid,
                kind,
                value,
                conf,
                accts or 0,
                cnt or 0,
                first,
                last if last is not None else first,
                size,
            )
            shared.append(SharedIndicator(src, ind, cname))
        return shared, skipped

    def intel_set(self, producer: str) -> IntelSet:
        """One partner's evaluable campaigns and indicators, as its bundle said them."""
        row = self._db.execute(
            "SELECT id, name, tlp, key_id, created FROM producers WHERE name = ? OR id = ?",
            (producer, producer),
        ).fetchone()
        if row is None:
            raise NotFound(f"no partner named {producer!r} in {self.path}")
        pid, name, tlp, _key_id, created = row
        shared, _ = self.shared_indicators()
        mine = [s.indicator for s in shared if s.source == name]
        cids = sorted({i.campaign_id for i in mine})
        campaigns = [
            CampaignIntel(*r)
            for r in self._db.execute(
                f"SELECT * FROM campaigns WHERE id IN ({','.join('?' * len(cids))}) ORDER BY id",
                cids,
            )
        ]
        key_id = self._db.execute(
            "SELECT key_id FROM indicators WHERE producer = ? AND key_id IS NOT NULL LIMIT 1",
            (pid,),
        ).fetchone()
        return IntelSet(
            name, pid, key_id[0] if key_id else "", tlp, created, tuple(campaigns), tuple(mine)
        )
