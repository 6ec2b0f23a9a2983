"""Campaign indicators shared between providers as STIX 2.1: export, import, matching.

``fingerprints`` keyed hashes and MinHash (the privacy contract of docs/intel.md),
``indicators`` extraction from verdicts + traffic, ``stix`` bundle build, ``stix_read`` stream,
``store`` partners' indicators on disk, ``matching`` partners' indicators against our traffic.
"""
