package edgetrust.admission.no_privileged_test

import rego.v1

import data.edgetrust.admission.no_privileged

pod(ctx) := {"review": {"kind": {"kind": "Pod"}, "object": {"spec": {"containers": [{"name": "app", "securityContext": ctx}]}}}}

test_privileged_denied if count(no_privileged.violation) == 1 with input as pod({"privileged": true})

test_escalation_denied if count(no_privileged.violation) == 1 with input as pod({"allowPrivilegeEscalation": true})

test_plain_allowed if count(no_privileged.violation) == 0 with input as pod({"runAsNonRoot": true})
