"""Indexing: the pipeline for one repository (pipeline), which files changed (changes) and
the background pass that embeds chunks stored without a vector (catchup). Builds on
source, store and embed."""
