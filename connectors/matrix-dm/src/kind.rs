//! The `matrix_dm` kind: its config section checked, its tables and actions, the
//! `HONOROIT_*` drop-in, and the running helpdesk it builds.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::Value;
use switchboard_connector::{
    ActionContext, Checked, Checker, Connector, DbError, Dialect, EnvConfig, Failure, Host, Kind,
    Listener, Queued, SourceInfo, TicketEvent,
};

use crate::MatrixDmConfig;
use crate::actions::{HelpdeskAction, KINDS};
use crate::desk::{Helpdesk, close_idle};

/// The kind `matrix_dm`.
pub struct MatrixDm;

impl Kind for MatrixDm {
    fn name(&self) -> &'static str {
        "matrix_dm"
    }

    fn schema(&self, generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        generator.subschema_for::<MatrixDmConfig>()
    }

    fn check(
        &self,
        _source: &SourceInfo,
        section: Option<&Value>,
        check: &mut Checker<'_>,
    ) -> Option<Checked> {
        let Some(section) = section else {
            check.problem("", "required for kind = \"matrix_dm\"");
            return None;
        };
        let config: MatrixDmConfig = check.parse(section)?;
        let problems = config.problems();
        for (key, problem) in &problems {
            check.problem(key, problem.clone());
        }
        problems.is_empty().then(|| Box::new(config) as Checked)
    }

    fn check_together(
        &self,
        sources: &[(&SourceInfo, Option<&Checked>)],
        report: &mut dyn FnMut(&str, String),
    ) {
        if let Some((second, _)) = sources.get(1) {
            report(
                &format!("sources.{}.kind", second.id),
                "one bot serves at most one matrix_dm source".into(),
            );
        }
    }

    fn action_kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    /// Its requests' messages and closes, for a ticket system that keeps them too.
    fn publishes(&self) -> bool {
        true
    }

    fn migrations(&self, dialect: Dialect) -> Option<&'static sqlx::migrate::Migrator> {
        Some(match dialect {
            Dialect::Sqlite => &crate::requests::SQLITE,
            Dialect::Postgres => &crate::requests::POSTGRES,
        })
    }

    fn listens(&self, _checked: &Checked) -> bool {
        true
    }

    fn rooms(&self, checked: &Checked) -> Vec<(String, String)> {
        checked
            .downcast_ref::<MatrixDmConfig>()
            .map(|c| vec![("backoffice_room".to_string(), c.backoffice_room.clone())])
            .unwrap_or_default()
    }

    fn env_config(
        &self,
        vars: &BTreeMap<String, String>,
    ) -> Option<Result<EnvConfig, Vec<(String, String)>>> {
        crate::honoroit::env_config(vars)
    }

    fn build(
        &self,
        source: &SourceInfo,
        checked: &Checked,
        host: Arc<dyn Host>,
    ) -> Result<Arc<dyn Connector>, String> {
        let config = checked
            .downcast_ref::<MatrixDmConfig>()
            .ok_or("not a checked matrix_dm config")?;
        Ok(Arc::new(Helpdesk::new(
            &source.id,
            config.clone(),
            &source.bot,
            host,
        )))
    }
}

#[async_trait]
impl Connector for Helpdesk {
    async fn prepare(&self) -> Result<(), DbError> {
        self.load_settings(&self.store).await
    }

    async fn plan(&self, event: &TicketEvent) -> Result<Option<Vec<Queued>>, DbError> {
        let steps = self.plan_event(&self.store, event).await?;
        let queued = steps
            .into_iter()
            .map(|(lane, step)| step.queued(lane))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(queued))
    }

    async fn execute(&self, cx: &ActionContext<'_>, action: &Value) -> Result<String, Failure> {
        let action = HelpdeskAction::deserialize(action)
            .map_err(|e| Failure::Permanent(format!("stored action does not parse: {e}")))?;
        self.run_action(cx, action).await
    }

    fn listener(&self) -> Option<&dyn Listener> {
        Some(self)
    }

    async fn run(self: Arc<Self>) {
        close_idle(self).await;
    }
}
