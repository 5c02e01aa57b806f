"""The official SDKs, unchanged, against gemini-proxy (which fronts the mock upstream).

Run by proxy/tests/sdk.rs with PROXY_URL and CLIENT_TOKEN set; exits non-zero on any failure.
"""

import os
import sys

import openai
from google import genai
from google.genai import errors as genai_errors
from google.genai import types

BASE = os.environ["PROXY_URL"]
TOKEN = os.environ["CLIENT_TOKEN"]
failures = []


def check(name, fn):
    try:
        fn()
        print(f"ok   {name}")
    except Exception as e:  # noqa: BLE001 - report every failure, then exit non-zero
        failures.append(name)
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def openai_chat():
    c = openai.OpenAI(base_url=f"{BASE}/v1beta/openai", api_key=TOKEN, max_retries=0)
    r = c.chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content == "Hello from the mock", r


def openai_chat_stream():
    c = openai.OpenAI(base_url=f"{BASE}/v1beta/openai", api_key=TOKEN, max_retries=0)
    chunks = list(
        c.chat.completions.create(
            model="gemini-2.5-flash",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
        )
    )
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks)
    assert text.startswith("chunk0 "), text


def openai_v1_alias():
    c = openai.OpenAI(base_url=f"{BASE}/v1", api_key=TOKEN, max_retries=0)
    r = c.chat.completions.create(
        model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}]
    )
    assert r.choices[0].message.content == "Hello from the mock"
    models = c.models.list()
    assert any(m.id.endswith("gemini-2.5-flash") for m in models), models
    e = c.embeddings.create(model="text-embedding-004", input="hi")
    assert len(e.data[0].embedding) == 3


def openai_bad_token():
    c = openai.OpenAI(base_url=f"{BASE}/v1beta/openai", api_key="sk-wrong", max_retries=0)
    try:
        c.chat.completions.create(model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
    except openai.AuthenticationError as e:
        assert e.status_code == 401
        assert "not valid" in str(e), str(e)
        return
    raise AssertionError("no AuthenticationError")


def genai_client(token=TOKEN, version=None):
    opts = {"base_url": BASE}
    if version:
        opts["api_version"] = version
    return genai.Client(api_key=token, http_options=types.HttpOptions(**opts))


def genai_generate():
    c = genai_client()  # keep the client alive: it closes its connections when collected
    r = c.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert r.text == "Hello from the mock", r
    assert r.usage_metadata.total_token_count == 12


def genai_generate_v1beta():
    c = genai_client(version="v1beta")
    r = c.models.generate_content(model="gemini-2.5-flash", contents="hi")
    assert r.text == "Hello from the mock", r


def genai_stream():
    c = genai_client()
    parts = [ch.text for ch in c.models.generate_content_stream(model="gemini-2.5-flash", contents="hi")]
    assert parts[0] == "chunk0 " and len(parts) >= 3, parts


def genai_count_tokens():
    c = genai_client()
    r = c.models.count_tokens(model="gemini-2.5-flash", contents="hi")
    assert r.total_tokens == 12, r


def genai_bad_token():
    try:
        c = genai_client(token="sk-wrong")
        c.models.generate_content(model="gemini-2.5-flash", contents="hi")
    except genai_errors.ClientError as e:
        assert e.code == 401, e
        assert e.status == "UNAUTHENTICATED", e.status
        return
    raise AssertionError("no ClientError")


def genai_upload_and_use_file():
    # A resumable upload: the SDK sends its chunks to the session URL the proxy rewrote, with
    # no key at all; then the file is used and read back.
    import tempfile

    c = genai_client()
    with tempfile.NamedTemporaryFile("wb", suffix=".txt", delete=False) as f:
        f.write(b"hello world")
        path = f.name
    up = c.files.upload(file=path, config=types.UploadFileConfig(mime_type="text/plain", display_name="notes"))
    assert up.name.startswith("files/"), up
    assert up.display_name == "notes", up
    r = c.models.generate_content(model="gemini-2.5-flash", contents=[up, "summarise"])
    assert r.text == "Hello from the mock", r
    got = c.files.get(name=up.name)
    assert got.name == up.name, got


for name, fn in [
    ("openai chat.completions", openai_chat),
    ("openai chat.completions stream", openai_chat_stream),
    ("openai on a /v1 base URL (chat, models, embeddings)", openai_v1_alias),
    ("openai 401 -> AuthenticationError", openai_bad_token),
    ("google-genai generate_content (v1)", genai_generate),
    ("google-genai generate_content (v1beta)", genai_generate_v1beta),
    ("google-genai generate_content_stream", genai_stream),
    ("google-genai count_tokens", genai_count_tokens),
    ("google-genai 401 -> ClientError", genai_bad_token),
    ("google-genai files.upload (resumable), then used and read", genai_upload_and_use_file),
]:
    check(name, fn)

print(f"{10 - len(failures)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
