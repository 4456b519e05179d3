"""Reference values: the boot states an operator allows, per device class, in a file the operator owns.

```yaml
device_classes:
  edge-gateway:
    pcr_bank: sha256
    pcrs: {0: ["<hex>", ...], 7: ["<hex>"], 10: any}
    event_log: required | optional | ignored
    allow_sha1_quotes: false   # true only for legacy (v)TPMs: AKs signing SHA-1 quotes, pcr_bank sha1 (audited)
    events:
      require: [{pcr: 7, type: EV_EFI_VARIABLE_DRIVER_CONFIG, variable: SecureBoot, data_sha256: "<hex>"}]
      forbid:  [{pcr: 4, type: EV_EFI_BOOT_SERVICES_APPLICATION, digest: "<hex>"}]
```
Mistakes in the file are caught at load (PolicyConfigError naming the field), never at enrollment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from attestation.errors import PolicyConfigError, ReferenceValueError
from attestation.eventlog import EVENT_TYPE_IDS, Event, EventLog, check_replay
from attestation.quote import PcrValues, VerifiedQuote
from attestation.tpm2.constants import HashAlg

_EVENT_LOG_MODES = ("required", "optional", "ignored")
_RULE_KEYS = {"pcr", "type", "variable", "digest", "data_sha256"}


@dataclass(frozen=True, slots=True)
class EventRule:
    pcr: int | None
    event_type: int | None
    variable: str | None
    digest: bytes | None
    data_sha256: bytes | None
    text: str

    def matches(self, event: Event, bank: HashAlg) -> bool:
        return (
            (self.pcr is None or event.pcr == self.pcr)
            and (self.event_type is None or event.event_type == self.event_type)
            and (self.variable is None or event.efi_variable_name == self.variable)
            and (self.digest is None or event.digests.get(bank) == self.digest)
            and (self.data_sha256 is None or hashlib.sha256(event.data).digest() == self.data_sha256)
        )


@dataclass(frozen=True, slots=True)
class DeviceClassPolicy:
    name: str
    bank: HashAlg
    #: PCR index -> allowed values; None means "must be quoted, any value"
    pcrs: Mapping[int, frozenset[bytes] | None]
    event_log: str
    require: tuple[EventRule, ...]
    forbid: tuple[EventRule, ...]
    #: accept SHA-1 in this class's quotes (AKs signing RSASSA/SHA-1 or ECDSA/SHA-1, the sha1 PCR bank): off unless
    #: the operator says so, and recorded in the audit of every enrollment that used it
    allow_sha1_quotes: bool = False

    def selection(self) -> dict[HashAlg, tuple[int, ...]]:
        return {self.bank: tuple(sorted(self.pcrs))}

    def check(self, quote: VerifiedQuote, event_log: EventLog | None) -> None:
        """The hub's judgement of a verified quote (and the event log sent with it)."""
        self.check_pcrs(quote.pcrs, event_log)

    def check_pcrs(self, pcrs: PcrValues, event_log: EventLog | None, *, what: str = "quoted") -> None:
        """`check` on PCR values from anywhere: the hub passes a verified quote's, `trustctl refvalues check` a
        TPM's, a file's or the log's own replay (one checker for both, so the tool cannot disagree with the hub).
        `what` names their source in the errors."""
        quoted = pcrs.get(self.bank, {})
        violations: list[str] = []
        mismatches: list[PcrMismatch] = []
        for index, allowed in sorted(self.pcrs.items()):
            value = quoted.get(index)
            if value is None:
                violations.append(f"PCR {index} ({self.bank.label}) was not {what}")
                mismatches.append(PcrMismatch(index, self.bank, None, allowed or frozenset()))
            elif allowed is not None and value not in allowed:
                shown = ", ".join(sorted(v.hex()[:16] + "…" for v in allowed))
                violations.append(f"PCR {index} ({self.bank.label}): got {value.hex()[:16]}…, allowed one of [{shown}]")
                mismatches.append(PcrMismatch(index, self.bank, value, allowed))
        if violations:
            raise _violation(self.name, violations, mismatches)
        if self.event_log == "ignored":
            return
        if event_log is None:
            if self.event_log == "required" or self.require:
                raise _violation(self.name, ["a boot event log is required for this class and none was sent"])
            return
        check_replay(event_log, pcrs, what=what)
        bank = self.bank if self.bank in event_log.banks else event_log.banks[0]
        for rule in self.require:
            if not any(rule.matches(e, bank) for e in event_log.events):
                violations.append(f"no boot event matches the required rule {rule.text}")
        for rule in self.forbid:
            hits = [e for e in event_log.events if rule.matches(e, bank)]
            if hits:
                violations.append(
                    f"boot event #{hits[0].index} ({hits[0].type_name}) matches the forbidden rule {rule.text}"
                )
        if violations:
            raise _violation(self.name, violations)


@dataclass(frozen=True, slots=True)
class PcrMismatch:
    """One PCR outside its allowed values: what a person needs to find the boot component that changed."""

    pcr: int
    bank: HashAlg
    #: None: the PCR was not among the values judged (not quoted, not measured by the log)
    value: bytes | None
    allowed: frozenset[bytes]


class ReferenceValueViolationError(ReferenceValueError):
    def __init__(self, message: str, violations: tuple[str, ...], mismatches: tuple[PcrMismatch, ...] = ()) -> None:
        super().__init__(message)
        self.violations = violations
        self.mismatches = mismatches


def _violation(
    name: str, violations: list[str], mismatches: list[PcrMismatch] | None = None
) -> ReferenceValueViolationError:
    return ReferenceValueViolationError(
        f"boot state not allowed for device class {name!r}: " + "; ".join(violations),
        tuple(violations),
        tuple(mismatches or ()),
    )


@dataclass(frozen=True, slots=True)
class ReferencePolicy:
    classes: Mapping[str, DeviceClassPolicy]
    source: str

    @classmethod
    def load(cls, path: Path) -> ReferencePolicy:
        try:
            text = path.read_text()
        except OSError as exc:
            raise PolicyConfigError(f"cannot read reference values {path}: {exc}") from exc
        try:
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (ValueError, yaml.YAMLError) as exc:
            raise PolicyConfigError(
                f"{path} is not valid {'JSON' if path.suffix == '.json' else 'YAML'}: {exc}"
            ) from exc
        if not isinstance(data, Mapping):
            raise PolicyConfigError(f"{path}: expected a mapping with 'device_classes'")
        return cls.from_mapping(data, source=str(path))

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], *, source: str) -> ReferencePolicy:
        unknown = set(data) - {"device_classes"}
        if unknown:
            raise PolicyConfigError(f"{source}: unknown keys {sorted(unknown)}")
        raw = data.get("device_classes")
        if not isinstance(raw, Mapping) or not raw:
            raise PolicyConfigError(f"{source}: 'device_classes' must map class names to their reference values")
        return cls({str(n): _class(str(n), c, f"{source}: device_classes.{n}") for n, c in raw.items()}, source)

    def device_class(self, name: str) -> DeviceClassPolicy:
        try:
            return self.classes[name]
        except KeyError:
            raise ReferenceValueError(f"unknown device class {name!r}; the hub knows {sorted(self.classes)}") from None


def _class(name: str, raw: Any, where: str) -> DeviceClassPolicy:
    if not isinstance(raw, Mapping):
        raise PolicyConfigError(f"{where}: expected a mapping")
    unknown = set(raw) - {"pcr_bank", "pcrs", "event_log", "events", "allow_sha1_quotes"}
    if unknown:
        raise PolicyConfigError(f"{where}: unknown keys {sorted(unknown)}")
    try:
        bank = HashAlg.from_label(str(raw.get("pcr_bank", "sha256")))
    except Exception as exc:
        raise PolicyConfigError(f"{where}.pcr_bank: {exc}") from exc
    pcrs_raw = raw.get("pcrs")
    if not isinstance(pcrs_raw, Mapping) or not pcrs_raw:
        raise PolicyConfigError(f"{where}.pcrs: at least one PCR must be listed (an empty class would allow anything)")
    pcrs: dict[int, frozenset[bytes] | None] = {}
    for key, values in pcrs_raw.items():
        try:
            index = int(key)
        except (TypeError, ValueError):
            raise PolicyConfigError(f"{where}.pcrs.{key}: not a PCR index") from None
        if not 0 <= index < 24:
            raise PolicyConfigError(f"{where}.pcrs.{key}: PCR index out of range 0-23")
        if values == "any":
            pcrs[index] = None
            continue
        if not isinstance(values, list) or not values:
            raise PolicyConfigError(f"{where}.pcrs.{key}: expected a list of hex values or 'any'")
        pcrs[index] = frozenset(_hex(v, f"{where}.pcrs.{key}", bank.digest_size) for v in values)
    mode = str(raw.get("event_log", "optional"))
    if mode not in _EVENT_LOG_MODES:
        raise PolicyConfigError(f"{where}.event_log: {mode!r} is not one of {_EVENT_LOG_MODES}")
    events = raw.get("events") or {}
    if not isinstance(events, Mapping) or set(events) - {"require", "forbid"}:
        raise PolicyConfigError(f"{where}.events: expected 'require' and/or 'forbid' lists")
    require = tuple(_rule(r, f"{where}.events.require[{i}]", bank) for i, r in enumerate(events.get("require") or []))
    forbid = tuple(_rule(r, f"{where}.events.forbid[{i}]", bank) for i, r in enumerate(events.get("forbid") or []))
    if mode == "ignored" and (require or forbid):
        raise PolicyConfigError(f"{where}: event rules need event_log 'required' or 'optional', not 'ignored'")
    allow_sha1 = raw.get("allow_sha1_quotes", False)
    if not isinstance(allow_sha1, bool):
        raise PolicyConfigError(f"{where}.allow_sha1_quotes: expected true or false, got {allow_sha1!r}")
    if bank == HashAlg.SHA1 and not allow_sha1:
        # SHA-1 PCR values are open to collisions of what was measured: a legacy choice the operator makes
        raise PolicyConfigError(
            f"{where}.pcr_bank: the sha1 bank is only for legacy TPMs; say so with allow_sha1_quotes: true, "
            "or use sha256"
        )
    return DeviceClassPolicy(name, bank, pcrs, mode, require, forbid, allow_sha1)


def _hex(value: Any, where: str, size: int) -> bytes:
    try:
        raw = bytes.fromhex(str(value))
    except ValueError:
        raise PolicyConfigError(f"{where}: {str(value)[:20]!r} is not hex") from None
    if len(raw) != size:
        raise PolicyConfigError(f"{where}: value has {len(raw)} bytes, the bank's digests have {size}")
    return raw


def _rule(raw: Any, where: str, bank: HashAlg) -> EventRule:
    if not isinstance(raw, Mapping) or not raw:
        raise PolicyConfigError(f"{where}: expected a non-empty mapping")
    unknown = set(raw) - _RULE_KEYS
    if unknown:
        raise PolicyConfigError(f"{where}: unknown keys {sorted(unknown)} (allowed: {sorted(_RULE_KEYS)})")
    type_name = raw.get("type")
    if type_name is not None and type_name not in EVENT_TYPE_IDS:
        raise PolicyConfigError(f"{where}.type: unknown event type {type_name!r}")
    pcr = raw.get("pcr")
    return EventRule(
        pcr=None if pcr is None else int(pcr),
        event_type=None if type_name is None else EVENT_TYPE_IDS[type_name],
        variable=None if raw.get("variable") is None else str(raw["variable"]),
        digest=None if raw.get("digest") is None else _hex(raw["digest"], f"{where}.digest", bank.digest_size),
        data_sha256=None if raw.get("data_sha256") is None else _hex(raw["data_sha256"], f"{where}.data_sha256", 32),
        text=json.dumps(dict(raw), sort_keys=True),
    )
