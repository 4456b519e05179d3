package edgetrust.admission.allowed_repos

import rego.v1

import data.edgetrust.lib.workloads

violation contains {"msg": msg} if {
	some c in workloads.containers(input.review)
	not allowed(c.image)
	msg := sprintf("container %s image %q is not from an allowed registry (%v)", [c.name, c.image, input.parameters.repos])
}

allowed(image) if {
	some prefix in input.parameters.repos
	startswith(image, prefix)
}
