//! A service-discovery file (`discovery = { file = … }`, `FileSource`), as
//! JSON or TOML: whatever the bytes, reading it never panics, a list read
//! names each endpoint once with a weight of at least 1, and an upstream
//! given the list either takes every endpoint of it or refuses it whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard::discovery::{FileFormat, FileSource};
use switchyard::proxy::Upstream;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let format = if first & 1 == 0 {
        FileFormat::Json
    } else {
        FileFormat::Toml
    };
    let Ok(snapshot) = FileSource::parse(text, format) else {
        return;
    };
    let keys: std::collections::HashSet<&str> =
        snapshot.endpoints.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), snapshot.endpoints.len(), "a key listed twice");
    assert!(snapshot.endpoints.iter().all(|(_, e)| e.weight >= 1));
    let upstream = Upstream::new("http://placeholder.invalid:80").unwrap();
    match upstream.set_endpoints(snapshot.endpoints.clone()) {
        Ok(_) => {
            let now = upstream.endpoints();
            assert_eq!(now.len(), snapshot.endpoints.len());
            for ((key, spec), e) in snapshot.endpoints.iter().zip(&now) {
                assert_eq!(&e.key, key);
                assert_eq!(e.weight, spec.weight);
            }
        }
        Err(_) => {
            // Refused whole: the endpoint it was built with is still there.
            let now = upstream.endpoints();
            assert_eq!(now.len(), 1);
            assert_eq!(now[0].key, "http://placeholder.invalid:80");
        }
    }
});
