"""Configuration: deploy.yaml and server manifests, read safely, validated against JSON Schema, frozen."""
