"""Usage control: plans with limits, and the door that holds each request to them."""
