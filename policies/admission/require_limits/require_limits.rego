package edgetrust.admission.require_limits

import rego.v1

import data.edgetrust.lib.workloads

violation contains {"msg": msg} if {
	some c in workloads.containers(input.review)
	not c.resources.limits.memory
	msg := sprintf("container %s has no memory limit", [c.name])
}
