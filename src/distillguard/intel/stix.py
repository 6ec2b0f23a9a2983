"""STIX 2.1 bundles of campaign indicators, built with the ``stix2`` library.

A bundle holds, for each campaign: a ``campaign``; per indicator an ``indicator`` (a STIX
pattern over distillguard's observable types), the observable itself, an ``observed-data``
and a ``sighting`` (counts, first/last seen, where: the provider), and ``relationship``s
(indicator *indicates* campaign, campaign *uses* the MITRE ATLAS techniques); one
``identity`` for the provider, one for distillguard (author of the extension definitions and
ATLAS references), a TLP marking on every object. Counts STIX has no property for travel in a
``toplevel-property-extension``; the observable types are a ``new-sco`` extension.

Reading a bundle back is ``stix_read``.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import stix2
from stix2 import v21
from stix2.properties import IntegerProperty, StringProperty

from distillguard.errors import InputError
from distillguard.intel.fingerprints import (
    KIND_IP_PREFIX,
    KIND_PAYMENT,
    KIND_REQUEST_PARAMS,
    KIND_TEMPLATE,
    KIND_USER_AGENT,
)
from distillguard.intel.indicators import IndicatorIntel, IntelSet

# Constant ids: every distillguard bundle names the same extensions, techniques and author.
DISTILLGUARD_ID = "identity--5b0b7d53-7c8d-4a1e-9a38-0d7e1f6c2a10"
EXT_CLIENT = "extension-definition--9d1c7a52-6a3b-4f0e-8a52-3c1f2b7e4d01"
EXT_TEMPLATE = "extension-definition--9d1c7a52-6a3b-4f0e-8a52-3c1f2b7e4d03"
EXT_REQUEST = "extension-definition--9d1c7a52-6a3b-4f0e-8a52-3c1f2b7e4d04"
EXT_PROPS = "extension-definition--9d1c7a52-6a3b-4f0e-8a52-3c1f2b7e4d02"
EXT_CREATED = "2026-12-01T00:00:00.000Z"
SCHEMA_URL = "https://github.com/distillguard/distillguard/blob/main/docs/intel.md"
ATLAS = {
    "attack-pattern--6c3f3d0e-2a4b-4c55-9b1e-7d0a5e2f1a01": (
        "AML.T0024.002",
        "Extract AI Model",
        "Querying a model's inference API to train a functionally equivalent copy "
        "(knowledge distillation from harvested answers).",
    ),
    "attack-pattern--6c3f3d0e-2a4b-4c55-9b1e-7d0a5e2f1a02": (
        "AML.T0040",
        "AI Model Inference API Access",
        "Using a provider's public inference API as the channel of the attack.",
    ),
}
SCO_EXTENSIONS = {
    EXT_CLIENT: (
        "x-distillguard-client",
        "An API client's infrastructure as keyed hashes "
        "(HMAC-SHA256 of its IP prefix, user agent or payment fingerprint).",
    ),
    EXT_TEMPLATE: (
        "x-distillguard-prompt-template",
        "A prompt template as a keyed MinHash signature of its frame shingles, never text.",
    ),
    EXT_REQUEST: ("x-distillguard-request", "The sampling parameters an API client pins."),
}
TLP = {
    "clear": stix2.TLP_WHITE,
    "green": stix2.TLP_GREEN,
    "amber": stix2.TLP_AMBER,
    "red": stix2.TLP_RED,
}
TLP_BY_ID = {m.id: name for name, m in TLP.items()}
PROP_EXT = {EXT_PROPS: {"extension_type": "toplevel-property-extension"}}
EXT_PROPERTIES = ["distillguard_accounts", "distillguard_requests", "distillguard_key_id"]

CLIENT_TYPE = "x-distillguard-client"
TEMPLATE_TYPE = "x-distillguard-prompt-template"
REQUEST_TYPE = "x-distillguard-request"
CLIENT_PROPS = {
    KIND_IP_PREFIX: "ip_prefix_hmac",
    KIND_USER_AGENT: "user_agent_hmac",
    KIND_PAYMENT: "payment_hmac",
}


@v21.CustomObservable(
    CLIENT_TYPE,
    [
        ("ip_prefix_hmac", StringProperty()),
        ("user_agent_hmac", StringProperty()),
        ("payment_hmac", StringProperty()),
    ],
    id_contrib_props=["ip_prefix_hmac", "user_agent_hmac", "payment_hmac"],
    extension_name=EXT_CLIENT,
)
class ClientObservable:
    """A client's keyed-hashed infrastructure: IP prefix, user agent or payment fingerprint."""


@v21.CustomObservable(
    TEMPLATE_TYPE,
    [
        ("minhash", StringProperty(required=True)),
        ("shingles", IntegerProperty(min=1, required=True)),
    ],
    id_contrib_props=["minhash"],
    extension_name=EXT_TEMPLATE,
)
class TemplateObservable:
    """A prompt template as a keyed MinHash signature of its frame shingles (never text)."""


@v21.CustomObservable(
    REQUEST_TYPE,
    [("profile", StringProperty(required=True))],
    id_contrib_props=["profile"],
    extension_name=EXT_REQUEST,
)
class RequestObservable:
    """The sampling parameters a client pins (no prompt): e.g. ``max_tokens=1024;temperature=0``."""


# The pattern forms distillguard evaluates; any other valid STIX pattern is counted unevaluable.
_HEX64 = r"[0-9a-f]{64}"
PATTERNS = {
    **{k: re.compile(rf"\[{CLIENT_TYPE}:{p} = '({_HEX64})'\]") for k, p in CLIENT_PROPS.items()},
    KIND_TEMPLATE: re.compile(
        rf"\[{TEMPLATE_TYPE}:minhash = '((?:[0-9a-f]{{16}})+)' AND "
        rf"{TEMPLATE_TYPE}:shingles = ([1-9][0-9]*)\]"
    ),
    KIND_REQUEST_PARAMS: re.compile(
        rf"\[{REQUEST_TYPE}:profile = '([a-z_]+=[0-9a-z.\-]+"
        r"(?:;[a-z_]+=[0-9a-z.\-]+)*)'\]"
    ),
}
KIND_LABEL = {
    KIND_IP_PREFIX: "client IP prefix (keyed hash)",
    KIND_USER_AGENT: "user agent (keyed hash)",
    KIND_PAYMENT: "payment fingerprint (keyed hash)",
    KIND_TEMPLATE: "prompt template (keyed MinHash signature)",
    KIND_REQUEST_PARAMS: "pinned sampling parameters",
}


def pattern_of(ind: IndicatorIntel) -> str:
    if ind.kind in CLIENT_PROPS:
        return f"[{CLIENT_TYPE}:{CLIENT_PROPS[ind.kind]} = '{ind.value}']"
    if ind.kind == KIND_TEMPLATE:
        return (
            f"[{TEMPLATE_TYPE}:minhash = '{ind.value}' AND "
            f"{TEMPLATE_TYPE}:shingles = {ind.template_shingles}]"
        )
    return f"[{REQUEST_TYPE}:profile = '{ind.value}']"


def evaluate_pattern(pattern: str) -> tuple[str, str, int | None]:
    """(kind, value, template size) of a pattern distillguard can evaluate.

    Raises ``InputError`` saying whether the pattern is invalid STIX or only not one of ours."""
    for kind, rx in PATTERNS.items():
        m = rx.fullmatch(pattern)
        if m:
            size = int(m.group(2)) if kind == KIND_TEMPLATE else None
            return kind, m.group(1), size
    from stix2patterns.validator import run_validator

    errors = run_validator(pattern, stix_version="2.1")
    if errors:
        raise InputError(f"invalid STIX pattern: {errors[0]}")
    raise InputError("valid STIX, but not a pattern form distillguard evaluates (docs/intel.md)")


def _observable(ind: IndicatorIntel) -> Any:
    # The stix2 decorators give these classes their constructors: typed as Any here.
    cls: Any
    props: dict[str, Any]
    if ind.kind in CLIENT_PROPS:
        cls, props = ClientObservable, {CLIENT_PROPS[ind.kind]: ind.value}
    elif ind.kind == KIND_TEMPLATE:
        cls, props = TemplateObservable, {"minhash": ind.value, "shingles": ind.template_shingles}
    else:
        cls, props = RequestObservable, {"profile": ind.value}
    return cls(**props)


def _ts(t: float) -> str:
    ms = round(t * 1000)  # STIX timestamps here carry milliseconds, like the model's floats
    dt = datetime.fromtimestamp(ms // 1000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def _derived(prefix: str, source_id: str, role: str) -> str:
    """Ids of objects derived from one indicator/campaign: stable, UUIDv4-shaped."""
    digest = hashlib.sha256(f"{source_id}\x00{role}".encode()).digest()
    return f"{prefix}--{uuid.UUID(bytes=digest[:16], version=4)}"


def build_bundle(intel: IntelSet) -> stix2.Bundle:
    """The STIX 2.1 bundle of ``intel``; the same ``intel`` always gives the same bundle."""
    created = _ts(intel.created)
    tlp = TLP[intel.tlp]
    common = {
        "created": created,
        "modified": created,
        "created_by_ref": intel.producer_id,
        "object_marking_refs": [tlp.id],
    }
    author = {"created": EXT_CREATED, "modified": EXT_CREATED, "created_by_ref": DISTILLGUARD_ID}
    objects: list[Any] = [
        tlp,
        v21.Identity(
            id=DISTILLGUARD_ID,
            name="distillguard",
            identity_class="system",
            description="Author of the distillguard STIX extensions and technique references.",
            created=EXT_CREATED,
            modified=EXT_CREATED,
        ),
        v21.Identity(
            id=intel.producer_id,
            name=intel.producer,
            identity_class="organization",
            description="LLM API provider sharing distillation-campaign indicators.",
            **common,
        ),
        v21.ExtensionDefinition(
            id=EXT_PROPS,
            name="distillguard counts",
            description="Accounts and requests behind a campaign or "
            "sighting; the community key id of keyed hashes.",
            schema=SCHEMA_URL,
            version="1.0.0",
            extension_types=["toplevel-property-extension"],
            extension_properties=EXT_PROPERTIES,
            **author,
        ),
    ]
    for ext_id, (sco_type, desc) in SCO_EXTENSIONS.items():
        objects.append(
            v21.ExtensionDefinition(
                id=ext_id,
                name=sco_type,
                description=desc,
                schema=SCHEMA_URL,
                version="1.0.0",
                extension_types=["new-sco"],
                **author,
            )
        )
    for ap_id, (ext_id, name, desc) in ATLAS.items():
        objects.append(
            v21.AttackPattern(
                id=ap_id,
                name=name,
                description=desc,
                **author,
                external_references=[{"source_name": "mitre-atlas", "external_id": ext_id}],
            )
        )
    for c in intel.campaigns:
        objects.append(
            v21.Campaign(
                id=c.id,
                name=c.name,
                first_seen=_ts(c.first_seen),
                last_seen=_ts(c.last_seen),
                description=f"Distillation campaign: {c.accounts} linked accounts, "
                f"{c.requests} requests harvesting model answers.",
                objective="Train a copy of the provider's model on its answers.",
                confidence=c.confidence,
                extensions=PROP_EXT,
                distillguard_accounts=c.accounts,
                distillguard_requests=c.requests,
                allow_custom=True,
                **common,
            )
        )
        for ap_id in ATLAS:
            objects.append(
                v21.Relationship(
                    id=_derived("relationship", c.id, ap_id),
                    relationship_type="uses",
                    source_ref=c.id,
                    target_ref=ap_id,
                    **common,
                )
            )
    for ind in intel.indicators:
        obs = _observable(ind)
        od_id = _derived("observed-data", ind.id, "observed")
        objects += [
            v21.Indicator(
                id=ind.id,
                name=f"{KIND_LABEL[ind.kind]} of a distillation campaign",
                description=f"Seen on {ind.accounts} accounts of the campaign in "
                f"{ind.requests} requests.",
                pattern=pattern_of(ind),
                pattern_type="stix",
                pattern_version="2.1",
                valid_from=_ts(ind.first_seen),
                indicator_types=["malicious-activity"],
                confidence=ind.confidence,
                extensions=PROP_EXT,
                distillguard_key_id=intel.key_id,
                allow_custom=True,
                **common,
            ),
            obs,
            v21.ObservedData(
                id=od_id,
                first_observed=_ts(ind.first_seen),
                last_observed=_ts(ind.last_seen),
                number_observed=ind.requests,
                object_refs=[obs.id],
                allow_custom=True,
                **common,
            ),
            v21.Sighting(
                id=_derived("sighting", ind.id, "sighted"),
                sighting_of_ref=ind.id,
                first_seen=_ts(ind.first_seen),
                last_seen=_ts(ind.last_seen),
                count=min(ind.requests, 999_999_999),
                observed_data_refs=[od_id],
                where_sighted_refs=[intel.producer_id],
                extensions=PROP_EXT,
                distillguard_accounts=ind.accounts,
                allow_custom=True,
                **common,
            ),
            v21.Relationship(
                id=_derived("relationship", ind.id, ind.campaign_id),
                relationship_type="indicates",
                source_ref=ind.id,
                target_ref=ind.campaign_id,
                **common,
            ),
        ]
    return v21.Bundle(objects=objects, allow_custom=True)
