# Pod specs and containers of every pod-bearing kind, so each policy is written once for all of them.
package edgetrust.lib.workloads

import rego.v1

template_kinds := {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job"}

pod_spec(review) := review.object.spec if review.kind.kind == "Pod"

pod_spec(review) := review.object.spec.template.spec if review.kind.kind in template_kinds

pod_spec(review) := review.object.spec.jobTemplate.spec.template.spec if review.kind.kind == "CronJob"

containers(review) := [c |
	spec := pod_spec(review)
	some field in ["initContainers", "containers", "ephemeralContainers"]
	some c in object.get(spec, field, [])
]

subject(review) := sprintf("%s %s/%s", [review.kind.kind, object.get(review, "namespace", ""), object.get(review, "name", "")])
