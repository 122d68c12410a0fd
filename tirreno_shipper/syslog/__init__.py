"""Syslog as a log source: the header framing (`framing`) and the listening socket (`listener`)."""
