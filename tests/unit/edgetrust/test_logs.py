"""The one logging set-up (edgetrust/_internal/logs.py): JSON lines with time, level, logger, message and the
exception when there is one; the same masking of secrets in both formats; `--log-format` and `-v` parse the
same on every daemon's parser, on a parent parser or its subcommand."""

from __future__ import annotations

import argparse
import io
import json
import logging
from collections.abc import Iterator
from datetime import datetime

import pytest

from edgetrust._internal import logs

PEM_KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIGx0b3Bz\n-----END EC PRIVATE KEY-----"
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJzcGlmZmU6Ly9lZGdlIn0.c2lnbmF0dXJl"


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    level = root.level
    out = io.StringIO()
    yield out
    logs.configure("text")  # back to text (what `fail` prints), then without our handler, as before the test
    for handler in [h for h in root.handlers if h.get_name() == "edgetrust"]:
        root.removeHandler(handler)
    root.setLevel(level)


def test_json_lines_carry_time_level_logger_message_and_the_exception(stream: io.StringIO) -> None:
    logs.configure("json", stream=stream)
    log = logging.getLogger("edgetrust.syncer")
    log.info("sync: %s %s", "applied", "000000000002-two")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("bundle refused")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "INFO"
    assert first["logger"] == "edgetrust.syncer"
    assert first["message"] == "sync: applied 000000000002-two"
    assert datetime.fromisoformat(first["time"]).utcoffset() is not None
    assert first["time"].endswith("Z")
    assert second["level"] == "ERROR"
    assert "ValueError: boom" in second["exc_info"]
    assert "Traceback" in second["exc_info"]


def test_debug_only_with_verbose(stream: io.StringIO) -> None:
    logs.configure("json", stream=stream)
    logging.getLogger("edgetrust.agent").debug("hidden")
    assert stream.getvalue() == ""
    logs.configure("json", verbose=True, stream=stream)
    logging.getLogger("edgetrust.agent").debug("shown")
    assert json.loads(stream.getvalue())["level"] == "DEBUG"


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_secrets_are_masked_in_both_formats(stream: io.StringIO, log_format: str) -> None:
    logs.configure(log_format, stream=stream)
    log = logging.getLogger("edgetrust.test")
    log.warning("key %s", PEM_KEY)
    log.warning("headers {'Authorization': 'Bearer %s'} and basic constraints kept", "s3cr3t-token-value")
    log.warning("minted %s for audience spire", JWT)
    try:
        raise RuntimeError(f"failed with {PEM_KEY}")
    except RuntimeError:
        log.exception("crash")
    written = stream.getvalue()
    for secret in ("MHcCAQEEIGx0b3Bz", "s3cr3t-token-value", JWT, "c2lnbmF0dXJl"):
        assert secret not in written
    assert written.count(logs.MASK) >= 4
    assert "basic constraints kept" in written  # prose is not masked
    if log_format == "json":
        assert all(json.loads(line) for line in written.splitlines())


def test_configure_again_replaces_its_own_handler_and_leaves_others(stream: io.StringIO) -> None:
    other = logging.NullHandler()
    logging.getLogger().addHandler(other)
    try:
        logs.configure("text", stream=io.StringIO())
        logs.configure("json", stream=stream)
        ours = [h for h in logging.getLogger().handlers if h.get_name() == "edgetrust"]
        assert len(ours) == 1
        assert other in logging.getLogger().handlers
    finally:
        logging.getLogger().removeHandler(other)
    with pytest.raises(ValueError, match="not one of text, json"):
        logs.configure("yaml")


def test_fail_prints_the_cli_line_in_text_and_a_json_line_in_json(
    stream: io.StringIO, capsys: pytest.CaptureFixture[str]
) -> None:
    logs.configure("text", stream=stream)
    logs.fail("edgetrust-admission", "policy directory /x does not exist")
    assert capsys.readouterr().err == "edgetrust-admission: policy directory /x does not exist\n"
    logs.configure("json", stream=stream)
    logs.fail("edgetrust-admission", "policy directory /x does not exist")
    line = json.loads(stream.getvalue())
    assert line["level"] == "ERROR"
    assert line["logger"] == "edgetrust-admission"
    assert line["message"] == "policy directory /x does not exist"
    assert capsys.readouterr().err == ""


def test_the_options_parse_on_a_parent_and_on_its_subcommand() -> None:
    parser = argparse.ArgumentParser()
    logs.add_arguments(parser)
    serve = parser.add_subparsers(dest="command").add_parser("serve")
    logs.add_arguments(serve)
    for argv, expected in (
        (["serve"], (None, None)),
        (["-v", "serve"], (None, True)),
        (["serve", "-v", "--log-format", "json"], ("json", True)),
        (["--log-format", "json", "serve"], ("json", None)),
    ):
        args = parser.parse_args(argv)
        assert (getattr(args, "log_format", None), getattr(args, "verbose", None)) == expected, argv
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--log-format", "xml"])
