"""The ``quadformer`` command line."""
