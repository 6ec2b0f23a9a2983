"""A second, independent traffic generator: a world of organisations and their infrastructure.

Organisations own accounts, integrations and infrastructure (cloud NATs, university NATs,
rented VPS blocks, residential proxies, cards); people and programs act through them. Written
without reading the first generator or the detector; it shares only the traffic format
(``distillguard.traffic``). See ``docs/sim-orgs.md``.
"""

from distillguard.sim.orgs.generate import (
    CAMPAIGN_PERSONAS,
    HONEST_PERSONAS,
    PERSONAS,
    OrgsConfig,
    OrgsResult,
    build_world,
    generate_orgs,
)
from distillguard.sim.orgs.sources import load_sources, source_texts, split_of

__all__ = [
    "CAMPAIGN_PERSONAS",
    "HONEST_PERSONAS",
    "PERSONAS",
    "OrgsConfig",
    "OrgsResult",
    "build_world",
    "generate_orgs",
    "load_sources",
    "source_texts",
    "split_of",
]
