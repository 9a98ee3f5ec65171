"""Undecodable request bytes are the caller's mistake: answer INVALID_ARGUMENT, not INTERNAL.

grpc parses a request before our handler runs and reports a parse failure as INTERNAL
("Exception deserializing request!"), which reads like a server bug. This interceptor moves the
parse into the handler, where a DecodeError becomes a clean INVALID_ARGUMENT.
"""

from __future__ import annotations

import grpc
from google.protobuf.message import DecodeError


class DecodeInHandler(grpc.ServerInterceptor):
    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if (
            handler is None
            or handler.request_streaming
            or handler.response_streaming
            or handler.request_deserializer is None
        ):
            return handler  # streaming calls (reflection) keep grpc's own parsing
        parse, answer = handler.request_deserializer, handler.unary_unary
        method = handler_call_details.method

        def decoded(raw: bytes, context: grpc.ServicerContext):
            try:
                request = parse(raw)
            except DecodeError:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{method}: the request bytes are not a valid message")
            return answer(request, context)

        return grpc.unary_unary_rpc_method_handler(decoded, response_serializer=handler.response_serializer)
