"""Chain of custody for evidence reports: input hashes, ed25519 signatures, verification.

A report lists every input it was built from (name, size, SHA-256), the tool's version and the
watermark key ids involved (never a key or secret). Its JSON is signed with ed25519 (the
``cryptography`` library) over a canonical serialisation of everything but the signature, so
a reviewer with the provider's public key can check, years later, that neither the report nor
any input has changed since it was signed: ``distillguard prove verify REPORT.json``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from distillguard.errors import ConfigError, EvidenceTampered, InputError

SIGNATURE_FIELD = "signature"
ALGORITHM = "ed25519"
PRIVATE_KEY_NAME = "evidence-signing.key"
PUBLIC_KEY_NAME = "evidence-signing.pub"


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks (inputs can be large logs)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def describe_inputs(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """One record per input file: its name, size and SHA-256 (the path only as a hint)."""
    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise InputError(f"input file not found: {path}")
        out.append(
            {
                "name": path.name,
                "path": str(path),
                "bytes": path.stat().st_size,
                "sha256": sha256_file(path),
            }
        )
    return out


MODEL_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json")


def describe_evidence_inputs(
    files: Sequence[Path | None], model_dir: Path | None = None
) -> list[dict[str, Any]]:
    """What an evidence file was computed from: the given files that exist, plus a suspect
    model directory's weight, config and tokenizer files (a model is identified by them)."""
    out = describe_inputs([Path(f) for f in files if f is not None and Path(f).is_file()])
    if model_dir is not None and Path(model_dir).is_dir():
        model = Path(model_dir)
        found = [model / n for n in MODEL_FILES if (model / n).is_file()]
        for item in describe_inputs(found):  # "model/config.json": names stay distinct
            out.append(item | {"name": f"{model.name}/{item['name']}"})
    return out


def canonical_bytes(document: Mapping[str, Any]) -> bytes:
    """The bytes that are signed: the report without its signature, keys sorted, no spaces."""
    body = {k: v for k, v in document.items() if k != SIGNATURE_FIELD}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str
    ).encode("utf-8")


# --------------------------------------------------------------------------- keys


def generate_keypair(directory: Path, *, overwrite: bool = False) -> tuple[Path, Path]:
    """Write a new ed25519 key pair (PKCS#8 PEM private key, mode 0600; SPKI PEM public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    private_path, public_path = directory / PRIVATE_KEY_NAME, directory / PUBLIC_KEY_NAME
    if not overwrite and (private_path.exists() or public_path.exists()):
        raise InputError(
            f"{private_path} or {public_path} exists; a signing key is never overwritten "
            "silently (reports signed with it would no longer verify): use --force"
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def _load_private(path: Path) -> Any:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    if not Path(path).is_file():
        raise ConfigError(f"evidence signing key file not found: {path}")
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an ed25519 key (use `distillguard prove keygen`)")
    return key


def load_public_key(path: Path) -> Any:
    """An ed25519 public key from a PEM file (or the private key file, whose public half)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if not Path(path).is_file():
        raise InputError(f"public key file not found: {path}")
    data = Path(path).read_bytes()
    try:
        key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise InputError(f"{path} is not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise InputError(f"{path} is not an ed25519 public key")
    return key


def _raw_public(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_fingerprint(public_key: Any) -> str:
    """First 16 hex digits of the SHA-256 of the raw public key: how a reader names the key."""
    return hashlib.sha256(_raw_public(public_key)).hexdigest()[:16]


# --------------------------------------------------------------------------- sign / verify


def sign_document(document: Mapping[str, Any], private_key_file: Path) -> dict[str, Any]:
    """The document with a ``signature`` block (algorithm, public key, fingerprint, value)."""
    key = _load_private(private_key_file)
    public = key.public_key()
    value = key.sign(canonical_bytes(document))
    return {
        **{k: v for k, v in document.items() if k != SIGNATURE_FIELD},
        SIGNATURE_FIELD: {
            "algorithm": ALGORITHM,
            "public_key": base64.b64encode(_raw_public(public)).decode("ascii"),
            "key_fingerprint": key_fingerprint(public),
            "value": base64.b64encode(value).decode("ascii"),
        },
    }


@dataclass(frozen=True)
class Verification:
    key_fingerprint: str
    trusted_key: bool  # False: checked against the key embedded in the report only
    inputs_checked: tuple[str, ...]
    inputs_missing: tuple[str, ...]  # listed but neither given nor found beside the report


def verify_document(
    document: Mapping[str, Any],
    *,
    public_key_file: Path | None = None,
    input_files: Sequence[Path] = (),
    search_dir: Path | None = None,
) -> Verification:
    """Check the signature and every listed input; raise EvidenceTampered on any mismatch.

    Inputs are matched by file name among ``input_files``, then looked up in ``search_dir``
    (the report's folder). An input that cannot be found is reported as missing, not passed.
    """
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    block = document.get(SIGNATURE_FIELD)
    if not isinstance(block, dict):
        raise EvidenceTampered("the report carries no signature: it cannot be verified")
    if block.get("algorithm") != ALGORITHM:
        raise EvidenceTampered(f"unknown signature algorithm {block.get('algorithm')!r}")
    try:
        embedded = Ed25519PublicKey.from_public_bytes(base64.b64decode(block["public_key"]))
        value = base64.b64decode(block["value"], validate=True)
    except (KeyError, ValueError, TypeError) as exc:
        raise EvidenceTampered(f"the signature block is malformed: {exc}") from exc
    key = load_public_key(public_key_file) if public_key_file is not None else embedded
    if public_key_file is not None and _raw_public(key) != _raw_public(embedded):
        raise EvidenceTampered(
            f"the report was signed by key {key_fingerprint(embedded)}, not by the given "
            f"public key {key_fingerprint(key)}"
        )
    try:
        key.verify(value, canonical_bytes(document))
    except InvalidSignature as exc:
        raise EvidenceTampered(
            "the signature does not match the report's content: the report was changed "
            "after it was signed"
        ) from exc

    given = {Path(p).name: Path(p) for p in input_files}
    for given_path in input_files:
        if not Path(given_path).is_file():
            raise InputError(f"input file not found: {given_path}")
    checked: list[str] = []
    missing: list[str] = []
    bad: list[str] = []
    for item in document.get("inputs") or []:
        name = str(item["name"])
        path: Path | None = given.get(name) or next(
            (Path(p) for p in input_files if Path(p).as_posix().endswith("/" + name)), None
        )
        if path is None and search_dir is not None and (Path(search_dir) / name).is_file():
            path = Path(search_dir) / name
        if path is None:
            missing.append(name)
            continue
        actual = sha256_file(path)
        if actual != item["sha256"]:
            bad.append(f"{path}: SHA-256 {actual} but the report lists {item['sha256']}")
        checked.append(name)
    if bad:
        raise EvidenceTampered("input changed since the report was signed: " + "; ".join(bad))
    return Verification(
        key_fingerprint=key_fingerprint(embedded),
        trusted_key=public_key_file is not None,
        inputs_checked=tuple(checked),
        inputs_missing=tuple(missing),
    )
