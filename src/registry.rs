//! What the registered kinds add up to: which kind a source's `kind` names, which kind runs
//! an action of a given `type`, and the migrations of the service and every kind in one
//! list. Clashes (two kinds with one name, action type or migration version) are errors at
//! start.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchboard_connector::{Dialect, Kind};

use crate::connectors;

/// The `type`s of the actions the service itself runs (`switchboard_connector::Action`).
pub const CORE_ACTIONS: &[&str] = &[
    "open_room",
    "post",
    "close",
    "send",
    "invite",
    "participant",
    "leave",
    "kick",
];

/// The registered kinds by name.
pub fn kinds() -> BTreeMap<&'static str, Arc<dyn Kind>> {
    connectors::kinds()
        .into_iter()
        .map(|k| (k.name(), k))
        .collect()
}

/// Which registered kind runs each connector action `type`; an error names a clash.
pub fn action_owners() -> Result<BTreeMap<&'static str, &'static str>, String> {
    owners_of(&connectors::kinds())
}

/// Which of `kinds` runs each connector action `type`; an error names a clash.
fn owners_of(kinds: &[Arc<dyn Kind>]) -> Result<BTreeMap<&'static str, &'static str>, String> {
    let mut owners: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    let mut names = std::collections::BTreeSet::new();
    for kind in kinds {
        if !names.insert(kind.name()) {
            return Err(format!(
                "two connectors are registered as `{}`",
                kind.name()
            ));
        }
        for action in kind.action_kinds() {
            if CORE_ACTIONS.contains(action) {
                return Err(format!(
                    "connector `{}` claims the action type `{action}`, which the service runs",
                    kind.name()
                ));
            }
            if let Some(other) = owners.insert(action, kind.name()) {
                return Err(format!(
                    "connectors `{other}` and `{}` both claim the action type `{action}`",
                    kind.name()
                ));
            }
        }
    }
    Ok(owners)
}

/// The service's migrations and every kind's, in version order; an error names two that
/// share a version.
pub fn migrator(
    core: &'static sqlx::migrate::Migrator,
    dialect: Dialect,
) -> Result<sqlx::migrate::Migrator, String> {
    let mut all: BTreeMap<i64, (String, sqlx::migrate::Migration)> = core
        .iter()
        .map(|m| (m.version, ("the service".to_string(), m.clone())))
        .collect();
    for kind in connectors::kinds() {
        for m in kind.migrations(dialect).into_iter().flat_map(|m| m.iter()) {
            let owner = format!("connector `{}`", kind.name());
            if let Some((other, _)) = all.get(&m.version) {
                return Err(format!(
                    "{other} and {owner} both have a migration numbered {}",
                    m.version
                ));
            }
            all.insert(m.version, (owner, m.clone()));
        }
    }
    Ok(sqlx::migrate::Migrator::with_migrations(
        all.into_values().map(|(_, m)| m).collect(),
    ))
}

#[cfg(test)]
mod tests {
    use switchboard_connector::{Checked, Checker, Connector, Host, SourceInfo};

    use super::*;

    /// A kind that claims the action types it is given.
    struct Claims(&'static str, &'static [&'static str]);

    impl Kind for Claims {
        fn name(&self) -> &'static str {
            self.0
        }
        fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
            generator.subschema_for::<()>()
        }
        fn check(
            &self,
            _: &SourceInfo,
            _: Option<&serde_json::Value>,
            _: &mut Checker<'_>,
        ) -> Option<Checked> {
            None
        }
        fn action_kinds(&self) -> &'static [&'static str] {
            self.1
        }
        fn build(
            &self,
            _: &SourceInfo,
            _: &Checked,
            _: Arc<dyn Host>,
        ) -> Result<Arc<dyn Connector>, String> {
            Err("not built in this test".into())
        }
    }

    #[test]
    fn two_kinds_cannot_claim_one_action_type_or_one_name() {
        let a: Arc<dyn Kind> = Arc::new(Claims("a", &["a_read", "shared"]));
        let b: Arc<dyn Kind> = Arc::new(Claims("b", &["shared"]));
        let error = owners_of(&[a.clone(), b]).expect_err("a clash");
        assert!(
            error.contains("`a` and `b`") && error.contains("`shared`"),
            "{error}"
        );
        let core: Arc<dyn Kind> = Arc::new(Claims("c", &["post"]));
        let error = owners_of(&[core]).expect_err("the service's");
        assert!(
            error.contains("`post`") && error.contains("the service runs"),
            "{error}"
        );
        let error = owners_of(&[a.clone(), a.clone()]).expect_err("one name twice");
        assert!(error.contains("registered as `a`"), "{error}");
        let owners = owners_of(&[a]).expect("no clash");
        assert_eq!(owners.get("a_read"), Some(&"a"));
    }
}
