"""Ray runtime: the server actor, client actors and device/time accounting."""
