"""Rehearsals of the cluster on this machine."""
