"""Attacks against the real components: the integration fixtures (swtpm, a running trustd, OPA, the registry,
the webhook) are the targets, so they are shared from the integration suites rather than written again."""

from tests.integration.admission.conftest import *  # noqa: F403
from tests.integration.conftest import *  # noqa: F403
