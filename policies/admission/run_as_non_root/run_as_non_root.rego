package edgetrust.admission.run_as_non_root

import rego.v1

import data.edgetrust.lib.workloads

violation contains {"msg": msg} if {
	spec := workloads.pod_spec(input.review)
	some c in workloads.containers(input.review)
	not non_root(spec, c)
	msg := sprintf("container %s may run as root (set securityContext.runAsNonRoot)", [c.name])
}

non_root(_, c) if c.securityContext.runAsNonRoot == true

non_root(spec, c) if {
	spec.securityContext.runAsNonRoot == true
	not c.securityContext.runAsNonRoot == false
}
