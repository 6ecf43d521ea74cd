"""Question 1 through the real `openai` SDK: which models may this principal call?"""

from __future__ import annotations

import json

import openai
import pytest

from clients import openai_client
from helpers import is_uuid

HELLO = [{"role": "user", "content": "hello"}]


def test_alice_gets_a_completion_for_an_allowed_model(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert completion.choices[0].message.content == "hello from gpt-4o-mini"

    received = clean.llm_received()
    assert len(received) == 1
    request = received[0]
    assert request["path"] == "/v1/chat/completions"
    assert json.loads(request["body"])["model"] == "gpt-4o-mini"
    assert request["headers"]["x-agent-authz-principal"] == "alice"
    assert is_uuid(request["headers"]["x-agent-authz-decision-id"])


def test_alice_is_refused_a_model_outside_her_allowed_models(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    err = caught.value
    assert err.status_code == 403
    assert "gpt-4o" in err.message
    assert err.body["type"] == "permission_denied"
    assert err.body["code"] == "model_denied"
    assert "gpt-4o" in err.body["message"]
    assert clean.llm_received() == [], "a denied request must not reach the model provider"


def test_upstream_receives_only_the_allowed_request(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="gpt-4o", messages=HELLO)
    models = [json.loads(r["body"])["model"] for r in clean.llm_received()]
    assert models == ["gpt-4o-mini"]


def test_streaming_is_allowed_for_an_allowed_model(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    stream = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "hello from gpt-4o-mini"
    (request,) = clean.llm_received()
    assert json.loads(request["body"])["stream"] is True


def test_streaming_is_refused_for_a_denied_model(clean, tokens):
    client = openai_client(clean.llm_base_url, tokens["alice"])
    with pytest.raises(openai.PermissionDeniedError):
        for _ in client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True):
            pass
    assert clean.llm_received() == []


def test_models_follow_each_principals_attributes_and_roles(clean, tokens):
    bob = openai_client(clean.llm_base_url, tokens["bob"])
    assert bob.chat.completions.create(model="gpt-4o", messages=HELLO).model == "gpt-4o"

    root = openai_client(clean.llm_base_url, tokens["root"])
    assert root.chat.completions.create(model="o3-pro", messages=HELLO).model == "o3-pro"

    mallory = openai_client(clean.llm_base_url, tokens["mallory"])
    with pytest.raises(openai.PermissionDeniedError) as caught:
        mallory.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
    assert "gpt-4o-mini" in caught.value.message

    received = clean.llm_received()
    assert [(r["headers"]["x-agent-authz-principal"], json.loads(r["body"])["model"]) for r in received] == [
        ("bob", "gpt-4o"),
        ("root", "o3-pro"),
    ]
