from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Suspicion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SUSPICION_NONE: _ClassVar[Suspicion]
    SUSPICION_FALSE_NEGATIVE: _ClassVar[Suspicion]
    SUSPICION_FALSE_POSITIVE: _ClassVar[Suspicion]
SUSPICION_NONE: Suspicion
SUSPICION_FALSE_NEGATIVE: Suspicion
SUSPICION_FALSE_POSITIVE: Suspicion

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class ClassifyRequest(_message.Message):
    __slots__ = ("messages", "key", "classifier")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[Message]
    key: str
    classifier: str
    def __init__(self, messages: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., key: _Optional[str] = ..., classifier: _Optional[str] = ...) -> None: ...

class Decision(_message.Message):
    __slots__ = ("tier", "classifier", "rule", "reason", "keywords", "chars", "bytes", "messages", "model")
    TIER_FIELD_NUMBER: _ClassVar[int]
    CLASSIFIER_FIELD_NUMBER: _ClassVar[int]
    RULE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    CHARS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    tier: str
    classifier: str
    rule: str
    reason: str
    keywords: _containers.RepeatedScalarFieldContainer[str]
    chars: int
    bytes: int
    messages: int
    model: str
    def __init__(self, tier: _Optional[str] = ..., classifier: _Optional[str] = ..., rule: _Optional[str] = ..., reason: _Optional[str] = ..., keywords: _Optional[_Iterable[str]] = ..., chars: _Optional[int] = ..., bytes: _Optional[int] = ..., messages: _Optional[int] = ..., model: _Optional[str] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("decision", "request_id")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    request_id: str
    def __init__(self, decision: _Optional[_Union[Decision, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("request_id", "score", "comment")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    score: int
    comment: str
    def __init__(self, request_id: _Optional[str] = ..., score: _Optional[int] = ..., comment: _Optional[str] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("known", "suspicion")
    KNOWN_FIELD_NUMBER: _ClassVar[int]
    SUSPICION_FIELD_NUMBER: _ClassVar[int]
    known: bool
    suspicion: Suspicion
    def __init__(self, known: _Optional[bool] = ..., suspicion: _Optional[_Union[Suspicion, str]] = ...) -> None: ...

class InvalidateCacheRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvalidateCacheResponse(_message.Message):
    __slots__ = ("dropped",)
    DROPPED_FIELD_NUMBER: _ClassVar[int]
    dropped: int
    def __init__(self, dropped: _Optional[int] = ...) -> None: ...
