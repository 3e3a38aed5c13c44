"""Servers built from a published package, without a Dockerfile (`build: {package: ...}`).

    spec.py    `pypi:NAME==VERSION` / `npm:NAME@VERSION`: parsed and validated, exact versions only
    fetch.py   the host downloads wheels or an npm tree into a cache, bounded, running no package code
    image.py   the Dockerfile the provider writes for it: installed with no network on a base image

A package's code never runs on the host: wheels only (`--only-binary=:all:`), npm with lifecycle
scripts off. Names and versions are validated before they reach an argv list (never a shell).
"""
