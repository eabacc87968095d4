"""Deleting a user for good: their rows, their files, their adapters on runners' disks and every
mention of them in Redis, with a count of what went."""
