"""Usage control for a hosted API: plans with limits (plans.py), held at the door (admission.py:
rates and daily quotas counted in Redis by rate_limits.py; monthly.py: credits and training
minutes; storage_quota.py: filestore bytes; token_charges.py: a text request's estimate made good
when its reply ends; owner_limits.py: a plan's limits where no request carries them), and metering of what finished work used (metering.py), delivered to a
billing system by the usage webhook (webhook.py)."""
