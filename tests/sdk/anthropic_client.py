"""The official `anthropic` SDK against a switchyard gateway's /v1/messages.

    python anthropic_client.py BASE_URL MODEL[=PROVIDER]...

BASE_URL is the gateway's root; the key is ANTHROPIC_API_KEY (the
gateway's). For each model: a message, a tool use answered in a second
turn, `messages.stream(...)` with `get_final_message()` for text and for
tool use (usage.output_tokens > 0), and a 429 seen as RateLimitError. With
=PROVIDER the text must be the stand-in's "hello from PROVIDER". Every
check runs; the exit status is 1 if any failed. Run by
tests/ai_providers_e2e.rs.
"""

import sys

import anthropic

TOOLS = [{
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    },
}]
HELLO = [{"role": "user", "content": "hello there"}]
WEATHER = [{"role": "user", "content": "what is the weather in Paris?"}]


def expect(cond, what):
    if not cond:
        raise AssertionError(what)


def greeting(provider):
    return f"hello from {provider}" if provider else "hello from "


def text_of(message):
    return "".join(b.text for b in message.content if b.type == "text")


def check_text(client, model, provider):
    m = client.messages.create(model=model, max_tokens=64, messages=HELLO)
    expect(m.type == "message" and m.role == "assistant", f"{m!r}")
    expect(text_of(m).startswith(greeting(provider)), f"text {text_of(m)!r}")
    expect(m.stop_reason == "end_turn", f"stop_reason {m.stop_reason!r}")
    expect(m.usage.input_tokens > 0 and m.usage.output_tokens > 0, f"usage {m.usage!r}")


def check_tool_use_round_trip(client, model, provider):
    m = client.messages.create(model=model, max_tokens=256, messages=WEATHER, tools=TOOLS)
    uses = [b for b in m.content if b.type == "tool_use"]
    expect(uses, f"no tool_use in {m!r}")
    expect(uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"},
           f"tool_use {uses[0]!r}")
    expect(m.stop_reason == "tool_use", f"stop_reason {m.stop_reason!r}")
    turn = WEATHER + [
        {"role": "assistant", "content": m.content},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": u.id, "content": "sunny"} for u in uses
        ]},
    ]
    m2 = client.messages.create(model=model, max_tokens=256, messages=turn, tools=TOOLS)
    expect("sunny" in text_of(m2), f"second turn {text_of(m2)!r}")


def check_stream_text(client, model, provider):
    with client.messages.stream(model=model, max_tokens=64, messages=HELLO) as stream:
        pieces = list(stream.text_stream)
        final = stream.get_final_message()
    expect("".join(pieces) == text_of(final), f"pieces {pieces!r} vs {text_of(final)!r}")
    expect(text_of(final).startswith(greeting(provider)), f"text {text_of(final)!r}")
    expect(final.stop_reason == "end_turn", f"stop_reason {final.stop_reason!r}")
    expect(final.usage.output_tokens > 0, f"usage {final.usage!r}")


def check_stream_tool_use(client, model, provider):
    with client.messages.stream(model=model, max_tokens=256, messages=WEATHER,
                                tools=TOOLS) as stream:
        final = stream.get_final_message()
    uses = [b for b in final.content if b.type == "tool_use"]
    expect(uses, f"no tool_use in {final!r}")
    expect(uses[0].name == "get_weather" and uses[0].input == {"city": "Paris"},
           f"tool_use {uses[0]!r}")
    expect(all(u.id for u in uses), f"tool_use without id: {uses!r}")
    expect(final.stop_reason == "tool_use", f"stop_reason {final.stop_reason!r}")
    expect(final.usage.output_tokens > 0, f"usage {final.usage!r}")


def check_rate_limit(client, model, provider):
    try:
        client.messages.create(model=model, max_tokens=64,
                               messages=[{"role": "user", "content": "rate-limit"}])
    except anthropic.RateLimitError as e:
        expect(e.status_code == 429, f"status {e.status_code}")
        expect(isinstance(e.body, dict) and e.body.get("type") == "error",
               f"error body {e.body!r}")
        return
    raise AssertionError("no RateLimitError")


CHECKS = [check_text, check_tool_use_round_trip, check_stream_text, check_stream_tool_use,
          check_rate_limit]


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    client = anthropic.Anthropic(base_url=sys.argv[1].rstrip("/"), max_retries=0, timeout=30)
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
    print(f"anthropic {anthropic.__version__}: {len(failures)} failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
