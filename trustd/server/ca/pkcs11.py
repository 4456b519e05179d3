"""The hub's keys on a PKCS#11 token (an HSM, a cloud KMS's PKCS#11 library, SoftHSM2 in tests).

Every replica opens the same token and signs with the same CA, JWT and revocation keys, so an SVID issued by
one replica verifies against the bundle any other serves (docs/trust-across-replicas.md says why this and not
SPIRE's one-key-per-server model). The private keys are generated on the token as sensitive and
non-extractable: no replica, and no file, ever holds them in the clear. The certificates that go with them are
public and are kept on the token beside them (CKO_CERTIFICATE), so the token is the whole of the trust
material and a replica needs no state volume.

`TokenKey` is a `cryptography` EC private key whose `sign` is done by the token, so the X.509 builder, the CRL
builder, PyJWT and the bundle signer take it as they take a key in memory. Every python-pkcs11 error is
converted here to `CAConfigError` naming what to check: a wrong PIN fails closed at start, never later.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pkcs11
import pkcs11.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature
from pkcs11 import Attribute, CertificateType, KeyType, Mechanism, ObjectClass
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from trustd.errors import CAConfigError

#: the labels of the hub's objects on the token; one token (or one token label) per trust domain
CA_LABEL = "edgetrust-ca"
JWT_LABEL = "edgetrust-jwt"
REVOCATIONS_LABEL = "edgetrust-revocations"
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {"sha256": hashes.SHA256, "sha384": hashes.SHA384}


@dataclass(frozen=True, slots=True)
class TokenConfig:
    """Where the token is: the vendor's PKCS#11 module, the token's label, and the user PIN (from a Secret)."""

    module: Path
    token_label: str
    pin: str = ""

    def __repr__(self) -> str:  # the PIN never reaches a log line
        return f"TokenConfig(module={self.module}, token_label={self.token_label!r}, pin=***)"


def _token_error(config: TokenConfig, exc: Exception, doing: str) -> CAConfigError:
    if isinstance(exc, pkcs11.exceptions.PinIncorrect):
        return CAConfigError(
            f"the PKCS#11 token {config.token_label!r} refused the PIN while {doing}: check the PIN file "
            "(--pkcs11-pin-file, TRUSTD_PKCS11_PIN_FILE: the mounted Secret); nothing was signed and no key was made"
        )
    if isinstance(exc, pkcs11.exceptions.PinLocked):
        return CAConfigError(f"the PKCS#11 token {config.token_label!r} has locked its user PIN: the SO must unlock it")
    if isinstance(exc, pkcs11.exceptions.NoSuchToken):
        return CAConfigError(
            f"no PKCS#11 token labelled {config.token_label!r} in {config.module} (TRUSTD_PKCS11_TOKEN); "
            "for SoftHSM2: softhsm2-util --init-token --free --label <label>"
        )
    return CAConfigError(f"the PKCS#11 token {config.token_label!r} failed while {doing}: {type(exc).__name__} {exc}")


@dataclass
class _Login:
    """PKCS#11 logs in the application, not a session: a second login in this process is refused by the token
    (CKR_USER_ALREADY_LOGGED_IN). So one session per token and process, shared by every `Token` opened on it,
    each of which must still give the PIN that logged in."""

    session: Any
    pin: str
    lock: threading.Lock
    holders: int = 1


_LOGINS: dict[tuple[str, str], _Login] = {}
_LOGINS_LOCK = threading.Lock()


class Token:
    """A logged-in read-write session on the token, shared by the hub's keys (serialised: one operation at a
    time, as PKCS#11 asks of a session)."""

    def __init__(self, config: TokenConfig) -> None:
        self.config = config
        self._key = (str(config.module), config.token_label)
        with _LOGINS_LOCK:
            login = _LOGINS.get(self._key)
            if login is not None:
                if not hmac.compare_digest(login.pin.encode(), config.pin.encode()):
                    raise _token_error(config, pkcs11.exceptions.PinIncorrect(), "logging in")
                login.holders += 1
            else:
                login = _Login(self._login(config), config.pin, threading.Lock())
                _LOGINS[self._key] = login
        self._login_state = login
        self._closed = False

    @staticmethod
    def _login(config: TokenConfig) -> Any:
        try:
            lib = pkcs11.lib(str(config.module))
        except (RuntimeError, OSError, pkcs11.exceptions.PKCS11Error) as exc:
            raise CAConfigError(f"cannot load the PKCS#11 module {config.module}: {exc}") from exc
        try:
            return lib.get_token(token_label=config.token_label).open(user_pin=config.pin, rw=True)
        except pkcs11.exceptions.PKCS11Error as exc:
            raise _token_error(config, exc, "logging in") from exc

    def close(self) -> None:
        with _LOGINS_LOCK:
            if self._closed:
                return
            self._closed = True
            login = self._login_state
            login.holders -= 1
            if login.holders == 0:
                del _LOGINS[self._key]
                with login.lock, suppress(pkcs11.exceptions.PKCS11Error):  # the token went away: nothing to close
                    login.session.close()

    @contextmanager
    def _op(self, doing: str) -> Iterator[Any]:
        if self._closed:
            raise CAConfigError(f"the PKCS#11 token {self.config.token_label!r} was closed before {doing}")
        with self._login_state.lock:
            try:
                yield self._login_state.session
            except pkcs11.exceptions.PKCS11Error as exc:
                raise _token_error(self.config, exc, doing) from exc

    # -- keys ------------------------------------------------------------------------------------------------
    def has_key(self, label: str) -> bool:
        with self._op(f"looking for {label}") as session:
            found = session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY, Attribute.LABEL: label})
            return any(True for _ in found)

    def generate_key(self, label: str) -> TokenKey:
        """A P-256 key pair made on the token, sensitive and not extractable; refused if `label` exists."""
        if self.has_key(label):
            raise CAConfigError(f"the token already holds a key labelled {label!r}: it is never replaced in place")
        with self._op(f"generating {label}") as session:
            params = session.create_domain_parameters(
                KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True
            )
            params.generate_keypair(
                store=True,
                label=label,
                private_template={Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.SIGN: True},
            )
        return self.key(label)

    def key(self, label: str) -> TokenKey:
        with self._op(f"opening {label}") as session:
            try:
                private = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=label)
                public = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=label)
            except pkcs11.exceptions.NoSuchKey:
                raise CAConfigError(
                    f"the token {self.config.token_label!r} holds no key {label!r}: run `trustd ca init` once"
                ) from None
            spki = encode_ec_public_key(public)
        loaded = serialization.load_der_public_key(spki)
        if not isinstance(loaded, ec.EllipticCurvePublicKey):
            raise CAConfigError(f"the token's key {label!r} is not an EC key")
        return TokenKey(self, private, loaded, label)

    def destroy_key(self, label: str) -> None:
        with self._op(f"destroying {label}") as session:
            for obj in list(session.get_objects({Attribute.LABEL: label})):
                if obj.object_class in (ObjectClass.PRIVATE_KEY, ObjectClass.PUBLIC_KEY):
                    obj.destroy()

    def _sign(self, private: Any, digest: bytes, label: str) -> bytes:
        with self._op(f"signing with {label}"):
            return bytes(private.sign(digest, mechanism=Mechanism.ECDSA))

    # -- certificates ----------------------------------------------------------------------------------------
    def certificate(self, label: str) -> x509.Certificate | None:
        with self._op(f"reading the certificate {label}") as session:
            found = list(session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label}))
            if not found:
                return None
            der = bytes(found[0][Attribute.VALUE])
        try:
            return x509.load_der_x509_certificate(der)
        except ValueError as exc:
            raise CAConfigError(f"the certificate {label!r} on the token does not parse: {exc}") from exc

    def store_certificate(self, label: str, certificate: x509.Certificate) -> None:
        with self._op(f"storing the certificate {label}") as session:
            for old in list(session.get_objects({Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.LABEL: label})):
                old.destroy()
            session.create_object(
                {
                    Attribute.CLASS: ObjectClass.CERTIFICATE,
                    Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                    Attribute.LABEL: label,
                    Attribute.SUBJECT: certificate.subject.public_bytes(),
                    Attribute.VALUE: certificate.public_bytes(serialization.Encoding.DER),
                }
            )


class TokenKey(ec.EllipticCurvePrivateKey):
    """An EC private key that lives on the token: `sign` asks the token, everything that would export it
    raises. Only ECDSA is offered (the hub signs certificates, CRLs, JWTs and bundles, nothing else)."""

    def __init__(self, token: Token, private: Any, public: ec.EllipticCurvePublicKey, label: str) -> None:
        self._token = token
        self._private = private
        self._public = public
        self.label = label

    def sign(
        self, data: bytes | bytearray | memoryview, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise CAConfigError(f"the token key {self.label!r} signs ECDSA only")
        algorithm = signature_algorithm.algorithm
        if isinstance(algorithm, Prehashed):
            digest = bytes(data)
        else:
            if algorithm.name not in _HASHES:
                raise CAConfigError(f"the token key {self.label!r} signs with SHA-256 or SHA-384, not {algorithm.name}")
            h = hashes.Hash(algorithm)
            h.update(bytes(data))
            digest = h.finalize()
        raw = self._token._sign(self._private, digest, self.label)
        half = len(raw) // 2
        return encode_dss_signature(int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big"))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    @property
    def key_size(self) -> int:
        return self._public.curve.key_size

    def _never(self) -> NoReturn:
        raise CAConfigError(f"the token key {self.label!r} is not extractable: it never leaves the token")

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        self._never()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        self._never()

    def private_bytes(
        self,
        encoding: serialization.Encoding,
        format: serialization.PrivateFormat,
        encryption_algorithm: serialization.KeySerializationEncryption,
    ) -> bytes:
        self._never()

    def __copy__(self) -> TokenKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> TokenKey:
        return self
