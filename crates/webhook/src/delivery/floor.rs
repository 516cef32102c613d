//! The intake consumers' ack floors: per domain stream, the sequence up to which every message has
//! been taken in (its rows committed, then acknowledged). A delivery row is claimable only when
//! its message is at most one past its stream's floor, so every earlier event of its aggregate is
//! already a row (or matched nothing). Without this, a message left unacknowledged by a killed
//! intake comes back only after the ack wait while later events of the same aggregate are taken
//! in at once by the next instance, and would be sent first.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use cim_core::{Domain, SubjectPrefix};
use futures::future::join_all;

use super::intake;

/// How long fetched floors are used before they are asked for again: claims happen after every
/// finished call, and the floors need not be asked for each of them.
pub const FRESH: Duration = Duration::from_millis(5);

#[derive(Debug)]
pub struct AckFloors {
    js: jetstream::Context,
    prefix: SubjectPrefix,
    /// Per domain, the last floor the server reported (kept when asking fails: a floor known
    /// before an outage is still a safe bound for rows taken in before it).
    known: Vec<(Domain, u64)>,
    fetched: Option<Instant>,
}

impl AckFloors {
    pub fn new(js: jetstream::Context, prefix: SubjectPrefix) -> Self {
        AckFloors { js, prefix, known: Domain::ALL.iter().map(|&d| (d, 0)).collect(), fetched: None }
    }

    /// Asks the server for every domain's floor unless the known ones are [`FRESH`]; answers
    /// whether it asked.
    pub async fn refresh(&mut self) -> bool {
        if self.fetched.is_some_and(|at| at.elapsed() < FRESH) {
            return false;
        }
        let asked = join_all(self.known.iter().map(|&(domain, _)| self.ask(domain))).await;
        for ((_, floor), answer) in self.known.iter_mut().zip(asked) {
            // A rebuilt stream starts again from 1: the answer replaces, it is not a maximum.
            if let Some(answer) = answer {
                *floor = answer;
            }
        }
        self.fetched = Some(Instant::now());
        true
    }

    async fn ask(&self, domain: Domain) -> Option<u64> {
        let stream = self.js.get_stream_no_info(self.prefix.stream_name(domain)).await.ok()?;
        let info = stream.consumer_info(intake::consumer_name(domain)).await.ok()?;
        Some(info.ack_floor.stream_sequence)
    }

    /// `(domains, floors)` as two arrays for a query.
    pub fn as_columns(&self) -> (Vec<&'static str>, Vec<i64>) {
        self.known.iter().map(|&(d, floor)| (d.as_str(), floor as i64)).unzip()
    }
}
