"""Plumbing written once (serving limits, bounded reads, ...): each module one guarantee, used everywhere."""
