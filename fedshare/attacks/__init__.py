"""Attacks that play a curious party on exactly what it receives in a run, to measure what a
design leaks: ``curious_device`` (a device that ranks other users' shared items from the server's
messages to it; issue 14). ``python -m fedshare.attack`` runs them."""
