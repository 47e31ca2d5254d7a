"""Every backend has the same shape: one pure `classify(status, headers, body)` giving the one
`Verdict` type, which the backend turns into `PushFailed`."""

from __future__ import annotations

import inspect

import pytest

from push_relay.backends import Classify, Verdict, apns, fcm, hms, threema_gateway
from push_relay.errors import FailureKind

CLASSIFIERS = [
    pytest.param(apns.classify, id="apns"),
    pytest.param(fcm.classify, id="fcm"),
    pytest.param(hms.classify, id="hms"),
    pytest.param(threema_gateway.classify, id="threema_gateway"),
]


@pytest.mark.parametrize("classify", CLASSIFIERS)
def test_classify_has_the_one_signature(classify: Classify) -> None:
    assert ["status", "headers", "body"] == list(inspect.signature(classify).parameters)
    assert "Verdict" == inspect.signature(classify).return_annotation


@pytest.mark.parametrize("classify", CLASSIFIERS)
def test_an_answer_without_a_body_is_never_delivered_or_a_crash(classify: Classify) -> None:
    verdict = classify(503, {}, b"")
    assert isinstance(verdict, Verdict)
    assert not verdict.delivered


def test_a_failed_verdict_becomes_push_failed_with_the_upstream_status() -> None:
    failure = Verdict(FailureKind.CLIENT, "bad_token", "404 NOT_FOUND").failure(404)
    assert (400, "bad_token", "404 NOT_FOUND", 404) == (
        failure.status,
        failure.reason,
        failure.detail,
        failure.upstream_status,
    )
