from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Selection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SELECTION_UNSPECIFIED: _ClassVar[Selection]
    SCORED: _ClassVar[Selection]
    LONGEST_MATCH: _ClassVar[Selection]
    MERGED: _ClassVar[Selection]
    CHAINED: _ClassVar[Selection]
SELECTION_UNSPECIFIED: Selection
SCORED: Selection
LONGEST_MATCH: Selection
MERGED: Selection
CHAINED: Selection

class SequenceQuery(_message.Message):
    __slots__ = ("tokens", "max_nodes", "max_depth")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    max_nodes: int
    max_depth: int
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., max_nodes: _Optional[int] = ..., max_depth: _Optional[int] = ...) -> None: ...

class LookupRequest(_message.Message):
    __slots__ = ("sequences", "selection", "store")
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    sequences: _containers.RepeatedCompositeFieldContainer[SequenceQuery]
    selection: Selection
    store: str
    def __init__(self, sequences: _Optional[_Iterable[_Union[SequenceQuery, _Mapping]]] = ..., selection: _Optional[_Union[Selection, str]] = ..., store: _Optional[str] = ...) -> None: ...

class DraftTree(_message.Message):
    __slots__ = ("tokens", "parents", "probabilities", "context_length", "score")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    parents: _containers.RepeatedScalarFieldContainer[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    context_length: int
    score: float
    def __init__(self, tokens: _Optional[_Iterable[int]] = ..., parents: _Optional[_Iterable[int]] = ..., probabilities: _Optional[_Iterable[float]] = ..., context_length: _Optional[int] = ..., score: _Optional[float] = ...) -> None: ...

class LookupResponse(_message.Message):
    __slots__ = ("drafts", "store_version")
    DRAFTS_FIELD_NUMBER: _ClassVar[int]
    STORE_VERSION_FIELD_NUMBER: _ClassVar[int]
    drafts: _containers.RepeatedCompositeFieldContainer[DraftTree]
    store_version: str
    def __init__(self, drafts: _Optional[_Iterable[_Union[DraftTree, _Mapping]]] = ..., store_version: _Optional[str] = ...) -> None: ...

class InfoRequest(_message.Message):
    __slots__ = ("store",)
    STORE_FIELD_NUMBER: _ClassVar[int]
    store: str
    def __init__(self, store: _Optional[str] = ...) -> None: ...

class InfoResponse(_message.Message):
    __slots__ = ("store_version", "tokenizer_name", "tokenizer_fingerprint", "vocab_size", "max_context", "max_depth", "max_nodes", "contexts", "nodes", "corpus_name", "corpus_tokens", "policy", "build_params_json", "schema_version", "crest_version", "max_batch", "store_name", "learning", "observed_tokens")
    STORE_VERSION_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_NAME_FIELD_NUMBER: _ClassVar[int]
    TOKENIZER_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_DEPTH_FIELD_NUMBER: _ClassVar[int]
    MAX_NODES_FIELD_NUMBER: _ClassVar[int]
    CONTEXTS_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    CORPUS_NAME_FIELD_NUMBER: _ClassVar[int]
    CORPUS_TOKENS_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BUILD_PARAMS_JSON_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREST_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    STORE_NAME_FIELD_NUMBER: _ClassVar[int]
    LEARNING_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    store_version: str
    tokenizer_name: str
    tokenizer_fingerprint: str
    vocab_size: int
    max_context: int
    max_depth: int
    max_nodes: int
    contexts: int
    nodes: int
    corpus_name: str
    corpus_tokens: int
    policy: str
    build_params_json: str
    schema_version: str
    crest_version: str
    max_batch: int
    store_name: str
    learning: bool
    observed_tokens: int
    def __init__(self, store_version: _Optional[str] = ..., tokenizer_name: _Optional[str] = ..., tokenizer_fingerprint: _Optional[str] = ..., vocab_size: _Optional[int] = ..., max_context: _Optional[int] = ..., max_depth: _Optional[int] = ..., max_nodes: _Optional[int] = ..., contexts: _Optional[int] = ..., nodes: _Optional[int] = ..., corpus_name: _Optional[str] = ..., corpus_tokens: _Optional[int] = ..., policy: _Optional[str] = ..., build_params_json: _Optional[str] = ..., schema_version: _Optional[str] = ..., crest_version: _Optional[str] = ..., max_batch: _Optional[int] = ..., store_name: _Optional[str] = ..., learning: bool = ..., observed_tokens: _Optional[int] = ...) -> None: ...

class ObservedSequence(_message.Message):
    __slots__ = ("tokens",)
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    tokens: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tokens: _Optional[_Iterable[int]] = ...) -> None: ...

class ObserveRequest(_message.Message):
    __slots__ = ("store", "sequences")
    STORE_FIELD_NUMBER: _ClassVar[int]
    SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    store: str
    sequences: _containers.RepeatedCompositeFieldContainer[ObservedSequence]
    def __init__(self, store: _Optional[str] = ..., sequences: _Optional[_Iterable[_Union[ObservedSequence, _Mapping]]] = ...) -> None: ...

class ObserveResponse(_message.Message):
    __slots__ = ("tokens", "store_version")
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    STORE_VERSION_FIELD_NUMBER: _ClassVar[int]
    tokens: int
    store_version: str
    def __init__(self, tokens: _Optional[int] = ..., store_version: _Optional[str] = ...) -> None: ...
