"""Rego decisions: OPA, Gatekeeper templates and constraints, matching, suites, inventory, the pod specs inside
workloads.
"""
