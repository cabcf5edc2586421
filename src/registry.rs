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

/// Which kind runs each connector action `type`; an error names a clash.
pub fn action_owners() -> Result<BTreeMap<&'static str, &'static str>, String> {
    let mut owners: BTreeMap<&'static str, &'static str> = BTreeMap::new();
    let mut names = std::collections::BTreeSet::new();
    for kind in connectors::kinds() {
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
