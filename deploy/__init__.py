"""Deployment providers that turn an endpoint's capacity into compute (local Ray, AWS, GCP,
Azure) and the GPU instance catalog. Never imports `control_plane`. Built by later issues;
this package is its home.
"""
