package edgetrust.admission.require_limits_test

import rego.v1

import data.edgetrust.admission.require_limits

pod(resources) := {"review": {"kind": {"kind": "Pod"}, "object": {"spec": {"containers": [{"name": "app", "resources": resources}]}}}}

test_no_limit if count(require_limits.violation) == 1 with input as pod({})

test_limit if count(require_limits.violation) == 0 with input as pod({"limits": {"memory": "64Mi"}})
