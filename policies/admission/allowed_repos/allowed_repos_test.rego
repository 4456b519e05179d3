package edgetrust.admission.allowed_repos_test

import rego.v1

import data.edgetrust.admission.allowed_repos

review(image) := {"kind": {"kind": "Deployment"}, "object": {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}}

check(image, canonical) := {"review": review(image), "images": {image: canonical}, "parameters": {"repos": ["registry.edge.example/"]}}

test_other_registry_denied if {
	count(allowed_repos.violation) == 1 with input as check("nginx:1", "docker.io/library/nginx:1")
}

test_allowed_registry if {
	count(allowed_repos.violation) == 0 with input as check("registry.edge.example/app:1", "registry.edge.example/app:1")
}

test_respelled_allowed_registry_is_judged_by_its_canonical_form if {
	count(allowed_repos.violation) == 0 with input as check("REGISTRY.edge.example:443/app:1", "registry.edge.example/app:1")
}

test_raw_spelling_that_only_looks_allowed_is_denied if {
	# the raw text starts with an allowed prefix, the canonical reference does not
	count(allowed_repos.violation) == 1 with input as check("registry.edge.example/app:1", "docker.io/library/app:1")
}

test_image_without_canonical_form_denied if {
	count(allowed_repos.violation) == 1 with input as {"review": review("Bad/Image"), "images": {}, "parameters": {"repos": ["registry.edge.example/"]}}
}
