package edgetrust.admission.disallow_latest_tag

import rego.v1

import data.edgetrust.lib.workloads

violation contains {"msg": msg} if {
	some c in workloads.containers(input.review)
	not pinned(c.image)
	untagged_or_latest(c.image)
	msg := sprintf("container %s uses image %q without a version tag (or :latest)", [c.name, c.image])
}

pinned(image) if contains(image, "@")

untagged_or_latest(image) if endswith(image, ":latest")

# no ':' after the last '/': no tag at all
untagged_or_latest(image) if not regex.match(`:[^/]*$`, image)
