package edgetrust.admission.allowed_repos

import rego.v1

import data.edgetrust.lib.workloads

# Prefixes are matched against the canonical reference the webhook passes as input.images (lowercase host,
# no :443, docker.io for Docker Hub's aliases, library/ for its official images), never against the image as
# written: `LOCALHOST:5000/x` or `index.docker.io/x` are the same images as `localhost:5000/x` and
# `docker.io/x`. An image the webhook could not read has no canonical form and is refused.
violation contains {"msg": msg} if {
	some c in workloads.containers(input.review)
	not input.images[c.image]
	msg := sprintf("container %s image %q is not a valid image reference", [c.name, c.image])
}

violation contains {"msg": msg} if {
	some c in workloads.containers(input.review)
	canonical := input.images[c.image]
	not allowed(canonical)
	msg := sprintf("container %s image %q (%s) is not from an allowed registry (%v)", [c.name, c.image, canonical, input.parameters.repos])
}

allowed(image) if {
	some prefix in input.parameters.repos
	startswith(image, prefix)
}
