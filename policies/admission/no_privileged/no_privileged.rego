package edgetrust.admission.no_privileged

import rego.v1

import data.edgetrust.lib.workloads

violation contains {"msg": msg} if {
	some c in workloads.containers(input.review)
	c.securityContext.privileged == true
	msg := sprintf("container %s is privileged", [c.name])
}

violation contains {"msg": msg} if {
	some c in workloads.containers(input.review)
	c.securityContext.allowPrivilegeEscalation == true
	msg := sprintf("container %s allows privilege escalation", [c.name])
}
