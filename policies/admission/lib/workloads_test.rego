package edgetrust.lib.workloads_test

import rego.v1

import data.edgetrust.lib.workloads

test_pod_containers if {
	review := {"kind": {"kind": "Pod"}, "object": {"spec": {"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}}}
	names := {c.name | some c in workloads.containers(review)}
	names == {"a", "i"}
}

test_cronjob_containers if {
	review := {"kind": {"kind": "CronJob"}, "object": {"spec": {"jobTemplate": {"spec": {"template": {"spec": {"containers": [{"name": "c"}]}}}}}}}
	[c.name | some c in workloads.containers(review)] == ["c"]
}

test_other_kind_has_none if {
	workloads.containers({"kind": {"kind": "ConfigMap"}, "object": {"data": {}}}) == []
}
