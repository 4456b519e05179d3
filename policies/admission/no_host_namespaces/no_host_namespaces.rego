package edgetrust.admission.no_host_namespaces

import rego.v1

import data.edgetrust.lib.workloads

violation contains {"msg": msg} if {
	spec := workloads.pod_spec(input.review)
	some field in ["hostNetwork", "hostPID", "hostIPC"]
	spec[field] == true
	msg := sprintf("%s is not allowed", [field])
}
