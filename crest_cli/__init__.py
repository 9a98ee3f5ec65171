"""The top layer: the `crest` command line and the workflows that drive both halves of CREST
(the evaluation against REST, the end-to-end demo). Nothing in `datastore_service` or `decoder`
imports it."""
