"""Pipeline schedules as data: per rank an ordered tuple of actions."""
