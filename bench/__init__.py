"""`make bench`: the platform's serving figures, each against a baseline measured in the same run."""
