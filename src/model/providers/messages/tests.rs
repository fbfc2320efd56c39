//! The mapping's unit tests, goldens and proptests.

use http::StatusCode;
use serde_json::{Value, json};

use super::*;
use crate::model::OpenAiError;
use crate::model::providers::{RequestOptions, StreamMapper, Unsupported, Usage, sse};

const MODEL: &str = "claude-sonnet-4-5";

fn opts() -> RequestOptions {
    RequestOptions::new("gpt-4o")
}

fn translate(body: &Value, opts: &RequestOptions) -> Result<Value, MessagesError> {
    let t = request_to_chat(&serde_json::to_vec(body).unwrap(), opts)?;
    Ok(serde_json::from_slice(&t.body).unwrap())
}

fn fixture(name: &str) -> &'static str {
    match name {
        "request_system_string" => {
            include_str!("../../../../tests/fixtures/providers/messages/request_system_string.json")
        }
        "request_system_blocks_images" => {
            include_str!(
                "../../../../tests/fixtures/providers/messages/request_system_blocks_images.json"
            )
        }
        "request_tool_round" => {
            include_str!("../../../../tests/fixtures/providers/messages/request_tool_round.json")
        }
        "request_thinking" => {
            include_str!("../../../../tests/fixtures/providers/messages/request_thinking.json")
        }
        "request_stream" => {
            include_str!("../../../../tests/fixtures/providers/messages/request_stream.json")
        }
        "response_text" => {
            include_str!("../../../../tests/fixtures/providers/messages/response_text.json")
        }
        "response_tool_calls" => {
            include_str!("../../../../tests/fixtures/providers/messages/response_tool_calls.json")
        }
        "response_cached" => {
            include_str!("../../../../tests/fixtures/providers/messages/response_cached.json")
        }
        "response_length" => {
            include_str!("../../../../tests/fixtures/providers/messages/response_length.json")
        }
        "stream_text.sse" => {
            include_str!("../../../../tests/fixtures/providers/messages/stream_text.sse")
        }
        "stream_text" => {
            include_str!("../../../../tests/fixtures/providers/messages/stream_text.events.json")
        }
        "stream_tools.sse" => {
            include_str!("../../../../tests/fixtures/providers/messages/stream_tools.sse")
        }
        "stream_tools" => {
            include_str!("../../../../tests/fixtures/providers/messages/stream_tools.events.json")
        }
        "stream_reasoning.sse" => {
            include_str!("../../../../tests/fixtures/providers/messages/stream_reasoning.sse")
        }
        "stream_reasoning" => {
            include_str!(
                "../../../../tests/fixtures/providers/messages/stream_reasoning.events.json"
            )
        }
        "stream_error.sse" => {
            include_str!("../../../../tests/fixtures/providers/messages/stream_error.sse")
        }
        "stream_error" => {
            include_str!("../../../../tests/fixtures/providers/messages/stream_error.events.json")
        }
        other => panic!("no fixture {other}"),
    }
}

const STREAMS: [&str; 4] = [
    "stream_text",
    "stream_tools",
    "stream_reasoning",
    "stream_error",
];

/// Feeds `bytes` cut at `cuts` through a parser and a mapper, then
/// ends the stream.
fn run_cut(bytes: &[u8], cuts: &[usize]) -> (Vec<u8>, Usage) {
    let mut parser = sse::Parser::new(1 << 20);
    let mut m = MessagesStream::new(MODEL);
    let mut out = Vec::new();
    let mut at = 0;
    for &cut in cuts.iter().chain([bytes.len()].iter()) {
        let cut = cut.clamp(at, bytes.len());
        parser
            .feed(&bytes[at..cut], |e| m.event(e, &mut out))
            .unwrap();
        at = cut;
    }
    parser.finish(|e| m.event(e, &mut out));
    m.finish(&mut out);
    (out, m.usage())
}

fn run(bytes: &[u8]) -> (Vec<u8>, Usage) {
    run_cut(bytes, &[])
}

/// The events written, each `(name, data parsed)`.
fn events(out: &[u8]) -> Vec<(String, Value)> {
    let mut p = sse::Parser::new(1 << 20);
    let mut seen = Vec::new();
    p.feed(out, |e| {
        seen.push((e.event.to_owned(), serde_json::from_str(e.data).unwrap()));
    })
    .unwrap();
    assert!(
        out.is_empty() || out.ends_with(b"\n\n"),
        "every event is complete"
    );
    seen
}

/// Rebuilds the Message a client's accumulator would, checking that
/// blocks open from 0 in order, one at a time, and that nothing
/// follows `message_stop` or `error`.
fn reassemble(events: &[(String, Value)]) -> Value {
    let mut msg = Value::Null;
    let mut partial: Vec<String> = Vec::new();
    let mut open: Option<usize> = None;
    let mut ended = false;
    for (name, data) in events {
        assert!(!ended, "nothing after message_stop or error: {name}");
        assert_eq!(data["type"], name.as_str());
        match name.as_str() {
            "message_start" => msg = data["message"].clone(),
            "content_block_start" => {
                assert_eq!(open, None, "a block opens only when none is open");
                let content = msg["content"].as_array_mut().unwrap();
                assert_eq!(data["index"], content.len(), "block indexes are contiguous");
                content.push(data["content_block"].clone());
                partial.push(String::new());
                open = Some(content.len() - 1);
            }
            "content_block_delta" => {
                let i = data["index"].as_u64().unwrap() as usize;
                assert_eq!(open, Some(i), "deltas go to the open block");
                let block = &mut msg["content"][i];
                let d = &data["delta"];
                let append = |block: &mut Value, key: &str, piece: &Value| {
                    let s = block[key].as_str().unwrap().to_owned() + piece.as_str().unwrap();
                    block[key] = Value::String(s);
                };
                match d["type"].as_str().unwrap() {
                    "text_delta" => append(block, "text", &d["text"]),
                    "thinking_delta" => append(block, "thinking", &d["thinking"]),
                    "signature_delta" => block["signature"] = d["signature"].clone(),
                    "input_json_delta" => partial[i].push_str(d["partial_json"].as_str().unwrap()),
                    other => panic!("unexpected delta {other}"),
                }
            }
            "content_block_stop" => {
                let i = data["index"].as_u64().unwrap() as usize;
                assert_eq!(open, Some(i), "the open block closes");
                open = None;
                if msg["content"][i]["type"] == "tool_use" {
                    msg["content"][i]["input"] = if partial[i].is_empty() {
                        json!({})
                    } else {
                        serde_json::from_str(&partial[i]).unwrap()
                    };
                }
            }
            "message_delta" => {
                assert_eq!(open, None, "message_delta after every block closed");
                msg["stop_reason"] = data["delta"]["stop_reason"].clone();
                msg["stop_sequence"] = data["delta"]["stop_sequence"].clone();
                for (k, v) in data["usage"].as_object().unwrap() {
                    msg["usage"][k] = v.clone();
                }
            }
            "message_stop" | "error" => ended = true,
            other => panic!("unexpected event {other}"),
        }
    }
    msg
}

fn chunk(delta: Value, finish: Option<&str>) -> String {
    let c = json!({"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
    format!("data: {c}\n\n")
}

fn tool_chunk(index: u32, id: Option<&str>, name: Option<&str>, args: &str) -> String {
    let mut f = json!({"arguments": args});
    let mut tc = json!({"index": index});
    if let Some(name) = name {
        f["name"] = json!(name);
    }
    if let Some(id) = id {
        tc["id"] = json!(id);
        tc["type"] = json!("function");
    }
    tc["function"] = f;
    chunk(json!({"tool_calls": [tc]}), None)
}

fn usage_chunk(prompt: u64, cached: u64, completion: u64) -> String {
    let c = json!({"id": "chatcmpl-t", "object": "chat.completion.chunk", "created": 1, "model": "gpt-4o",
        "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
        "total_tokens": prompt + completion, "prompt_tokens_details": {"cached_tokens": cached}}});
    format!("data: {c}\n\n")
}

// === requests ===

#[test]
fn golden_requests() {
    for name in [
        "request_system_string",
        "request_system_blocks_images",
        "request_tool_round",
        "request_thinking",
        "request_stream",
    ] {
        let f: Value = serde_json::from_str(fixture(name)).unwrap();
        let got = translate(&f["in"], &opts()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(got, f["out"], "{name}");
    }
}

#[test]
fn a_stream_always_asks_for_usage() {
    let body =
        br#"{"model":"m","max_tokens":5,"stream":true,"messages":[{"role":"user","content":"x"}]}"#;
    let t = request_to_chat(body, &opts()).unwrap();
    assert!(t.stream && t.include_usage);
    let t = request_to_chat(br#"{"model":"m","max_tokens":5,"messages":[]}"#, &opts()).unwrap();
    assert!(!t.stream && !t.include_usage);
}

#[test]
fn tool_results_come_before_user_text() {
    // Text, result, text, result: both tool messages first, then one
    // user message with the texts in their order (ogx-ai/ogx#6367,
    // BerriAI/litellm#28995: a user message between the assistant's
    // tool_calls and the tool messages is refused by OpenAI).
    let body = json!({"model": "m", "max_tokens": 10, "messages": [
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "a", "name": "f", "input": {}},
            {"type": "tool_use", "id": "b", "name": "f", "input": {}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "first"},
            {"type": "tool_result", "tool_use_id": "a", "content": "1"},
            {"type": "text", "text": "second"},
            {"type": "tool_result", "tool_use_id": "b"}]}]});
    let got = translate(&body, &opts()).unwrap();
    let roles: Vec<&str> = got["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["assistant", "tool", "tool", "user"]);
    assert_eq!(got["messages"][1]["tool_call_id"], "a");
    assert_eq!(
        got["messages"][2],
        json!({"role": "tool", "content": "", "tool_call_id": "b"})
    );
    assert_eq!(
        got["messages"][3]["content"],
        json!([{"type": "text", "text": "first"}, {"type": "text", "text": "second"}])
    );
    assert_eq!(got["messages"][0]["content"], Value::Null);
}

#[test]
fn missing_and_mistyped_fields_are_named() {
    let cases = [
        (
            json!({"model": "m", "messages": []}),
            "max_tokens: Field required",
        ),
        (
            json!({"max_tokens": 1, "messages": []}),
            "model: Field required",
        ),
        (
            json!({"model": "m", "max_tokens": 1}),
            "messages: Field required",
        ),
        (
            json!({"model": 3, "max_tokens": 1, "messages": []}),
            "model: ",
        ),
        (
            json!({"model": "m", "max_tokens": "1", "messages": []}),
            "max_tokens: ",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": {}}),
            "messages: ",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "temperature": "hot", "messages": []}),
            "temperature: ",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "stream": "yes", "messages": []}),
            "stream: ",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "system", "content": "x"}]}),
            "messages.0.role",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user"}]}),
            "messages.0.content: Field required",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "image"}]}]}),
            "messages.0.content.0.source: Field required",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [{"type": "tool_result"}]}]}),
            "messages.0.content.0.tool_use_id: Field required",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "tools": [{"name": "f"}], "messages": []}),
            "tools.0.input_schema: Field required",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "tools": [{"name": "f", "input_schema": {}}],
                "tool_choice": {"type": "tool"}, "messages": []}),
            "tool_choice.tool.name: Field required",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "system": [{"type": "image"}], "messages": []}),
            "system.0.type",
        ),
    ];
    for (body, want) in cases {
        let e = translate(&body, &opts()).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(e.kind(), "invalid_request_error");
        assert!(e.message().starts_with(want), "{body}: {}", e.message());
        let json: Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(json["type"], "error");
        assert_eq!(json["error"]["type"], "invalid_request_error");
    }
    assert!(request_to_chat(b"not json", &opts()).is_err());
    assert!(request_to_chat(b"[]", &opts()).is_err());
    assert!(
        request_to_chat(
            b"{\"model\":\"m\",\"model\":\"n\",\"max_tokens\":1,\"messages\":[]}",
            &opts()
        )
        .is_err()
    );
}

#[test]
fn unsupported_parts_are_dropped_or_refused() {
    let reject = opts().unsupported(Unsupported::Reject);
    let cases = [
        (
            json!({"model": "m", "max_tokens": 1, "top_k": 5, "messages": []}),
            "top_k",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x"}}]}]}),
            "messages.0.content.0",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "tools": [{"type": "bash_20250124", "name": "bash"}], "messages": []}),
            "tools.0",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}),
            "messages.0.content.0.source",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "t", "content": [{"type": "image", "source": {}}]}]}]}),
            "messages.0.content.0.content.0",
        ),
        (
            json!({"model": "m", "max_tokens": 1, "messages": [{"role": "assistant", "content": [
                {"type": "server_tool_use", "id": "s", "name": "web_search", "input": {}}]}]}),
            "messages.0.content.0",
        ),
    ];
    for (body, param) in cases {
        let e = translate(&body, &reject).unwrap_err();
        assert!(e.message().starts_with(param), "{body}: {}", e.message());
        let dropped = translate(&body, &opts()).unwrap();
        assert!(
            dropped.get("top_k").is_none() && dropped.get("tools").is_none(),
            "{dropped}"
        );
    }
    // Only server tools: no tools left, so no tool_choice either.
    let body = json!({"model": "m", "max_tokens": 1, "tools": [{"type": "web_search_20250305", "name": "w"}],
        "tool_choice": {"type": "any", "disable_parallel_tool_use": true}, "messages": []});
    let got = translate(&body, &opts()).unwrap();
    assert_eq!(
        got,
        json!({"model": "gpt-4o", "messages": [], "max_tokens": 1})
    );
}

#[test]
fn tool_choice_and_thinking_variants() {
    let tools = json!([{"name": "f", "input_schema": {"type": "object"}}]);
    for (choice, want, parallel) in [
        (json!({"type": "auto"}), json!("auto"), None),
        (json!({"type": "any"}), json!("required"), None),
        (json!({"type": "none"}), json!("none"), None),
        (
            json!({"type": "auto", "disable_parallel_tool_use": true}),
            json!("auto"),
            Some(false),
        ),
        (
            json!({"type": "any", "disable_parallel_tool_use": false}),
            json!("required"),
            None,
        ),
        (
            json!({"type": "tool", "name": "f"}),
            json!({"type": "function", "function": {"name": "f"}}),
            None,
        ),
    ] {
        let body = json!({"model": "m", "max_tokens": 1, "tools": tools, "tool_choice": choice, "messages": []});
        let got = translate(&body, &opts()).unwrap();
        assert_eq!(got["tool_choice"], want);
        assert_eq!(
            got.get("parallel_tool_calls").and_then(Value::as_bool),
            parallel
        );
    }
    for (budget, effort) in [
        (1024, "low"),
        (2048, "low"),
        (2049, "medium"),
        (8192, "medium"),
        (8193, "high"),
    ] {
        let body = json!({"model": "m", "max_tokens": 1, "thinking": {"type": "enabled", "budget_tokens": budget}, "messages": []});
        assert_eq!(
            translate(&body, &opts()).unwrap()["reasoning_effort"],
            effort
        );
    }
}

// === answers ===

#[test]
fn golden_responses() {
    for name in [
        "response_text",
        "response_tool_calls",
        "response_cached",
        "response_length",
    ] {
        let f: Value = serde_json::from_str(fixture(name)).unwrap();
        let (body, usage) =
            response_from_chat(&serde_json::to_vec(&f["in"]).unwrap(), MODEL).unwrap();
        let got: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got, f["out"], "{name}");
        let want: Usage = serde_json::from_value(f["usage"].clone()).unwrap();
        assert_eq!(usage, want, "{name}");
    }
}

#[test]
fn stop_with_tool_calls_is_tool_use() {
    // Ollama says `stop` with a tool call (BerriAI/litellm#34692); the
    // client must still see `tool_use`, and no empty text block.
    let body = json!({"id": "x", "choices": [{"message": {"role": "assistant", "content": "",
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        "finish_reason": "stop"}]});
    let (out, _) = response_from_chat(&serde_json::to_vec(&body).unwrap(), MODEL).unwrap();
    let got: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(got["stop_reason"], "tool_use");
    assert_eq!(
        got["content"],
        json!([{"type": "tool_use", "id": "c", "name": "f", "input": {}}])
    );

    let mut s = chunk(json!({"role": "assistant", "content": ""}), None);
    s += &tool_chunk(0, Some("c"), Some("f"), "{}");
    s += &chunk(json!({}), Some("stop"));
    s += "data: [DONE]\n\n";
    let ev = events(&run(s.as_bytes()).0);
    assert_eq!(
        ev[1].1["content_block"]["type"], "tool_use",
        "no empty leading text block"
    );
    assert_eq!(reassemble(&ev)["stop_reason"], "tool_use");
}

#[test]
fn unreadable_answers_are_502() {
    for body in [
        &b"<html>"[..],
        b"{}",
        b"{\"choices\":[]}",
        b"{\"choices\":3}",
    ] {
        let e = response_from_chat(body, MODEL).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(e.kind(), "api_error");
    }
}

#[test]
fn errors_keep_their_status() {
    let body = br#"{"error":{"message":"Incorrect API key provided","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    for (status, kind) in [
        (400, "invalid_request_error"),
        (401, "authentication_error"),
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
        (429, "rate_limit_error"),
        (500, "api_error"),
        (502, "api_error"),
        (503, "api_error"),
        (504, "api_error"),
        (529, "overloaded_error"),
    ] {
        let status = StatusCode::from_u16(status).unwrap();
        let e = error_from_chat(status, body);
        assert_eq!((e.status(), e.kind()), (status, kind));
        let json: Value = serde_json::from_slice(&e.to_json()).unwrap();
        assert_eq!(
            json,
            json!({"type": "error", "error": {"type": kind, "message": "Incorrect API key provided"}})
        );
    }
    assert_eq!(
        error_from_chat(StatusCode::BAD_REQUEST, br#"{"error":"bad"}"#).message(),
        "bad"
    );
    assert_eq!(
        error_from_chat(
            StatusCode::BAD_REQUEST,
            br#"{"object":"error","message":"vllm says no"}"#
        )
        .message(),
        "vllm says no"
    );
    let html = "<html>".to_owned() + &"é".repeat(400);
    let e = error_from_chat(StatusCode::BAD_GATEWAY, html.as_bytes());
    assert!(e.message().len() <= 200 && e.message().starts_with("<html>"));
    assert_eq!(
        error_from_chat(StatusCode::SERVICE_UNAVAILABLE, b"").message(),
        "Service Unavailable"
    );

    let own = OpenAiError::new(
        StatusCode::NOT_FOUND,
        "The model `x` does not exist.",
        "invalid_request_error",
        Some("model"),
        Some("model_not_found"),
    );
    let e = MessagesError::from_openai(&own);
    assert_eq!(
        (e.status(), e.kind(), e.message()),
        (
            StatusCode::NOT_FOUND,
            "not_found_error",
            "The model `x` does not exist."
        )
    );
}

// === streams ===

#[test]
fn golden_streams() {
    for name in STREAMS {
        let want: Vec<(String, Value)> = serde_json::from_str(fixture(name)).unwrap();
        let (out, usage) = run(fixture(&format!("{name}.sse")).as_bytes());
        let got = events(&out);
        assert_eq!(got, want, "{name}");
        reassemble(&got);
        assert_eq!(usage.truncated, name == "stream_error", "{name}");
    }
}

#[test]
fn usage_lands_in_message_delta() {
    let (out, usage) = run(fixture("stream_tools.sse").as_bytes());
    let ev = events(&out);
    assert_eq!(
        ev[0].1["message"]["usage"],
        json!({"input_tokens": 0, "output_tokens": 0})
    );
    let delta = &ev.iter().find(|(n, _)| n == "message_delta").unwrap().1;
    assert_eq!(
        delta["usage"],
        json!({"input_tokens": 20, "output_tokens": 30, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 100})
    );
    assert_eq!(
        usage,
        Usage {
            input: 120,
            cached_read: 100,
            output: 30,
            ..Usage::default()
        }
    );
    // Usage in the finish chunk itself counts too; none at all gives
    // output_tokens 0 and no input count.
    let s =
        chunk(json!({"content": "x"}), None) + &chunk(json!({}), Some("stop")) + "data: [DONE]\n\n";
    let ev = events(&run(s.as_bytes()).0);
    assert_eq!(ev[ev.len() - 2].1["usage"], json!({"output_tokens": 0}));
}

#[test]
fn block_indexes_are_contiguous() {
    let mut s = chunk(json!({"reasoning_content": "hm"}), None);
    s += &chunk(json!({"content": "a"}), None);
    s += &chunk(json!({"reasoning": "again"}), None);
    s += &chunk(json!({"content": "b", "tool_calls": []}), None);
    s += &tool_chunk(0, Some("c0"), Some("f"), "{}");
    s += &tool_chunk(1, Some("c1"), Some("g"), "{\"x\":1}");
    s += &chunk(
        json!({"thinking_blocks": [{"type": "redacted_thinking", "data": "zz"}]}),
        None,
    );
    s += &chunk(json!({}), Some("tool_calls"));
    s += "data: [DONE]\n\n";
    let ev = events(&run(s.as_bytes()).0);
    let starts: Vec<(u64, &str)> = ev
        .iter()
        .filter(|(n, _)| n == "content_block_start")
        .map(|(_, d)| {
            (
                d["index"].as_u64().unwrap(),
                d["content_block"]["type"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        starts,
        [
            (0, "thinking"),
            (1, "text"),
            (2, "thinking"),
            (3, "text"),
            (4, "tool_use"),
            (5, "tool_use"),
            (6, "redacted_thinking")
        ]
    );
    let msg = reassemble(&ev);
    assert_eq!(
        msg["content"][3]["text"], "b",
        "empty tool_calls with content stay text (BerriAI/litellm#29286)"
    );
    assert_eq!(msg["content"][5]["input"], json!({"x": 1}));
}

#[test]
fn interleaved_tool_arguments_stay_with_their_call() {
    // Index 1 begins while index 0's arguments are still coming; index
    // 0's rest arrives after (BerriAI/litellm#25321, #13638: arguments
    // lost or sent to the wrong block).
    let mut s = chunk(json!({"role": "assistant"}), None);
    s += &tool_chunk(0, Some("c0"), Some("first"), "{\"a\":");
    s += &tool_chunk(1, Some("c1"), Some("second"), "{\"b\":");
    s += &tool_chunk(1, None, None, "[1,2]}");
    s += &tool_chunk(0, None, None, "\"}{\"}");
    s += &tool_chunk(2, Some("c2"), Some("third"), "");
    s += &tool_chunk(2, None, None, "{\"c\":true}");
    s += &chunk(json!({}), Some("tool_calls"));
    s += "data: [DONE]\n\n";
    let ev = events(&run(s.as_bytes()).0);
    let msg = reassemble(&ev);
    assert_eq!(
        msg["content"],
        json!([
            {"type": "tool_use", "id": "c0", "name": "first", "input": {"a": "}{"}},
            {"type": "tool_use", "id": "c1", "name": "second", "input": {"b": [1, 2]}},
            {"type": "tool_use", "id": "c2", "name": "third", "input": {"c": true}},
        ])
    );
    // The held call went out in one delta, right after the first closed.
    let held: Vec<&Value> = ev
        .iter()
        .filter(|(_, d)| d["index"] == 1 && d["type"] == "content_block_delta")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(held.len(), 1);
    assert_eq!(held[0]["delta"]["partial_json"], "{\"b\":[1,2]}");

    // Calls without `index` (one at a time): a new id begins the next.
    let mut s = chunk(json!({"role": "assistant"}), None);
    for (id, name, args) in [
        (Some("x"), Some("f"), "{\"q\":"),
        (None, None, "1}"),
        (Some("y"), Some("g"), "{}"),
    ] {
        let mut tc = json!({"function": {"arguments": args}});
        if let Some(id) = id {
            tc["id"] = json!(id);
            tc["function"]["name"] = json!(name);
        }
        s += &chunk(json!({"tool_calls": [tc]}), None);
    }
    s += &chunk(json!({}), Some("tool_calls"));
    let msg = reassemble(&events(&run(s.as_bytes()).0));
    assert_eq!(msg["content"][0]["input"], json!({"q": 1}));
    assert_eq!(msg["content"][1]["id"], "y");
}

#[test]
fn only_choice_zero_is_read() {
    let other = |t: &str| {
        let c = json!({"id": "x", "choices": [{"index": 1, "delta": {"content": t}, "finish_reason": null}]});
        format!("data: {c}\n\n")
    };
    let s = other("no")
        + &chunk(json!({"content": "yes"}), None)
        + &other("no")
        + &chunk(json!({}), Some("stop"));
    let msg = reassemble(&events(&run(s.as_bytes()).0));
    assert_eq!(msg["content"], json!([{"type": "text", "text": "yes"}]));
}

#[test]
fn one_message_stop_only() {
    let count = |out: &[u8]| {
        events(out)
            .iter()
            .filter(|(n, _)| n == "message_stop")
            .count()
    };
    // [DONE] twice, then finish().
    let s = chunk(json!({"content": "a"}), Some("stop")) + "data: [DONE]\n\ndata: [DONE]\n\n";
    let mut m = MessagesStream::new(MODEL);
    let mut out = Vec::new();
    sse::Parser::new(1 << 16)
        .feed(s.as_bytes(), |e| m.event(e, &mut out))
        .unwrap();
    m.finish(&mut out);
    m.finish(&mut out);
    m.fail("late", &mut out);
    assert_eq!(count(&out), 1);
    assert!(!m.usage().truncated);
    // No [DONE] after the finish reason: closed normally at finish().
    let s = chunk(json!({"content": "a"}), Some("stop")) + &usage_chunk(5, 0, 1);
    let (out, usage) = run(s.as_bytes());
    assert_eq!(count(&out), 1);
    assert_eq!((usage.input, usage.output, usage.truncated), (5, 1, false));
    // An empty stream that says [DONE] still gets a whole message.
    let ev = events(&run(b"data: [DONE]\n\n").0);
    let names: Vec<&str> = ev.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["message_start", "message_delta", "message_stop"]);
}

#[test]
fn error_chunk_becomes_error_event() {
    let (out, usage) = run(fixture("stream_error.sse").as_bytes());
    let ev = events(&out);
    assert_eq!(ev.last().unwrap().0, "error");
    assert!(usage.truncated);
    // fail(), a chunk that is not JSON, and an end before any finish
    // reason: an error event, nothing after.
    let mut m = MessagesStream::new(MODEL);
    let mut out = Vec::new();
    sse::Parser::new(1 << 16)
        .feed(chunk(json!({"content": "a"}), None).as_bytes(), |e| {
            m.event(e, &mut out)
        })
        .unwrap();
    m.fail("upstream connection reset", &mut out);
    m.finish(&mut out);
    let ev = events(&out);
    assert_eq!(
        ev.last().unwrap().1,
        json!({"type": "error", "error": {"type": "api_error", "message": "upstream connection reset"}})
    );
    assert!(m.usage().truncated);
    for s in [
        "data: {not json\n\n".to_owned(),
        chunk(json!({"content": "a"}), None),
        "data: {\"error\":\"boom\"}\n\n".to_owned(),
    ] {
        let (out, usage) = run(s.as_bytes());
        let ev = events(&out);
        assert_eq!(ev.last().unwrap().0, "error", "{s}");
        assert_eq!(ev.iter().filter(|(n, _)| n == "error").count(), 1);
        assert!(usage.truncated);
    }
}

#[test]
fn tool_calls_and_held_arguments_are_bounded() {
    let mut s = chunk(json!({"role": "assistant"}), None);
    for i in 0..=MAX_TOOL_CALLS as u32 {
        s += &tool_chunk(i, Some(&format!("c{i}")), Some("f"), "{}");
    }
    s += &chunk(json!({}), Some("tool_calls"));
    let (out, usage) = run(s.as_bytes());
    let ev = events(&out);
    assert_eq!(ev.last().unwrap().0, "error");
    assert_eq!(
        ev.iter()
            .filter(|(n, _)| n == "content_block_start")
            .count(),
        MAX_TOOL_CALLS
    );
    assert!(usage.truncated);

    // The open call never completes: the next one is held, up to the cap.
    let mut s = tool_chunk(0, Some("c0"), Some("f"), "{\"a\":");
    s += &tool_chunk(1, Some("c1"), Some("g"), "");
    let piece = "x".repeat(64 * 1024);
    for _ in 0..(MAX_HELD_ARGUMENTS / piece.len() + 1) {
        s += &tool_chunk(1, None, None, &piece);
    }
    let ev = events(&run(s.as_bytes()).0);
    assert_eq!(ev.last().unwrap().0, "error");
}

// === properties ===

proptest::proptest! {
    #[test]
    fn no_input_panics(
        junk in proptest::collection::vec(proptest::sample::select(vec![
            "{", "}", "[", "]", ",", ":", "\"type\"", "\"text\"", "\"tool_use\"", "\"tool_result\"", "\"image\"",
            "\"messages\"", "\"content\"", "\"role\"", "\"user\"", "\"assistant\"", "\"choices\"", "\"delta\"",
            "\"tool_calls\"", "\"index\"", "\"arguments\"", "\"function\"", "\"finish_reason\"", "\"error\"",
            "\"max_tokens\"", "\"model\"", "1", "null", "\"é\\u0000\"", "\"\\\"\"",
        ]), 0..40),
    ) {
        let junk: String = junk.concat();
        let _ = request_to_chat(junk.as_bytes(), &opts());
        let _ = response_from_chat(junk.as_bytes(), MODEL);
        let _ = error_from_chat(StatusCode::BAD_GATEWAY, junk.as_bytes());
        let mut m = MessagesStream::new(MODEL);
        let mut out = Vec::new();
        m.event(&sse::Event { event: "", data: &junk }, &mut out);
        m.event(&sse::Event { event: "", data: &format!("{{\"choices\":[{{\"delta\":{junk}}}]}}") }, &mut out);
        m.finish(&mut out);
        let ev = events(&out);
        reassemble(&ev);
    }

    #[test]
    fn chunk_boundaries_do_not_matter(which in 0..STREAMS.len(), cuts in proptest::collection::vec(0usize..4096, 0..12)) {
        let bytes = fixture(&format!("{}.sse", STREAMS[which])).as_bytes();
        let whole = run(bytes);
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        proptest::prop_assert_eq!(&run_cut(bytes, &cuts), &whole);
        let crlf = String::from_utf8(bytes.to_vec()).unwrap().replace('\n', "\r\n");
        proptest::prop_assert_eq!(&run_cut(crlf.as_bytes(), &cuts), &whole);
    }

    #[test]
    fn a_stream_reassembled_is_the_json_answer(
        reasoning in proptest::collection::vec("[a-z \"\\\\é]{0,6}", 0..3),
        text in proptest::collection::vec("[a-z \"\\\\é\n]{0,6}", 0..4),
        calls in proptest::collection::vec(
            (proptest::collection::btree_map("[a-z]{1,4}", "[a-z \"{}]{0,5}", 0..3), proptest::collection::vec(0usize..64, 0..4)),
            0..4,
        ),
        schedule in proptest::collection::vec(0usize..8, 0..40),
        finish in proptest::sample::select(vec!["stop", "length", "tool_calls", "content_filter"]),
        (prompt, cached, completion) in (0u64..5000, 0u64..5000, 0u64..5000),
    ) {
        let cached = cached.min(prompt);
        let mut s = chunk(json!({"role": "assistant", "content": ""}), None);
        for r in &reasoning {
            s += &chunk(json!({"reasoning_content": r}), None);
        }
        for t in &text {
            s += &chunk(json!({"content": t}), None);
        }
        // Each call's arguments cut in pieces; the pieces of different
        // calls interleave by `schedule`, each call's first chunk (id
        // and name) coming after the previous call's first.
        let args: Vec<String> = calls.iter().map(|(m, _)| serde_json::to_string(m).unwrap()).collect();
        let mut pieces: Vec<std::collections::VecDeque<String>> = calls
            .iter()
            .zip(&args)
            .map(|((_, cuts), a)| {
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (a.len() + 1)).filter(|&c| a.is_char_boundary(c)).collect();
                cuts.sort_unstable();
                cuts.dedup();
                let mut at = 0;
                let mut v: std::collections::VecDeque<String> = cuts.iter().map(|&c| { let p = a[at..c].to_owned(); at = c; p }).collect();
                v.push_back(a[at..].to_owned());
                v
            })
            .collect();
        let mut started = 0;
        let mut turns = schedule.into_iter();
        loop {
            let live: Vec<usize> = (0..started).filter(|&i| !pieces[i].is_empty()).collect();
            if live.is_empty() && started == calls.len() {
                break;
            }
            let pick = turns.next().unwrap_or(0);
            if started < calls.len() && (live.is_empty() || pick % 3 == 0) {
                let i = started;
                started += 1;
                let first = pieces[i].pop_front().unwrap_or_default();
                s += &tool_chunk(i as u32, Some(&format!("call_{i}")), Some(&format!("f{i}")), &first);
            } else {
                let i = live[pick % live.len()];
                let p = pieces[i].pop_front().unwrap_or_default();
                s += &tool_chunk(i as u32, None, None, &p);
            }
        }
        s += &chunk(json!({}), Some(finish));
        s += &usage_chunk(prompt, cached, completion);
        s += "data: [DONE]\n\n";

        let reasoning: String = reasoning.concat();
        let text: String = text.concat();
        let mut message = json!({"role": "assistant", "content": text});
        if !reasoning.is_empty() {
            message["reasoning_content"] = json!(reasoning);
        }
        if !calls.is_empty() {
            message["tool_calls"] = args
                .iter()
                .enumerate()
                .map(|(i, a)| json!({"id": format!("call_{i}"), "type": "function", "function": {"name": format!("f{i}"), "arguments": a}}))
                .collect();
        }
        let answer = json!({"id": "chatcmpl-t", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
                "prompt_tokens_details": {"cached_tokens": cached}}});
        let (json_body, json_usage) = response_from_chat(&serde_json::to_vec(&answer).unwrap(), MODEL).unwrap();
        let want: Value = serde_json::from_slice(&json_body).unwrap();

        let (out, usage) = run(s.as_bytes());
        let got = reassemble(&events(&out));
        proptest::prop_assert_eq!(got, want);
        proptest::prop_assert_eq!(usage, json_usage);
        // Byte by byte, the same.
        let every: Vec<usize> = (1..s.len()).collect();
        proptest::prop_assert_eq!(run_cut(s.as_bytes(), &every).0, out);
    }
}
