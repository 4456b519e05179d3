package edgetrust.admission.require_labels

import rego.v1

violation contains {"msg": msg} if {
	some label in input.parameters.labels
	not input.review.object.metadata.labels[label]
	msg := sprintf("missing label %q", [label])
}
