//! The replicas of one domain service, each its own channel, taken in turn. A replica whose
//! connection could not be made (refused, timed out, TLS handshake failed: no request reached
//! it) is ejected: left out of the rotation for a while that doubles with each refusal in a row
//! (0.5 s up to 8 s), then tried again by the next call (the re-probe), and back in at its first
//! answer. Tonic's balanced channel keeps a dead endpoint "ready" (its reconnect error is handed
//! to the next call routed there), so about half the calls failed while a replica was down.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const FIRST_EJECTION: Duration = Duration::from_millis(500);
const LONGEST_EJECTION: Duration = Duration::from_secs(8);

pub(super) struct Replicas<C> {
    members: Vec<Replica<C>>,
    next: AtomicUsize,
}

pub(super) struct Replica<C> {
    pub client: C,
    pub channel: tonic::transport::Channel,
    /// The configured URL, for the log line that says a replica left or came back.
    pub url: String,
    ejection: Mutex<Ejection>,
}

#[derive(Default)]
struct Ejection {
    until: Option<Instant>,
    /// Refusals in a row: the next ejection lasts FIRST_EJECTION × 2^(strikes-1).
    strikes: u32,
}

impl<C> Replicas<C> {
    pub fn new(members: impl IntoIterator<Item = (String, tonic::transport::Channel, C)>) -> Self {
        let members = members
            .into_iter()
            .map(|(url, channel, client)| Replica { client, channel, url, ejection: Mutex::default() })
            .collect();
        Self { members, next: AtomicUsize::new(0) }
    }

    /// Every replica in the order a call tries them: those in the rotation from the next turn
    /// on, then the ejected ones (soonest back first) — when all are ejected a call still tries.
    pub fn order(&self, now: Instant) -> Vec<&Replica<C>> {
        let n = self.members.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut order: Vec<(Option<Instant>, &Replica<C>)> =
            (0..n).map(|i| &self.members[(start + i) % n]).map(|r| (r.ejected_until(now), r)).collect();
        // Stable: the rotation's order kept among those in it (`None` sorts first).
        order.sort_by_key(|(until, _)| *until);
        order.into_iter().map(|(_, r)| r).collect()
    }

    pub fn urls(&self) -> Vec<&str> {
        self.members.iter().map(|m| m.url.as_str()).collect()
    }

    /// The replica the next call would try first.
    pub fn pick(&self) -> &Replica<C> {
        self.order(Instant::now())[0]
    }
}

impl<C> Replica<C> {
    fn ejected_until(&self, now: Instant) -> Option<Instant> {
        let e = self.ejection.lock().unwrap_or_else(|p| p.into_inner());
        e.until.filter(|u| *u > now)
    }

    /// No connection could be made: out of the rotation for the next ejection's length.
    pub fn refused(&self, now: Instant) {
        let mut e = self.ejection.lock().unwrap_or_else(|p| p.into_inner());
        if e.until.is_some_and(|u| u > now) {
            return; // concurrent calls that found it down count once
        }
        e.strikes = e.strikes.saturating_add(1);
        let length = FIRST_EJECTION.saturating_mul(1 << (e.strikes - 1).min(16)).min(LONGEST_EJECTION);
        e.until = Some(now + length);
        tracing::warn!(replica = %self.url, ejected_for = ?length, "upstream replica refused the connection");
    }

    /// It answered (whatever the answer): back in the rotation.
    pub fn answered(&self) {
        let mut e = self.ejection.lock().unwrap_or_else(|p| p.into_inner());
        if e.strikes > 0 {
            tracing::info!(replica = %self.url, "upstream replica answers again");
            *e = Ejection::default();
        }
    }
}

/// True when the call failed before any request left: tonic wraps every failure of making the
/// connection (TCP connect, its timeout, the TLS handshake) in `ConnectError`. Such a call is
/// safe to send elsewhere even when it is a command.
pub(super) fn never_sent(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Replicas<&'static str> {
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_lazy();
        Replicas::new(["a", "b", "c"].map(|n| (n.to_owned(), channel.clone(), n)))
    }

    fn names(r: &Replicas<&'static str>, now: Instant) -> Vec<&'static str> {
        r.order(now).into_iter().map(|m| m.client).collect()
    }

    #[tokio::test]
    async fn calls_take_turns_and_an_ejected_replica_is_tried_last_until_its_ejection_lapses() {
        let r = three();
        let t = Instant::now();
        assert_eq!(names(&r, t), ["a", "b", "c"]);
        assert_eq!(names(&r, t), ["b", "c", "a"]);
        r.members[1].refused(t);
        // b is last in every turn while ejected.
        assert_eq!(names(&r, t), ["c", "a", "b"]);
        assert_eq!(names(&r, t), ["a", "c", "b"]);
        // A second refusal while ejected counts once: still back after the first length.
        r.members[1].refused(t + Duration::from_millis(100));
        let lapsed = t + FIRST_EJECTION + Duration::from_millis(1);
        assert_eq!(names(&r, lapsed), ["b", "c", "a"], "re-probed once the ejection lapsed");
        // Refused again: twice as long, then four times.
        r.members[1].refused(lapsed);
        assert_eq!(*names(&r, lapsed + FIRST_EJECTION * 2 - Duration::from_millis(1)).last().unwrap(), "b");
        let again = lapsed + FIRST_EJECTION * 2;
        r.members[1].refused(again);
        assert_eq!(r.members[1].ejected_until(again), Some(again + FIRST_EJECTION * 4));
        // Its first answer puts it back at once, the next refusal starting from the first length.
        r.members[1].answered();
        assert_eq!(r.members[1].ejected_until(again), None);
        r.members[1].refused(again);
        assert_eq!(r.members[1].ejected_until(again), Some(again + FIRST_EJECTION));
    }

    #[tokio::test]
    async fn ejections_never_last_longer_than_the_longest() {
        let r = three();
        let mut t = Instant::now();
        for _ in 0..40 {
            r.members[0].refused(t);
            t += LONGEST_EJECTION;
        }
        r.members[0].refused(t);
        assert_eq!(r.members[0].ejected_until(t), Some(t + LONGEST_EJECTION));
    }

    #[tokio::test]
    async fn when_every_replica_is_ejected_the_one_back_soonest_comes_first() {
        let r = three();
        let t = Instant::now();
        r.members[2].refused(t);
        r.members[0].refused(t + Duration::from_millis(10));
        r.members[1].refused(t + Duration::from_millis(20));
        assert_eq!(names(&r, t + Duration::from_millis(30)), ["c", "a", "b"]);
    }

    #[tokio::test]
    async fn only_a_connection_never_made_counts_as_never_sent() {
        let refused = tonic::Status::from_error(Box::new(tonic::ConnectError("connection refused".into())));
        assert_eq!(refused.code(), tonic::Code::Unavailable);
        assert!(never_sent(&refused));
        assert!(!never_sent(&tonic::Status::unavailable("the service is shedding load")));
        assert!(!never_sent(&tonic::Status::from_error("connection reset".into())));
    }
}
