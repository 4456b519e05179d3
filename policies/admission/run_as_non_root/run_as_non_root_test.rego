package edgetrust.admission.run_as_non_root_test

import rego.v1

import data.edgetrust.admission.run_as_non_root

pod(pod_ctx, ctx) := {"review": {"kind": {"kind": "Pod"}, "object": {"spec": {
	"securityContext": pod_ctx,
	"containers": [{"name": "app", "securityContext": ctx}],
}}}}

test_root_warned if count(run_as_non_root.violation) == 1 with input as pod({}, {})

test_container_non_root if count(run_as_non_root.violation) == 0 with input as pod({}, {"runAsNonRoot": true})

test_pod_non_root if count(run_as_non_root.violation) == 0 with input as pod({"runAsNonRoot": true}, {})

test_container_overrides_pod if {
	count(run_as_non_root.violation) == 1 with input as pod({"runAsNonRoot": true}, {"runAsNonRoot": false})
}
