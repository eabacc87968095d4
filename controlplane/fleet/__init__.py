"""Where work goes: the queues a job is enqueued on, the scheduling checks that admit it, the
decisions recorded as runners take it, and the fleet as operators see it."""
