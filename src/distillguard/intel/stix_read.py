"""Reading a STIX 2.1 bundle back: streamed object by object, every object used or counted.

``iter_objects`` streams the ``objects`` array (``ijson``): memory is bounded by one object, not
the bundle. ``read_bundle`` validates each object with the ``stix2`` library and yields what
distillguard uses (identities, TLP, campaigns, indicators with their evaluated pattern,
*indicates* relationships, sightings); everything else is counted in ``ReadStats`` with its id
and the reason. ``collect`` turns one producer's items into an ``IntelSet`` (round trip).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO, Any

import stix2
from stix2.exceptions import STIXError

from distillguard.errors import InputError
from distillguard.intel.indicators import CampaignIntel, IndicatorIntel, IntelSet
from distillguard.intel.stix import (
    CLIENT_TYPE,
    DISTILLGUARD_ID,
    PATTERNS,
    REQUEST_TYPE,
    TEMPLATE_TYPE,
    TLP_BY_ID,
    evaluate_pattern,
)

# Skipped objects listed with id and reason (all are counted): a bundle of a million unknown
# objects must not hold a million reasons in memory.
MAX_SKIPS_LISTED = 1000
KNOWN_UNUSED = frozenset(
    {
        "extension-definition",
        "attack-pattern",
        "observed-data",
        CLIENT_TYPE,
        TEMPLATE_TYPE,
        REQUEST_TYPE,
    }
)


@dataclass(frozen=True)
class Skip:
    object_id: str
    reason: str


@dataclass(frozen=True)
class ParsedIndicator:
    """An indicator as read: evaluable (kind and value set) or kept with the reason it is not."""

    id: str
    created_by: str | None
    pattern: str
    pattern_type: str
    confidence: int | None
    created: float
    first_seen: float  # valid_from
    key_id: str | None
    kind: str | None = None
    value: str | None = None
    template_shingles: int | None = None
    unevaluable: str | None = None  # why distillguard cannot match it (None: it can)


@dataclass(frozen=True)
class ParsedSighting:
    of: str
    count: int
    accounts: int
    first_seen: float | None
    last_seen: float | None


@dataclass
class ReadStats:
    """What a pass over a bundle found: counts per type and every skip with its object id."""

    objects: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    skipped_count: int = 0
    skipped: list[Skip] = field(default_factory=list)  # the first MAX_SKIPS_LISTED, with ids
    unevaluable: int = 0

    def skip(self, object_id: str, reason: str) -> None:
        self.skipped_count += 1
        if len(self.skipped) < MAX_SKIPS_LISTED:
            self.skipped.append(Skip(object_id, reason))


# One item of a bundle, in file order: ("identity", (id, name)), ("marking", (id, tlp)),
# ("campaign", CampaignIntel), ("indicator", ParsedIndicator), ("indicates", (indicator id,
# campaign id)) or ("sighting", ParsedSighting).
BundleItem = tuple[str, Any]


def _epoch(v: Any) -> float:
    if isinstance(v, datetime):
        return round(v.timestamp(), 3)
    return round(datetime.fromisoformat(str(v).replace("Z", "+00:00")).timestamp(), 3)


def iter_objects(fh: IO[bytes], stats: ReadStats) -> Iterator[dict[str, Any]]:
    """The objects of a STIX 2.1 bundle, one at a time; raises ``InputError`` for a file that
    is not JSON, not a bundle, or a STIX 2.0 bundle."""
    import ijson

    builder: Any = None
    depth = 0
    top_type = None
    try:
        for prefix, event, value in ijson.parse(fh, use_float=True):
            if builder is not None:
                builder.event(event, value)
                depth += {"start_map": 1, "end_map": -1, "start_array": 1, "end_array": -1}.get(
                    event, 0
                )
                if depth == 0:
                    obj, builder = builder.value, None
                    stats.objects += 1
                    yield obj
                continue
            if prefix == "" and event not in ("start_map", "map_key", "end_map"):
                raise InputError("not a STIX bundle: the file is not a JSON object")
            if prefix == "type":
                top_type = value
                if value != "bundle":
                    raise InputError(f"not a STIX bundle: top-level type is {value!r}")
            elif prefix == "spec_version":
                raise InputError(
                    f"a STIX {value} bundle: only STIX 2.1 is supported (2.1 "
                    "bundles have no spec_version; their objects do)"
                )
            elif prefix == "objects.item":
                if event != "start_map":
                    raise InputError(
                        f"not a STIX bundle: object {stats.objects + 1} is not a JSON object"
                    )
                builder, depth = ijson.ObjectBuilder(), 1
                builder.event(event, value)
    except ijson.JSONError as exc:
        raise InputError(
            f"the bundle is not valid JSON after {stats.objects} objects: {exc}"
        ) from exc
    if top_type is None:
        raise InputError('not a STIX bundle: no top-level "type": "bundle"')


def read_bundle(fh: IO[bytes], stats: ReadStats) -> Iterator[BundleItem]:
    """Everything distillguard uses of a bundle, in file order; the rest counted in ``stats``."""
    for obj in iter_objects(fh, stats):
        oid = str(obj.get("id", "?"))
        otype = str(obj.get("type", "?"))
        stats.by_type[otype] = stats.by_type.get(otype, 0) + 1
        if otype != "bundle" and obj.get("spec_version", "2.1") != "2.1":
            stats.skip(oid, f"spec_version {obj.get('spec_version')!r}, not 2.1")
            continue
        ours = otype == "indicator" and obj.get("pattern_type") == "stix" and _is_ours(obj)
        try:
            # A pattern of one of our forms is valid STIX by construction: the library checks
            # the rest of the object, without its ANTLR parse of the pattern (3/4 of the cost).
            probe = {**obj, "pattern_type": "x-distillguard"} if ours else obj
            parsed = stix2.parse(probe, allow_custom=True, version="2.1")
        except (STIXError, ValueError, TypeError, KeyError) as exc:
            stats.skip(oid, f"invalid {otype}: {str(exc)[:200]}")
            continue
        if isinstance(parsed, dict):
            stats.skip(oid, f"unknown object type {otype!r}")
            continue
        if otype == "identity":
            yield "identity", (oid, parsed.name)
        elif otype == "marking-definition":
            if oid in TLP_BY_ID:
                yield "marking", (oid, TLP_BY_ID[oid])
        elif otype == "campaign":
            yield (
                "campaign",
                CampaignIntel(
                    oid,
                    parsed.name,
                    int(parsed.get("distillguard_accounts", 0)),
                    int(parsed.get("distillguard_requests", 0)),
                    _epoch(parsed.get("first_seen", parsed.created)),
                    _epoch(parsed.get("last_seen", parsed.modified)),
                    int(parsed.get("confidence", 50)),
                ),
            )
        elif otype == "indicator":
            ind = _indicator(parsed, obj.get("pattern_type", ""))
            if ind.unevaluable:
                stats.unevaluable += 1
            yield "indicator", ind
        elif otype == "relationship":
            if parsed.relationship_type == "indicates":
                yield "indicates", (parsed.source_ref, parsed.target_ref)
        elif otype == "sighting":
            yield (
                "sighting",
                ParsedSighting(
                    parsed.sighting_of_ref,
                    int(parsed.get("count", 1)),
                    int(parsed.get("distillguard_accounts", 0)),
                    _epoch(parsed.first_seen) if "first_seen" in parsed else None,
                    _epoch(parsed.last_seen) if "last_seen" in parsed else None,
                ),
            )
        elif otype not in KNOWN_UNUSED:
            stats.skip(oid, f"object type {otype!r} is not used for matching")


def _is_ours(obj: dict[str, Any]) -> bool:
    pattern = obj.get("pattern")
    return isinstance(pattern, str) and any(rx.fullmatch(pattern) for rx in PATTERNS.values())


def _indicator(p: Any, pattern_type: str) -> ParsedIndicator:
    base = dict(
        id=p.id,
        created_by=p.get("created_by_ref"),
        pattern=p.pattern,
        pattern_type=p.pattern_type,
        confidence=p.get("confidence"),
        created=_epoch(p.created),
        first_seen=_epoch(p.valid_from),
        key_id=p.get("distillguard_key_id"),
    )
    if pattern_type != "stix":
        return ParsedIndicator(**base, unevaluable=f"pattern type {pattern_type!r}, not stix")
    try:
        kind, value, size = evaluate_pattern(p.pattern)
    except InputError as exc:
        return ParsedIndicator(**base, unevaluable=exc.message)
    return ParsedIndicator(**base, kind=kind, value=value, template_shingles=size)


def collect(items: Iterator[BundleItem]) -> IntelSet:
    """An in-memory ``IntelSet`` of one producer's bundle (tests, small bundles).

    Raises ``InputError`` if the bundle holds unevaluable indicators or several producers:
    use the store for those."""
    names: dict[str, str] = {}
    campaigns: list[CampaignIntel] = []
    indicators: list[ParsedIndicator] = []
    indicates: dict[str, str] = {}
    sightings: dict[str, ParsedSighting] = {}
    tlp = "amber"
    for tag, item in items:
        if tag == "identity":
            names[item[0]] = item[1]
        elif tag == "marking":
            tlp = item[1]
        elif tag == "campaign":
            campaigns.append(item)
        elif tag == "indicator":
            indicators.append(item)
        elif tag == "indicates":
            indicates[item[0]] = item[1]
        elif tag == "sighting":
            sightings[item.of] = item
    producers = {i.created_by for i in indicators}
    if len(producers) > 1:
        raise InputError(f"bundle has indicators of {len(producers)} producers")
    bad = [i.id for i in indicators if i.unevaluable]
    if bad:
        raise InputError(f"{len(bad)} indicators cannot be evaluated (first: {bad[0]})")
    pid = next(iter(producers), None) or next(
        (k for k in names if k != DISTILLGUARD_ID), DISTILLGUARD_ID
    )
    out = []
    for i in indicators:
        s = sightings.get(i.id)
        out.append(
            IndicatorIntel(
                i.id,
                indicates.get(i.id, ""),
                i.kind or "",
                i.value or "",
                i.confidence if i.confidence is not None else 50,
                s.accounts if s else 0,
                s.count if s else 0,
                i.first_seen,
                s.last_seen if s and s.last_seen else i.first_seen,
                i.template_shingles,
            )
        )
    created = indicators[0].created if indicators else 0.0
    key_id = next((i.key_id for i in indicators if i.key_id), "")
    return IntelSet(
        names.get(pid, "unknown"), pid, key_id, tlp, created, tuple(campaigns), tuple(out)
    )
