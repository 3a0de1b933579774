"""Typed contracts shared by every callrec service: events, requests/replies, subjects.

Services never import each other; they agree only on what is in this package.
"""
