"""CREST decoder: speculative decoding with the target model, drafts from the datastore service."""
