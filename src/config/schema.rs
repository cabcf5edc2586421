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
    let mut errors = Vec::new();
    check(&schema, &schema, &instance, "", lines, &mut errors);
    errors.sort_by_key(|e| e.line);
    errors
}

/// The problems of `instance` (at `prefix`) against the schema `node` of `root`.
fn check(
    root: &serde_json::Value,
    node: &serde_json::Value,
    instance: &serde_json::Value,
    prefix: &str,
    lines: &KeyLines,
    errors: &mut Vec<ConfigError>,
) {
    let mut schema = node.clone();
    schema["$defs"] = root["$defs"].clone();
    let Ok(validator) = jsonschema::validator_for(&schema) else {
        return;
    };
    for e in validator.iter_errors(instance) {
        let path = e
            .instance_path()
            .as_str()
            .trim_start_matches('/')
            .replace('/', ".");
        let key = match (prefix, path.as_str()) {
            ("", path) => path.to_string(),
            (prefix, "") => prefix.to_string(),
            (prefix, path) => format!("{prefix}.{path}"),
        };
        let parts: Vec<&str> = key.split('.').filter(|p| !p.is_empty()).collect();
        // An optional table that is there but wrong: what is wrong inside it.
        if matches!(
            e.kind(),
            jsonschema::error::ValidationErrorKind::AnyOf { .. }
        ) && e.instance().is_object()
            && let Some(table) = node_at(root, &parts).filter(|t| t.get("properties").is_some())
        {
            check(root, table, e.instance(), &key, lines, errors);
            continue;
        }
        // Each unknown key on its own line, with what is allowed there.
        if let jsonschema::error::ValidationErrorKind::AdditionalProperties { unexpected } =
            e.kind()
        {
            let allowed = allowed_keys(root, &parts);
            for name in unexpected {
                let key = if key.is_empty() {
                    name.clone()
                } else {
                    format!("{key}.{name}")
                };
                errors.push(ConfigError {
                    line: lines.line(&key),
                    key,
                    message: unknown_key(name, &allowed),
                });
            }
            continue;
        }
        errors.push({
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
        });
    }
}

/// What `check-config` says of an unknown key: the nearest allowed key when one is close
/// (a typo), and every key allowed there.
fn unknown_key(name: &str, allowed: &[String]) -> String {
    let near = allowed
        .iter()
        .map(|a| (strsim::damerau_levenshtein(name, a), a))
        .filter(|(d, a)| *d <= (a.len() / 3).max(1))
        .min_by_key(|(d, _)| *d);
    let mut message = match near {
        Some((_, a)) => format!("unknown key; did you mean `{a}`?"),
        None => "unknown key.".to_string(),
    };
    if !allowed.is_empty() {
        let list: Vec<String> = allowed.iter().map(|a| format!("`{a}`")).collect();
        message.push_str(&format!(" Allowed here: {}", list.join(", ")));
    }
    message
}

/// The keys the schema allows in the table at `path`.
fn allowed_keys(schema: &serde_json::Value, path: &[&str]) -> Vec<String> {
    node_at(schema, path)
        .and_then(|node| node["properties"].as_object())
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// The schema of the value at `path` (keys and array indexes), following references,
/// optional values and maps (a source's ID, say).
fn node_at<'a>(schema: &'a serde_json::Value, path: &[&str]) -> Option<&'a serde_json::Value> {
    let mut node = resolve(schema, schema);
    for part in path {
        let next = node["properties"]
            .get(*part)
            .or_else(|| node.get("additionalProperties").filter(|a| a.is_object()))
            .or_else(|| node.get("items").filter(|_| part.parse::<usize>().is_ok()))?;
        node = resolve(schema, next);
    }
    Some(node)
}

/// A schema node with its references followed, and of alternatives (an optional table's
/// `anyOf` with `null`) the one that is a table.
fn resolve<'a>(
    root: &'a serde_json::Value,
    mut node: &'a serde_json::Value,
) -> &'a serde_json::Value {
    // References cannot loop forever in a schema schemars made, but a bound costs nothing.
    for _ in 0..32 {
        if let Some(path) = node["$ref"].as_str().and_then(|r| r.strip_prefix("#/")) {
            node = path.split('/').fold(root, |v, p| &v[p]);
            continue;
        }
        let alternatives = ["anyOf", "oneOf", "allOf"]
            .iter()
            .find_map(|k| node[*k].as_array());
        let table = alternatives.and_then(|alts| {
            alts.iter().find(|a| {
                let a = resolve(root, a);
                a.get("properties").is_some() || a["additionalProperties"].is_object()
            })
        });
        match table {
            Some(table) => node = table,
            None => break,
        }
    }
    node
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
