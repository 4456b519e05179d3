package edgetrust.admission.allowed_repos_test

import rego.v1

import data.edgetrust.admission.allowed_repos

review(image) := {"kind": {"kind": "Deployment"}, "object": {"spec": {"template": {"spec": {"containers": [{"name": "app", "image": image}]}}}}}

test_other_registry_denied if {
	count(allowed_repos.violation) == 1 with input as {"review": review("docker.io/nginx:1"), "parameters": {"repos": ["registry.edge.example/"]}}
}

test_allowed_registry if {
	count(allowed_repos.violation) == 0 with input as {"review": review("registry.edge.example/app:1"), "parameters": {"repos": ["registry.edge.example/"]}}
}
