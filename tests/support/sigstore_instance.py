"""A private Sigstore instance for tests: a Fulcio-like CA, a CT log and a Rekor-like log, as keys in memory.

Fulcio and Rekor are services that need an OIDC provider and a Trillian database; they cannot run on this
machine, so this stands in for them (and says so). What it produces is verified by the real sigstore-python
with no step mocked: an RFC 6962 SCT embedded in the leaf certificate, a Rekor v1 entry with an RFC 6962
inclusion proof, a signed checkpoint (C2SP signed note) and a signed entry timestamp.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

import rfc8785
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

OIDC_ISSUER_V1 = x509.ObjectIdentifier("1.3.6.1.4.1.57264.1.1")
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
LOG_ORIGIN = "rekor.edge.test"
# Rekor v1 checkpoints name the Trillian tree after the origin; sigstore-go (cosign v3) tells a v1 log from a
# v2 (tile) log by this suffix, and verifies the inclusion proof the v1 way only when it is there.
LOG_TREE_ID = 4242424242424242424


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _der_octet_string(data: bytes) -> bytes:
    length = len(data)
    if length < 0x80:
        return b"\x04" + bytes([length]) + data
    size = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return b"\x04" + bytes([0x80 | len(size)]) + size + data


@dataclass
class PrivateSigstore:
    ca_key: ec.EllipticCurvePrivateKey
    ct_key: ec.EllipticCurvePrivateKey
    log_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate
    now: datetime.datetime

    @classmethod
    def create(cls) -> PrivateSigstore:
        now = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgetrust test fulcio")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        return cls(
            ca_key, ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1()), ca_cert, now
        )

    def trusted_root(self) -> dict[str, object]:
        start = (self.now - datetime.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")

        def log(key: ec.EllipticCurvePrivateKey, url: str) -> dict[str, object]:
            return {
                "baseUrl": url,
                "hashAlgorithm": "SHA2_256",
                "publicKey": {
                    "rawBytes": _b64(_spki(key)),
                    "keyDetails": "PKIX_ECDSA_P256_SHA_256",
                    "validFor": {"start": start},
                },
                "logId": {"keyId": _b64(hashlib.sha256(_spki(key)).digest())},
            }

        return {
            "mediaType": "application/vnd.dev.sigstore.trustedroot+json;version=0.1",
            "tlogs": [log(self.log_key, f"https://{LOG_ORIGIN}")],
            "ctlogs": [log(self.ct_key, "https://ct.edge.test")],
            "certificateAuthorities": [
                {
                    "subject": {"organization": "edgetrust", "commonName": "edgetrust test fulcio"},
                    "uri": "https://fulcio.edge.test",
                    "certChain": {
                        "certificates": [{"rawBytes": _b64(self.ca_cert.public_bytes(serialization.Encoding.DER))}]
                    },
                    "validFor": {"start": start},
                }
            ],
            "timestampAuthorities": [],
        }

    def write_trusted_root(self, path: Path) -> Path:
        path.write_text(json.dumps(self.trusted_root(), indent=2))
        return path

    def certificate_for(self, public_key: ec.EllipticCurvePublicKey, identity: str, issuer: str) -> bytes:
        """A Fulcio-like leaf (PEM, SCT embedded) for a key someone else holds, e.g. a cosign key pair: how
        `cosign sign --certificate` makes the legacy keyless `.sig` layout without a Fulcio."""
        return self._leaf(public_key, identity, issuer).public_bytes(serialization.Encoding.PEM)

    def ca_pem(self) -> bytes:
        return self.ca_cert.public_bytes(serialization.Encoding.PEM)

    def public_pem(self, which: str) -> bytes:
        """The `rekor` or `ct` log's public key, PEM, for cosign's SIGSTORE_REKOR_PUBLIC_KEY and
        SIGSTORE_CT_LOG_PUBLIC_KEY_FILE."""
        key = {"rekor": self.log_key, "ct": self.ct_key}[which]
        return key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def rekor_bundle_annotation(self, payload: bytes, signature_b64: str, certificate_pem: bytes) -> str:
        """What cosign v2 puts in `dev.sigstore.cosign/bundle` after Rekor accepted a hashedrekord entry for
        this signature: the entry body and the log's signed entry timestamp (no inclusion proof)."""
        body = rfc8785.dumps(
            {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {"hash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()}},
                    "signature": {"content": signature_b64, "publicKey": {"content": _b64(certificate_pem)}},
                },
            }
        )
        log_id = hashlib.sha256(_spki(self.log_key)).hexdigest()
        integrated = int(self.now.timestamp())
        promise = {"body": _b64(body), "integratedTime": integrated, "logID": log_id, "logIndex": 0}
        entry_timestamp = self.log_key.sign(rfc8785.dumps(promise), ec.ECDSA(hashes.SHA256()))
        return json.dumps({"SignedEntryTimestamp": _b64(entry_timestamp), "Payload": promise})

    def _leaf(self, key: ec.EllipticCurvePublicKey, identity: str, issuer: str) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([]))
            .issuer_name(self.ca_cert.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(self.now - datetime.timedelta(minutes=1))
            .not_valid_after(self.now + datetime.timedelta(minutes=10))
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]), critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.RFC822Name(identity)]), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.ca_key.public_key()), critical=False)
            .add_extension(x509.UnrecognizedExtension(OIDC_ISSUER_V1, issuer.encode()), critical=False)
        )
        # RFC 6962 3.2: the CT log signs the precertificate TBS, i.e. the final TBS without the SCT list.
        tbs = builder.sign(self.ca_key, hashes.SHA256()).tbs_certificate_bytes
        timestamp = int(self.now.timestamp() * 1000)
        signed = (
            struct.pack("!BBQH", 0, 0, timestamp, 1)  # v1, certificate_timestamp, time, precert_entry
            + hashlib.sha256(_spki(self.ca_key)).digest()
            + len(tbs).to_bytes(3, "big")
            + tbs
            + b"\x00\x00"  # no extensions
        )
        signature = self.ct_key.sign(signed, ec.ECDSA(hashes.SHA256()))
        sct = (
            b"\x00"
            + hashlib.sha256(_spki(self.ct_key)).digest()
            + struct.pack("!QH", timestamp, 0)
            + struct.pack("!BBH", 4, 3, len(signature))  # sha256, ecdsa
            + signature
        )
        sct_list = struct.pack("!HH", len(sct) + 2, len(sct)) + sct
        extension = x509.UnrecognizedExtension(
            ExtensionOID.PRECERT_SIGNED_CERTIFICATE_TIMESTAMPS, _der_octet_string(sct_list)
        )
        return builder.add_extension(extension, critical=False).sign(self.ca_key, hashes.SHA256())

    def sign_digest(
        self,
        digest: str,
        identity: str,
        issuer: str,
        *,
        dsse: bool = False,
        name: str = "image",
        message_digest: bool = True,
    ) -> bytes:
        """A bundle signing image `digest` (sha256:<hex> or sha512:<hex>) as `identity`; DSSE wraps an in-toto
        statement (cosign v3's layout), else a message signature over the digest (sigstore-python's), whose
        optional `messageDigest` can be left out as a hostile or minimal bundle would."""
        algorithm, _, hex_digest = digest.partition(":")
        key = ec.generate_private_key(ec.SECP256R1())
        leaf = self._leaf(key.public_key(), identity, issuer)
        pem = leaf.public_bytes(serialization.Encoding.PEM)
        content: dict[str, object]
        if dsse:
            statement = {
                "_type": "https://in-toto.io/Statement/v1",
                "subject": [{"name": name, "digest": {algorithm: hex_digest}}],
                "predicateType": "https://sigstore.dev/cosign/sign/v1",
                "predicate": {},
            }
            payload = json.dumps(statement).encode()
            payload_type = "application/vnd.in-toto+json"
            pae = f"DSSEv1 {len(payload_type)} {payload_type} {len(payload)} ".encode() + payload
            signature = key.sign(pae, ec.ECDSA(hashes.SHA256()))
            envelope = {"payload": _b64(payload), "payloadType": payload_type, "signatures": [{"sig": _b64(signature)}]}
            content = {"dsseEnvelope": envelope}
            body: dict[str, object] = {
                "apiVersion": "0.0.1",
                "kind": "dsse",
                "spec": {
                    "envelopeHash": {
                        "algorithm": "sha256",
                        "value": hashlib.sha256(json.dumps(envelope).encode()).hexdigest(),
                    },
                    "payloadHash": {"algorithm": "sha256", "value": hashlib.sha256(payload).hexdigest()},
                    "signatures": [{"signature": _b64(signature), "verifier": _b64(pem)}],
                },
            }
        else:
            prehash = hashes.SHA512() if algorithm == "sha512" else hashes.SHA256()
            signature = key.sign(bytes.fromhex(hex_digest), ec.ECDSA(Prehashed(prehash)))
            message: dict[str, object] = {"signature": _b64(signature)}
            if message_digest:
                message["messageDigest"] = {
                    "algorithm": "SHA2_512" if algorithm == "sha512" else "SHA2_256",
                    "digest": _b64(bytes.fromhex(hex_digest)),
                }
            content = {"messageSignature": message}
            body = {
                "apiVersion": "0.0.1",
                "kind": "hashedrekord",
                "spec": {
                    "data": {"hash": {"algorithm": algorithm, "value": hex_digest}},
                    "signature": {"content": _b64(signature), "publicKey": {"content": _b64(pem)}},
                },
            }
        return json.dumps(
            {
                "mediaType": BUNDLE_MEDIA_TYPE,
                "verificationMaterial": {
                    "certificate": {"rawBytes": _b64(leaf.public_bytes(serialization.Encoding.DER))},
                    "tlogEntries": [self._log_entry(body)],
                },
                **content,
            }
        ).encode()

    def _log_entry(self, body: dict[str, object]) -> dict[str, object]:
        canonical = rfc8785.dumps(body)
        log_id = hashlib.sha256(_spki(self.log_key)).digest()
        leaf_hash = hashlib.sha256(b"\x00" + canonical).digest()  # RFC 6962 leaf; a one-entry tree's root
        note = f"{LOG_ORIGIN} - {LOG_TREE_ID}\n1\n{_b64(leaf_hash)}\n"
        note_signature = self.log_key.sign(note.encode(), ec.ECDSA(hashes.SHA256()))
        checkpoint = note + f"\n\u2014 {LOG_ORIGIN} {_b64(log_id[:4] + note_signature)}\n"
        integrated = int(self.now.timestamp())
        promise = rfc8785.dumps(
            {"body": _b64(canonical), "integratedTime": integrated, "logID": log_id.hex(), "logIndex": 0}
        )
        return {
            "logIndex": "0",
            "logId": {"keyId": _b64(log_id)},
            "kindVersion": {"kind": body["kind"], "version": "0.0.1"},
            "integratedTime": str(integrated),
            "inclusionPromise": {"signedEntryTimestamp": _b64(self.log_key.sign(promise, ec.ECDSA(hashes.SHA256())))},
            "inclusionProof": {
                "logIndex": "0",
                "rootHash": _b64(leaf_hash),
                "treeSize": "1",
                "hashes": [],
                "checkpoint": {"envelope": checkpoint},
            },
            "canonicalizedBody": _b64(canonical),
        }
