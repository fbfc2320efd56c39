//! A JWK Set document as a `jwks_uri` may serve it (`[jwt] jwks_uri`, or
//! `JwtHandle::set_jwks`): whatever the bytes, reading it never panics,
//! and a layer built from it holds only keys the document names (each key
//! id in use is one of the document's `kid`s, at most one key per entry).
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::auth::{JwtKeys, JwtLayer};

fuzz_target!(|data: &[u8]| {
    let Ok(doc) = std::str::from_utf8(data) else {
        return;
    };
    let built = JwtLayer::builder()
        .keys(JwtKeys::new().jwks(doc))
        .keys_later()
        .build();
    let Ok(layer) = built else { return };
    let ids = layer.handle().key_ids();
    let parsed: serde_json::Value =
        serde_json::from_str(doc).expect("a document that built keys is JSON");
    let entries = parsed["keys"].as_array().map_or(0, Vec::len);
    assert!(
        ids.len() <= entries,
        "{} keys from {entries} entries",
        ids.len()
    );
    for id in ids.iter().flatten() {
        let named = parsed["keys"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kid"].as_str() == Some(id.as_str()));
        assert!(named, "key id {id} is not in the document");
    }
    // The same document again, through the handle, as a refresh does.
    let _ = layer.handle().set_jwks(doc);
});
