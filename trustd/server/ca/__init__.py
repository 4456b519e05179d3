"""The trust domain's certificate authority, in three parts that import one way only (keystore <- authority
<- rotation), as SPIRE splits its server CA:

- `keystore`: keys and certificates on disk (0600), in the slots current, next and retired;
- `authority`: signs X.509-SVIDs and JWT-SVIDs with the keys it is handed, and builds the trust bundle;
- `rotation`: decides when to prepare, activate and retire, and watches for those steps while the hub runs.

The names other code imports are re-exported here, so `from trustd.server.ca import SpiffeCA` keeps working.
"""

from trustd.server.ca.authority import MIN_RSA_BITS, SpiffeCA, X509Svid
from trustd.server.ca.keystore import (
    CLOCK_SKEW,
    DEFAULT_CA_TTL,
    CAKeys,
    Published,
    published,
    read_private_key,
    write_private_key,
)

__all__ = [
    "CLOCK_SKEW",
    "DEFAULT_CA_TTL",
    "MIN_RSA_BITS",
    "CAKeys",
    "Published",
    "SpiffeCA",
    "X509Svid",
    "published",
    "read_private_key",
    "write_private_key",
]
