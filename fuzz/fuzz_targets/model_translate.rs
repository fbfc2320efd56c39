//! `switchyard::model::providers`: every translation of untrusted bytes.
//!
//! The first byte picks what the rest is fed to:
//!
//! * 0–2: a client's request body, translated to Anthropic, to Gemini, or
//!   from Anthropic Messages to the OpenAI Chat pivot: never a panic, and
//!   a translation that succeeds is one JSON object.
//! * 3–5: an upstream's whole answer (Anthropic, Gemini, OpenAI Chat for a
//!   Messages client), as a 200 and as an error status: never a panic,
//!   JSON out.
//! * 6–9: an upstream's event stream (Anthropic, Gemini, OpenAI Chat to
//!   Messages, OpenAI with its usage chunk hidden) cut at fuzzed points: never a panic; every event written is
//!   JSON or OpenAI's `[DONE]` (the usage hider passes the rest as it
//!   came); a Chat stream has at most one `[DONE]`
//!   and nothing after it; a Messages stream at most one `message_stop`;
//!   the output is the same whatever the cuts (ids aside: Gemini's
//!   tool-call ids are random when the upstream gives none).
#![no_main]

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use switchyard::model::providers::sse::Parser;
use switchyard::model::providers::{
    RequestOptions, StreamMapper, StreamOptions, anthropic, gemini, messages, openai,
};

fn json_object(bytes: &[u8]) {
    let v: serde_json::Value = serde_json::from_slice(bytes).expect("translations write JSON");
    assert!(v.is_object(), "translations write JSON objects");
}

fn mapper(kind: u8) -> Box<dyn StreamMapper> {
    let opts = || StreamOptions::new("m").include_usage(true).created(1);
    match kind {
        6 => Box::new(anthropic::ChatStream::new(opts())),
        7 => Box::new(gemini::ChatStream::new(opts())),
        8 => Box::new(messages::MessagesStream::new("m")),
        _ => Box::new(openai::HideUsage::new()),
    }
}

/// Feeds `data` cut at `cuts` through a parser and the mapper; the output.
fn run(kind: u8, data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut parser = Parser::new(1 << 16);
    let mut m = mapper(kind);
    let mut out = Vec::new();
    let mut at = 0;
    let mut failed = false;
    for &cut in cuts.iter().chain(std::iter::once(&data.len())) {
        let cut = cut.clamp(at, data.len());
        if parser
            .feed(&data[at..cut], |e| m.event(e, &mut out))
            .is_err()
        {
            m.fail("too long", &mut out);
            failed = true;
            break;
        }
        at = cut;
    }
    if !failed {
        parser.finish(|e| m.event(e, &mut out));
        m.finish(&mut out);
    }
    let _ = m.usage();
    out
}

fn check_stream(kind: u8, out: &[u8]) {
    let mut parser = Parser::new(usize::MAX);
    let mut done = 0;
    let mut stops = 0;
    let mut after_done = false;
    parser
        .feed(out, |e| {
            if done > 0 {
                after_done = true;
            }
            if e.data == "[DONE]" {
                done += 1;
            } else if kind != 9 {
                // (HideUsage passes the upstream's other events as they
                // came, JSON or not.)
                let _: serde_json::Value =
                    serde_json::from_str(e.data).expect("every event written is JSON");
            }
            if kind == 8 && e.event == "message_stop" {
                stops += 1;
            }
        })
        .unwrap();
    if kind != 8 {
        assert!(done <= 1 && !after_done, "one [DONE], last");
    }
    assert!(stops <= 1, "one message_stop");
}

/// The events of a stream, parsed, without their `id` fields (Gemini's
/// tool-call ids are random when the upstream gives none).
fn without_ids(out: &[u8]) -> Vec<(String, serde_json::Value)> {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(map) => {
                map.shift_remove("id");
                map.values_mut().for_each(strip);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut events = Vec::new();
    let mut parser = Parser::new(usize::MAX);
    parser
        .feed(out, |e| {
            let mut v = serde_json::from_str(e.data)
                .unwrap_or(serde_json::Value::String(e.data.to_owned()));
            strip(&mut v);
            events.push((e.event.to_owned(), v));
        })
        .unwrap();
    events
}

fuzz_target!(|input: &[u8]| {
    let Some((&kind, rest)) = input.split_first() else {
        return;
    };
    let kind = kind % 10;
    let opts = RequestOptions::new("m");
    match kind {
        0 => {
            if let Ok(t) = anthropic::request_from_chat(rest, &opts) {
                json_object(&t.body);
            }
        }
        1 => {
            if let Ok(t) = gemini::request_from_chat(rest, &opts) {
                json_object(&t.body);
            }
        }
        2 => {
            if let Ok(t) = messages::request_to_chat(rest, &opts) {
                json_object(&t.body);
            }
        }
        3..=5 => {
            let ok = match kind {
                3 => anthropic::response_to_chat(rest, "m", 1).map(|r| r.0).ok(),
                4 => gemini::response_to_chat(rest, "m", 1).map(|r| r.0).ok(),
                _ => messages::response_from_chat(rest, "m").map(|r| r.0).ok(),
            };
            if let Some(json) = ok {
                json_object(&json);
            }
            let status = StatusCode::TOO_MANY_REQUESTS;
            match kind {
                3 => json_object(
                    &serde_json::to_vec(&anthropic::error_to_chat(status, rest)).unwrap(),
                ),
                4 => {
                    json_object(&serde_json::to_vec(&gemini::error_to_chat(status, rest)).unwrap())
                }
                _ => json_object(&messages::error_from_chat(status, rest).to_json()),
            }
        }
        _ => {
            // The first bytes place up to four cuts; the rest is the stream.
            let (cuts, data) = rest.split_at(rest.len().min(4));
            let cuts: Vec<usize> = {
                let mut c: Vec<usize> = cuts
                    .iter()
                    .map(|&b| usize::from(b) * data.len() / 256)
                    .collect();
                c.sort_unstable();
                c
            };
            let whole = run(kind, data, &[]);
            check_stream(kind, &whole);
            assert_eq!(
                without_ids(&run(kind, data, &cuts)),
                without_ids(&whole),
                "the same output whatever the cuts"
            );
        }
    }
});
