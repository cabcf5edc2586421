//! The registration list: every kind of source this Switchboard has. Adding a connector is
//! its folder under `connectors/`, its line in the workspace, and one line here.

use std::sync::Arc;

use switchboard_connector::Kind;

/// The registered kinds, each once.
pub fn kinds() -> Vec<Arc<dyn Kind>> {
    vec![
        Arc::new(switchboard_webhook::Webhook),
        Arc::new(switchboard_pretix::Pretix),
    ]
}
