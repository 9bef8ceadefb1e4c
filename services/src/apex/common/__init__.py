"""Plumbing shared by every service: settings, logging, HTTP errors and the process runner."""
