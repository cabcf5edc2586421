//! The `webhook` kind: a source whose webhooks become ticket events by the configured field
//! paths, and whose events become actions by the configured rules.

use std::sync::Arc;

use switchboard_connector::{Checked, Checker, Connector, Host, Kind, SourceInfo, WebhookSource};

use crate::WebhookConfig;

/// The kind `webhook`.
pub struct Webhook;

/// One generic webhook source: intake only; the rules plan its events.
struct Source(WebhookConfig);

impl Connector for Source {
    fn webhook(&self) -> Option<&dyn WebhookSource> {
        Some(&self.0)
    }
}

impl Kind for Webhook {
    fn name(&self) -> &'static str {
        "webhook"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<WebhookConfig>()
    }

    fn section_required(&self) -> bool {
        false
    }

    fn check(
        &self,
        _source: &SourceInfo,
        section: Option<&serde_json::Value>,
        check: &mut Checker<'_>,
    ) -> Option<Checked> {
        let config: WebhookConfig = match section {
            Some(section) => check.parse(section)?,
            None => WebhookConfig::default(),
        };
        if config.fields.ticket.is_empty() {
            check.problem("fields.ticket", "must not be empty");
            return None;
        }
        Some(Box::new(config))
    }

    fn build(
        &self,
        _source: &SourceInfo,
        checked: &Checked,
        _host: Arc<dyn Host>,
    ) -> Result<Arc<dyn Connector>, String> {
        let config = checked
            .downcast_ref::<WebhookConfig>()
            .ok_or("not a checked webhook config")?;
        Ok(Arc::new(Source(config.clone())))
    }
}
