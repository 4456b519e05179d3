package edgetrust.admission.no_host_path

import rego.v1

import data.edgetrust.lib.workloads

violation contains {"msg": msg} if {
	spec := workloads.pod_spec(input.review)
	some volume in object.get(spec, "volumes", [])
	volume.hostPath
	msg := sprintf("volume %s mounts host path %q", [volume.name, volume.hostPath.path])
}
