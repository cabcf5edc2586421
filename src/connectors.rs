//! The registration list: every kind of source this Switchboard has. Adding a connector is
//! its folder under `connectors/`, its line in the workspace, and one line here.

use std::sync::Arc;

use switchboard_connector::Kind;

/// The registered kinds, each once.
pub fn kinds() -> Vec<Arc<dyn Kind>> {
    vec![
        Arc::new(switchboard_webhook::Webhook),
        Arc::new(switchboard_matrix_dm::MatrixDm),
        Arc::new(switchboard_pretix::Pretix),
        Arc::new(switchboard_rt::RequestTracker),
        Arc::new(switchboard_zammad::Zammad),
        Arc::new(switchboard_otobo::Otobo),
        Arc::new(switchboard_redmine::Redmine),
    ]
}

#[cfg(test)]
mod tests {
    use crate::registry::{action_owners, migrator};
    use switchboard_connector::Dialect;

    #[test]
    fn registered_kinds_do_not_clash() {
        let owners = action_owners().expect("no clash");
        assert_eq!(owners.get("pretix_order"), Some(&"pretix"));
        for dialect in [Dialect::Sqlite, Dialect::Postgres] {
            let core = match dialect {
                Dialect::Sqlite => &crate::store::SQLITE_MIGRATIONS,
                Dialect::Postgres => &crate::store::POSTGRES_MIGRATIONS,
            };
            let all = migrator(core, dialect).expect("no clash");
            let versions: Vec<i64> = all.iter().map(|m| m.version).collect();
            // The helpdesk's (3 to 6) and pretix's (8, 9) kept their numbers when they
            // moved into their folders, so a database made before runs none of them again.
            assert_eq!(versions, (1..=19).collect::<Vec<i64>>());
        }
    }
}
