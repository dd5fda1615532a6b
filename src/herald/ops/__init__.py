"""Operating herald: the system check, metrics, doctor and notification backlog figures."""
