"""Generated gRPC API of CREST (see proto/crest/v1/datastore.proto; regenerate with scripts/gen_proto)."""
