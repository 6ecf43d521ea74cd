"""`denied_tool_call: error` through the real Envoy, agent-authz, Cerbos and the providers' SDKs:
an answer carrying a refused tool call becomes the provider's own error, so each SDK raises it.
A JSON answer gets the error's status too (403): agent-authz asks Envoy for such an answer
BUFFERED (`mode_override`, allowed by the shipped configs), which holds its headers until the
calls are judged. A stream's status has left already: it ends with the provider's error event.

Each test with a refused call fails against a service that allows everything: the answer
would arrive as a success, with the call in it."""

from __future__ import annotations

import anthropic
import openai
import pytest
from botocore.exceptions import ClientError

from stack import Stack
from test_model_tool_calls import (
    CLAUDE,
    HELLO,
    INJECTED_REFUND,
    NOVA,
    WEATHER,
    called,
    script,
)
from clients import bedrock_client, openai_client


@pytest.fixture(scope="module")
def erring():
    from conftest import require_stack_binaries

    require_stack_binaries()
    with Stack(name="callerror", authz_overrides={"denied_tool_call": "error"}) as s:
        yield s


def chat(stack: Stack, **kwargs):
    return openai_client(stack.llm_base_url, stack.token_for("alice")).chat.completions.create(
        model="gpt-4o-mini", messages=HELLO, **kwargs
    )


def test_an_allowed_answer_is_untouched(erring):
    script(erring, WEATHER)
    choice = chat(erring).choices[0]
    assert called(choice.message) == [("get_weather", {"city": "Paris"})]


def test_openai_json_answer_with_a_refused_call_is_a_403_the_sdk_raises(erring):
    script(erring, WEATHER, INJECTED_REFUND)
    with pytest.raises(openai.PermissionDeniedError) as raised:
        chat(erring)
    assert raised.value.status_code == 403
    assert "refund" in raised.value.message
    assert "tool_calls" not in raised.value.response.text and "get_weather" not in raised.value.response.text


def test_openai_stream_with_a_refused_call_ends_with_an_error_event(erring):
    script(erring, INJECTED_REFUND)
    seen = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in chat(erring, stream=True):
            seen.append(chunk.model_dump_json())
    assert "refund" in str(raised.value)
    assert "amount_cents" not in "".join(seen)


def test_anthropic_json_answer_with_a_refused_call_is_a_403_the_sdk_raises(erring):
    script(erring, INJECTED_REFUND)
    token = erring.token_for("alice", allowed_models=["gpt-4o-mini", CLAUDE])
    client = anthropic.Anthropic(base_url=erring.envoy_url, api_key="unused", max_retries=0,
                                 default_headers={"authorization": f"Bearer {token}"})
    with pytest.raises(anthropic.PermissionDeniedError) as raised:
        client.messages.create(model=CLAUDE, max_tokens=64, messages=HELLO)
    assert raised.value.status_code == 403
    assert "refund" in raised.value.message


def test_bedrock_converse_answer_with_a_refused_call_is_a_403_boto3_raises(erring):
    script(erring, INJECTED_REFUND)
    client = bedrock_client(erring.envoy_url, erring.token_for("alice", allowed_models=["gpt-4o-mini", NOVA]))
    with pytest.raises(ClientError) as raised:
        client.converse(modelId=NOVA, messages=[{"role": "user", "content": [{"text": "refund my ticket"}]}])
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert "refund" in raised.value.response["Error"]["Message"]
