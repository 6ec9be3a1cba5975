"""Durable storage of the manager's state."""
