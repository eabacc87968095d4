"""What the runner knows of itself: the state it reports, its Prometheus metrics, its memory and what
fits in it, and the container health check."""
