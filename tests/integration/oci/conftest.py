"""The admission plane's peers (the test CA) are shared with the admission suites rather than written again."""

from tests.integration.admission.conftest import test_ca  # noqa: F401
