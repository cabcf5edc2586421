//! The config's JSON Schema (the service's types with each registered connector's section)
//! and where each key stands in the file, so every problem is named with its key and line.

use std::collections::BTreeMap;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Config, ConfigError};

/// The config's JSON Schema, as `switchboard schema` prints it and `schemas/` keeps it.
/// Each registered connector's section is a property of a source, with the connector's
/// schema, and `kind` one of the registered kinds.
pub fn json_schema() -> serde_json::Value {
    let mut generator = schemars::SchemaGenerator::default();
    let kinds = crate::registry::kinds();
    let sections: Vec<(&str, schemars::Schema)> = kinds
        .iter()
        .map(|(name, kind)| (*name, kind.schema(&mut generator)))
        .collect();
    let mut schema =
        serde_json::to_value(generator.into_root_schema_for::<Config>()).unwrap_or_default();
    let source = &mut schema["$defs"]["SourceConfig"];
    source["additionalProperties"] = false.into();
    let names: Vec<&str> = kinds.keys().copied().collect();
    source["properties"]["kind"]["enum"] = names.into();
    for (name, section) in sections {
        let description = format!("Options of the `{name}` connector (`kind = \"{name}\"`).");
        let mut section = serde_json::to_value(section).unwrap_or_default();
        section["description"] = description.into();
        source["properties"][name] = section;
    }
    schema
}

pub(super) fn schema_errors(doc: &Spanned<DeTable<'_>>, lines: &KeyLines) -> Vec<ConfigError> {
    let schema = json_schema();
    let instance = table_to_json(doc.get_ref());
    let Ok(validator) = jsonschema::validator_for(&schema) else {
        return Vec::new();
    };
    validator
        .iter_errors(&instance)
        .map(|e| {
            let key = e
                .instance_path()
                .as_str()
                .trim_start_matches('/')
                .replace('/', ".");
            let message = match e.kind() {
                // All the choices, not the validator's first two.
                jsonschema::error::ValidationErrorKind::Enum { options } => {
                    let choices: Vec<String> = options
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|o| o.to_string())
                        .collect();
                    format!("{} is not one of {}", e.instance(), choices.join(", "))
                }
                _ => e.to_string(),
            };
            ConfigError {
                line: lines.line(&key),
                key,
                message,
            }
        })
        .collect()
}

fn table_to_json(t: &DeTable<'_>) -> serde_json::Value {
    serde_json::Value::Object(
        t.iter()
            .map(|(k, v)| (k.get_ref().to_string(), value_to_json(v.get_ref())))
            .collect(),
    )
}

fn value_to_json(v: &DeValue<'_>) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        DeValue::String(s) => J::String(s.to_string()),
        DeValue::Integer(i) => i
            .as_str()
            .replace('_', "")
            .parse::<i64>()
            .map(J::from)
            .unwrap_or_else(|_| J::String(i.as_str().to_string())),
        DeValue::Float(f) => f
            .as_str()
            .replace('_', "")
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(J::Number)
            .unwrap_or(J::Null),
        DeValue::Boolean(b) => J::Bool(*b),
        DeValue::Datetime(d) => J::String(d.to_string()),
        DeValue::Array(a) => J::Array(a.iter().map(|x| value_to_json(x.get_ref())).collect()),
        DeValue::Table(t) => table_to_json(t),
    }
}

/// Line numbers of every key path in the document, for error messages.
pub(super) struct KeyLines(BTreeMap<String, usize>);

impl KeyLines {
    pub(super) fn new(text: &str, doc: &Spanned<DeTable<'_>>) -> Self {
        let mut map = BTreeMap::new();
        fn walk(text: &str, prefix: &str, t: &DeTable<'_>, map: &mut BTreeMap<String, usize>) {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.get_ref().to_string()
                } else {
                    format!("{prefix}.{}", k.get_ref())
                };
                map.insert(key.clone(), line_of(text, k.span().start));
                walk_value(text, &key, v.get_ref(), map);
            }
        }
        fn walk_value(text: &str, key: &str, v: &DeValue<'_>, map: &mut BTreeMap<String, usize>) {
            match v {
                DeValue::Table(t) => walk(text, key, t, map),
                DeValue::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        let k = format!("{key}.{i}");
                        map.insert(k.clone(), line_of(text, item.span().start));
                        walk_value(text, &k, item.get_ref(), map);
                    }
                }
                _ => {}
            }
        }
        walk(text, "", doc.get_ref(), &mut map);
        KeyLines(map)
    }

    /// The line of `key`, or of its nearest ancestor that is in the file.
    pub(super) fn line(&self, key: &str) -> Option<usize> {
        let mut k = key.trim_matches('.');
        loop {
            if let Some(l) = self.0.get(k) {
                return Some(*l);
            }
            k = k.rsplit_once('.')?.0;
        }
    }
}

pub(super) fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|b| **b == b'\n')
        .count()
        + 1
}
