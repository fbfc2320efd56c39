"""The official `openai` SDK against a switchyard gateway.

    python openai_client.py BASE_URL MODEL[=PROVIDER]...

BASE_URL is the gateway's root (the SDK gets BASE_URL/v1); the key is
OPENAI_API_KEY (the gateway's, never a provider's). For each model: a chat
completion, a raw stream, the stream helper with a strict tool (its final
completion has the call with parsed arguments), a tool call answered in a
second turn, and a 429 seen as RateLimitError. With =PROVIDER the text must
be the stand-in's "hello from PROVIDER". Every check runs; the exit status
is 1 if any failed. Run by tests/ai_providers_e2e.rs.
"""

import json
import sys

import openai

TOOLS = [{
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "strict": True,
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}]
HELLO = [{"role": "user", "content": "hello there"}]
WEATHER = [{"role": "user", "content": "what is the weather in Paris?"}]


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def greeting(provider):
    return f"hello from {provider}" if provider else "hello from "


def check_text(client, model, provider):
    r = client.chat.completions.create(model=model, messages=HELLO, max_tokens=64)
    content = r.choices[0].message.content or ""
    expect(content.startswith(greeting(provider)), f"content {content!r}")
    expect(r.choices[0].finish_reason == "stop", f"finish_reason {r.choices[0].finish_reason!r}")
    expect(r.usage and r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0,
           f"usage {r.usage!r}")


def check_raw_stream(client, model, provider):
    chunks = list(client.chat.completions.create(
        model=model, messages=HELLO, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    expect(text.startswith(greeting(provider)), f"streamed {text!r} in {len(chunks)} chunks")
    expect(len(chunks) > 2, f"only {len(chunks)} chunks")
    usage = [c.usage for c in chunks if c.usage]
    expect(usage and usage[-1].completion_tokens > 0, f"no usage chunk in {chunks!r}")


def check_stream_helper_tool(client, model, provider):
    with client.chat.completions.stream(model=model, messages=WEATHER, tools=TOOLS) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    choice = final.choices[0]
    calls = choice.message.tool_calls or []
    expect(calls, f"no tool call in {final!r}")
    for call in calls:
        expect(call.function.name == "get_weather", f"name {call.function.name!r}")
        expect(isinstance(call.function.parsed_arguments, dict)
               and "city" in call.function.parsed_arguments,
               f"parsed_arguments {call.function.parsed_arguments!r}")
    expect(calls[0].function.parsed_arguments == {"city": "Paris"},
           f"first call {calls[0].function.parsed_arguments!r}")
    expect(choice.finish_reason == "tool_calls", f"finish_reason {choice.finish_reason!r}")


def check_stream_helper_text(client, model, provider):
    with client.chat.completions.stream(model=model, messages=HELLO) as stream:
        deltas = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion()
    text = final.choices[0].message.content or ""
    expect(text == "".join(deltas), f"final {text!r} vs deltas {deltas!r}")
    expect(text.startswith(greeting(provider)), f"content {text!r}")


def check_tool_round_trip(client, model, provider):
    r = client.chat.completions.create(model=model, messages=WEATHER, tools=TOOLS)
    message = r.choices[0].message
    calls = message.tool_calls or []
    expect(calls, f"no tool call in {r!r}")
    expect(json.loads(calls[0].function.arguments) == {"city": "Paris"},
           f"arguments {calls[0].function.arguments!r}")
    expect(len({c.id for c in calls}) == len(calls), f"tool call ids repeat: {calls!r}")
    turn = WEATHER + [message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"sky": "sunny"})}
        for c in calls
    ]
    r2 = client.chat.completions.create(model=model, messages=turn, tools=TOOLS)
    content = r2.choices[0].message.content or ""
    expect("sunny" in content, f"second turn {content!r}")


def check_rate_limit(client, model, provider):
    try:
        client.chat.completions.create(model=model, messages=[{"role": "user", "content": "rate-limit"}])
    except openai.RateLimitError as e:
        expect(e.status_code == 429, f"status {e.status_code}")
        expect(isinstance(e.body, dict) and e.body.get("message"), f"error body {e.body!r}")
        return
    raise AssertionError("no RateLimitError")


CHECKS = [check_text, check_raw_stream, check_stream_helper_text, check_stream_helper_tool,
          check_tool_round_trip, check_rate_limit]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    base = sys.argv[1].rstrip("/")
    client = openai.OpenAI(base_url=f"{base}/v1", max_retries=0, timeout=30)
    failures = []
    for arg in sys.argv[2:]:
        model, _, provider = arg.partition("=")
        for check in CHECKS:
            name = f"{model}: {check.__name__}"
            try:
                check(client, model, provider)
                print(f"ok: {name}")
            except Exception as e:  # noqa: BLE001 - report every failure, go on
                failures.append(name)
                print(f"FAIL: {name}: {type(e).__name__}: {e}")
    print(f"openai {openai.__version__}: {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
