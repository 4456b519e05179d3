package edgetrust.admission.no_host_path_test

import rego.v1

import data.edgetrust.admission.no_host_path

pod(volumes) := {"review": {"kind": {"kind": "Pod"}, "object": {"spec": {"volumes": volumes}}}}

test_host_path_denied if {
	count(no_host_path.violation) == 1 with input as pod([{"name": "root", "hostPath": {"path": "/"}}])
}

test_empty_dir_allowed if count(no_host_path.violation) == 0 with input as pod([{"name": "tmp", "emptyDir": {}}])
