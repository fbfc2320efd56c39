use super::request::*;
use super::response::*;
use super::stream::*;
use super::*;
use crate::model::openai::OpenAiError;
use crate::model::providers::{
    RequestOptions, StreamMapper, StreamOptions, Unsupported, Usage, sse,
};
use http::StatusCode;
use serde_json::{Value, json};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!(
            "../../../../tests/fixtures/providers/anthropic/",
            $name
        ))
    };
}

fn opts() -> StreamOptions {
    StreamOptions::new("gpt-claude")
        .created(1_700_000_000)
        .include_usage(true)
}

/// Feeds `pieces` through a parser and a mapper.
fn run(pieces: &[&[u8]], opts: StreamOptions) -> (Vec<u8>, Usage) {
    let mut parser = sse::Parser::new(1 << 20);
    let mut mapper = ChatStream::new(opts);
    let mut out = Vec::new();
    for piece in pieces {
        parser.feed(piece, |e| mapper.event(e, &mut out)).unwrap();
    }
    parser.finish(|e| mapper.event(e, &mut out));
    mapper.finish(&mut out);
    (out, mapper.usage())
}

/// The `data:` of each event, parsed (`[DONE]` as a string).
fn events(out: &[u8]) -> Vec<Value> {
    let mut parser = sse::Parser::new(1 << 20);
    let mut seen = Vec::new();
    parser
        .feed(out, |e| {
            seen.push(if e.data == "[DONE]" {
                Value::String("[DONE]".into())
            } else {
                serde_json::from_str(e.data).unwrap()
            })
        })
        .unwrap();
    seen
}

fn translate(body: &str) -> Value {
    let t = request_from_chat(body.as_bytes(), &RequestOptions::new("claude-sonnet-4-5")).unwrap();
    serde_json::from_slice(&t.body).unwrap()
}

fn answer(body: &str) -> (Value, Usage) {
    let (json, usage) = response_to_chat(body.as_bytes(), "gpt-claude", 1_700_000_000).unwrap();
    (serde_json::from_slice(&json).unwrap(), usage)
}

/// A reassembled stream: content, reasoning, tool calls by index
/// (id, name, arguments), finish reason, usage chunk.
#[derive(Debug, Default, PartialEq)]
struct Reassembled {
    content: String,
    reasoning: String,
    tools: Vec<(String, String, String)>,
    thinking_blocks: Vec<Value>,
    finish: Option<String>,
    usage: Option<Value>,
    errors: usize,
    done: usize,
}

fn reassemble(out: &[u8]) -> Reassembled {
    let mut r = Reassembled::default();
    for e in events(out) {
        if e == "[DONE]" {
            r.done += 1;
            continue;
        }
        if e.get("error").is_some() {
            r.errors += 1;
            continue;
        }
        if let Some(u) = e.get("usage") {
            r.usage = Some(u.clone());
        }
        let Some(choice) = e["choices"].get(0) else {
            continue;
        };
        let d = &choice["delta"];
        if let Some(c) = d["content"].as_str() {
            r.content.push_str(c);
        }
        if let Some(c) = d["reasoning_content"].as_str() {
            r.reasoning.push_str(c);
        }
        if let Some(b) = d["thinking_blocks"].as_array() {
            r.thinking_blocks.extend(b.iter().cloned());
        }
        for call in d["tool_calls"].as_array().into_iter().flatten() {
            let i = call["index"].as_u64().unwrap() as usize;
            assert!(i <= r.tools.len(), "tool index {i} skips one");
            if i == r.tools.len() {
                r.tools.push(Default::default());
            }
            let t = &mut r.tools[i];
            if let Some(id) = call["id"].as_str() {
                t.0 = id.into();
            }
            if let Some(n) = call["function"]["name"].as_str() {
                t.1 = n.into();
            }
            t.2.push_str(call["function"]["arguments"].as_str().unwrap());
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            r.finish = Some(f.into());
        }
    }
    r
}

/// The same fields of a translated JSON answer.
fn reassembled_answer(v: &Value) -> Reassembled {
    let m = &v["choices"][0]["message"];
    Reassembled {
        content: m["content"].as_str().unwrap_or("").into(),
        reasoning: m["reasoning_content"].as_str().unwrap_or("").into(),
        tools: m["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                (
                    c["id"].as_str().unwrap().into(),
                    c["function"]["name"].as_str().unwrap().into(),
                    c["function"]["arguments"].as_str().unwrap().into(),
                )
            })
            .collect(),
        thinking_blocks: m["thinking_blocks"].as_array().cloned().unwrap_or_default(),
        finish: v["choices"][0]["finish_reason"].as_str().map(Into::into),
        usage: Some(v["usage"].clone()),
        errors: 0,
        done: 1,
    }
}

// === Golden fixtures ===

#[test]
fn responses_match_their_fixtures() {
    for (input, expected) in [
        (
            fixture!("resp_text.json"),
            fixture!("resp_text.expected.json"),
        ),
        (
            fixture!("resp_tool.json"),
            fixture!("resp_tool.expected.json"),
        ),
        (
            fixture!("resp_two_tools.json"),
            fixture!("resp_two_tools.expected.json"),
        ),
        (
            fixture!("resp_thinking.json"),
            fixture!("resp_thinking.expected.json"),
        ),
        (
            fixture!("resp_cached.json"),
            fixture!("resp_cached.expected.json"),
        ),
        (
            fixture!("resp_refusal.json"),
            fixture!("resp_refusal.expected.json"),
        ),
        (
            fixture!("resp_max_tokens.json"),
            fixture!("resp_max_tokens.expected.json"),
        ),
    ] {
        let expected: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(answer(input).0, expected);
    }
}

#[test]
fn requests_match_their_fixtures() {
    for (input, expected) in [
        (
            fixture!("req_full.json"),
            fixture!("req_full.expected.json"),
        ),
        (
            fixture!("req_reasoning.json"),
            fixture!("req_reasoning.expected.json"),
        ),
        (
            fixture!("req_json_schema.json"),
            fixture!("req_json_schema.expected.json"),
        ),
    ] {
        let expected: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(translate(input), expected);
    }
    let t = request_from_chat(
        fixture!("req_full.json").as_bytes(),
        &RequestOptions::new("m"),
    )
    .unwrap();
    assert!(t.stream && t.include_usage);
    let t = request_from_chat(
        fixture!("req_reasoning.json").as_bytes(),
        &RequestOptions::new("m"),
    )
    .unwrap();
    assert!(!t.stream && !t.include_usage);
}

const STREAMS: [(&str, &str); 5] = [
    (
        fixture!("stream_text.sse"),
        fixture!("stream_text.expected.sse"),
    ),
    (
        fixture!("stream_text_tool.sse"),
        fixture!("stream_text_tool.expected.sse"),
    ),
    (
        fixture!("stream_two_tools.sse"),
        fixture!("stream_two_tools.expected.sse"),
    ),
    (
        fixture!("stream_thinking.sse"),
        fixture!("stream_thinking.expected.sse"),
    ),
    (
        fixture!("stream_overloaded.sse"),
        fixture!("stream_overloaded.expected.sse"),
    ),
];

#[test]
fn streams_match_their_fixtures() {
    for (input, expected) in STREAMS {
        let (out, _) = run(&[input.as_bytes()], opts());
        assert_eq!(events(&out), events(expected.as_bytes()));
    }
}

// === Peers' bugs ===

#[test]
fn tool_index_is_contiguous_not_the_block_index() {
    // A text block (Anthropic index 0) before the tool (index 1).
    let r = reassemble(&run(&[fixture!("stream_text_tool.sse").as_bytes()], opts()).0);
    assert_eq!(r.tools.len(), 1);
    assert_eq!(r.tools[0].1, "get_weather");
    // text, tool, text, tool: indexes 0 and 1 (not 1 and 3).
    let stream = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1}}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"a\"}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t1\",\"name\":\"f\",\"input\":{}}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{}\"}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":2,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":2,\"delta\":{\"type\":\"text_delta\",\"text\":\"b\"}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":3,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t2\",\"name\":\"g\",\"input\":{}}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":3,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":1}\"}}\n\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":3}}\n\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let (out, _) = run(&[stream.as_bytes()], opts());
    let indexes: Vec<u64> = events(&out)
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"][0]["index"].as_u64())
        .collect();
    assert_eq!(indexes, [0, 0, 1, 1]);
    let r = reassemble(&out);
    assert_eq!(r.content, "ab");
    assert_eq!(
        r.tools,
        [
            ("t1".into(), "f".into(), "{}".into()),
            ("t2".into(), "g".into(), "{\"x\":1}".into())
        ]
    );
    assert_eq!(r.finish.as_deref(), Some("tool_calls"));
}

#[test]
fn streamed_arguments_have_no_empty_object_prefix() {
    let r = reassemble(&run(&[fixture!("stream_text_tool.sse").as_bytes()], opts()).0);
    assert_eq!(r.tools[0].2, "{\"location\": \"San Francisco, CA\"}");
    let r = reassemble(&run(&[fixture!("stream_two_tools.sse").as_bytes()], opts()).0);
    for (_, _, args) in &r.tools {
        assert!(!args.starts_with("{}"), "{args}");
        serde_json::from_str::<Value>(args).unwrap();
    }
    assert_eq!(r.tools[1].2, "{\"timezone\": \"Europe/Paris\"}");
}

#[test]
fn cached_tokens_count_in_prompt_tokens() {
    let (v, usage) = answer(fixture!("resp_cached.json"));
    assert_eq!(usage.input, 21 + 188_086 + 1500);
    assert_eq!(
        (usage.cached_read, usage.cache_write, usage.output),
        (1500, 188_086, 393)
    );
    assert_eq!(v["usage"]["prompt_tokens"], 21 + 188_086 + 1500);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 1500);
    assert_eq!(v["usage"]["total_tokens"], 21 + 188_086 + 1500 + 393);
    let u = usage_from_object(br#"{"input_tokens":3,"cache_read_input_tokens":5,"cache_creation_input_tokens":7,"output_tokens":2}"#).unwrap();
    assert_eq!(
        (u.input, u.cached_read, u.cache_write, u.output, u.reasoning),
        (15, 5, 7, 2, 0)
    );
    assert_eq!(usage_from_object(b"[1]"), None);
    // Streamed: the cache read of message_start counts too.
    let (out, usage) = run(&[fixture!("stream_two_tools.sse").as_bytes()], opts());
    assert_eq!(
        (usage.input, usage.cached_read, usage.output),
        (700, 200, 120)
    );
    assert_eq!(reassemble(&out).usage.unwrap()["prompt_tokens"], 700);
}

#[test]
fn thinking_signature_round_trips() {
    let (v, _) = answer(fixture!("resp_thinking.json"));
    let mut assistant = v["choices"][0]["message"].clone();
    // Clients send back what they got, `reasoning_content` included.
    assistant["content"] = json!("The answer is 42.");
    let request = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "What is the answer?"},
            assistant,
            {"role": "user", "content": "Why?"},
        ],
        "reasoning_effort": "low",
    });
    let body = translate(&request.to_string());
    let content = &body["messages"][1]["content"];
    assert_eq!(
        content[0],
        json!({"type": "thinking", "thinking": "Let me analyze this step by step...",
               "signature": "WaUjzkypQ2mUEVM36O2TxuC06KN8xyfbJwyem2dw3URve/op91XWHOEBLLqIOMfFG/UvLEczmEsUjavL"})
    );
    assert_eq!(content[1]["type"], "redacted_thinking");
    assert_eq!(
        content[2],
        json!({"type": "text", "text": "The answer is 42."})
    );
    // Streamed: the accumulated thinking_blocks are what goes back.
    let r = reassemble(&run(&[fixture!("stream_thinking.sse").as_bytes()], opts()).0);
    let request = json!({
        "model": "m",
        "messages": [
            {"role": "user", "content": "27 * 453?"},
            {"role": "assistant", "content": r.content, "thinking_blocks": r.thinking_blocks},
        ],
    });
    let body = translate(&request.to_string());
    let first = &body["messages"][1]["content"][0];
    assert_eq!(first["type"], "thinking");
    assert_eq!(first["thinking"], r.reasoning);
    assert_eq!(
        first["signature"],
        "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"
    );
}

#[test]
fn usage_is_recorded_without_include_usage() {
    let (out, usage) = run(
        &[fixture!("stream_text.sse").as_bytes()],
        StreamOptions::new("m").created(1),
    );
    let r = reassemble(&out);
    assert_eq!(r.usage, None);
    assert_eq!(r.done, 1);
    assert_eq!(
        (usage.input, usage.output, usage.truncated),
        (25, 15, false)
    );
}

#[test]
fn a_stream_cut_after_message_start_keeps_its_input_tokens_truncated() {
    let text = fixture!("stream_text.sse");
    let cut = text.find("event: content_block_start").unwrap();
    let (out, usage) = run(&[&text.as_bytes()[..cut]], opts());
    assert_eq!((usage.input, usage.output, usage.truncated), (25, 1, true));
    let r = reassemble(&out);
    assert_eq!((r.errors, r.done), (1, 1));
    // The same with `fail`.
    let mut parser = sse::Parser::new(1 << 20);
    let mut mapper = ChatStream::new(opts());
    let mut out = Vec::new();
    parser
        .feed(&text.as_bytes()[..cut], |e| mapper.event(e, &mut out))
        .unwrap();
    mapper.fail("connection reset", &mut out);
    mapper.fail("again", &mut out);
    mapper.finish(&mut out);
    let r = reassemble(&out);
    assert_eq!((r.errors, r.done), (1, 1));
    assert!(mapper.usage().truncated);
    assert_eq!(mapper.usage().input, 25);
    assert!(String::from_utf8(out).unwrap().contains("connection reset"));
}

#[test]
fn a_mid_stream_error_gives_an_error_chunk_and_one_done() {
    let (out, usage) = run(&[fixture!("stream_overloaded.sse").as_bytes()], opts());
    let e = events(&out);
    assert_eq!(e.len(), 4);
    assert_eq!(
        e[2],
        json!({"error": {"message": "Overloaded", "type": "server_error", "param": null, "code": null}})
    );
    assert_eq!(e[3], "[DONE]");
    assert!(usage.truncated);
    assert_eq!(usage.input, 40);
    // A complete stream never gets a second [DONE] from finish or fail.
    let mut parser = sse::Parser::new(1 << 20);
    let mut mapper = ChatStream::new(opts());
    let mut out = Vec::new();
    parser
        .feed(fixture!("stream_text.sse").as_bytes(), |e| {
            mapper.event(e, &mut out)
        })
        .unwrap();
    mapper.finish(&mut out);
    mapper.fail("late", &mut out);
    let r = reassemble(&out);
    assert_eq!((r.errors, r.done), (0, 1));
    assert!(!mapper.usage().truncated);
}

// === Requests ===

fn translate_with(body: Value, unsupported: Unsupported) -> Result<Value, OpenAiError> {
    let opts = RequestOptions::new("m").unsupported(unsupported);
    request_from_chat(body.to_string().as_bytes(), &opts)
        .map(|t| serde_json::from_slice(&t.body).unwrap())
}

fn with(extra: Value) -> Value {
    let mut body = json!({"model": "x", "messages": [{"role": "user", "content": "hi"}],
                          "tools": [{"type": "function", "function": {"name": "f"}}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

#[test]
fn tool_choices() {
    let choice = |extra: Value| {
        translate_with(with(extra), Unsupported::Drop).unwrap()["tool_choice"].clone()
    };
    assert_eq!(
        choice(json!({"tool_choice": "auto"})),
        json!({"type": "auto"})
    );
    assert_eq!(
        choice(json!({"tool_choice": "none"})),
        json!({"type": "none"})
    );
    assert_eq!(
        choice(json!({"tool_choice": "required"})),
        json!({"type": "any"})
    );
    assert_eq!(
        choice(json!({"tool_choice": {"type": "function", "function": {"name": "f"}}})),
        json!({"type": "tool", "name": "f"})
    );
    assert_eq!(
        choice(json!({"parallel_tool_calls": false})),
        json!({"type": "auto", "disable_parallel_tool_use": true})
    );
    assert_eq!(
        choice(json!({"tool_choice": "required", "parallel_tool_calls": false})),
        json!({"type": "any", "disable_parallel_tool_use": true})
    );
    assert_eq!(choice(json!({"parallel_tool_calls": true})), Value::Null);
    assert_eq!(choice(json!({})), Value::Null);
    // No tools: no tool choice.
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required"});
    assert_eq!(
        translate_with(body, Unsupported::Drop)
            .unwrap()
            .get("tool_choice"),
        None
    );
    let e =
        translate_with(with(json!({"tool_choice": "sometimes"})), Unsupported::Drop).unwrap_err();
    assert_eq!(e.param(), Some("tool_choice"));
}

#[test]
fn what_anthropic_cannot_honour_is_dropped_or_refused() {
    for (field, value) in [
        ("n", json!(2)),
        ("logprobs", json!(true)),
        ("top_logprobs", json!(3)),
        ("presence_penalty", json!(0.5)),
        ("frequency_penalty", json!(-1)),
        ("logit_bias", json!({"50256": -100})),
        ("seed", json!(7)),
        ("audio", json!({"voice": "alloy"})),
        ("modalities", json!(["text", "audio"])),
        ("prediction", json!({"type": "content", "content": "x"})),
    ] {
        let body = with(json!({ field: value }));
        let dropped = translate_with(body.clone(), Unsupported::Drop).unwrap();
        assert_eq!(dropped.get(field), None);
        let e = translate_with(body, Unsupported::Reject).unwrap_err();
        assert_eq!(
            (e.status(), e.param()),
            (StatusCode::BAD_REQUEST, Some(field))
        );
    }
    // Neutral values pass even when refusing.
    let neutral = with(
        json!({"n": 1, "logprobs": false, "presence_penalty": 0, "frequency_penalty": 0.0,
                              "logit_bias": {}, "modalities": ["text"], "seed": null}),
    );
    translate_with(neutral, Unsupported::Reject).unwrap();
    // temperature: clamped or refused.
    let hot = with(json!({"temperature": 1.7}));
    assert_eq!(
        translate_with(hot.clone(), Unsupported::Drop).unwrap()["temperature"],
        1.0
    );
    let e = translate_with(hot, Unsupported::Reject).unwrap_err();
    assert_eq!(e.param(), Some("temperature"));
    // json_object: dropped or refused; text: nothing.
    let obj = with(json!({"response_format": {"type": "json_object"}}));
    assert_eq!(
        translate_with(obj.clone(), Unsupported::Drop).unwrap()["tools"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(
        translate_with(obj, Unsupported::Reject)
            .unwrap_err()
            .param(),
        Some("response_format")
    );
    translate_with(
        with(json!({"response_format": {"type": "text"}})),
        Unsupported::Reject,
    )
    .unwrap();
    // Thinking with a forced tool: thinking goes, or the request is refused.
    let forced = with(json!({"reasoning_effort": "high", "tool_choice": "required"}));
    assert_eq!(
        translate_with(forced.clone(), Unsupported::Drop)
            .unwrap()
            .get("thinking"),
        None
    );
    assert_eq!(
        translate_with(forced, Unsupported::Reject)
            .unwrap_err()
            .param(),
        Some("reasoning_effort")
    );
    // Thinking with temperature or top_p: not sent (1 passes).
    let t = with(
        json!({"reasoning_effort": "low", "temperature": 0.2, "top_p": 0.5, "max_tokens": 8000}),
    );
    let v = translate_with(t.clone(), Unsupported::Drop).unwrap();
    assert_eq!((v.get("temperature"), v.get("top_p")), (None, None));
    assert_eq!(v["max_tokens"], 8000);
    assert_eq!(
        v["thinking"],
        json!({"type": "enabled", "budget_tokens": 1024})
    );
    assert_eq!(
        translate_with(t, Unsupported::Reject).unwrap_err().param(),
        Some("temperature")
    );
    translate_with(
        with(json!({"reasoning_effort": "minimal", "temperature": 1})),
        Unsupported::Reject,
    )
    .unwrap();
}

#[test]
fn max_tokens_come_from_the_client_or_the_default() {
    let v = |extra: Value| {
        translate_with(with(extra), Unsupported::Drop).unwrap()["max_tokens"].clone()
    };
    assert_eq!(v(json!({})), 4096);
    assert_eq!(v(json!({"max_tokens": 100})), 100);
    assert_eq!(
        v(json!({"max_tokens": 100, "max_completion_tokens": 200})),
        200
    );
    assert_eq!(
        v(json!({"max_tokens": 100, "reasoning_effort": "high"})),
        16484
    );
    let opts = RequestOptions::new("m").default_max_tokens(1000);
    let t = request_from_chat(br#"{"messages":[{"role":"user","content":"x"}]}"#, &opts).unwrap();
    assert_eq!(
        serde_json::from_slice::<Value>(&t.body).unwrap()["max_tokens"],
        1000
    );
}

#[test]
fn malformed_requests_name_the_parameter() {
    let param =
        |body: &str| request_from_chat(body.as_bytes(), &RequestOptions::new("m")).unwrap_err();
    let e = param(r#"{"model":"x"}"#);
    assert_eq!(
        (e.status(), e.param()),
        (StatusCode::BAD_REQUEST, Some("messages"))
    );
    assert_eq!(param(r#"{"messages":{}}"#).param(), Some("messages"));
    assert_eq!(param(r#"{"messages":[]}"#).param(), Some("messages"));
    assert_eq!(
        param(r#"{"messages":[{"role":"user","content":"a"},{"content":"b"}]}"#).param(),
        Some("messages[1].role")
    );
    assert_eq!(
        param(r#"{"messages":[{"role":"user","content":7}]}"#).param(),
        Some("messages[0]")
    );
    assert_eq!(
        param(r#"{"messages":[{"role":"robot","content":"a"}]}"#).param(),
        Some("messages[0].role")
    );
    assert_eq!(
        param(r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/png,abc"}}]}]}"#).param(),
        Some("messages[0].content[0].image_url")
    );
    assert_eq!(
        param(r#"{"messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"image_url","image_url":{"url":"ftp://x"}}]}]}"#).param(),
        Some("messages[0].content[1].image_url")
    );
    for args in [r#""[1]""#, r#""{\"a\":""#, r#""7""#, r#""{} x""#] {
        let body = format!(
            r#"{{"messages":[{{"role":"user","content":"a"}},{{"role":"assistant","tool_calls":[{{"id":"1","type":"function","function":{{"name":"f","arguments":"{{}}"}}}},{{"id":"2","type":"function","function":{{"name":"f","arguments":{args}}}}}]}}]}}"#
        );
        assert_eq!(
            param(&body).param(),
            Some("messages[1].tool_calls[1].function.arguments"),
            "{body}"
        );
    }
    assert_eq!(
        param(r#"{"messages":[{"role":"tool","content":"a"}]}"#).param(),
        Some("messages[0].tool_call_id")
    );
    assert_eq!(param(r#"[1,2]"#).status(), StatusCode::BAD_REQUEST);
    let e = request_from_chat(b"{\"messages\":\"\xff\"}", &RequestOptions::new("m")).unwrap_err();
    assert_eq!(
        (e.status(), e.code()),
        (StatusCode::BAD_REQUEST, Some("invalid_encoding"))
    );
    assert_eq!(
        param(r#"{"messages":[{"role":"user","content":"a"}],"reasoning_effort":"max"}"#).param(),
        Some("reasoning_effort")
    );
}

#[test]
fn a_leading_assistant_message_and_merged_turns_pass() {
    let v = translate(
        r#"{"messages":[{"role":"assistant","content":"Hello"},{"role":"user","content":"a"},{"role":"user","content":[{"type":"text","text":"b"}]},{"role":"system","content":"late system"}]}"#,
    );
    assert_eq!(
        v["messages"],
        json!([
            {"role": "assistant", "content": [{"type": "text", "text": "Hello"}]},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ])
    );
    assert_eq!(
        v["system"],
        json!([{"type": "text", "text": "late system"}])
    );
}

// === Answers ===

#[test]
fn the_json_tool_answers_as_content() {
    let body = br#"{"id":"msg_j","type":"message","role":"assistant","content":[{"type":"tool_use","id":"toolu_9","name":"switchyard_json_response","input":{"name":"Ada","born":1815}}],"stop_reason":"tool_use","usage":{"input_tokens":5,"output_tokens":9}}"#;
    let (v, _) = answer(std::str::from_utf8(body).unwrap());
    let m = &v["choices"][0]["message"];
    assert_eq!(m["content"], r#"{"name":"Ada","born":1815}"#);
    assert_eq!(m.get("tool_calls"), None);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let stream = concat!(
        "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_j\",\"usage\":{\"input_tokens\":5,\"output_tokens\":1}}}\n\n",
        "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_9\",\"name\":\"switchyard_json_response\",\"input\":{}}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"name\\\":\\\"Ada\\\",\"}}\n\n",
        "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"\\\"born\\\":1815}\"}}\n\n",
        "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":9}}\n\n",
        "data: {\"type\":\"message_stop\"}\n\n",
    );
    let r = reassemble(&run(&[stream.as_bytes()], opts()).0);
    assert_eq!(r.content, r#"{"name":"Ada","born":1815}"#);
    assert!(r.tools.is_empty());
    assert_eq!(r.finish.as_deref(), Some("stop"));
}

#[test]
fn unreadable_answers_are_bad_gateway() {
    for body in [
        &b"<html>oops</html>"[..],
        b"{\"id\":\"x\"}",
        b"{\"content\":7}",
    ] {
        let e = response_to_chat(body, "m", 0).unwrap_err();
        assert_eq!(
            (e.status(), e.kind(), e.code()),
            (
                StatusCode::BAD_GATEWAY,
                "api_error",
                Some("bad_upstream_response")
            )
        );
    }
}

#[test]
fn errors_keep_their_status() {
    let err = |status: u16, kind: &str| {
        let body = format!(
            r#"{{"type":"error","error":{{"type":"{kind}","message":"m {kind}"}},"request_id":"req_1"}}"#
        );
        error_to_chat(StatusCode::from_u16(status).unwrap(), body.as_bytes())
    };
    for (status, kind, to, code) in [
        (400, "invalid_request_error", "invalid_request_error", None),
        (401, "authentication_error", "authentication_error", None),
        (403, "permission_error", "permission_error", None),
        (
            404,
            "not_found_error",
            "invalid_request_error",
            Some("not_found"),
        ),
        (
            413,
            "request_too_large",
            "invalid_request_error",
            Some("request_too_large"),
        ),
        (
            429,
            "rate_limit_error",
            "rate_limit_error",
            Some("rate_limit_exceeded"),
        ),
        (500, "api_error", "api_error", Some("server_error")),
        (
            529,
            "overloaded_error",
            "server_error",
            Some("server_is_overloaded"),
        ),
        (418, "teapot_error", "invalid_request_error", None),
        (503, "mystery", "api_error", None),
    ] {
        let e = err(status, kind);
        assert_eq!(e.status().as_u16(), status);
        assert_eq!(
            (e.kind(), e.code(), e.message()),
            (to, code, &*format!("m {kind}"))
        );
    }
    let long = format!("<html>{}</html>", "x".repeat(10_000));
    let e = error_to_chat(StatusCode::BAD_GATEWAY, long.as_bytes());
    assert_eq!(
        (e.status(), e.kind()),
        (StatusCode::BAD_GATEWAY, "api_error")
    );
    assert!(e.message().len() < 300, "{}", e.message());
    let e = error_to_chat(
        StatusCode::from_u16(529).unwrap(),
        "é".repeat(150).as_bytes(),
    );
    assert_eq!(e.status().as_u16(), 529);
    assert!(e.message().len() < 300);
    assert_eq!(
        error_to_chat(StatusCode::BAD_REQUEST, b"").message(),
        "The upstream answered 400 Bad Request."
    );
}

// === Streams: limits and odd input ===

#[test]
fn streams_are_bounded() {
    let start = "data: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":1}}}\n\n";
    let far = format!(
        "{start}data: {{\"type\":\"content_block_start\",\"index\":{MAX_BLOCKS},\"content_block\":{{\"type\":\"text\",\"text\":\"\"}}}}\n\n"
    );
    let (out, usage) = run(&[far.as_bytes()], opts());
    let r = reassemble(&out);
    assert_eq!((r.errors, r.done, usage.truncated), (1, 1, true));
    let huge = format!(
        "{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"thinking_delta\",\"thinking\":\"{}\"}}}}",
        "t".repeat(MAX_THINKING_BYTES / 2 + 1)
    );
    let mut mapper = ChatStream::new(opts());
    let mut out = Vec::new();
    for data in [
        r#"{"type":"message_start","message":{"id":"m"}}"#,
        r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
        &huge,
        &huge,
        &huge,
    ] {
        mapper.event(&sse::Event { event: "", data }, &mut out);
    }
    let r = reassemble(&out);
    assert_eq!((r.errors, r.done), (1, 1));
    assert_eq!(r.reasoning.len(), MAX_THINKING_BYTES / 2 + 1);
    // Unreadable events end the stream; unknown ones are skipped.
    let mut mapper = ChatStream::new(opts());
    let mut out = Vec::new();
    mapper.event(
        &sse::Event {
            event: "",
            data: r#"{"type":"something_new","x":1}"#,
        },
        &mut out,
    );
    mapper.event(
        &sse::Event {
            event: "ping",
            data: "",
        },
        &mut out,
    );
    assert!(out.is_empty());
    mapper.event(
        &sse::Event {
            event: "",
            data: "not json",
        },
        &mut out,
    );
    let r = reassemble(&out);
    assert_eq!((r.errors, r.done), (1, 1));
}

#[test]
fn stream_usage_reads_a_passed_through_stream() {
    let mut parser = sse::Parser::new(1 << 20);
    let mut u = StreamUsage::new();
    parser
        .feed(fixture!("stream_two_tools.sse").as_bytes(), |e| u.event(e))
        .unwrap();
    u.finish();
    let usage = u.usage();
    assert_eq!(
        (
            usage.input,
            usage.cached_read,
            usage.output,
            usage.truncated
        ),
        (700, 200, 120, false)
    );
    // Without event names, and cut short.
    let mut u = StreamUsage::new();
    u.event(&sse::Event {
        event: "",
        data: r#"{"type":"message_start","message":{"usage":{"input_tokens":4,"cache_creation_input_tokens":6}}}"#,
    });
    u.event(&sse::Event {
        event: "",
        data: r#"{"type":"message_delta","usage":{"output_tokens":3}}"#,
    });
    u.event(&sse::Event {
        event: "",
        data: "garbage",
    });
    u.finish();
    let usage = u.usage();
    assert_eq!(
        (
            usage.input,
            usage.cache_write,
            usage.output,
            usage.truncated
        ),
        (10, 6, 3, true)
    );
}

// === Properties ===

/// An answer, as blocks: thinking, then texts and tool calls in any
/// order.
#[derive(Debug, Clone)]
enum Piece {
    Text(Vec<String>),
    Tool(String, Vec<(String, u32)>),
}

fn answer_strategy()
-> impl proptest::strategy::Strategy<Value = (Option<Vec<String>>, Vec<Piece>, u8, [u64; 4])> {
    use proptest::prelude::*;
    let text = prop::collection::vec("[a-zé \"\\\\\n{}]{1,6}", 1..4);
    let args = prop::collection::vec(("[a-z]{1,4}", 0u32..1000), 0..4);
    let piece = prop_oneof![
        text.clone().prop_map(Piece::Text),
        ("[a-z_]{1,8}", args).prop_map(|(n, a)| Piece::Tool(n, a))
    ];
    (
        prop::option::of(text),
        prop::collection::vec(piece, 0..5),
        0u8..4,
        [0u64..5000, 0u64..5000, 0u64..5000, 1u64..5000],
    )
}

/// The Anthropic JSON answer and the equivalent event stream.
fn answer_and_stream(
    thinking: &Option<Vec<String>>,
    pieces: &[Piece],
    stop: u8,
    counts: [u64; 4],
    json_chunk: usize,
) -> (String, String) {
    let mut blocks = Vec::new();
    let mut events = vec![
        json!({"type": "message_start", "message": {"id": "msg_p", "type": "message", "role": "assistant", "content": [],
        "usage": {"input_tokens": counts[0], "cache_read_input_tokens": counts[1], "cache_creation_input_tokens": counts[2], "output_tokens": 1}}}),
    ];
    let push_block = |events: &mut Vec<Value>, start: Value, deltas: Vec<Value>| {
        let index = events
            .iter()
            .filter(|e| e["type"] == "content_block_start")
            .count();
        events.push(json!({"type": "content_block_start", "index": index, "content_block": start}));
        for d in deltas {
            events.push(json!({"type": "content_block_delta", "index": index, "delta": d}));
        }
        events.push(json!({"type": "content_block_stop", "index": index}));
    };
    if let Some(parts) = thinking {
        blocks.push(json!({"type": "thinking", "thinking": parts.concat(), "signature": "sig"}));
        let mut deltas: Vec<Value> = parts
            .iter()
            .map(|p| json!({"type": "thinking_delta", "thinking": p}))
            .collect();
        deltas.push(json!({"type": "signature_delta", "signature": "sig"}));
        push_block(
            &mut events,
            json!({"type": "thinking", "thinking": ""}),
            deltas,
        );
    }
    let mut tools = 0;
    for (i, p) in pieces.iter().enumerate() {
        match p {
            Piece::Text(parts) => {
                blocks.push(json!({"type": "text", "text": parts.concat()}));
                let deltas = parts
                    .iter()
                    .map(|p| json!({"type": "text_delta", "text": p}))
                    .collect();
                push_block(&mut events, json!({"type": "text", "text": ""}), deltas);
            }
            Piece::Tool(name, args) => {
                tools += 1;
                let input: serde_json::Map<String, Value> =
                    args.iter().map(|(k, v)| (k.clone(), json!(v))).collect();
                let input = Value::Object(input);
                let text = input.to_string();
                blocks.push(json!({"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": input}));
                let chars: Vec<char> = text.chars().collect();
                let deltas = chars
                    .chunks(json_chunk.max(1))
                    .map(|c| json!({"type": "input_json_delta", "partial_json": c.iter().collect::<String>()}))
                    .collect();
                push_block(
                    &mut events,
                    json!({"type": "tool_use", "id": format!("toolu_{i}"), "name": name, "input": {}}),
                    deltas,
                );
            }
        }
    }
    let stop_reason = match stop {
        0 => "end_turn",
        1 => "max_tokens",
        2 => "stop_sequence",
        _ if tools > 0 => "tool_use",
        _ => "end_turn",
    };
    events.push(json!({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": null}, "usage": {"output_tokens": counts[3]}}));
    events.push(json!({"type": "message_stop"}));
    let response = json!({"id": "msg_p", "type": "message", "role": "assistant", "content": blocks, "stop_reason": stop_reason,
        "usage": {"input_tokens": counts[0], "cache_read_input_tokens": counts[1], "cache_creation_input_tokens": counts[2], "output_tokens": counts[3]}});
    let mut sse = String::new();
    for e in events {
        sse.push_str(&format!(
            "event: {}\ndata: {}\n\n",
            e["type"].as_str().unwrap(),
            e
        ));
    }
    (response.to_string(), sse)
}

proptest::proptest! {
    #[test]
    fn any_cut_gives_the_same_output(which in 0usize..5, cuts in proptest::collection::vec(0usize..4000, 0..8), crlf: bool) {
        let mut input = STREAMS[which].0.to_owned();
        if crlf {
            input = input.replace('\n', "\r\n");
        }
        let bytes = input.as_bytes();
        let (whole, whole_usage) = run(&[bytes], opts());
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
        cuts.sort_unstable();
        let mut pieces = Vec::new();
        let mut at = 0;
        for c in cuts {
            pieces.push(&bytes[at..c]);
            at = c;
        }
        pieces.push(&bytes[at..]);
        let (cut, cut_usage) = run(&pieces, opts());
        proptest::prop_assert_eq!(&cut, &whole);
        proptest::prop_assert_eq!(cut_usage, whole_usage);
    }

    #[test]
    fn a_reassembled_stream_is_the_json_answer(
        (thinking, pieces, stop, counts) in answer_strategy(),
        json_chunk in 1usize..6,
    ) {
        let (response, stream) = answer_and_stream(&thinking, &pieces, stop, counts, json_chunk);
        let (json, json_usage) = response_to_chat(response.as_bytes(), "gpt-claude", 1_700_000_000).unwrap();
        let expected = reassembled_answer(&serde_json::from_slice(&json).unwrap());
        let (out, usage) = run(&[stream.as_bytes()], opts());
        let got = reassemble(&out);
        proptest::prop_assert_eq!(got, expected);
        proptest::prop_assert_eq!(usage, json_usage);
        proptest::prop_assert_eq!(usage.input, counts[0] + counts[1] + counts[2]);
    }
}

#[test]
fn every_single_byte_cut_gives_the_same_output() {
    for (input, _) in STREAMS {
        for crlf in [false, true] {
            let input = if crlf {
                input.replace('\n', "\r\n")
            } else {
                input.to_owned()
            };
            let bytes = input.as_bytes();
            let (whole, _) = run(&[bytes], opts());
            let pieces: Vec<&[u8]> = bytes.chunks(1).collect();
            assert_eq!(run(&pieces, opts()).0, whole);
        }
    }
}
