"""The reading commands: inspect, diff, plot, verify."""
