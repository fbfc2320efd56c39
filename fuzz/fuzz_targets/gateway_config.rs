//! `switchyard::gateway::GatewayConfig` from TOML (`from_toml`) and from
//! JSON (serde_json): what parses survives a round trip through its own
//! writer unchanged (`to_toml`, `serde_json::to_string`), and building a
//! `Gateway` from it either works or is a `ConfigError` — never a panic.
//! (Redis, weight sync and active health checks are cleared before the
//! build: they would reach for the network.)
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use switchyard::gateway::{Gateway, GatewayConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, text)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let config = if kind & 1 == 0 {
        match GatewayConfig::from_toml(text) {
            Ok(c) => c,
            Err(_) => return,
        }
    } else {
        match serde_json::from_str::<GatewayConfig>(text) {
            Ok(c) => c,
            Err(_) => return,
        }
    };
    if let Ok(toml) = config.to_toml() {
        let back = GatewayConfig::from_toml(&toml)
            .unwrap_or_else(|e| panic!("to_toml wrote what from_toml refuses: {e}\n{toml}"));
        assert_eq!(back, config, "TOML round trip changed the config:\n{toml}");
    }
    let json = serde_json::to_string(&config).expect("a config serializes to JSON");
    let back: GatewayConfig = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("JSON written that does not read back: {e}\n{json}"));
    assert_eq!(back, config, "JSON round trip changed the config:\n{json}");

    let mut config = config;
    config.redis = None;
    config.weight_sync = None;
    // No files read or kept: a path from the input could be anything.
    config.platform.state_file = None;
    for upstream in config.upstreams.values_mut() {
        upstream.health_check = None;
    }
    let rt = common::runtime();
    let _entered = rt.enter();
    if let Ok(gateway) = Gateway::from_config(config.clone()) {
        // What is in force is what was given.
        assert_eq!(gateway.config(), config);
    }
});
