package edgetrust.admission.disallow_latest_tag_test

import rego.v1

import data.edgetrust.admission.disallow_latest_tag

pod(image) := {"review": {"kind": {"kind": "Pod"}, "object": {"spec": {"containers": [{"name": "app", "image": image}]}}}}

test_latest_denied if count(disallow_latest_tag.violation) == 1 with input as pod("nginx:latest")

test_untagged_denied if count(disallow_latest_tag.violation) == 1 with input as pod("registry.local:5000/nginx")

test_versioned_allowed if count(disallow_latest_tag.violation) == 0 with input as pod("registry.local:5000/nginx:1.27")

test_digest_allowed if {
	count(disallow_latest_tag.violation) == 0 with input as pod("nginx@sha256:0000000000000000000000000000000000000000000000000000000000000000")
}
