//! Room left in JetStream's store. A stream at its `max_bytes` or `max_msgs` with discard `new`,
//! or an account at its storage limit, refuses every publish: commands are still acknowledged
//! (Postgres has them) but their events wait in the outbox and no consumer or websocket client
//! sees them until there is room again. Nothing else shows it: every server answers and every
//! replica is current.

use serde_json::Value;

/// What counts as full: a publish or two from refused.
const FULL_PERCENT: u64 = 95;

pub const STREAM_FIX: &str = "raise the stream's max_bytes / max_msgs (nats stream edit), or give the \
     JetStream store room (max_file_store in nats.conf); the outbox relays what it holds once there is room";
pub const ACCOUNT_FIX: &str = "raise the account's max_file (jetstream block of the account in accounts.conf) \
     or remove what it no longer needs; the outbox relays what it holds once there is room";

fn full(used: u64, limit: i64) -> bool {
    limit > 0 && used.saturating_mul(100) >= (limit as u64).saturating_mul(FULL_PERCENT)
}

/// A stream's info (`config` with its limits and discard policy, `state` with what it holds):
/// an error when it refuses new messages. With discard `old` a full stream drops its oldest
/// instead, which is retention, not a fault.
pub fn stream_room(info: &Value) -> Result<(), String> {
    if info["config"]["discard"].as_str() != Some("new") {
        return Ok(());
    }
    let limit = |k: &str| info["config"][k].as_i64().unwrap_or(-1);
    let used = |k: &str| info["state"][k].as_u64().unwrap_or(0);
    for (what, state, config) in [("bytes", "bytes", "max_bytes"), ("messages", "messages", "max_msgs")] {
        if full(used(state), limit(config)) {
            return Err(format!(
                "full: {} {what} of its {config} {} (discard new): every publish is refused, events wait in the outbox",
                used(state),
                limit(config)
            ));
        }
    }
    Ok(())
}

/// The account's JetStream info (`$JS.API.INFO`: `storage` used, `limits.max_storage`): an error
/// when its file storage is full.
pub fn account_room(info: &Value) -> Result<(), String> {
    let used = info["storage"].as_u64().unwrap_or(0);
    let limit = info["limits"]["max_storage"].as_i64().unwrap_or(-1);
    if full(used, limit) {
        return Err(format!(
            "the account's JetStream file storage is full: {used} of {limit} bytes: publishes to every stream are refused"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(discard: &str, bytes: u64, max_bytes: i64) -> Value {
        serde_json::json!({"config": {"discard": discard, "max_bytes": max_bytes, "max_msgs": -1},
                           "state": {"bytes": bytes, "messages": 10}})
    }

    #[test]
    fn a_stream_at_its_limit_with_discard_new_is_full() {
        assert!(
            stream_room(&stream("new", 1000, 1000)).unwrap_err().starts_with("full: 1000 bytes of its max_bytes 1000")
        );
        assert!(stream_room(&stream("new", 960, 1000)).is_err());
        assert!(stream_room(&stream("new", 900, 1000)).is_ok());
        // Unlimited, or full but dropping its oldest: no fault.
        assert!(stream_room(&stream("new", 1000, -1)).is_ok());
        assert!(stream_room(&stream("old", 1000, 1000)).is_ok());
    }

    #[test]
    fn a_stream_at_its_message_limit_is_full() {
        let info = serde_json::json!({"config": {"discard": "new", "max_bytes": -1, "max_msgs": 10},
                                      "state": {"bytes": 5000, "messages": 10}});
        assert!(stream_room(&info).unwrap_err().contains("10 messages of its max_msgs 10"));
    }

    #[test]
    fn an_account_at_its_storage_limit_is_full() {
        let info = |storage: u64, max: i64| serde_json::json!({"storage": storage, "limits": {"max_storage": max}});
        assert!(account_room(&info(1 << 20, 1 << 20)).is_err());
        assert!(account_room(&info(1 << 19, 1 << 20)).is_ok());
        assert!(account_room(&info(1 << 30, -1)).is_ok());
    }
}
