"""Images on diffusers: the warm pipeline, session LoRAs on it, the work budget measured at start-up,
and stopping a run mid-step."""
