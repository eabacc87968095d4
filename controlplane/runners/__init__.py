"""What runners tell the control plane (interaction updates and reports), and the reconciler that
recovers the work of runners that stop."""
