//! Which tickets get a room: every ticket of the source's queues, those whose fields have
//! given values, or only those whose room is asked for through the "open chat" link.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::Value;

/// Which of the source's tickets get a room when the ticket system tells of them. Once a
/// ticket has its room it keeps it, whatever its fields become.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Select {
    /// Only tickets whose room is asked for through `GET /link/<source id>/<ticket>` (the
    /// "open chat" link on the ticket; needs the source's `link_create = true`).
    pub on_demand: bool,
    /// Ticket fields and the values that select a ticket, e.g. `priority = ["high"]`,
    /// `tags = ["chat"]` or `"fields.Chat" = ["yes"]` (a custom or dynamic field): a ticket
    /// is selected when each field given has one of its values, compared
    /// case-insensitively (a field with several values, such as tags, needs one of them).
    /// The fields are those of the templates' `ticket`.
    pub fields: BTreeMap<String, Vec<String>>,
}

impl Select {
    /// Problems a schema cannot express, each with its key: fields the source's tickets
    /// do not have (`known`, and `fields.<name>` where `custom`), and `on_demand` without
    /// the link that asks for rooms.
    pub fn problems(
        &self,
        known: &[&str],
        custom: bool,
        link_create: bool,
    ) -> Vec<(String, String)> {
        let mut problems = Vec::new();
        if self.on_demand && !link_create {
            problems.push((
                "select.on_demand".into(),
                "rooms on demand are asked for through `GET /link/...`: set the source's \
                 `link_create = true`"
                    .into(),
            ));
        }
        for (field, values) in &self.fields {
            let key = format!("select.fields.{field}");
            let is_custom = field
                .strip_prefix("fields.")
                .is_some_and(|name| !name.is_empty());
            let allowed = known.contains(&field.as_str()) || (custom && is_custom);
            if !allowed {
                let mut fields = known.join("`, `");
                if custom {
                    fields.push_str("`, `fields.<name>");
                }
                problems.push((key, format!("not a ticket field; one of `{fields}`")));
            } else if values.is_empty() {
                problems.push((key, "give at least one value".into()));
            }
        }
        problems
    }

    /// Why a ticket without a room does not get one (`None`: it does): it is not in the
    /// source's `scope` (its queues or groups, called `what`; empty: all), or `picks` says
    /// no. `ticket` is what templates see of it (`ticket.*`), `ticket.queue` its queue or
    /// group.
    pub fn skipped(
        &self,
        what: &str,
        scope: &[String],
        ticket: &Value,
        asked: bool,
    ) -> Option<String> {
        let queue = ticket["queue"].as_str().unwrap_or_default();
        if !scope.is_empty() && !scope.iter().any(|q| q == queue) {
            return Some(format!("{what} {queue} is not this source's"));
        }
        self.picks(ticket, asked).err()
    }

    /// Whether a ticket the room does not have yet gets one; `asked`: its room was asked
    /// for through the link. `Err` says why not.
    pub fn picks(&self, ticket: &Value, asked: bool) -> Result<(), String> {
        if asked {
            return Ok(());
        }
        if self.on_demand {
            return Err("its room is made on demand only".into());
        }
        for (field, wanted) in &self.fields {
            let value = field.split('.').fold(ticket, |v, part| &v[part]);
            let has = |want: &String| match value {
                Value::Array(items) => items.iter().any(|i| same(i, want)),
                other => same(other, want),
            };
            if !wanted.iter().any(has) {
                return Err(format!("its {field} is not {}", wanted.join(" or ")));
            }
        }
        Ok(())
    }
}

/// Whether a field's value is `want`, as text and case-insensitively.
fn same(value: &Value, want: &str) -> bool {
    match value {
        Value::String(s) => s.trim().eq_ignore_ascii_case(want.trim()),
        Value::Number(n) => n.to_string() == want.trim(),
        Value::Bool(b) => b.to_string().eq_ignore_ascii_case(want.trim()),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn select(fields: Value) -> Select {
        serde_json::from_value(json!({ "fields": fields })).expect("select")
    }

    #[test]
    fn every_field_given_needs_one_of_its_values() {
        let ticket = json!({"priority": "High", "tags": ["billing", "chat"], "number": 7,
                            "fields": {"Chat": ["yes"], "Team": "blue"}});
        assert_eq!(Select::default().picks(&ticket, false), Ok(()));
        for ok in [
            json!({"priority": ["high", "urgent"]}),
            json!({"tags": ["chat"], "number": ["7"]}),
            json!({"fields.Chat": ["Yes"], "fields.Team": ["blue"]}),
        ] {
            assert_eq!(select(ok.clone()).picks(&ticket, false), Ok(()), "{ok}");
        }
        assert_eq!(
            select(json!({"priority": ["high"], "tags": ["vip", "sales"]})).picks(&ticket, false),
            Err("its tags is not vip or sales".into())
        );
        assert!(
            select(json!({"fields.Missing": ["x"]}))
                .picks(&ticket, false)
                .is_err()
        );
        // Asked for through the link: always.
        assert_eq!(
            select(json!({"fields.Missing": ["x"]})).picks(&ticket, true),
            Ok(())
        );
        let on_demand = Select {
            on_demand: true,
            ..Select::default()
        };
        assert!(on_demand.picks(&ticket, false).is_err());
        assert_eq!(on_demand.picks(&ticket, true), Ok(()));
    }

    #[test]
    fn unknown_fields_and_on_demand_without_the_link_are_problems() {
        let mut s = select(
            json!({"priority": ["1"], "fields.Chat": ["yes"], "colour": ["red"],
                                  "status": []}),
        );
        s.on_demand = true;
        let keys = |p: Vec<(String, String)>| p.into_iter().map(|(k, _)| k).collect::<Vec<_>>();
        assert_eq!(
            keys(s.problems(&["priority", "status"], true, false)),
            [
                "select.on_demand",
                "select.fields.colour",
                "select.fields.status"
            ]
        );
        assert_eq!(
            keys(s.problems(&["priority", "status"], false, true)),
            [
                "select.fields.colour",
                "select.fields.fields.Chat",
                "select.fields.status"
            ]
        );
    }
}
