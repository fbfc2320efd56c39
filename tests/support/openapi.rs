//! OpenAPI 3.1 documents checked by a validator that is not ours:
//! `openapi-spec-validator` from PyPI, in the venv `.ci/sdk-venv` makes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use serde_json::Value;

/// The venv's Python (`SWITCHYARD_PYTHON` overrides it), with the OpenAI
/// and Anthropic SDKs and openapi-spec-validator. `None` when it is
/// missing and `SWITCHYARD_REQUIRE_SDK` is not `1` (CI sets it).
pub fn python() -> Option<PathBuf> {
    let python = std::env::var_os("SWITCHYARD_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/sdk-venv/bin/python"),
        PathBuf::from,
    );
    if python.exists() {
        return Some(python);
    }
    let why = format!(
        "{} is missing: run .ci/sdk-venv (or set SWITCHYARD_PYTHON)",
        python.display()
    );
    if std::env::var("SWITCHYARD_REQUIRE_SDK").as_deref() == Ok("1") {
        panic!("SWITCHYARD_REQUIRE_SDK=1 but {why}");
    }
    eprintln!("skipped: {why}");
    None
}

/// Fails the test unless `doc` is a valid OpenAPI 3.1 document, as
/// `openapi-spec-validator` (its 3.1 validator, schemas included) says.
/// Skipped, with a line on stderr, where the venv is missing outside CI.
pub fn assert_valid_31(doc: &Value) {
    assert_eq!(
        doc["openapi"].as_str().map(|v| &v[..4]),
        Some("3.1."),
        "{doc}"
    );
    let Some(python) = python() else {
        return;
    };
    let mut child = Command::new(python)
        .args([
            "-c",
            "import json, sys\n\
             from openapi_spec_validator import validate, OpenAPIV31SpecValidator\n\
             validate(json.load(sys.stdin), cls=OpenAPIV31SpecValidator)\n",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the validator starts");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(doc.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "not a valid OpenAPI 3.1 document:\n{}\n{doc:#}",
        String::from_utf8_lossy(&out.stderr)
    );
}
