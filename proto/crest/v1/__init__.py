"""crest.v1: generated from datastore.proto; do not edit."""
