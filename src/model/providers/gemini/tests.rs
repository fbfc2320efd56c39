//! The module's unit tests, goldens and property tests.

use super::*;
use crate::model::OpenAiError;
use crate::model::providers::{
    RequestOptions, StreamMapper, StreamOptions, Unsupported, Usage, sse,
};
use http::StatusCode;
use serde_json::{Value, json};

const CREATED: u64 = 1_700_000_000;

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            "../../../../tests/fixtures/providers/gemini/",
            $name
        ))
    };
}

/// Replaces the random part of synthesized tool-call ids with `RANDOM`.
fn normalize(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, v) in m.iter_mut() {
                if k == "id" {
                    let random = v
                        .as_str()
                        .and_then(|s| s.strip_prefix("call_"))
                        .filter(|rest| {
                            rest.get(..24)
                                .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                        });
                    if let Some(rest) = random {
                        *v = Value::String(format!("call_RANDOM{}", &rest[24..]));
                    }
                } else {
                    normalize(v);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(normalize),
        _ => {}
    }
}

fn chat(body: &str) -> (Value, Usage) {
    let (json, usage) = response_to_chat(body.as_bytes(), "fast", CREATED).unwrap();
    let mut v: Value = serde_json::from_slice(&json).unwrap();
    normalize(&mut v);
    (v, usage)
}

fn stream_bytes(pieces: &[&[u8]], include_usage: bool) -> (Vec<u8>, Usage) {
    let mut parser = sse::Parser::new(1 << 20);
    let mut s = ChatStream::new(
        StreamOptions::new("fast")
            .include_usage(include_usage)
            .created(CREATED),
    );
    let mut out = Vec::new();
    for p in pieces {
        parser.feed(p, |e| s.event(e, &mut out)).unwrap();
    }
    parser.finish(|e| s.event(e, &mut out));
    s.finish(&mut out);
    (out, s.usage())
}

fn events(out: &[u8]) -> Vec<Value> {
    let text = std::str::from_utf8(out).unwrap();
    let mut v = Vec::new();
    for ev in text.split("\n\n").filter(|e| !e.is_empty()) {
        let data = ev.strip_prefix("data: ").expect("a data event");
        let mut value = if data == "[DONE]" {
            Value::String("[DONE]".into())
        } else {
            serde_json::from_str(data).unwrap()
        };
        normalize(&mut value);
        v.push(value);
    }
    v
}

fn stream(sse: &str, include_usage: bool) -> (Vec<Value>, Usage) {
    let (out, usage) = stream_bytes(&[sse.as_bytes()], include_usage);
    (events(&out), usage)
}

fn request(body: Value) -> Value {
    let t = request_from_chat(
        body.to_string().as_bytes(),
        &RequestOptions::new("gemini-2.5-flash"),
    )
    .unwrap();
    serde_json::from_slice(&t.body).unwrap()
}

fn request_err(body: Value, opts: &RequestOptions) -> OpenAiError {
    request_from_chat(body.to_string().as_bytes(), opts).unwrap_err()
}

// --- golden fixtures ---

#[test]
fn golden_responses() {
    let cases = [
        (
            fixture!("response_text.json"),
            fixture!("response_text.expected.json"),
        ),
        (
            fixture!("response_function_call.json"),
            fixture!("response_function_call.expected.json"),
        ),
        (
            fixture!("response_parallel_same_tool.json"),
            fixture!("response_parallel_same_tool.expected.json"),
        ),
        (
            fixture!("response_thinking.json"),
            fixture!("response_thinking.expected.json"),
        ),
        (
            fixture!("response_cached.json"),
            fixture!("response_cached.expected.json"),
        ),
        (
            fixture!("response_safety_block.json"),
            fixture!("response_safety_block.expected.json"),
        ),
        (
            fixture!("response_safety_candidate.json"),
            fixture!("response_safety_candidate.expected.json"),
        ),
        (
            fixture!("response_max_tokens.json"),
            fixture!("response_max_tokens.expected.json"),
        ),
    ];
    for (input, expected) in cases {
        let expected: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(chat(input).0, expected, "{input}");
    }
}

#[test]
fn golden_errors() {
    let cases = [
        (
            400,
            fixture!("error_400.json"),
            fixture!("error_400.expected.json"),
        ),
        (
            429,
            fixture!("error_429.json"),
            fixture!("error_429.expected.json"),
        ),
        (
            500,
            fixture!("error_500.json"),
            fixture!("error_500.expected.json"),
        ),
    ];
    for (status, input, expected) in cases {
        let status = StatusCode::from_u16(status).unwrap();
        let e = error_to_chat(status, input.as_bytes());
        assert_eq!(e.status(), status);
        let got: Value = serde_json::to_value(&e).unwrap();
        assert_eq!(got, serde_json::from_str::<Value>(expected).unwrap());
    }
}

#[test]
fn golden_streams() {
    let cases = [
        (
            fixture!("stream_text.sse"),
            fixture!("stream_text.expected.json"),
        ),
        (
            fixture!("stream_call_then_stop.sse"),
            fixture!("stream_call_then_stop.expected.json"),
        ),
        (
            fixture!("stream_parallel_same_tool.sse"),
            fixture!("stream_parallel_same_tool.expected.json"),
        ),
        (
            fixture!("stream_error.sse"),
            fixture!("stream_error.expected.json"),
        ),
    ];
    for (input, expected) in cases {
        let expected: Vec<Value> = serde_json::from_str(expected).unwrap();
        assert_eq!(stream(input, true).0, expected, "{input}");
    }
}

#[test]
fn golden_request() {
    let t = request_from_chat(
        fixture!("request_full.json").as_bytes(),
        &RequestOptions::new("gemini-2.5-flash"),
    )
    .unwrap();
    assert!(t.stream && t.include_usage);
    let got: Value = serde_json::from_slice(&t.body).unwrap();
    let expected: Value = serde_json::from_str(fixture!("request_full.expected.json")).unwrap();
    assert_eq!(got, expected);
    // The same request refused for what Gemini cannot honour.
    let e = request_from_chat(
        fixture!("request_full.json").as_bytes(),
        &RequestOptions::new("m").unsupported(Unsupported::Reject),
    )
    .unwrap_err();
    assert_eq!(e.param(), Some("logit_bias"));
}

// --- the peers' bugs ---

#[test]
fn parallel_calls_to_one_tool_get_their_own_indexes() {
    let (events, _) = stream(fixture!("stream_parallel_same_tool.sse"), false);
    let indexes: Vec<u64> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].as_array())
        .flatten()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indexes, [0, 1, 2]);
    let ids: std::collections::HashSet<String> = {
        let (out, _) = stream_bytes(
            &[fixture!("stream_parallel_same_tool.sse").as_bytes()],
            false,
        );
        let text = String::from_utf8(out).unwrap();
        text.split("\"id\":\"call_")
            .skip(1)
            .map(|s| s[..24].to_owned())
            .collect()
    };
    assert_eq!(ids.len(), 3, "every call has its own id");
}

#[test]
fn cumulative_usage_is_not_summed() {
    let (events, usage) = stream(fixture!("stream_text.sse"), true);
    assert_eq!((usage.input, usage.output), (10, 4));
    assert!(!usage.truncated);
    let last = &events[events.len() - 2];
    assert_eq!(last["usage"]["prompt_tokens"], 10);
    assert_eq!(last["usage"]["completion_tokens"], 4);
    // Without include_usage, the router still gets it.
    let (events, usage) = stream(fixture!("stream_text.sse"), false);
    assert_eq!((usage.input, usage.output), (10, 4));
    assert!(events.iter().all(|e| e.get("usage").is_none()));
}

#[test]
fn stop_after_a_function_call_is_tool_calls() {
    // Separate chunks.
    let (events, _) = stream(fixture!("stream_call_then_stop.sse"), false);
    assert_eq!(events[2]["choices"][0]["finish_reason"], "tool_calls");
    // Same chunk.
    let same = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":{}}}]},\"finishReason\":\"STOP\"}]}\n\n";
    let (events, _) = stream(same, false);
    assert_eq!(events[1]["choices"][0]["finish_reason"], "tool_calls");
    // JSON.
    let (v, _) = chat(fixture!("response_function_call.json"));
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    // Without a call, STOP is stop.
    let (events, _) = stream(fixture!("stream_text.sse"), false);
    assert_eq!(events[3]["choices"][0]["finish_reason"], "stop");
}

#[test]
fn thought_signature_round_trips() {
    let (json, _) = response_to_chat(
        fixture!("response_thinking.json").as_bytes(),
        "fast",
        CREATED,
    )
    .unwrap();
    let v: Value = serde_json::from_slice(&json).unwrap();
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    let id = call["id"].as_str().unwrap().to_owned();
    assert!(
        id.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'),
        "{id}"
    );
    let next = request(json!({
        "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": id, "content": "18C"},
        ]
    }));
    let part = &next["contents"][1]["parts"][0];
    assert_eq!(part["thoughtSignature"], "CiQB0e2Kb+/x9z==");
    assert_eq!(part["functionCall"]["name"], "get_weather");
    assert_eq!(part["functionCall"]["args"], json!({"city": "Paris"}));
    assert_eq!(
        next["contents"][2]["parts"][0]["functionResponse"]["name"],
        "get_weather"
    );
    // Streamed too, and Gemini's own ids come back as `id`.
    let (events, _) = stream(fixture!("stream_call_then_stop.sse"), false);
    let (raw, _) = stream_bytes(&[fixture!("stream_call_then_stop.sse").as_bytes()], false);
    let raw = events_raw_id(&raw);
    assert!(events.len() > 1);
    let next = request(json!({"messages": [
        {"role": "assistant", "tool_calls": [{"id": raw, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": raw, "content": "x"}
    ]}));
    assert_eq!(
        next["contents"][0]["parts"][0]["thoughtSignature"],
        "Q2lRQjBlMktiKy94OXo="
    );
    let (v, _) = chat(fixture!("response_parallel_same_tool.json"));
    let id = v["choices"][0]["message"]["tool_calls"][1]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let next = request(json!({"messages": [
        {"role": "assistant", "tool_calls": [{"id": id, "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": id, "content": "x"}
    ]}));
    assert_eq!(
        next["contents"][0]["parts"][0]["functionCall"]["id"],
        "fc-2"
    );
    assert_eq!(
        next["contents"][1]["parts"][0]["functionResponse"]["id"],
        "fc-2"
    );
}

fn events_raw_id(out: &[u8]) -> String {
    let text = std::str::from_utf8(out).unwrap();
    let start = text.find("\"id\":\"call_").unwrap() + 6;
    let len = text[start..].find('"').unwrap();
    text[start..start + len].to_owned()
}

#[test]
fn thinking_tokens_are_output() {
    let (v, usage) = chat(fixture!("response_thinking.json"));
    assert_eq!(usage.output, 15 + 120);
    assert_eq!(usage.reasoning, 120);
    assert_eq!(v["usage"]["completion_tokens"], 135);
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        120
    );
    assert_eq!(v["usage"]["total_tokens"], 195);
    let u = usage_from_object(br#"{"promptTokenCount":3,"candidatesTokenCount":4,"thoughtsTokenCount":5,"cachedContentTokenCount":1}"#).unwrap();
    assert_eq!(
        (u.input, u.output, u.reasoning, u.cached_read),
        (3, 9, 5, 1)
    );
    assert_eq!(usage_from_object(b"[1]"), None);
}

#[test]
fn tool_result_names_are_recovered() {
    let v = request(json!({"messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "tool_calls": [
            {"id": "call_a", "type": "function", "function": {"name": "alpha", "arguments": "{}"}},
            {"id": "call_b", "type": "function", "function": {"name": "beta", "arguments": ""}}
        ]},
        {"role": "tool", "tool_call_id": "call_b", "content": [{"type": "text", "text": "{\"ok\":true}"}]},
        {"role": "tool", "tool_call_id": "call_a", "content": "[1,2]"}
    ]}));
    let parts = v["contents"][2]["parts"].as_array().unwrap();
    assert_eq!(
        v["contents"].as_array().unwrap().len(),
        3,
        "consecutive tool messages are one content"
    );
    assert_eq!(parts[0]["functionResponse"]["name"], "beta");
    assert_eq!(
        parts[0]["functionResponse"]["response"],
        json!({"ok": true})
    );
    assert_eq!(parts[1]["functionResponse"]["name"], "alpha");
    assert_eq!(
        parts[1]["functionResponse"]["response"],
        json!({"content": "[1,2]"})
    );
    assert_eq!(
        v["contents"][1]["parts"][1]["functionCall"]["args"],
        json!({})
    );
    let e = request_err(
        json!({"messages": [{"role": "tool", "tool_call_id": "nope", "content": "x"}]}),
        &RequestOptions::new("m"),
    );
    assert_eq!(e.status(), StatusCode::BAD_REQUEST);
    assert_eq!(e.param(), Some("messages[0].tool_call_id"));
}

// --- requests ---

#[test]
fn tool_choice_variants() {
    let mode = |choice: Value| {
        request(json!({"messages": [{"role": "user", "content": "x"}], "tool_choice": choice}))
                ["toolConfig"]["functionCallingConfig"]
                .clone()
    };
    assert_eq!(mode(json!("auto")), json!({"mode": "AUTO"}));
    assert_eq!(mode(json!("none")), json!({"mode": "NONE"}));
    assert_eq!(mode(json!("required")), json!({"mode": "ANY"}));
    assert_eq!(
        mode(json!({"type": "function", "function": {"name": "f"}})),
        json!({"mode": "ANY", "allowedFunctionNames": ["f"]})
    );
    let e = request_err(
        json!({"messages": [], "tool_choice": "sometimes"}),
        &RequestOptions::new("m"),
    );
    assert_eq!(e.param(), Some("tool_choice"));
}

#[test]
fn generation_config_variants() {
    let cfg = |extra: Value| {
        let mut body = json!({"messages": [{"role": "user", "content": "x"}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        request(body)["generationConfig"].clone()
    };
    assert_eq!(
        cfg(json!({"stop": "END"})),
        json!({"stopSequences": ["END"]})
    );
    assert_eq!(cfg(json!({"max_tokens": 5})), json!({"maxOutputTokens": 5}));
    assert_eq!(
        cfg(json!({"response_format": {"type": "json_object"}})),
        json!({"responseMimeType": "application/json"})
    );
    assert_eq!(
        cfg(json!({"response_format": {"type": "text"}})),
        Value::Null
    );
    assert_eq!(
        cfg(json!({"reasoning_effort": "low"})),
        json!({"thinkingConfig": {"thinkingBudget": 1024, "includeThoughts": true}})
    );
    assert_eq!(
        cfg(json!({"reasoning_effort": "high"})),
        json!({"thinkingConfig": {"thinkingBudget": 24576, "includeThoughts": true}})
    );
    assert_eq!(
        cfg(json!({"reasoning_effort": "minimal"})),
        json!({"thinkingConfig": {"thinkingBudget": 512, "includeThoughts": true}})
    );
    assert_eq!(
        cfg(json!({"reasoning_effort": "none"})),
        json!({"thinkingConfig": {"thinkingBudget": 0}})
    );
    assert_eq!(
        cfg(json!({"n": 3, "seed": -1})),
        json!({"candidateCount": 3, "seed": -1})
    );
    let e = request_err(
        json!({"messages": [], "reasoning_effort": "max"}),
        &RequestOptions::new("m"),
    );
    assert_eq!(e.param(), Some("reasoning_effort"));
}

#[test]
fn bad_requests_name_their_param() {
    let opts = RequestOptions::new("m");
    let e = request_err(json!({"prompt": "x"}), &opts);
    assert_eq!(
        (e.status(), e.param()),
        (StatusCode::BAD_REQUEST, Some("messages"))
    );
    let e = request_err(
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:image/png,abc"}}]}]}),
        &opts,
    );
    assert_eq!(e.param(), Some("messages[0].content[0].image_url.url"));
    let e = request_err(
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]}),
        &opts,
    );
    assert_eq!(e.param(), Some("messages[0].content[0].image_url.url"));
    let e = request_err(
        json!({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]}),
        &opts,
    );
    assert_eq!(
        e.param(),
        Some("messages[1].tool_calls[0].function.arguments")
    );
    let e = request_err(
        json!({"messages": [{"role": "wizard", "content": "a"}]}),
        &opts,
    );
    assert_eq!(e.param(), Some("messages[0].role"));
    assert!(request_from_chat(b"not json", &opts).is_err());
    let reject = RequestOptions::new("m").unsupported(Unsupported::Reject);
    for (k, v) in [
        ("logprobs", json!(true)),
        ("audio", json!({})),
        ("parallel_tool_calls", json!(false)),
        ("prediction", json!({})),
    ] {
        let mut body = json!({"messages": [{"role": "user", "content": "x"}]});
        body[k] = v.clone();
        assert_eq!(request_err(body.clone(), &reject).param(), Some(k));
        assert!(
            request_from_chat(body.to_string().as_bytes(), &opts).is_ok(),
            "dropped by default: {k}"
        );
    }
}

#[test]
fn paths() {
    assert_eq!(
        path("gemini-2.5-pro", false),
        "/v1beta/models/gemini-2.5-pro:generateContent"
    );
    assert_eq!(
        path("models/gemini-2.5-pro", true),
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    );
    assert_eq!(
        path("a/b?c#d:e", false),
        "/v1beta/models/a%2Fb%3Fc%23d%3Ae:generateContent"
    );
}

#[test]
fn errors_keep_their_status() {
    let e = error_to_chat(StatusCode::BAD_GATEWAY, b"<html>oops</html>");
    assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(e.kind(), "api_error");
    let long = vec![b'x'; 10_000];
    let e = error_to_chat(StatusCode::FORBIDDEN, &long);
    assert_eq!(e.kind(), "permission_error");
    assert!(e.message().len() < 300);
    assert_eq!(
        error_to_chat(StatusCode::UNAUTHORIZED, b"{}").kind(),
        "authentication_error"
    );
    assert_eq!(
        error_to_chat(StatusCode::NOT_FOUND, b"").kind(),
        "not_found_error"
    );
    let e = response_to_chat(b"{not json", "m", 0).unwrap_err();
    assert_eq!(
        (e.status(), e.kind(), e.code()),
        (
            StatusCode::BAD_GATEWAY,
            "api_error",
            Some("bad_upstream_response")
        )
    );
}

// --- streams: ends ---

#[test]
fn a_stream_without_its_finish_is_truncated() {
    let sse = "data: {\"candidates\":[{\"content\":{\"parts\":[{\"text\":\"Hi\"}]}}],\"usageMetadata\":{\"promptTokenCount\":2,\"candidatesTokenCount\":1}}\n\n";
    let (events, usage) = stream(sse, true);
    assert!(usage.truncated);
    assert_eq!(usage.output, 1);
    assert_eq!(events.len(), 3);
    assert_eq!(events[1]["error"]["type"], "api_error");
    assert_eq!(events[2], "[DONE]");
    // fail() likewise, and never a second [DONE].
    let mut s = ChatStream::new(StreamOptions::new("m"));
    let mut out = Vec::new();
    s.fail("connection reset", &mut out);
    s.finish(&mut out);
    s.fail("again", &mut out);
    let ev = events_of(&out);
    assert_eq!(ev.len(), 2);
    assert_eq!(ev[0]["error"]["message"], "connection reset");
    assert!(s.usage().truncated);
    // An unreadable event.
    let (events, _) = stream("data: {nope\n\n", false);
    assert_eq!(events.len(), 2);
    assert!(events[0].get("error").is_some());
}

fn events_of(out: &[u8]) -> Vec<Value> {
    events(out)
}

#[test]
fn tool_calls_per_stream_are_capped() {
    let mut s = ChatStream::new(StreamOptions::new("m"));
    let mut out = Vec::new();
    let ev = "{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\"}}]}}]}";
    for _ in 0..MAX_TOOL_CALLS + 5 {
        s.event(
            &sse::Event {
                event: "",
                data: ev,
            },
            &mut out,
        );
    }
    s.finish(&mut out);
    let text = String::from_utf8(out).unwrap();
    assert_eq!(text.matches("[DONE]").count(), 1);
    assert_eq!(text.matches("\"tool_calls\"").count(), MAX_TOOL_CALLS);
    assert!(text.contains("more tool calls"));
    let big =
        "{\"candidates\":[{\"index\":4000000000,\"content\":{\"parts\":[{\"text\":\"x\"}]}}]}";
    let mut s = ChatStream::new(StreamOptions::new("m"));
    let mut out = Vec::new();
    s.event(
        &sse::Event {
            event: "",
            data: big,
        },
        &mut out,
    );
    assert!(String::from_utf8(out).unwrap().contains("more candidates"));
}

// --- properties ---

fn all_streams() -> [&'static str; 4] {
    [
        fixture!("stream_text.sse"),
        fixture!("stream_call_then_stop.sse"),
        fixture!("stream_parallel_same_tool.sse"),
        fixture!("stream_error.sse"),
    ]
}

/// Streams compared byte for byte need the same random ids: the
/// fixtures' random parts are replaced.
fn stable(out: Vec<u8>) -> Vec<Value> {
    events(&out)
}

#[test]
fn every_single_byte_cut_and_crlf_gives_the_same_stream() {
    for sse in all_streams() {
        let whole = stable(stream_bytes(&[sse.as_bytes()], true).0);
        let bytes: Vec<&[u8]> = sse.as_bytes().chunks(1).collect();
        assert_eq!(stable(stream_bytes(&bytes, true).0), whole);
        let crlf = sse.replace("\r\n", "\n").replace('\n', "\r\n");
        let bytes: Vec<&[u8]> = crlf.as_bytes().chunks(1).collect();
        assert_eq!(stable(stream_bytes(&bytes, true).0), whole);
    }
}

/// Reassembles a translated stream into (content, reasoning,
/// [(name, arguments)], finish_reason).
fn reassemble(events: &[Value]) -> (String, String, Vec<(String, String)>, String) {
    let (mut content, mut reasoning, mut calls, mut finish) = (
        String::new(),
        String::new(),
        Vec::<(String, String)>::new(),
        String::new(),
    );
    for e in events {
        let Some(choice) = e["choices"].get(0) else {
            continue;
        };
        let d = &choice["delta"];
        content.push_str(d["content"].as_str().unwrap_or(""));
        reasoning.push_str(d["reasoning_content"].as_str().unwrap_or(""));
        for c in d["tool_calls"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap() as usize;
            if calls.len() <= i {
                calls.resize(i + 1, Default::default());
            }
            calls[i]
                .0
                .push_str(c["function"]["name"].as_str().unwrap_or(""));
            calls[i]
                .1
                .push_str(c["function"]["arguments"].as_str().unwrap_or(""));
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = f.to_owned();
        }
    }
    (content, reasoning, calls, finish)
}

fn gemini_parts() -> impl proptest::strategy::Strategy<Value = Vec<(u8, String)>> {
    proptest::collection::vec((0u8..3, "[a-zA-Z0-9 \\n\"\\\\é]{0,12}"), 0..8)
}

fn stream_and_json(
    parts: &[(u8, String)],
    finish: &str,
    prompt: u64,
    per_chunk: u64,
) -> (String, String) {
    // One Gemini event per part, cumulative usage, finish on the last.
    let mut sse = String::new();
    let mut all = Vec::new();
    let n = parts.len().max(1);
    for i in 0..n {
        let part = match parts.get(i) {
            Some((0, t)) => json!({"text": t}),
            Some((1, t)) => json!({"text": t, "thought": true}),
            Some((_, t)) => json!({"functionCall": {"name": "f", "args": {"q": t}}}),
            None => json!({"text": ""}),
        };
        all.push(part.clone());
        let mut ev = json!({"candidates": [{"content": {"role": "model", "parts": [part]}, "index": 0}],
                "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": per_chunk * (i as u64 + 1)}, "responseId": "r"});
        if i + 1 == n {
            ev["candidates"][0]["finishReason"] = json!(finish);
        }
        sse.push_str(&format!("data: {ev}\n\n"));
    }
    let whole = json!({"candidates": [{"content": {"role": "model", "parts": all}, "finishReason": finish, "index": 0}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": per_chunk * n as u64}, "responseId": "r"});
    (sse, whole.to_string())
}

proptest::proptest! {
    #[test]
    fn chunk_boundaries_do_not_matter(which in 0usize..4, cuts in proptest::collection::vec(0usize..4096, 0..12)) {
        let sse = all_streams()[which].as_bytes();
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (sse.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut last = 0;
        for c in cuts {
            pieces.push(&sse[last..c]);
            last = c;
        }
        pieces.push(&sse[last..]);
        proptest::prop_assert_eq!(stable(stream_bytes(&pieces, true).0), stable(stream_bytes(&[sse], true).0));
    }

    #[test]
    fn a_stream_reassembled_is_the_json_answer(parts in gemini_parts(), finish in proptest::sample::select(vec!["STOP", "MAX_TOKENS", "SAFETY", "OTHER"]), prompt in 0u64..1000, per in 0u64..50) {
        let (sse, whole) = stream_and_json(&parts, finish, prompt, per);
        let (events, usage) = stream(&sse, true);
        let (v, json_usage) = chat(&whole);
        let (content, reasoning, calls, fin) = reassemble(&events);
        let msg = &v["choices"][0]["message"];
        proptest::prop_assert_eq!(content, msg["content"].as_str().unwrap_or("").to_owned());
        proptest::prop_assert_eq!(reasoning, msg["reasoning_content"].as_str().unwrap_or("").to_owned());
        let json_calls: Vec<(String, String)> = msg["tool_calls"].as_array().into_iter().flatten()
            .map(|c| (c["function"]["name"].as_str().unwrap().to_owned(), c["function"]["arguments"].as_str().unwrap().to_owned()))
            .collect();
        proptest::prop_assert_eq!(calls, json_calls);
        proptest::prop_assert_eq!(fin, v["choices"][0]["finish_reason"].as_str().unwrap().to_owned());
        proptest::prop_assert_eq!(usage, json_usage);
        let usage_chunk = &events[events.len() - 2];
        proptest::prop_assert_eq!(&usage_chunk["usage"], &v["usage"]);
    }
}
