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

    /// A connector's optional table is checked inside: an unknown key there is named on its
    /// own line, with a guess when one is close.
    #[test]
    fn unknown_keys_inside_connector_tables_are_named() {
        let text = "[matrix]\nhomeserver = \"http://127.0.0.1:8008\"\nuser = \"@bot:localhost\"\n\
             password = \"pw\"\n\n[sources.issues]\nkind = \"redmine\"\n[sources.issues.redmine]\n\
             url = \"https://r.example.org\"\napi_key = \"k\"\nproject = \"p\"\n\
             [sources.issues.redmine.rooms.select]\nfeilds = {}\nzzzzzz = 1\n";
        let errs = crate::config::parse(text).expect_err("invalid");
        let found: Vec<_> = errs
            .iter()
            .map(|e| (e.key.as_str(), e.line, e.message.split(" Allowed").next()))
            .collect();
        assert_eq!(
            found,
            [
                (
                    "sources.issues.redmine.rooms.select.feilds",
                    Some(13),
                    Some("unknown key; did you mean `fields`?")
                ),
                (
                    "sources.issues.redmine.rooms.select.zzzzzz",
                    Some(14),
                    Some("unknown key.")
                ),
            ]
        );
    }

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
