"""Amazon Bedrock through the gateway with boto3's `bedrock-runtime` client: Converse,
ConverseStream, InvokeModel and InvokeModelWithResponseStream, with real model ids (boto3 sends
`:` as `%3A` and an ARN's `/` as `%2F`). The model judged is the one the provider reads."""

from __future__ import annotations

import json

import pytest
from botocore.exceptions import ClientError

from clients import bedrock_client

HAIKU = "anthropic.claude-3-haiku-20240307-v1:0"
PROFILE = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-3-haiku-20240307-v1:0"
OPUS = "anthropic.claude-3-opus-20240229-v1:0"
HELLO = [{"role": "user", "content": [{"text": "hello"}]}]


@pytest.fixture
def bedrock(clean):
    token = clean.token_for("alice", allowed_models=[HAIKU, PROFILE])
    return bedrock_client(clean.envoy_url, token)


def spec(name: str) -> dict:
    return {"toolSpec": {"name": name, "inputSchema": {"json": {"type": "object", "properties": {}}}}}


def parsed(stack) -> dict:
    (request,) = stack.llm_received()
    return request["parsed"]


def judged_model(stack, after: int) -> str:
    decision = stack.wait_for_decision(lambda d: d.get("format") == "bedrock_converse", after=after)
    (model,) = [r["id"] for r in decision["resources"] if r["kind"] == "llm_model"]
    return model


def test_converse_with_a_real_model_id_strips_denied_tools(clean, bedrock):
    before = len(clean.decisions())
    answer = bedrock.converse(modelId=HAIKU, messages=HELLO,
                              toolConfig={"tools": [spec("get_weather"), spec("run_shell")]})
    assert answer["output"]["message"]["content"][0]["text"] == f"hello from {HAIKU}"
    seen = parsed(clean)
    assert seen["model"] == HAIKU == judged_model(clean, before), "judged the model the provider reads"
    assert seen["tools"] == ["get_weather"]


def test_converse_stream_with_an_inference_profile_arn(clean, bedrock):
    before = len(clean.decisions())
    answer = bedrock.converse_stream(modelId=PROFILE, messages=HELLO,
                                     toolConfig={"tools": [spec("get_weather"), spec("run_shell")]})
    text = "".join(e["contentBlockDelta"]["delta"]["text"] for e in answer["stream"] if "contentBlockDelta" in e)
    assert text == f"hello from {PROFILE}"
    (request,) = clean.llm_received()
    assert "%2F" in request["path"] and "%3A" in request["path"], request["path"]
    assert request["parsed"]["model"] == PROFILE == judged_model(clean, before)
    assert request["parsed"]["stream"] is True
    assert request["parsed"]["tools"] == ["get_weather"]


def test_a_denied_model_never_reaches_bedrock(clean, bedrock):
    for call in (lambda: bedrock.converse(modelId=OPUS, messages=HELLO),
                 lambda: bedrock.converse_stream(modelId=OPUS, messages=HELLO),
                 lambda: bedrock.invoke_model(modelId=OPUS, body=json.dumps({"anthropic_version": "bedrock-2023-05-31",
                                                                              "max_tokens": 8, "messages": []}))):
        with pytest.raises(ClientError) as caught:
            call()
        assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
        assert OPUS in caught.value.response["Error"]["Message"]
    assert clean.llm_received() == []


def anthropic_body(**extra) -> str:
    return json.dumps({"anthropic_version": "bedrock-2023-05-31", "max_tokens": 16,
                       "messages": [{"role": "user", "content": "hello"}], **extra})


def test_invoke_model_reads_anthropic_bodies(clean, bedrock):
    tools = [{"name": n, "input_schema": {"type": "object"}} for n in ("get_weather", "run_shell")]
    answer = bedrock.invoke_model(modelId=HAIKU, body=anthropic_body(tools=tools))
    assert json.loads(answer["body"].read())["content"][0]["text"] == f"hello from {HAIKU}"
    seen = parsed(clean)
    assert (seen["model"], seen["tools"]) == (HAIKU, ["get_weather"])
    clean.llm_reset()
    answer = bedrock.invoke_model_with_response_stream(modelId=HAIKU, body=anthropic_body(tools=tools))
    events = [json.loads(e["chunk"]["bytes"]) for e in answer["body"]]
    text = "".join(e["delta"]["text"] for e in events if e["type"] == "content_block_delta")
    assert text == f"hello from {HAIKU}"
    seen = parsed(clean)
    assert (seen["model"], seen["tools"], seen["stream"]) == (HAIKU, ["get_weather"], True)


def test_invoke_model_bodies_we_do_not_read_may_not_declare_tools(clean):
    llama = "meta.llama3-70b-instruct-v1:0"
    client = bedrock_client(clean.envoy_url, clean.token_for("alice", allowed_models=[llama]))
    answer = client.invoke_model(modelId=llama, body=json.dumps({"prompt": "hello", "max_gen_len": 8}))
    assert answer["ResponseMetadata"]["HTTPStatusCode"] == 200
    clean.llm_reset()
    with pytest.raises(ClientError) as caught:
        client.invoke_model(modelId=llama, body=json.dumps({"prompt": "hi", "tools": [{"name": "run_shell"}]}))
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    assert "declares tools" in caught.value.response["Error"]["Message"]
    assert clean.llm_received() == []


def test_paths_whose_routing_could_differ_are_refused(clean, bedrock):
    import httpx

    token = clean.token_for("alice", allowed_models=[HAIKU])
    for path in ("/model/anthropic.claude-3-haiku-20240307-v1%253A0/converse",  # double-encoded
                 "/model/x%2F..%2Fanthropic.claude-3-haiku-20240307-v1%3A0/converse",
                 "/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse%2Fx"):
        r = httpx.post(clean.envoy_url + path, json={"messages": []}, headers={"authorization": f"Bearer {token}"})
        assert r.status_code == 400, (path, r.status_code, r.text)
    assert clean.llm_received() == []
