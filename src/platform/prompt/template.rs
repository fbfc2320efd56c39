//! Templates: chat messages with `{{variable}}` slots, parsed once when the
//! API is built and filled in one pass per request.
//!
//! Filling never looks at what it inserts: a value holding `{{other}}` is
//! text, not a slot. The messages become JSON through `serde_json`, so a
//! value is escaped by construction and cannot leave its string.

use serde_json::{Map, Value};

use super::PromptError;
use super::config::{Role, VersionConfig};

/// The longest variable name.
pub(crate) const MAX_NAME: usize = 64;

/// A version's messages, ready to fill.
#[derive(Debug)]
pub(crate) struct Template {
    messages: Box<[Message]>,
}

#[derive(Debug)]
struct Message {
    role: Role,
    parts: Box<[Part]>,
    /// The length of its text without the values.
    fixed_len: usize,
}

#[derive(Debug)]
enum Part {
    Text(Box<str>),
    /// The variable at this index of the API's variables.
    Slot(usize),
}

/// One piece of a message's text.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Piece<'a> {
    Text(&'a str),
    Slot(&'a str),
}

/// Splits `content` into text and slots. A `{{` that does not open a
/// well-formed slot (`{{`, optional spaces, a name, optional spaces, `}}`)
/// is an error, at its byte offset.
pub(crate) fn parse(content: &str) -> Result<Vec<Piece<'_>>, usize> {
    let mut pieces = Vec::new();
    let mut rest = content;
    let mut offset = 0;
    while let Some(open) = rest.find("{{") {
        if open > 0 {
            pieces.push(Piece::Text(&rest[..open]));
        }
        let after = &rest[open + 2..];
        let close = after.find("}}").ok_or(offset + open)?;
        let name = after[..close].trim_matches(' ');
        if !is_name(name) {
            return Err(offset + open);
        }
        pieces.push(Piece::Slot(name));
        let used = open + 2 + close + 2;
        offset += used;
        rest = &rest[used..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Text(rest));
    }
    Ok(pieces)
}

/// A variable name: an ASCII letter or `_`, then letters, digits or `_`,
/// at most [`MAX_NAME`] bytes.
pub(crate) fn is_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    first_ok && name.len() <= MAX_NAME && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl Template {
    /// Checks `version`'s messages against the API's variable `names` (in
    /// order: a slot refers to its variable by index).
    pub(crate) fn compile(version: &VersionConfig, names: &[&str]) -> Result<Self, PromptError> {
        if version.messages.is_empty() {
            return Err(PromptError::EmptyTemplate {
                version: version.name.clone(),
            });
        }
        let mut messages = Vec::with_capacity(version.messages.len());
        for (index, message) in version.messages.iter().enumerate() {
            let pieces = parse(&message.content).map_err(|at| PromptError::MalformedSlot {
                version: version.name.clone(),
                message: index,
                at,
            })?;
            let mut parts = Vec::with_capacity(pieces.len());
            let mut fixed_len = 0;
            for piece in pieces {
                match piece {
                    Piece::Text(text) => {
                        fixed_len += text.len();
                        parts.push(Part::Text(text.into()));
                    }
                    Piece::Slot(name) => {
                        if message.role != Role::User && !message.allow_variables {
                            return Err(PromptError::SlotNotAllowed {
                                version: version.name.clone(),
                                message: index,
                                role: message.role,
                                slot: name.to_owned(),
                            });
                        }
                        let slot = names.iter().position(|n| *n == name).ok_or_else(|| {
                            PromptError::UnknownSlot {
                                version: version.name.clone(),
                                message: index,
                                slot: name.to_owned(),
                            }
                        })?;
                        parts.push(Part::Slot(slot));
                    }
                }
            }
            messages.push(Message {
                role: message.role,
                parts: parts.into(),
                fixed_len,
            });
        }
        Ok(Self {
            messages: messages.into(),
        })
    }

    /// The messages with `values` (the text of each variable, by index)
    /// in their slots, followed by the caller's `extra` messages.
    pub(crate) fn render(&self, values: &[String], extra: &[Value]) -> Vec<Value> {
        let mut out = Vec::with_capacity(self.messages.len() + extra.len());
        for message in self.messages.iter() {
            let mut content = String::with_capacity(message.fixed_len);
            for part in message.parts.iter() {
                match part {
                    Part::Text(text) => content.push_str(text),
                    Part::Slot(index) => {
                        content.push_str(values.get(*index).map_or("", String::as_str));
                    }
                }
            }
            let mut object = Map::with_capacity(2);
            object.insert("role".to_owned(), Value::from(message.role.as_str()));
            object.insert("content".to_owned(), Value::String(content));
            out.push(Value::Object(object));
        }
        out.extend(extra.iter().cloned());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::prompt::config::TemplateMessage;

    #[test]
    fn parses_slots() {
        assert_eq!(
            parse("Hi {{name}}, {{ city }}!").unwrap(),
            vec![
                Piece::Text("Hi "),
                Piece::Slot("name"),
                Piece::Text(", "),
                Piece::Slot("city"),
                Piece::Text("!"),
            ]
        );
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(
            parse("{{a}}{{b}}").unwrap(),
            vec![Piece::Slot("a"), Piece::Slot("b")]
        );
        // Single braces are text.
        assert_eq!(parse("{a} }}").unwrap(), vec![Piece::Text("{a} }}")]);
    }

    #[test]
    fn refuses_malformed_slots() {
        assert_eq!(parse("x {{name"), Err(2));
        assert_eq!(parse("{{}}"), Err(0));
        assert_eq!(parse("ok {{a}} {{two words}}"), Err(9));
        assert_eq!(parse("{{{a}}}"), Err(0));
        assert_eq!(parse("{{9lives}}"), Err(0));
        assert_eq!(parse("{{\ta}}"), Err(0));
    }

    #[test]
    fn names() {
        assert!(is_name("city"));
        assert!(is_name("_x9"));
        assert!(!is_name(""));
        assert!(!is_name("9x"));
        assert!(!is_name("a-b"));
        assert!(!is_name(&"a".repeat(MAX_NAME + 1)));
    }

    #[test]
    fn renders_in_one_pass() {
        let version = VersionConfig::new("v1", 1)
            .system("Be brief.")
            .user("{{a}} and {{b}}");
        let t = Template::compile(&version, &["a", "b"]).unwrap();
        let out = t.render(&["{{b}}".to_owned(), "\"}]".to_owned()], &[]);
        assert_eq!(
            Value::Array(out),
            serde_json::json!([
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "{{b}} and \"}]"},
            ])
        );
    }

    #[test]
    fn slots_outside_user_messages_need_leave() {
        let refused = VersionConfig::new("v1", 1).system("You help {{name}}.");
        assert!(matches!(
            Template::compile(&refused, &["name"]),
            Err(PromptError::SlotNotAllowed {
                role: Role::System,
                ..
            })
        ));
        let refused = VersionConfig::new("v1", 1).assistant("Sure, {{name}}.");
        assert!(matches!(
            Template::compile(&refused, &["name"]),
            Err(PromptError::SlotNotAllowed {
                role: Role::Assistant,
                ..
            })
        ));
        let allowed = VersionConfig::new("v1", 1)
            .message(TemplateMessage::new(Role::System, "You help {{name}}.").allow_variables());
        assert!(Template::compile(&allowed, &["name"]).is_ok());
    }

    #[test]
    fn unknown_slots_and_empty_templates_are_refused() {
        let v = VersionConfig::new("v1", 1).user("{{town}}");
        assert!(matches!(
            Template::compile(&v, &["city"]),
            Err(PromptError::UnknownSlot { slot, .. }) if slot == "town"
        ));
        assert!(matches!(
            Template::compile(&VersionConfig::new("v1", 1), &[]),
            Err(PromptError::EmptyTemplate { .. })
        ));
    }
}
