package edgetrust.admission.no_host_namespaces_test

import rego.v1

import data.edgetrust.admission.no_host_namespaces

test_host_network if {
	count(no_host_namespaces.violation) == 1 with input as {"review": {"kind": {"kind": "Pod"}, "object": {"spec": {"hostNetwork": true}}}}
}

test_plain if {
	count(no_host_namespaces.violation) == 0 with input as {"review": {"kind": {"kind": "Pod"}, "object": {"spec": {}}}}
}
