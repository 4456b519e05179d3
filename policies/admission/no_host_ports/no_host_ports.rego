package edgetrust.admission.no_host_ports

import rego.v1

import data.edgetrust.lib.workloads

violation contains {"msg": msg} if {
	some c in workloads.containers(input.review)
	some port in object.get(c, "ports", [])
	port.hostPort
	msg := sprintf("container %s binds host port %v", [c.name, port.hostPort])
}
