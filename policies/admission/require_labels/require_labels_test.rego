package edgetrust.admission.require_labels_test

import rego.v1

import data.edgetrust.admission.require_labels

test_missing_label if {
	count(require_labels.violation) == 1 with input as {"review": {"object": {"metadata": {}}}, "parameters": {"labels": ["app"]}}
}

test_label_present if {
	count(require_labels.violation) == 0 with input as {"review": {"object": {"metadata": {"labels": {"app": "x"}}}}, "parameters": {"labels": ["app"]}}
}
