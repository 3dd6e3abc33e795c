//! `${ENV_VAR}` expansion in every string value of the configuration (SPEC §3).
//!
//! Runs on the parsed document before typed deserialization, so it reaches strings at any depth:
//! plain values, array elements, inline tables, arrays of tables. Keys are never expanded.
//!
//! Syntax:
//! - `${NAME}` is replaced by the variable's value; `NAME` is `[A-Za-z_][A-Za-z0-9_]*`.
//!   A variable that is set but empty expands to the empty string.
//! - `$${` is a literal `${` (so `$${HOME}` stays `${HOME}`).
//! - Any other `$` is literal (`$5`, `a$b`, a trailing `$`).
//! - `${` without a closing `}`, `${}`, and a name outside the syntax above (including shell
//!   forms such as `${A:-default}`) are errors.
//! - A substituted value is not expanded again.
//!
//! The environment is a lookup function, so tests pass a fake one.

use toml_edit::{DocumentMut, Item, Value};

use super::locate::KeyPath;

/// Looks up one variable; `None` means unset.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Expands one string. The error is a complete message for the key holding the string.
pub(crate) fn expand(text: &str, env: Env<'_>) -> Result<String, String> {
    if !text.contains('$') {
        return Ok(text.to_owned());
    }
    let mut out = String::with_capacity(text.len());
    let mut unset: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        if let Some(tail) = after.strip_prefix("${") {
            out.push_str("${");
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let Some(close) = body.find('}') else {
                return Err("unterminated \"${\" (write \"$${\" for a literal \"${\")".to_owned());
            };
            let name = &body[..close];
            if !is_var_name(name) {
                return Err(if name.is_empty() {
                    "empty variable name in \"${}\"".to_owned()
                } else {
                    format!(
                        "invalid environment variable name {name:?} in \"${{{name}}}\": \
                         expected letters, digits and _"
                    )
                });
            }
            match env(name) {
                Some(value) => out.push_str(&value),
                None => {
                    if !unset.contains(&name) {
                        unset.push(name);
                    }
                }
            }
            rest = &body[close + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    match unset.as_slice() {
        [] => Ok(out),
        [one] => Err(format!("environment variable {one} is not set")),
        many => Err(format!(
            "environment variables {} are not set",
            many.join(", ")
        )),
    }
}

fn is_var_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Expands every string value in the document in place. Returns one problem (path, message) per
/// string that could not be expanded; such strings are left as they were.
pub(crate) fn expand_document(doc: &mut DocumentMut, env: Env<'_>) -> Vec<(KeyPath, String)> {
    let mut problems = Vec::new();
    expand_item(doc.as_item_mut(), &KeyPath::root(), env, &mut problems);
    problems
}

fn expand_item(item: &mut Item, path: &KeyPath, env: Env<'_>, out: &mut Vec<(KeyPath, String)>) {
    match item {
        Item::Value(v) => expand_value(v, path, env, out),
        Item::Table(t) => {
            for (k, v) in t.iter_mut() {
                expand_item(v, &path.key(k.get()), env, out);
            }
        }
        Item::ArrayOfTables(a) => {
            for (i, t) in a.iter_mut().enumerate() {
                let p = path.index(i);
                for (k, v) in t.iter_mut() {
                    expand_item(v, &p.key(k.get()), env, out);
                }
            }
        }
        Item::None => {}
    }
}

fn expand_value(value: &mut Value, path: &KeyPath, env: Env<'_>, out: &mut Vec<(KeyPath, String)>) {
    match value {
        Value::String(s) => {
            if s.value().contains('$') {
                match expand(s.value(), env) {
                    Ok(new) => *value = Value::from(new),
                    Err(message) => out.push((path.clone(), message)),
                }
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter_mut().enumerate() {
                expand_value(v, &path.index(i), env, out);
            }
        }
        Value::InlineTable(t) => {
            for (k, v) in t.iter_mut() {
                expand_value(v, &path.key(k.get()), env, out);
            }
        }
        Value::Integer(_) | Value::Float(_) | Value::Boolean(_) | Value::Datetime(_) => {}
    }
}
