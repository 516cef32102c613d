//! `cim webhooks replay --subscription <id> [--event <id>]`: an operator puts dead-lettered
//! webhook deliveries back in the queue (the webhook service's own replay, on its schema).

use std::str::FromStr;

use cim_core::{AggregateId, EventId};

use super::*;
use crate::backup::connect;

pub(crate) async fn replay(config: &Config, subscription: &str, event: Option<&str>) -> Result<String, String> {
    let id = AggregateId::from_str(subscription).map_err(|e| format!("--subscription: {e}"))?;
    let event = event.map(EventId::from_str).transpose().map_err(|e| format!("--event: {e}"))?;
    let pool = connect(config, cim_webhook::SCHEMA, 2).await?;
    let replayed = cim_webhook::delivery::replay(&pool, None, id, event)
        .await
        .map_err(|e| format!("{}: {e}", cim_webhook::SCHEMA))?;
    if replayed == 0 {
        return Err(format!(
            "subscription {id} has no dead-lettered deliveries{}",
            match event {
                Some(e) => format!(" of event {e}"),
                None => String::new(),
            }
        ));
    }
    Ok(format!("{replayed} dead-lettered deliveries of subscription {id} are back in the queue"))
}
