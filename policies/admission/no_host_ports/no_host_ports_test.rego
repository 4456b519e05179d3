package edgetrust.admission.no_host_ports_test

import rego.v1

import data.edgetrust.admission.no_host_ports

pod(ports) := {"review": {"kind": {"kind": "Pod"}, "object": {"spec": {"containers": [{"name": "app", "ports": ports}]}}}}

test_host_port_denied if count(no_host_ports.violation) == 1 with input as pod([{"containerPort": 80, "hostPort": 80}])

test_container_port_allowed if count(no_host_ports.violation) == 0 with input as pod([{"containerPort": 80}])
