//! `PullLoop::one_outstanding` against a real NATS: a domain consumer's messages are handled in
//! stream order across replicas and after a holder died, not only within one instance; and
//! `PullLoop::run_batches`: batches of what has arrived, in stream order, never waiting to fill.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, AckKind, consumer::pull};
use cim_core::{Domain, SubjectPrefix};
use cim_runtime::Shutdown;
use cim_streams::PullLoop;
use futures::StreamExt;

const DOMAIN: Domain = Domain::Graph;

/// What one instance handled: `Some(n)` when a handler starts on message `n`, `None` when it
/// ends, so handlers that overlap show.
type Seen = Arc<Mutex<Vec<Option<u32>>>>;

/// A domain stream of its own (a unique prefix), deleted at the end.
struct Stream {
    js: jetstream::Context,
    prefix: SubjectPrefix,
}

impl Stream {
    async fn new() -> Stream {
        let url = std::env::var("CIM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
        let js = jetstream::new(async_nats::connect(url).await.unwrap());
        let prefix: SubjectPrefix =
            format!("tord_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]).parse().unwrap();
        cim_streams::streams::ensure_domain_stream(&js, &prefix, DOMAIN, 1).await.unwrap();
        Stream { js, prefix }
    }

    async fn publish(&self, n: u32) {
        let subject = format!("{}.{DOMAIN}.evt.thing.a.happened", self.prefix);
        self.js.publish(subject, n.to_string().into()).await.unwrap().await.unwrap();
    }

    fn plain(&self) -> PullLoop {
        PullLoop::domain_durable("ordered", &self.prefix, DOMAIN, Duration::from_secs(30))
    }

    /// One instance of the consumer, each message taking `pause` to handle.
    fn instance(
        &self,
        consumer: PullLoop,
        seen: &Seen,
        pause: Duration,
        stop: &Shutdown,
    ) -> tokio::task::JoinHandle<()> {
        let (js, seen, stop) = (self.js.clone(), seen.clone(), stop.clone());
        tokio::spawn(async move {
            let handle = |message: jetstream::Message| {
                let seen = seen.clone();
                async move {
                    let n: u32 = std::str::from_utf8(&message.payload).unwrap().parse().unwrap();
                    seen.lock().unwrap().push(Some(n));
                    tokio::time::sleep(pause).await;
                    seen.lock().unwrap().push(None);
                    message.ack().await.map_err(|e| e.to_string())
                }
            };
            consumer.run(&js, &stop, |_| async {}, handle).await;
        })
    }

    fn ordered(&self, seen: &Seen, pause: Duration, stop: &Shutdown) -> tokio::task::JoinHandle<()> {
        self.instance(self.plain().one_outstanding(), seen, pause, stop)
    }

    async fn durable(&self) -> jetstream::consumer::Consumer<pull::Config> {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            let stream = self.js.get_stream(self.prefix.stream_name(DOMAIN)).await.unwrap();
            match stream.get_consumer("ordered").await {
                Ok(consumer) => return consumer,
                Err(e) => assert!(Instant::now() < until, "the durable was never made: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn delete(self) {
        let _ = self.js.delete_stream(self.prefix.stream_name(DOMAIN)).await;
    }
}

async fn handled(seen: &Seen, count: usize) -> Vec<u32> {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let now: Vec<u32> = seen.lock().unwrap().iter().flatten().copied().collect();
        if now.len() >= count {
            return now;
        }
        assert!(Instant::now() < until, "handled only {now:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_handle_one_message_at_a_time_in_stream_order() {
    let stream = Stream::new().await;
    let (seen, stop) = (Seen::default(), Shutdown::new());
    let replicas = [
        stream.ordered(&seen, Duration::from_millis(5), &stop),
        stream.ordered(&seen, Duration::from_millis(5), &stop),
    ];
    for n in 1..=40 {
        stream.publish(n).await;
    }
    assert_eq!(handled(&seen, 40).await, (1..=40).collect::<Vec<_>>());
    stop.trigger();
    for replica in replicas {
        replica.await.unwrap();
    }
    // Strictly start, end, start, end: no message began while another was being handled.
    let marks = seen.lock().unwrap().clone();
    assert_eq!(marks.len(), 80, "{marks:?}");
    for pair in marks.chunks(2) {
        assert!(pair[0].is_some() && pair[1].is_none(), "handlers overlapped: {marks:?}");
    }
    stream.delete().await;
}

/// An instance died holding a message (unacknowledged): the next message waits for it instead
/// of going to a new instance at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_later_message_waits_for_one_a_dead_holder_left_unacknowledged() {
    let stream = Stream::new().await;
    // A first instance makes the durable (and handles message 0), then stops.
    let (seen, stop) = (Seen::default(), Shutdown::new());
    let first = stream.ordered(&seen, Duration::ZERO, &stop);
    stream.publish(0).await;
    handled(&seen, 1).await;
    stop.trigger();
    first.await.unwrap();
    // Another takes message 1 and dies with it.
    stream.publish(1).await;
    let durable = stream.durable().await;
    let mut fetched = durable.fetch().max_messages(1).expires(Duration::from_secs(5)).messages().await.unwrap();
    let holding = fetched.next().await.unwrap().unwrap();
    assert_eq!(&holding.payload[..], b"1", "the dead instance holds message 1");
    stream.publish(2).await;

    let (seen, stop) = (Seen::default(), Shutdown::new());
    let second = stream.ordered(&seen, Duration::ZERO, &stop);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let early = seen.lock().unwrap().clone();
    assert!(early.is_empty(), "message 2 went out before 1: {early:?}");
    // Its ack wait over (made immediate here), message 1 comes again, and then 2.
    holding.ack_with(AckKind::Nak(None)).await.unwrap();
    assert_eq!(handled(&seen, 2).await, [1, 2]);
    stop.trigger();
    second.await.unwrap();
    stream.delete().await;
}

/// A durable an earlier version made without the limit gets it when bound again, keeping its
/// position.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_durable_made_without_the_limit_is_given_it() {
    let stream = Stream::new().await;
    let (seen, stop) = (Seen::default(), Shutdown::new());
    let plain = stream.instance(stream.plain(), &seen, Duration::ZERO, &stop);
    stream.publish(6).await;
    assert_eq!(handled(&seen, 1).await, [6]);
    assert_ne!(stream.durable().await.info().await.unwrap().config.max_ack_pending, 1);
    stop.trigger();
    plain.await.unwrap();

    let (seen, stop) = (Seen::default(), Shutdown::new());
    let again = stream.ordered(&seen, Duration::ZERO, &stop);
    stream.publish(7).await;
    assert_eq!(handled(&seen, 1).await, [7], "message 6 stayed acknowledged");
    assert_eq!(stream.durable().await.info().await.unwrap().config.max_ack_pending, 1);
    stop.trigger();
    again.await.unwrap();
    stream.delete().await;
}

/// `run_batches`: the messages that have already arrived go together, in stream order and at
/// most `max` at once; a message alone is handed over at once, not held to fill a batch; on
/// stop, what was fetched and not handled goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batches_take_what_has_arrived_in_stream_order_without_waiting_to_fill() {
    const MAX: usize = 16;
    let stream = Stream::new().await;
    for n in 1..=100 {
        stream.publish(n).await;
    }
    let batches: Arc<Mutex<Vec<Vec<u32>>>> = Arc::default();
    let stop = Shutdown::new();
    let consumer = stream.plain();
    let running = {
        let (js, batches, stop) = (stream.js.clone(), batches.clone(), stop.clone());
        tokio::spawn(async move {
            let handle = |messages: Vec<jetstream::Message>| {
                let batches = batches.clone();
                async move {
                    let numbers = messages.iter().map(|m| std::str::from_utf8(&m.payload).unwrap().parse().unwrap());
                    batches.lock().unwrap().push(numbers.collect());
                    // Slow enough that what the server sends meanwhile piles up.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    for message in messages {
                        message.ack().await.map_err(|e| e.to_string())?;
                    }
                    Ok(())
                }
            };
            consumer.run_batches(&js, &stop, |_| async {}, MAX, handle).await;
        })
    };
    let all = |batches: &Arc<Mutex<Vec<Vec<u32>>>>| batches.lock().unwrap().concat();
    let until = Instant::now() + Duration::from_secs(30);
    while all(&batches).len() < 100 {
        assert!(Instant::now() < until, "handled only {:?}", batches.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(all(&batches), (1..=100).collect::<Vec<_>>(), "in stream order");
    let sizes: Vec<usize> = batches.lock().unwrap().iter().map(Vec::len).collect();
    assert!(sizes.iter().all(|&n| n <= MAX), "a batch over {MAX}: {sizes:?}");
    assert!(sizes.len() < 50, "100 messages waiting, and hardly batched: {sizes:?}");

    // Alone, a message is handled as soon as it arrives (the handler's 20 ms, not a wait to fill).
    let published = Instant::now();
    stream.publish(101).await;
    while !all(&batches).contains(&101) {
        assert!(published.elapsed() < Duration::from_secs(2), "a lone message waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(batches.lock().unwrap().last().unwrap(), &[101]);
    stop.trigger();
    running.await.unwrap();
    let mut durable = stream.durable().await;
    let info = durable.info().await.unwrap();
    assert_eq!((info.num_ack_pending, info.num_pending), (0, 0), "all acknowledged");
    stream.delete().await;
}
